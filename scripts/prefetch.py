"""Snakemake adapter: rule prefetch -> mimic_redundancy.pipeline.stages.prefetch."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402
from mimic_redundancy.pipeline import stages  # noqa: E402

setup_log(snakemake.log[0])
stages.prefetch(snakemake.wildcards.preset, snakemake.params.settings, snakemake.config["hub"]["timeout_s"],
                snakemake.output.manifest)
