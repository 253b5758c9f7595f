# Shards (config `shards` > 1): each sharded stage's jobs write under results/{preset}/shards/<i-of-n>/, and
# these rules join them, in order, into exactly the files an unsharded run writes, so nothing downstream knows
# there were shards. Gathering streams (features) or holds one stage's arrays (NPZ): no model is built.
# On Slurm, gather_features is a job without a GPU (it streams the feature files, GBs on a 7B backbone); the NPZ
# gathers run on the head node, like the metrics (1,000 samples' probe arrays: 1.5 s), and wait in no queue.
if SHARDED:

    localrules:
        gather_probe,
        gather_sweep,
        gather_backbone,

    rule gather_features:
        input:
            inference=shards_of("features", "features/inference.safetensors"),
            train=shards_of("features", "features/train.safetensors"),
            code=code("core/shards", "core/io"),
        output:
            inference=results("{preset}", "features/inference.safetensors"),
            train=results("{preset}", "features/train.safetensors"),
        benchmark:
            results("{preset}", "benchmarks/gather_features.tsv")
        log:
            results("{preset}", "logs/gather_features.log"),
        message:
            "Gather the feature shards of preset {wildcards.preset}"
        conda:
            "../envs/pipeline.yaml"
        script:
            "../scripts/gather.py"

    for _stage in ("probe", "sweep", "backbone"):

        rule:
            name:
                f"gather_{_stage}"
            input:
                shards=shards_of(_stage, f"{_stage}.npz"),
                code=code("core/shards", "core/io"),
            output:
                npz=results("{preset}", f"{_stage}.npz"),
            params:
                stage=_stage,
            benchmark:
                results("{preset}", f"benchmarks/gather_{_stage}.tsv")
            log:
                results("{preset}", f"logs/gather_{_stage}.log"),
            message:
                f"Gather the {_stage} shards of preset {{wildcards.preset}}"
            conda:
                "../envs/pipeline.yaml"
            script:
                "../scripts/gather.py"
