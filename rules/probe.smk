rule probe:
    input:
        report=rules.validate.output.report,
        features=features_of("inference"),
        checkpoint=checkpoint_files,
        code=HEAD_CODE,
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
