# Model jobs beyond the probe: the K-step sweep (head only) and the video-backbone recompute (the one
# analysis that builds the backbone: the library's per-step recompute, on the first backbone.samples).
rule sweep:
    input:
        report=rules.validate.output.report,
        features=features_of("inference"),
        checkpoint=checkpoint_files,
        code=HEAD_CODE + code("analysis/sweep", "core/timing"),
    output:
        npz=sharded("sweep.npz"),
    params:
        settings=lambda w: cfg.sweep_settings(config, w.preset),
    threads: 2
    benchmark:
        sharded("benchmarks/sweep.tsv")
    log:
        sharded("logs/sweep.log"),
    message:
        "Sample preset {wildcards.preset} with K Euler steps and a fine reference"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/sweep.py"


rule backbone:
    input:
        report=rules.validate.output.report,
        manifest=manifest_of,
        features=features_of("inference"),
        data=data_files,
        checkpoint=checkpoint_files,
        code=BACKBONE_CODE + code("analysis/backbone", "core/timing"),
    output:
        npz=sharded("backbone.npz"),
    params:
        settings=lambda w: cfg.backbone_settings(config, w.preset),
    threads: 2
    benchmark:
        sharded("benchmarks/backbone.tsv")
    log:
        sharded("logs/backbone.log"),
    message:
        "Per-step video-backbone recompute vs cached hiddens for preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/backbone.py"
