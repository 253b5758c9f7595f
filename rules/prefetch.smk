localrules:
    prefetch,


rule prefetch:
    output:
        manifest=results("{preset}", "prefetch.json"),
    params:
        repos=[],
    log:
        results("{preset}", "logs/prefetch.log"),
    message:
        "Fetch the Hub files preset {wildcards.preset} needs"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/prefetch.py"
