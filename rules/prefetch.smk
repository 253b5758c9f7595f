localrules:
    prefetch,


rule prefetch:
    output:
        manifest=results("{preset}", "prefetch.json"),
    params:
        settings=lambda w: cfg.prefetch_settings(config, w.preset),
    benchmark:
        results("{preset}", "benchmarks/prefetch.tsv")
    log:
        results("{preset}", "logs/prefetch.log"),
    message:
        "Fetch the Hub files preset {wildcards.preset} needs (head node, online)"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/prefetch.py"
