"""K-step sweep: MimicVideo.sample with K Euler steps from the same noise and cached hiddens (a FeatureSet)."""
from __future__ import annotations

import logging
import statistics

import numpy as np
import torch

from mimic_redundancy.core.timing import timed
from mimic_redundancy.model.sampling import library_sample

log = logging.getLogger(__name__)


def _timed(fn, device, repeats: int):
    """(result of the last call, median wall seconds over `repeats` calls)."""
    runs = [timed(fn, device) for _ in range(repeats)]
    return runs[-1][0], statistics.median(seconds for _, seconds in runs)


@torch.inference_mode()
def run_sweep(net, samples, ks: list[int], reference_steps: int, batch_size: int, repeats: int,
              device: torch.device) -> dict:
    """Final actions for each K [len(ks), S, N, D], a fine reference [S, N, D], and the median wall
    time of sampling all samples with each K (hiddens excluded: computed once, outside the timing)."""
    finals, references = [[] for _ in ks], []
    seconds = np.zeros(len(ks))
    n_batches = -(-len(samples) // batch_size)
    for b in range(n_batches):
        batch = samples.batch(slice(b * batch_size, (b + 1) * batch_size), device)
        hiddens = batch.hiddens
        library_sample(net, batch, hiddens, 1)  # warm-up, untimed: the first call pays for allocations
        for i, k in enumerate(ks):
            final, median = _timed(lambda: library_sample(net, batch, hiddens, k), device, repeats)
            finals[i].append(final.float().cpu())
            seconds[i] += median
        references.append(library_sample(net, batch, hiddens, reference_steps).float().cpu())
        log.info("batch %d/%d: K in %s and the %d-step reference done", b + 1, n_batches, ks, reference_steps)
    return {
        "steps": np.asarray(ks, dtype=np.int64),
        "final": torch.stack([torch.cat(f) for f in finals]).numpy(),
        "reference": torch.cat(references).numpy(),
        "reference_steps": np.int64(reference_steps),
        "wall_seconds": seconds,
        "repeats": np.int64(repeats),
    }
