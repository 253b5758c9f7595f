"""Snakemake adapter: rule depth_metrics -> mimic_redundancy.analysis.depth.write_depth_metrics."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.analysis.depth import write_depth_metrics  # noqa: E402
from mimic_redundancy.core.log import setup_log  # noqa: E402

setup_log(snakemake.log[0])
write_depth_metrics(snakemake.input.npz, snakemake.output.table, snakemake.output.summary, snakemake.params.bootstrap)
