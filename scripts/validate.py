"""Snakemake adapter: rule validate -> mimic_redundancy.pipeline.stages.validate."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402
from mimic_redundancy.pipeline import stages  # noqa: E402

setup_log(snakemake.log[0])
stages.validate(snakemake.params.settings, snakemake.input.features, snakemake.output.report, snakemake.threads)
