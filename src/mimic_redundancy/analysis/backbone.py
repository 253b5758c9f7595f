"""Video-backbone redundancy: mimic-video's own per-step recompute of the video hiddens vs hiddens cached once.

`MimicVideo.sample(video=...)` runs the Cosmos wrapper at every action step, and each call draws fresh
future-frame noise, so the hiddens the action head sees change from step to step. Both modes run per
sample (batch 1) from the sample's seeded torch RNG, so the first recomputed hiddens equal the cached ones.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from mimic_redundancy.core.timing import synchronize
from mimic_redundancy.model.sampling import library_sample, video_hiddens

log = logging.getLogger(__name__)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().cpu().flatten()


def recompute_sample(net, batch, steps: int, seed: int, fixed_video_noise: bool):
    """MimicVideo.sample(video=...) as the library runs it; returns (final actions, hiddens of every step).
    With `fixed_video_noise`, the torch RNG is reseeded before every backbone call (same noise each step)."""
    wrapper, captured = net.video_predict_wrapper, []
    hooks = [wrapper.register_forward_hook(lambda module, args, out: captured.append(out.detach()))]

    def reseed(module, args):  # returns None: a pre-hook's return value would replace the inputs
        torch.manual_seed(seed)

    if fixed_video_noise:
        hooks.append(wrapper.register_forward_pre_hook(reseed))
    try:
        torch.manual_seed(seed)
        final = net.sample(steps=steps, batch_size=1, noise_latents=batch.noise.clone(), video=batch.video,
                           prompts=batch.prompts, joint_state=batch.joint_state, disable_progress_bar=True)
    finally:
        for hook in hooks:
            hook.remove()
    return final, captured


def run_backbone(net, samples, steps: int, fixed_video_noise: bool, device: torch.device) -> dict:
    n = len(samples)
    rel_diff, cosine, step_rel_diff = np.zeros((steps, n)), np.zeros((steps, n)), np.zeros((steps - 1, n))
    final_cached, final_recompute, seconds_cached, seconds_recompute = [], [], np.zeros(n), np.zeros(n)
    for i in range(n):
        batch = samples.batch([i], device)
        seed = batch.seeds[0]
        synchronize(device)
        start = time.perf_counter()
        cached = video_hiddens(net, batch)
        final_c = library_sample(net, batch, cached, steps)
        synchronize(device)
        seconds_cached[i] = time.perf_counter() - start
        start = time.perf_counter()
        final_r, per_step = recompute_sample(net, batch, steps, seed, fixed_video_noise)
        synchronize(device)
        seconds_recompute[i] = time.perf_counter() - start
        reference = _flat(cached[0])
        flats = [_flat(h) for h in per_step]
        for k, h in enumerate(flats):
            rel_diff[k, i] = float((h - reference).norm() / reference.norm())
            cosine[k, i] = float(torch.nn.functional.cosine_similarity(h, reference, dim=0))
            if k:
                step_rel_diff[k - 1, i] = float((h - flats[k - 1]).norm() / flats[k - 1].norm())
        final_cached.append(final_c.float().cpu())
        final_recompute.append(final_r.float().cpu())
        log.info("sample %d/%d: cached %.2f s, per-step recompute %.2f s, final |diff| max %.3g", i + 1, n,
                 seconds_cached[i], seconds_recompute[i], float((final_r - final_c).abs().max()))
    return {
        "hidden_rel_diff": rel_diff.astype(np.float32),
        "hidden_cosine": cosine.astype(np.float32),
        "hidden_step_rel_diff": step_rel_diff.astype(np.float32),
        "final_cached": torch.cat(final_cached).numpy(),
        "final_recompute": torch.cat(final_recompute).numpy(),
        "seconds_cached": seconds_cached,
        "seconds_recompute": seconds_recompute,
        "fixed_video_noise": np.bool_(fixed_video_noise),
        "steps": np.int64(steps),
    }
