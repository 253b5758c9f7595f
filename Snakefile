# Temporal redundancy in mimic-video's action sampling: the DAG's table of contents.
#   prefetch -> features (the video backbone, once) -> validate -> probe, sweep (head only), backbone (NPZ)
#     -> *metrics (CSV, JSON) -> plot* (PNG, SVG)
#   probe, sweep -> early_stop (stopping rules, NFE); depth_features (backbone, every video time) -> depth (head)
#     -> depth_metrics -> plot_depth
#   features -> train (head only) -> checkpoint preset (the same DAG on trained weights, the same features)
#     -> compare (presets side by side)
#   inputs.source demos (the closed loop): demos (the simulator's expert) -> features ... train -> rollout (every K and
#     early-stopping rule, in the simulator) -> rollout_metrics -> plot_rollout, rollout_videos
# Run: snakemake --profile profiles/local   (or profiles/slurm on a cluster)

configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/prefetch.smk"
include: "rules/features.smk"
include: "rules/validate.smk"
include: "rules/probe.smk"
include: "rules/analysis.smk"
include: "rules/gather.smk"
include: "rules/metrics.smk"
include: "rules/plot.smk"
include: "rules/early_stop.smk"
include: "rules/depth.smk"
include: "rules/train.smk"
include: "rules/compare.smk"
include: "rules/sim.smk"


rule all:
    input:
        all_targets(),
    default_target: True


onsuccess:
    print_summary(run_presets())
