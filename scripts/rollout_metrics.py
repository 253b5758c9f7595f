"""Snakemake adapter: rules rollout_metrics and rollout_versus -> mimic_redundancy.sim.answers.write_answers."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402

from mimic_redundancy.sim.answers import write_answers  # noqa: E402

setup_log(snakemake.log[0])
write_answers(snakemake.input.npz, snakemake.input.early_stop, snakemake.params.settings, snakemake.output.table,
              snakemake.output.summary, snakemake.input.nearest[0] if snakemake.input.nearest else None,
              getattr(snakemake.output, "eval_info", None))  # rule rollout_versus: the decision alone
