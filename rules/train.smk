# Train the action head on the selected inputs; a checkpoint preset pointing at the checkpoint folder
# (results/<preset>/train/checkpoint) runs the whole DAG on the trained weights.
localrules:
    plot_train,


rule train:
    input:
        report=rules.validate.output.report,
        manifest=rules.prefetch.output.manifest,
        features=results("{preset}", "features/train.safetensors"),
        check=results("{preset}", "features/inference.safetensors"),
        code=HEAD_CODE + code("model/train", "analysis/metrics", "data/readers", "data/sources"),
    output:
        weights=results("{preset}", "train/checkpoint/model.safetensors"),
        config=results("{preset}", "train/checkpoint/config.json"),
        loss=report(results("{preset}", "train/loss.csv"), caption="../report/train_table.rst", category="Training"),
        summary=results("{preset}", "train/summary.json"),
    params:
        settings=lambda w: cfg.train_settings(config, w.preset),
    threads: 2
    priority: 10  # the critical path: every stage of the trained preset waits for it, so it starts first
    benchmark:
        results("{preset}", "benchmarks/train.tsv")
    log:
        results("{preset}", "logs/train.log"),
    message:
        "Train the action head of preset {wildcards.preset} on its cached features with mimic-video's flow-matching loss"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train.py"


rule plot_train:
    input:
        loss=rules.train.output.loss,
        summary=rules.train.output.summary,
        code=code("report/plots", "analysis/metrics", "core/io"),
    output:
        png=report(results("{preset}", "figures/train_loss.png"), caption="../report/train.rst", category="Training"),
        svg=results("{preset}", "figures/train_loss.svg"),
    params:
        style=cfg.plot_settings(config),
    benchmark:
        results("{preset}", "benchmarks/plot_train.tsv")
    log:
        results("{preset}", "logs/plot_train.log"),
    message:
        "Training-loss figure of preset {wildcards.preset}"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_train.py"
