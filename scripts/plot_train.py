"""Snakemake adapter: rule plot_train -> mimic_redundancy.report.plots.train_loss_figure."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402
from mimic_redundancy.report.plots import train_loss_figure  # noqa: E402

setup_log(snakemake.log[0])
train_loss_figure(snakemake.input.loss, snakemake.input.summary, snakemake.params.style, snakemake.output.png,
                  snakemake.output.svg)
