"""Train the action head with mimic-video's own flow-matching loss, and check the saved checkpoint.

The video backbone stays frozen (as in mimic-video's second stage). The head trains on cached features:
each step picks windows and, per window, one of its `features.draws` cached backbone passes (video time
drawn from the library's logit-normal, video noise from the row's seed), and calls `MimicVideo.forward`
with the ground-truth chunk, those hiddens and their video time (`time_video_denoise`); the library draws
the flow times, action noise and proprio dropout as in its own training. `train_library` is the library's
own loop (`MimicVideo.forward(video=...)`, the backbone run at every step), kept to measure how close the
cached loop comes (make bench).
"""
from __future__ import annotations

import logging
import math
import time

import torch

from mimic_redundancy.data.readers import DataError
from mimic_redundancy.model.model import head_parameters

log = logging.getLogger(__name__)
ROUND_TRIP_STEPS = 10
EVAL_ROWS = 64  # rows of the fixed-draw loss before and after training


def _require_ground_truth(rows) -> None:
    known = torch.isfinite(rows.gt_actions).flatten(1).all(dim=1)
    if not bool(known.all()):
        missing = sorted({e for e, k in zip(rows.episodes, known.tolist()) if not k})
        raise DataError(f"train needs ground-truth actions for every window; episodes {missing} have none "
                        "(video_dir: fill the 'actions' column, or select other episodes with inputs.episodes)")


def noisy_flow_times(net):
    """settings flow_times 'noisy': the loss's flow times with density 2(1 - t/s) on [0, s] (s = the library's
    largest time, 0.999; t up to 0.97), mostly near the noise, as pi0 samples them. The library's own (density 2t) puts most
    weight near the data, where its loss divides by (1 - t)^2: on Meta-World's demonstrations a head trained with
    them did not beat the mean action (docs/closed-loop.md)."""
    s = net.sample_time_s
    return lambda u: s * (1.0 - torch.sqrt((1.0 - u).clamp_min(0.0)))  # u: the library's uniform draw


U_SHAPED_CONCENTRATION = 0.2  # Dense-Jump's U-shaped training times: Beta(0.2, 0.2), its authors' README example


def u_shaped_flow_times(net):
    """settings flow_times 'u_shaped': Dense-Jump's (arXiv 2509.13574) U-shaped flow times, s * Beta(0.2, 0.2) on
    [0, s] (s = the library's largest time, 0.999): most weight near the noise and near the data. Beta(0.2, 0.2) has
    no inverse CDF in torch, so each time is drawn from torch's RNG (seeded by train.seed), not mapped from the
    library's draw u (which only gives the count and the device)."""
    s = net.sample_time_s

    def times(u: torch.Tensor) -> torch.Tensor:
        concentration = torch.full_like(u, U_SHAPED_CONCENTRATION)
        return s * torch.distributions.Beta(concentration, concentration).sample()

    return times


def _optimize(net, n_windows: int, settings: dict, device, loss_of) -> tuple[list[dict], dict]:
    """AdamW on the action head for settings['steps'] minibatches of window indices drawn with settings['seed']
    (`loss_of(windows, generator)` gives the loss); returns (one loss row per step, a summary)."""
    torch.manual_seed(settings["seed"])
    library_times = net.sample_time_fn
    flow_times = settings.get("flow_times", "library")
    if flow_times in ("noisy", "u_shaped"):
        net.sample_time_fn = noisy_flow_times(net) if flow_times == "noisy" else u_shaped_flow_times(net)
    try:
        return _steps(net, n_windows, settings, device, loss_of)
    finally:
        net.sample_time_fn = library_times  # training only: sampling never reads it


