# Temporal redundancy in mimic-video's action sampling: the DAG's table of contents.
#   prefetch -> validate -> probe, sweep, backbone (NPZ) -> *metrics (CSV, JSON) -> plot* (PNG, SVG)
#   train -> checkpoint preset (the same DAG on trained weights) -> compare (presets side by side)
# Run: snakemake --profile profiles/local   (or profiles/slurm on a cluster)

configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/prefetch.smk"
include: "rules/validate.smk"
include: "rules/probe.smk"
include: "rules/analysis.smk"
include: "rules/metrics.smk"
include: "rules/plot.smk"
include: "rules/train.smk"
include: "rules/compare.smk"


rule all:
    input:
        all_targets(),
    default_target: True


onsuccess:
    print_summary(run_presets())
