rule probe:
    input:
        report=rules.validate.output.report,
        manifest=rules.prefetch.output.manifest,
        data=data_files,
        checkpoint=checkpoint_files,
        code=MODEL_CODE,
    output:
        npz=results("{preset}", "probe.npz"),
    params:
        settings=lambda w: cfg.probe_settings(config, w.preset),
    threads: 2
    benchmark:
        results("{preset}", "benchmarks/probe.tsv")
    log:
        results("{preset}", "logs/probe.log"),
    message:
        "Probe every step of the action sampler for preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/probe.py"
