# Figures from the tables and summaries the metrics rules write (never the NPZ, never the model): cheap, on the head node.
localrules:
    plot,
    plot_heatmaps,
    plot_sweep,
    plot_backbone,


rule plot:
    input:
        table=rules.metrics.output.table,
        summary=rules.metrics.output.summary,
        code=code("report/plots", "analysis/metrics", "core/io"),
    output:
        png=report(results("{preset}", "figures/convergence.png"), caption="../report/convergence.rst", category="Figures"),
        svg=results("{preset}", "figures/convergence.svg"),
    params:
        style=cfg.plot_settings(config),
    benchmark:
        results("{preset}", "benchmarks/plot.tsv")
    log:
        results("{preset}", "logs/plot.log"),
    message:
        "Convergence figure of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot.py"


rule plot_heatmaps:
    input:
        table=rules.metrics.output.part_errors,
        summary=rules.metrics.output.summary,
        code=code("report/plots", "analysis/metrics", "core/io"),
    output:
        png=report(results("{preset}", "figures/heatmaps.png"), caption="../report/heatmaps.rst", category="Figures"),
        svg=results("{preset}", "figures/heatmaps.svg"),
    params:
        style=cfg.plot_settings(config),
    benchmark:
        results("{preset}", "benchmarks/plot_heatmaps.tsv")
    log:
        results("{preset}", "logs/plot_heatmaps.log"),
    message:
        "Per-dimension and per-position heatmaps of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_heatmaps.py"


rule plot_sweep:
    input:
        table=rules.sweep_metrics.output.table,
        summary=rules.metrics.output.summary,
        code=code("report/plots", "analysis/metrics", "core/io"),
    output:
        png=report(results("{preset}", "figures/sweep.png"), caption="../report/sweep.rst", category="Figures"),
        svg=results("{preset}", "figures/sweep.svg"),
    params:
        style=cfg.plot_settings(config),
    benchmark:
        results("{preset}", "benchmarks/plot_sweep.tsv")
    log:
        results("{preset}", "logs/plot_sweep.log"),
    message:
        "Quality-vs-NFE figure of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_sweep.py"


rule plot_backbone:
    input:
        table=rules.backbone_metrics.output.table,
        summary=rules.backbone_metrics.output.summary,
        code=code("report/plots", "analysis/metrics", "core/io"),
    output:
        png=report(results("{preset}", "figures/backbone.png"), caption="../report/backbone.rst", category="Figures"),
        svg=results("{preset}", "figures/backbone.svg"),
    params:
        style=cfg.plot_settings(config),
    benchmark:
        results("{preset}", "benchmarks/plot_backbone.tsv")
    log:
        results("{preset}", "logs/plot_backbone.log"),
    message:
        "Video-backbone redundancy figure of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_backbone.py"
