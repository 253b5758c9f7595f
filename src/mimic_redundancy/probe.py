"""Record every step of mimic-video's Euler action sampler.

Conventions (mimic-video 0.5.8): flow time runs from t=0 (noise) to t=1 (data) on
`linspace(0, 1, K+1)[:-1]`; the head predicts clean actions x1_hat, and the sampler steps
x <- x + (x1_hat - x) / max(1 - t, eps) / K.
"""
from __future__ import annotations

import logging
import time

import torch

from .samples import Batch

log = logging.getLogger(__name__)


def synthetic_batch(net, pairs: list[tuple[int, str]], inputs: dict, device) -> Batch:
    """A batch of synthetic samples for `net`'s dimensions (samples.synthetic_samples)."""
    from .model import net_dims
    from .samples import synthetic_samples

    return synthetic_samples(pairs, inputs, net_dims(net)).batch(slice(None), device)


@torch.no_grad()
def video_hiddens(net, batch: Batch) -> list[torch.Tensor]:
    """The video-backbone hiddens the action head cross-attends to, computed once per sample,
    by MimicVideo's own inference path (eval mode, video time 0, one predicted future latent).

    The Cosmos wrapper draws fresh future-frame noise from torch's global RNG; it is seeded
    with the sample's seed so each sample's hiddens are reproducible. Returns one tensor per
    extracted layer, (b, tokens, dim_video_hidden).
    """
    assert not net.training, "hiddens must be computed in eval mode (T5 dropout)"
    per_sample = []
    for i, seed in enumerate(batch.seeds):
        torch.manual_seed(seed)
        _, intermediates = net.forward(
            actions=batch.noise[i:i + 1], time=0.0, video=batch.video[i:i + 1], prompts=batch.prompts[i:i + 1],
            joint_state=batch.joint_state[i:i + 1], predict_num_future_latents=1, return_intermediates=True)
        per_sample.append(intermediates.cache.video_hiddens)
    return [torch.cat(layer) for layer in zip(*per_sample)]


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


@torch.no_grad()
def euler_steps(net, batch: Batch, hiddens: list[torch.Tensor], steps: int):
    """`MimicVideo.sample`'s Euler integration from batch.noise, one step at a time: yields (x_s, x1_hat_s) after
    each step s = 1 .. steps (x1_hat_s: the clean prediction of the evaluation from x_(s-1)). A caller may stop
    early (the stopping rules of the closed loop); the values are those of the full run."""
    if net.action_normalizer is not None:
        raise NotImplementedError("the probe does not handle models with an action normalizer yet")
    times = torch.linspace(0.0, 1.0, steps + 1, device=batch.noise.device)
    delta = 1.0 / steps
    x = batch.noise.clone()
    for t in times[:-1]:
        embed = net.forward(actions=x, time=t, video_hiddens=hiddens, prompts=batch.prompts,
                            joint_state=batch.joint_state, return_embed_only=True)
        x1_hat = net.to_pred[0](embed)
        flow = (x1_hat - x) / (1.0 - t).clamp_min(net.eps)  # as MimicVideo.forward with model_output_clean
        x = x + delta * flow
        yield x, x1_hat


def library_sample(net, batch: Batch, hiddens: list[torch.Tensor], steps: int, video_time=None) -> torch.Tensor:
    """`MimicVideo.sample` from the same initial noise and hiddens: the reference for fidelity. `video_time` (b,):
    the video-denoising time the head is told (`time_video_denoise`; None: the library's inference default, 0)."""
    return net.sample(steps=steps, batch_size=len(batch.seeds), noise_latents=batch.noise.clone(),
                      video_hiddens=hiddens, prompts=batch.prompts, joint_state=batch.joint_state,
                      time_video_denoise=video_time, disable_progress_bar=True)


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
