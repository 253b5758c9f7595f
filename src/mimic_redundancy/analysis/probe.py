"""Record every step of mimic-video's Euler action sampler (its conventions: model/sampling.py)."""
from __future__ import annotations

import logging
import time

import torch

from mimic_redundancy.data.samples import Batch
from mimic_redundancy.model.sampling import euler_steps

log = logging.getLogger(__name__)


def synthetic_batch(net, pairs: list[tuple[int, str]], inputs: dict, device) -> Batch:
    """A batch of synthetic samples for `net`'s dimensions (samples.synthetic_samples)."""
    from mimic_redundancy.data.samples import synthetic_samples
    from mimic_redundancy.model.model import net_dims

    return synthetic_samples(pairs, inputs, net_dims(net)).batch(slice(None), device)


@torch.no_grad()
def probe_trajectory(net, batch: Batch, hiddens: list[torch.Tensor], steps: int):
    """Euler-integrate the action flow like `MimicVideo.sample`, keeping every step.

    Returns (trajectory (K+1, b, N, D) with [0] = noise and [-1] = final actions,
             clean_prediction (K, b, N, D), times (K+1,)).
    """
    times = torch.linspace(0.0, 1.0, steps + 1, device=batch.noise.device)
    trajectory, clean = [batch.noise], []
    for x, x1_hat in euler_steps(net, batch, hiddens, steps):
        trajectory.append(x)
        clean.append(x1_hat)
    return torch.stack(trajectory), torch.stack(clean), times


def run_probe(net, samples, steps: int, batch_size: int, device) -> dict:
    """Probe every sample (a features.FeatureSet: cached hiddens) in batches; arrays in the NPZ contract's layout (io.PROBE_ARRAYS),
    less the per-sample metadata (SampleSet.metadata)."""
    trajectories, cleans = [], []
    n_batches = -(-len(samples) // batch_size)
    for b in range(n_batches):
        start = time.perf_counter()
        batch = samples.batch(slice(b * batch_size, (b + 1) * batch_size), device)
        trajectory, clean, times = probe_trajectory(net, batch, batch.hiddens, steps)
        trajectories.append(trajectory.float().cpu())
        cleans.append(clean.float().cpu())
        log.info("batch %d/%d: %d samples x %d steps in %.2f s", b + 1, n_batches, len(batch.seeds), steps,
                 time.perf_counter() - start)
    return {
        "trajectory": torch.cat(trajectories, dim=1).numpy(),
        "clean_prediction": torch.cat(cleans, dim=1).numpy(),
        "times": times.float().cpu().numpy(),
        "gt_actions": samples.gt_actions.float().numpy(),
    }
