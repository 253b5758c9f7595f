rule validate:
    input:
        manifest=rules.prefetch.output.manifest,
        data=data_files,
        checkpoint=checkpoint_files,
        code=MODEL_CODE + code("validation"),
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
        "Validate preset {wildcards.preset}: model, tokenizer, shapes, device, probe fidelity"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/validate.py"
