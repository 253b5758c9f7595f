"""Snakemake adapter: rule gather_rollout -> mimic_redundancy.core.shards.gather_rollout."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # the package, in any env
from mimic_redundancy.core.log import setup_log  # noqa: E402
from mimic_redundancy.core.shards import gather_rollout  # noqa: E402

setup_log(snakemake.log[0])
policies = list(snakemake.params.policies)
shards = list(snakemake.input.shards)
per_policy = len(shards) // len(policies)
gather_rollout([shards[i * per_policy:(i + 1) * per_policy] for i in range(len(policies))], snakemake.output.npz,
               policies)
