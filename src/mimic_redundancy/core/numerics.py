"""The numeric settings of every model job, fixed by config (`numerics`), never by the resources a job happens to get.

A job's numbers must not depend on its executor: on the CPU, torch's reductions split work by thread count, so the
same features computed with 1 and 2 threads differ in the last bits (measured: up to 2.3e-7 in the hiddens, 2.5e-6 in
the trajectories that follow). Every model job therefore runs with `numerics.threads` intra-op threads whatever
Snakemake's `threads`, Slurm's `cpus_per_task` or `--cores` say; on CUDA, `numerics.deterministic` selects
deterministic kernels (and the cuBLAS workspace they need). The settings join each stage's digested settings, so a file
made under other numerics is stale: Snakemake reruns its stage, and a head stage refuses such features by digest.
`record` is what every NPZ and features file stores (`numerics_json`).
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
CUBLAS_WORKSPACE = ":4096:8"  # what torch.use_deterministic_algorithms asks for on CUDA >= 10.2


def apply(numerics: dict, device, job_cpus: int | None = None) -> dict:
    """Set torch's thread count and determinism from the `numerics` settings; return the record of what is in force.
    `job_cpus`: the CPUs the executor gave the job (logged, not used: the numbers must not depend on it)."""
    import torch

    torch.set_num_threads(numerics["threads"])
    deterministic = numerics["deterministic"]
    if deterministic and getattr(device, "type", str(device)).startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # read when cuBLAS starts
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    if hasattr(torch.backends, "cudnn"):
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if job_cpus is not None and job_cpus != numerics["threads"]:
        log.info("numerics.threads %d (the job has %d CPUs): the numbers do not depend on the executor",
                 numerics["threads"], job_cpus)
    return record(device)


def record(device) -> dict:
    """The numeric settings in force in this process, as stored in every NPZ and features file."""
    import torch

    return {"threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
            "device": str(device), "torch": torch.__version__,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG") if str(device).startswith("cuda") else None}
