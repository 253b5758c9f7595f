# Adaptive early stopping, from the probe and sweep NPZ files alone (no model runs): cheap, on the head node.
localrules:
    early_stop,
    plot_early_stop,


rule early_stop:
    input:
        probe=results("{preset}", "probe.npz"),
        sweep=results("{preset}", "sweep.npz"),
        code=code("analysis/early_stop", "analysis/metrics", "core/stats", "core/io"),
    output:
        table=report(results("{preset}", "early_stop.csv"), caption="../report/early_stop_table.rst", category="Tables"),
        summary=results("{preset}", "early_stop.json"),
    params:
        settings=cfg.early_stop_settings(config),
    benchmark:
        results("{preset}", "benchmarks/early_stop.tsv")
    log:
        results("{preset}", "logs/early_stop.log"),
    message:
        "Early-stopping rules of preset {wildcards.preset}, calibrated on half of the seeds"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/early_stop.py"


rule plot_early_stop:
    input:
        table=rules.early_stop.output.table,
        summary=rules.early_stop.output.summary,
        code=code("report/plots", "analysis/metrics", "core/io"),
    output:
        png=report(results("{preset}", "figures/early_stop.png"), caption="../report/early_stop.rst", category="Figures"),
        svg=results("{preset}", "figures/early_stop.svg"),
    params:
        style=cfg.plot_settings(config),
    benchmark:
        results("{preset}", "benchmarks/plot_early_stop.tsv")
    log:
        results("{preset}", "logs/plot_early_stop.log"),
    message:
        "Early-stopping Pareto figure of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_early_stop.py"
