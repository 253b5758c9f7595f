"""Snakemake adapter: rule plot_sweep -> mimic_redundancy.report.plots.sweep_figure."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402
from mimic_redundancy.report.plots import sweep_figure  # noqa: E402

setup_log(snakemake.log[0])
sweep_figure(snakemake.input.table, snakemake.input.summary, snakemake.params.style,
             snakemake.output.png, snakemake.output.svg)
