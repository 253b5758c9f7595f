"""Sampling the library's way: the video hiddens by MimicVideo's own inference path, its Euler sampler one step at a
time, and `MimicVideo.sample` itself (the reference every analysis and the closed loop compare against).

Conventions (mimic-video 0.5.8): flow time runs from t=0 (noise) to t=1 (data) on
`linspace(0, 1, K+1)[:-1]`; the head predicts clean actions x1_hat, and the sampler steps
x <- x + (x1_hat - x) / max(1 - t, eps) / K.
"""
from __future__ import annotations

import torch

from mimic_redundancy.data.samples import Batch


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

