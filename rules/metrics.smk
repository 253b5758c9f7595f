localrules:
    metrics,


rule metrics:
    input:
        npz=rules.probe.output.npz,
    output:
        table=results("{preset}", "metrics.csv"),
        summary=results("{preset}", "convergence.json"),
    params:
        settings=cfg.metrics_settings(config),
    log:
        results("{preset}", "logs/metrics.log"),
    message:
        "Convergence metrics of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/metrics.py"