def _steps(net, n_windows: int, settings: dict, device, loss_of) -> tuple[list[dict], dict]:
    order = torch.Generator().manual_seed(settings["seed"])
    if net.video_predict_wrapper is not None:
        for p in net.video_predict_wrapper.parameters():
            p.requires_grad_(False)
    params = head_parameters(net)
    optimizer = torch.optim.AdamW(params, lr=settings["lr"])
    net.train()
    rows, start = [], time.perf_counter()
    for step in range(1, settings["steps"] + 1):
        windows = torch.randint(n_windows, (settings["batch_size"],), generator=order)
        loss = loss_of(windows, order)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"training loss is {float(loss)} at step {step}; lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if settings.get("lr_schedule", "constant") == "cosine":  # from lr down to 0 at the last step
            for group in optimizer.param_groups:
                group["lr"] = settings["lr"] * 0.5 * (1.0 + math.cos(math.pi * step / settings["steps"]))
        optimizer.step()
        rows.append({"step": step, "loss": loss.item(), "grad_norm": float(grad_norm),
                     "seconds": time.perf_counter() - start})
        if step == 1 or step % max(1, settings["steps"] // 10) == 0:
            log.info("step %d/%d: loss %.4f (%.1f s)", step, settings["steps"], rows[-1]["loss"], rows[-1]["seconds"])
    net.eval()
    tenth = max(1, len(rows) // 10)
    first = sum(r["loss"] for r in rows[:tenth]) / tenth
    last = sum(r["loss"] for r in rows[-tenth:]) / tenth
    summary = {"steps": settings["steps"], "batch_size": settings["batch_size"], "lr": settings["lr"],
               "seed": settings["seed"], "flow_times": settings.get("flow_times", "library"),
               "lr_schedule": settings.get("lr_schedule", "constant"), "windows": n_windows,
               "trained_parameters": sum(p.numel() for p in params),
               "seconds": rows[-1]["seconds"], "loss_first_tenth": first, "loss_last_tenth": last,
               "loss_ratio": last / first, "steps_per_tenth": tenth}
    log.info("trained %d steps in %.1f s: loss %.4f -> %.4f (ratio %.3f)", settings["steps"], summary["seconds"],
             first, last, summary["loss_ratio"])
    return rows, summary


def train_model(net, rows, settings: dict, device) -> tuple[list[dict], dict]:
    """Train the head on a train FeatureSet (windows x draws rows, window-major); the model ends in eval mode."""
    _require_ground_truth(rows)
    draws = settings["draws"]
    if len(rows) == 0 or len(rows) % draws:
        raise DataError(f"the training features hold {len(rows)} rows, not windows x {draws} draws; rebuild them "
                        "(rule features)")

    def loss_of(windows, generator):
        picked = windows * draws + torch.randint(draws, windows.shape, generator=generator)
        batch = rows.batch(picked.tolist(), device)
        return net(actions=rows.gt_actions[picked].to(device), joint_state=batch.joint_state,
                   video_hiddens=batch.hiddens, time_video_denoise=batch.video_time)

    log.info("training on %d windows x %d cached draws", len(rows) // draws, draws)
    normalizer = None
    if settings.get("normalize_state"):  # z-scored state: Meta-World's goal positions span a few cm of ~1 m values
        from mimic_redundancy.model.model import attach_joint_normalizer

        normalizer = attach_joint_normalizer(net, rows.joint_state)
    before = held_loss(net, rows, device)
    out, summary = _optimize(net, len(rows) // draws, settings, device, loss_of)
    after = held_loss(net, rows, device)
    log.info("loss on %d fixed rows with fixed flow times and noise: %.4f before, %.4f after", EVAL_ROWS, before, after)
    summary.update(joint_normalizer=normalizer)
    summary.update(source=rows.source, draws=draws, video_time_mean=float(rows.video_time.mean()),
                   fixed_loss_before=before, fixed_loss_after=after, fixed_loss_rows=min(EVAL_ROWS, len(rows)))
    return out, summary


@torch.no_grad()
def held_loss(net, rows, device, seed: int = 0) -> float:
    """The training loss on the first EVAL_ROWS rows with the flow times, noise and proprio dropout drawn from a
    fixed seed: the same draws before and after training, so the two numbers compare the model alone (the
    per-step losses are heavy-tailed, as the library's flow target divides by 1 - t)."""
    index = list(range(min(EVAL_ROWS, len(rows))))
    batch = rows.batch(index, device)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        loss = net(actions=rows.gt_actions[index].to(device), joint_state=batch.joint_state,
                   video_hiddens=batch.hiddens, time_video_denoise=batch.video_time)
    finally:
        torch.random.set_rng_state(state)
    return float(loss)


def train_library(net, samples, settings: dict, device) -> tuple[list[dict], dict]:
    """mimic-video's own loop: MimicVideo.forward(video=...) with the frozen backbone run at every step."""
    _require_ground_truth(samples)

    def loss_of(windows, generator):
        index = windows.tolist()
        batch = samples.batch(index, device)
        return net(actions=samples.gt_actions[index].to(device), joint_state=batch.joint_state, video=batch.video,
                   prompts=batch.prompts, no_grad_video_model_forward=True)

    return _optimize(net, len(samples), settings, device, loss_of)


def backbone_reference(backbone: dict, manifest: dict) -> dict:
    """How a checkpoint names its backbone: Hub repos at the commits the manifest resolved."""
    commits = {e["role"]: e["resolved_revision"] for e in manifest.get("repos", [])}
    reference = dict(backbone)
    if reference["kind"] == "pretrained":
        reference["revision"] = commits["backbone"]
    if isinstance(reference.get("tokenizer"), dict):
        reference["tokenizer"] = {**reference["tokenizer"], "revision": commits["tokenizer"]}
    return reference


def trained_frames(settings: dict, manifest: dict) -> dict | None:
    """What the policy sees in training, recorded in its checkpoint (checkpoints.trained_frames reads it back, and
    the closed loop refuses a rollout that shows it other frames): the frame size, count and spacing of its inputs
    (settings['train_features']: the training features' settings) and the data's rate: the demonstrations' sim.fps,
    or a LeRobot dataset's info.json fps (None: the data has no rate, e.g. synthetic videos or a video folder)."""
    from mimic_redundancy.model.checkpoints import FRAME_KEYS

    inputs = ((settings.get("train_features") or {}).get("data") or {}).get("inputs")
    if not inputs:
        return None
    fps = None
    if inputs.get("source") == "demos":
        fps = inputs["demos"]["fps"]
    elif inputs.get("source") == "lerobot":
        from mimic_redundancy.core.hub import local_snapshot
        from mimic_redundancy.data.lerobot import read_layout

        entry = next(e for e in manifest["repos"] if e["role"] == "dataset")
        fps = read_layout(local_snapshot(entry, manifest.get("preset", "<preset>"))).info.get("fps")
    return {**{k: inputs[k] for k in FRAME_KEYS if k in inputs}, "fps": fps, "source": inputs.get("source")}


@torch.no_grad()
def verify_round_trip(net, checks, folder, settings: dict, reference: dict, manifest: dict, device) -> dict:
    """Save the head-only checkpoint, load it back, and require bit-identical weights and sampled actions."""
    from mimic_redundancy.core.io import config_digest
    from mimic_redundancy.model.model import CheckpointError, head_state, library_versions, load_head, save_checkpoint
    from mimic_redundancy.model.sampling import library_sample

    _, digest = config_digest(settings)
    hub_inputs = [{"role": e["role"], "repo": e["repo"], "repo_type": e["repo_type"], "commit": e["resolved_revision"]}
                  for e in manifest.get("repos", [])]
    save_checkpoint(net, folder, reference, {"trained_from": settings["model"], "hub_inputs": hub_inputs,
                                             "train_features": settings.get("train_features"),
                                             "trained_frames": trained_frames(settings, manifest),
                                             "train": {k: settings[k] for k in ("steps", "batch_size", "lr", "seed",
                                                                                 "draws")},
                                             "config_digest": digest, "versions": library_versions()})
    loaded = load_head(folder, checks.hidden_width).to(device).eval()
    mine, theirs = head_state(net), head_state(loaded)
    differing = [k for k in mine if k not in theirs or not torch.equal(mine[k], theirs[k])]
    batch = checks.batch(slice(None), device)
    actions = [library_sample(m, batch, batch.hiddens, ROUND_TRIP_STEPS) for m in (net, loaded)]
    diff = float((actions[0] - actions[1]).abs().max())
    if differing or set(mine) != set(theirs) or not torch.equal(*actions):
        raise CheckpointError(f"{folder}: the reloaded checkpoint differs from the trained model "
                              f"(weights {differing[:5]}, max action difference {diff:g})")
    log.info("checkpoint %s reloads bit for bit: %d tensors, actions of %d samples identical", folder, len(mine),
             len(checks))
    return {"tensors": len(mine), "samples": len(checks), "steps": ROUND_TRIP_STEPS, "max_abs_action_diff": diff,
            "identical": True}
