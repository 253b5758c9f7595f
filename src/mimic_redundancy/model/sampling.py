"""Sampling the library's way: the video hiddens by MimicVideo's own inference path, its Euler sampler one step at a
time, and `MimicVideo.sample` itself (the reference every analysis and the closed loop compare against).

Conventions (mimic-video 0.5.8): flow time runs from t=0 (noise) to t=1 (data) on
`linspace(0, 1, K+1)[:-1]`; the head predicts clean actions x1_hat, and the sampler steps
x <- x + (x1_hat - x) / max(1 - t, eps) / K.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mimic_redundancy.data.samples import Batch
from mimic_redundancy.model.rules import DENSE_JUMP, GRIDS, MIMIC_VIDEO_GRID_MISSING, PROBEFLOW


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



# -- the field's step rules, as pure integrators of a clean-prediction head (docs/field-rules.md) --------------------
# predict_clean(x, t, rows) -> x1_hat: the head's clean prediction for the batch rows `rows` (LongTensor (r,); None: all
# rows) at states x (r, N, D) and the flow time t (0-d tensor, 0 = noise, 1 = data). NFE = calls per row.

def time_grid(name: str, steps: int, device=None) -> tuple[torch.Tensor, list[float]]:
    """The evaluation times (steps,) of a `steps`-step Euler integration on the named grid, and its step sizes
    (steps python floats summing to 1). 'uniform' is MimicVideo.sample's: linspace(0, 1, K+1)[:-1] with 1/K each."""
    if name == "uniform":
        return torch.linspace(0.0, 1.0, steps + 1, device=device)[:-1], [1.0 / steps] * steps
    if name == "mimic_video":
        raise NotImplementedError(MIMIC_VIDEO_GRID_MISSING)
    raise ValueError(f"unknown time grid {name!r}; allowed: {', '.join(GRIDS)}")


def clean_flow(x: torch.Tensor, x1_hat: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    """The velocity of a clean-prediction head, as MimicVideo.forward with model_output_clean: (x1_hat - x)/(1 - t)."""
    return (x1_hat - x) / (1.0 - t).clamp_min(eps)


def clean_head(net, batch: Batch, hiddens: list[torch.Tensor]):
    """predict_clean for `net` on `batch`, evaluated as euler_steps evaluates it (the embedding, then to_pred[0]);
    rows=None evaluates the whole batch with its own tensors (so an integration on it is euler_steps' bit for bit)."""
    if net.action_normalizer is not None:
        raise NotImplementedError("the step rules do not handle models with an action normalizer yet")

    @torch.no_grad()
    def predict_clean(x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            layers, prompts, state = hiddens, batch.prompts, batch.joint_state
        else:
            index = rows.to(batch.joint_state.device)
            layers = [h[index.to(h.device)] for h in hiddens]
            prompts, state = [batch.prompts[i] for i in rows.tolist()], batch.joint_state[index]
        embed = net.forward(actions=x, time=t, video_hiddens=layers, prompts=prompts, joint_state=state,
                            return_embed_only=True)
        return net.to_pred[0](embed)

    return predict_clean


@torch.no_grad()
def integrate(predict_clean, x: torch.Tensor, times: torch.Tensor, deltas: list[float], eps: float,
              rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Euler from x (r, N, D): at each time t_k, x <- x + delta_k * clean_flow. Returns (x after the last step, the
    last clean prediction; None when there are no steps). NFE: len(times) per row."""
    x1_hat = None
    for t, delta in zip(times, deltas):
        x1_hat = predict_clean(x, t, rows)
        x = x + delta * clean_flow(x, x1_hat, t, eps)  # euler_steps' expression, term for term
    return x, x1_hat


def probeflow_steps(cosine: torch.Tensor, cos_threshold: float, min_steps: int, max_steps: int) -> torch.Tensor:
    """ProbeFlow's step count per sample (b,) from the cosine between the initial and the look-ahead velocity:
    clip(min_steps + 2 floor((1 - cos) / (1 - cos_threshold)), min_steps, max_steps)."""
    quantum = 1.0 - cos_threshold
    steps = min_steps + 2 * torch.floor((1.0 - cosine.double()) / quantum)
    return steps.clamp(min_steps, max_steps).long()


@torch.no_grad()
def probeflow(predict_clean, x0: torch.Tensor, eps: float, cos_threshold: float = PROBEFLOW["cos_threshold"],
              probe_time: float = PROBEFLOW["probe_time"], min_steps: int = PROBEFLOW["min_steps"],
              max_steps: int = PROBEFLOW["max_steps"]) -> tuple[torch.Tensor, np.ndarray]:
    """ProbeFlow on x0 (b, N, D): the velocity at t = 0 and at the look-ahead x0 + probe_time * v0 decide each sample's
    step count N (probeflow_steps). N = 2 (with probe_time 0.5) reuses the probe: x_p + (1 - probe_time) v_p; a larger
    N runs uniform N-step Euler from x0, its first step the probe's v0. Returns (actions (b, N, D), NFE (b,)):
    2 for the minimum, else N + 1 (the look-ahead evaluation is spent)."""
    b, device = x0.shape[0], x0.device
    zero, probe = torch.zeros((), device=device), torch.full((), probe_time, device=device)
    v0 = clean_flow(x0, predict_clean(x0, zero, None), zero, eps)
    x_probe = x0 + probe_time * v0
    v_probe = clean_flow(x_probe, predict_clean(x_probe, probe, None), probe, eps)
    cosine = F.cosine_similarity(v0.flatten(1), v_probe.flatten(1), dim=1)
    steps = probeflow_steps(cosine.cpu(), cos_threshold, min_steps, max_steps)
    out = x_probe + (1.0 - probe_time) * v_probe  # the rows at the minimum: the probe's second step to t = 1
    nfe = np.full(b, 2)
    for n in sorted(set(steps.tolist()) - {2}):
        rows = torch.nonzero(steps == n).flatten().to(device)
        times, deltas = time_grid("uniform", n, device)
        x = x0[rows] + deltas[0] * v0[rows]  # Euler's first step, from the probe's evaluation at t = 0
        out[rows] = integrate(predict_clean, x, times[1:], deltas[1:], eps, rows)[0]
        nfe[rows.cpu().numpy()] = n + 1
    return out, nfe


@torch.no_grad()
def dense_jump(predict_clean, x0: torch.Tensor, eps: float, jump_point: float = DENSE_JUMP["jump_point"],
               steps: int = DENSE_JUMP["steps"]) -> tuple[torch.Tensor, np.ndarray]:
    """Dense-Jump on x0 (b, N, D): steps - 1 uniform Euler steps on [0, jump_point], then one step to t = 1, which
    for a clean-prediction head is its clean prediction at jump_point (x + (1 - t_j) v = x1_hat). Returns (actions
    (b, N, D), NFE (b,) = steps)."""
    times = torch.linspace(0.0, jump_point, steps, device=x0.device)  # the dense times, then the jump point
    x, _ = integrate(predict_clean, x0, times[:-1], [jump_point / (steps - 1)] * (steps - 1), eps)
    return predict_clean(x, times[-1], None), np.full(x0.shape[0], steps)
