# The video backbone, run once: hiddens for every probe sample and training draws, read by the head stages.
rule features:
    input:
        manifest=rules.prefetch.output.manifest,
        data=backbone_data,
        code=BACKBONE_CODE,
    output:
        inference=sharded("features/inference.safetensors"),
        train=sharded("features/train.safetensors"),
    params:
        settings=lambda w: cfg.features_settings(config, w.preset),
    threads: 2
    benchmark:
        sharded("benchmarks/features.tsv")
    log:
        sharded("logs/features.log"),
    message:
        "Run the video backbone of preset {wildcards.preset} once per sample window (and per training draw)"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/features.py"
