"""Snakemake adapter: rule features -> mimic_redundancy.pipeline.stages.features."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402
from mimic_redundancy.pipeline import stages  # noqa: E402

setup_log(snakemake.log[0])
stages.features(snakemake.params.settings, snakemake.input.manifest, snakemake.output.inference,
                snakemake.output.train, snakemake.threads,
                shard=getattr(snakemake.wildcards, "shard", None))
