# Tables from the NPZ files alone: cheap, on the head node.
localrules:
    metrics,
    sweep_metrics,
    backbone_metrics,


rule metrics:
    input:
        npz=results("{preset}", "probe.npz"),
        code=code("analysis/metrics", "core/stats", "core/io"),
    output:
        table=report(results("{preset}", "metrics.csv"), caption="../report/metrics.rst", category="Tables"),
        early_exit=report(results("{preset}", "early_exit.csv"), caption="../report/early_exit.rst", category="Tables"),
        thresholds=report(results("{preset}", "convergence.csv"), caption="../report/thresholds.rst", category="Tables"),
        parts=report(results("{preset}", "convergence_by_part.csv"), caption="../report/parts.rst", category="Tables"),
        part_errors=results("{preset}", "mse_by_part.csv"),
        summary=results("{preset}", "convergence.json"),
    params:
        settings=cfg.metrics_settings(config),
    benchmark:
        results("{preset}", "benchmarks/metrics.tsv")
    log:
        results("{preset}", "logs/metrics.log"),
    message:
        "Convergence metrics of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/metrics.py"


rule sweep_metrics:
    input:
        sweep=results("{preset}", "sweep.npz"),
        probe=results("{preset}", "probe.npz"),
        code=code("analysis/metrics", "core/stats", "core/io"),
    output:
        table=report(results("{preset}", "sweep.csv"), caption="../report/sweep_table.rst", category="Tables"),
    params:
        bootstrap=config["metrics"]["bootstrap"],
    benchmark:
        results("{preset}", "benchmarks/sweep_metrics.tsv")
    log:
        results("{preset}", "logs/sweep_metrics.log"),
    message:
        "K-step sweep table of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/sweep_metrics.py"


rule backbone_metrics:
    input:
        npz=results("{preset}", "backbone.npz"),
        code=code("analysis/metrics", "core/stats", "core/io"),
    output:
        table=report(results("{preset}", "backbone.csv"), caption="../report/backbone_table.rst", category="Tables"),
        summary=results("{preset}", "backbone.json"),
    params:
        bootstrap=config["metrics"]["bootstrap"],
    benchmark:
        results("{preset}", "benchmarks/backbone_metrics.tsv")
    log:
        results("{preset}", "logs/backbone_metrics.log"),
    message:
        "Video-backbone redundancy table of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/backbone_metrics.py"
