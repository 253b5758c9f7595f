"""Snakemake adapter: rules gather_* -> mimic_redundancy.pipeline.stages.gather."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402
from mimic_redundancy.pipeline import stages  # noqa: E402

setup_log(snakemake.log[0])
if "inference" in snakemake.output.keys():
    for kind in ("inference", "train"):
        stages.gather(kind, list(snakemake.input[kind]), snakemake.output[kind])
elif "features" in snakemake.output.keys():  # the depth features
    stages.gather(snakemake.params.stage, list(snakemake.input.shards), snakemake.output.features)
else:
    stages.gather(snakemake.params.stage, list(snakemake.input.shards), snakemake.output.npz)
