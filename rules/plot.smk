localrules:
    plot,


rule plot:
    input:
        table=rules.metrics.output.table,
        summary=rules.metrics.output.summary,
    output:
        png=results("{preset}", "figures/convergence.png"),
        svg=results("{preset}", "figures/convergence.svg"),
    params:
        style=cfg.plot_settings(config),
    log:
        results("{preset}", "logs/plot.log"),
    message:
        "Convergence figure of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot.py"
