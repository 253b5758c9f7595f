"""Work around snakemake-executor-plugin-slurm 2.8.0 waiting forever on a job cancelled by Slurm.

With sacct (the plugin's default status command), a job killed by `scancel` reports the state
"CANCELLED by <uid>". The plugin compares states verbatim against "CANCELLED", so it never sees
the failure and keeps polling a dead job forever (the old Slurm profile fixed the same bug in 2019,
Snakemake-Profiles/slurm#22). We normalise the state the plugin's status query returns; squeue
already reports the bare "CANCELLED". tests/test_slurm.py cancels a running job to prove it.

Also an opt-in cap on the plugin's poll interval (MIMIC_SLURM_MAX_POLL_S): the plugin waits 10 s longer after every
poll that sees no job finish (up to 180 s), right for a busy cluster and slow for the single-node test cluster, whose
jobs take seconds (tests/test_slurm.py sets 5).
"""
from __future__ import annotations

import functools
import os

MAX_POLL_ENV = "MIMIC_SLURM_MAX_POLL_S"


def normalise_state(state: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; every other state unchanged."""
    return state.split(" ", 1)[0] if state.startswith("CANCELLED") else state


def patch_slurm_status_query() -> bool:
    """Wrap the plugin's status query (in the Snakemake process that polls). False if the plugin is absent."""
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    query = plugin.query_job_status
    if getattr(query, "normalises_cancelled", False):
        return True

    @functools.wraps(query)
    async def normalised(*args, **kwargs):
        states, seconds = await query(*args, **kwargs)
        if states is not None:
            states = {job: normalise_state(state) for job, state in states.items()}
        return states, seconds

    normalised.normalises_cancelled = True
    plugin.query_job_status = normalised
    cap = float(os.environ.get(MAX_POLL_ENV) or 0)
    if cap > 0:
        check = plugin.Executor.check_active_jobs

        @functools.wraps(check)
        async def capped(self, active_jobs):
            async for job in check(self, active_jobs):
                yield job
            self.next_seconds_between_status_checks = min(self.next_seconds_between_status_checks, cap)

        plugin.Executor.check_active_jobs = capped
    return True
