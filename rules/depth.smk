# The video-denoising depth: the backbone once per preset for every time in depth.times (a checkpoint trained
# here uses its source preset's, the backbone being frozen; sharded like features), then the head alone samples
# at each time.
localrules:
    depth_metrics,
    plot_depth,


rule depth_features:
    input:
        manifest=rules.prefetch.output.manifest,
        data=backbone_data,
        code=BACKBONE_CODE,
    output:
        features=sharded("depth/features.safetensors"),
    params:
        settings=lambda w: cfg.depth_features_settings(config, w.preset),
    threads: 2
    benchmark:
        sharded("benchmarks/depth_features.tsv")
    log:
        sharded("logs/depth_features.log"),
    message:
        "Run the video backbone of preset {wildcards.preset} at every video-denoising time of depth.times"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/depth_features.py"


# config `shards` > 1: one depth_features job per contiguous range of the time-major rows, joined as the features'
# shards are (rules/gather.smk): streamed, a job without a GPU on Slurm, byte-identical to an unsharded run's file.
if SHARDED:

    rule gather_depth_features:
        input:
            shards=shards_of("depth_features", "depth/features.safetensors"),
            code=code("core/shards", "core/io"),
        output:
            features=results("{preset}", "depth/features.safetensors"),
        params:
            stage="depth",
        benchmark:
            results("{preset}", "benchmarks/gather_depth_features.tsv")
        log:
            results("{preset}", "logs/gather_depth_features.log"),
        message:
            "Gather the depth feature shards of preset {wildcards.preset}"
        conda:
            "../envs/pipeline.yaml"
        script:
            "../scripts/gather.py"


rule depth:
    input:
        report=rules.validate.output.report,
        features=depth_features_of,
        checkpoint=checkpoint_files,
        code=HEAD_CODE + code("analysis/depth", "analysis/metrics", "core/stats"),
    output:
        npz=results("{preset}", "depth.npz"),
    params:
        settings=lambda w: cfg.depth_settings(config, w.preset),
    threads: 2
    benchmark:
        results("{preset}", "benchmarks/depth.tsv")
    log:
        results("{preset}", "logs/depth.log"),
    message:
        "Sample preset {wildcards.preset}'s actions from the hiddens at every video-denoising time"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/depth.py"


rule depth_metrics:
    input:
        npz=rules.depth.output.npz,
        code=code("analysis/depth", "analysis/metrics", "core/stats", "core/io"),
    output:
        table=report(results("{preset}", "depth.csv"), caption="../report/depth_table.rst", category="Tables"),
        summary=results("{preset}", "depth.json"),
    params:
        bootstrap=config["metrics"]["bootstrap"],
    benchmark:
        results("{preset}", "benchmarks/depth_metrics.tsv")
    log:
        results("{preset}", "logs/depth_metrics.log"),
    message:
        "Video-denoising depth table of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/depth_metrics.py"


rule plot_depth:
    input:
        table=rules.depth_metrics.output.table,
        summary=rules.depth_metrics.output.summary,
        code=code("report/plots", "analysis/metrics", "core/io"),
    output:
        png=report(results("{preset}", "figures/depth.png"), caption="../report/depth.rst", category="Figures"),
        svg=results("{preset}", "figures/depth.svg"),
    params:
        style=cfg.plot_settings(config),
    benchmark:
        results("{preset}", "benchmarks/plot_depth.tsv")
    log:
        results("{preset}", "logs/plot_depth.log"),
    message:
        "Video-denoising depth figure of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_depth.py"
