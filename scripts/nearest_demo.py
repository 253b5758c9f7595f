"""Snakemake adapter: rule nearest_demo -> mimic_redundancy.pipeline.sim_stages.nearest_demo."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402

setup_log(snakemake.log[0])
from mimic_redundancy.pipeline import sim_stages as stages  # noqa: E402  (after the log: MUJOCO_GL is set on import)

stages.nearest_demo(snakemake.params.settings, snakemake.params.dataset, snakemake.output.npz)
