rule probe:
    input:
        report=rules.validate.output.report,
        features=features_of("inference"),
        checkpoint=checkpoint_files,
        code=HEAD_CODE,
    output:
        npz=sharded("probe.npz"),
    params:
        settings=lambda w: cfg.probe_settings(config, w.preset),
    threads: 2
    benchmark:
        sharded("benchmarks/probe.tsv")
    log:
        sharded("logs/probe.log"),
    message:
        "Probe every step of the action sampler for preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/probe.py"
