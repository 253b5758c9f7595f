"""Snakemake adapter: rule plot_pareto -> mimic_redundancy.sim.answers.plot_pareto."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402

from mimic_redundancy.sim.answers import plot_pareto  # noqa: E402

setup_log(snakemake.log[0])
plot_pareto(snakemake.input.table, snakemake.input.summary, snakemake.output.png, snakemake.output.svg,
            snakemake.params.style)
