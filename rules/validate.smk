rule validate:
    input:
        features=features_of("inference"),
        checkpoint=checkpoint_files,
        code=HEAD_CODE + code("analysis/validation"),
    output:
        report=results("{preset}", "validate.json"),
    params:
        settings=lambda w: cfg.validate_settings(config, w.preset),
    threads: 2
    benchmark:
        results("{preset}", "benchmarks/validate.tsv")
    log:
        results("{preset}", "logs/validate.log"),
    message:
        "Validate preset {wildcards.preset}: the action head on the cached features, shapes, device, probe fidelity"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/validate.py"
