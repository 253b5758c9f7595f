"""Snakemake adapter: rule rollout -> mimic_redundancy.pipeline.sim_stages.rollout."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402

setup_log(snakemake.log[0])
from mimic_redundancy.pipeline import sim_stages as stages  # noqa: E402  (after the log: MUJOCO_GL is set on import)

stages.rollout(snakemake.params.settings, snakemake.params.dataset or snakemake.input.dataset, snakemake.input.early_stop,
               snakemake.output.npz,
               snakemake.threads, shard=getattr(snakemake.wildcards, "shard", None))
