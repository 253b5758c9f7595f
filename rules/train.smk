# Train the action head on the selected inputs, one policy per train.seeds (each its own job: on Slurm, an array of
# them), in results/<preset>/train/seed-<seed>/; a checkpoint preset pointing at results/<preset>/train/checkpoint (the
# first seed's) runs the whole DAG on the trained weights, and the closed loop rolls out every policy.
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
        weights=results("{preset}", "train/seed-{seed}/checkpoint/model.safetensors"),
        config=results("{preset}", "train/seed-{seed}/checkpoint/config.json"),
        loss=report(results("{preset}", "train/seed-{seed}/loss.csv"), caption="../report/train_table.rst",
                    category="Training"),
        summary=results("{preset}", "train/seed-{seed}/summary.json"),
    params:
        settings=lambda w: cfg.train_settings(config, w.preset, int(w.seed)),
    threads: 2
    priority: 10  # the critical path: every stage of the trained preset waits for it, so it starts first
    benchmark:
        results("{preset}", "benchmarks/train-seed-{seed}.tsv")
    log:
        results("{preset}", "logs/train-seed-{seed}.log"),
    message:
        "Train the action head of preset {wildcards.preset} (policy seed {wildcards.seed}) on its cached features with "
        "mimic-video's flow-matching loss"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/train.py"


rule plot_train:
    input:
        loss=lambda w: [results(w.preset, f"train/seed-{s}/loss.csv") for s in config["train"]["seeds"]],
        summary=lambda w: [results(w.preset, f"train/seed-{s}/summary.json") for s in config["train"]["seeds"]],
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
        "Training-loss figure of preset {wildcards.preset} (every policy seed)"
    conda:
        "../envs/pipeline.yaml"
    script:
        "../scripts/plot_train.py"
