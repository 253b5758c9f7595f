"""Snakemake adapter: rule backbone_metrics -> mimic_redundancy.analysis.metrics.write_backbone_metrics."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.analysis.metrics import write_backbone_metrics  # noqa: E402
from mimic_redundancy.core.log import setup_log  # noqa: E402

setup_log(snakemake.log[0])
write_backbone_metrics(snakemake.input.npz, snakemake.output.table, snakemake.output.summary, snakemake.params.bootstrap)
