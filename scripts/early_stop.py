"""Snakemake adapter: rule early_stop -> mimic_redundancy.analysis.early_stop.write_early_stop."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.analysis.early_stop import write_early_stop  # noqa: E402
from mimic_redundancy.core.log import setup_log  # noqa: E402

setup_log(snakemake.log[0])
write_early_stop(snakemake.input.probe, snakemake.input.sweep, snakemake.params.settings,
                 snakemake.output.table, snakemake.output.summary)
