# Temporal redundancy in mimic-video's action sampling: the DAG's table of contents.
#   prefetch -> validate -> probe, sweep, backbone (NPZ) -> *metrics (CSV, JSON) -> plot* (PNG, SVG)
# Run: snakemake --profile profiles/local   (or profiles/slurm on a cluster)

configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/prefetch.smk"
include: "rules/validate.smk"
include: "rules/probe.smk"
include: "rules/analysis.smk"
include: "rules/metrics.smk"
include: "rules/plot.smk"


rule all:
    input:
        final_targets(config["preset"]),
    default_target: True


onsuccess:
    print_summary(config["preset"])
