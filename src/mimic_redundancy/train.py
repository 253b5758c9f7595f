"""Train the action head with mimic-video's own flow-matching loss, and check the saved checkpoint.

The video backbone stays frozen (as in mimic-video's second stage): the loss is `MimicVideo.forward`
with the ground-truth action chunk and `no_grad_video_model_forward=True`, so the library draws its
flow times, noise, video-denoising time and proprio dropout as it does in its own training.
"""
from __future__ import annotations

import logging
import time

import torch

from .readers import DataError

log = logging.getLogger(__name__)
ROUND_TRIP_STEPS = 10


def head_parameters(net) -> list[torch.nn.Parameter]:
    """The action head's parameters in a fixed order (MimicVideo.action_parameters is an unordered set)."""
    return [p for name, p in net.named_parameters() if not name.startswith("video_predict_wrapper.")]


def train_model(net, samples, settings: dict, device) -> tuple[list[dict], dict]:
    """AdamW on the action head for settings['steps'] minibatches drawn with settings['seed'];
    returns (one loss row per step, a summary). The model is left in eval mode."""
    known = torch.isfinite(samples.gt_actions).flatten(1).all(dim=1)
    if not bool(known.all()):
        missing = sorted({e for e, k in zip(samples.episodes, known.tolist()) if not k})
        raise DataError(f"train needs ground-truth actions for every window; episodes {missing} have none "
                        "(video_dir: fill the 'actions' column, or select other episodes with inputs.episodes)")
    torch.manual_seed(settings["seed"])
    order = torch.Generator().manual_seed(settings["seed"])
    for p in net.video_predict_wrapper.parameters():
        p.requires_grad_(False)
    params = head_parameters(net)
    optimizer = torch.optim.AdamW(params, lr=settings["lr"])
    net.train()
    rows, start = [], time.perf_counter()
    for step in range(1, settings["steps"] + 1):
        index = torch.randint(len(samples), (settings["batch_size"],), generator=order).tolist()
        batch = samples.batch(index, device)
        loss = net(actions=samples.gt_actions[index].to(device), joint_state=batch.joint_state, video=batch.video,
                   prompts=batch.prompts, no_grad_video_model_forward=True)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"training loss is {float(loss)} at step {step}; lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        rows.append({"step": step, "loss": loss.item(), "grad_norm": float(grad_norm),
                     "seconds": time.perf_counter() - start})
        if step == 1 or step % max(1, settings["steps"] // 10) == 0:
            log.info("step %d/%d: loss %.4f (%.1f s)", step, settings["steps"], float(loss), rows[-1]["seconds"])
    net.eval()
    tenth = max(1, len(rows) // 10)
    first = sum(r["loss"] for r in rows[:tenth]) / tenth
    last = sum(r["loss"] for r in rows[-tenth:]) / tenth
    summary = {"steps": settings["steps"], "batch_size": settings["batch_size"], "lr": settings["lr"],
               "seed": settings["seed"], "windows": len(samples), "source": samples.source,
               "trained_parameters": sum(p.numel() for p in params), "seconds": rows[-1]["seconds"],
               "loss_first_tenth": first, "loss_last_tenth": last, "loss_ratio": last / first,
               "steps_per_tenth": tenth}
    log.info("trained %d steps in %.1f s: loss %.4f -> %.4f (ratio %.3f)", settings["steps"], summary["seconds"],
             first, last, summary["loss_ratio"])
    return rows, summary


@torch.no_grad()
def verify_round_trip(net, samples, folder, settings: dict, device) -> dict:
    """Save the checkpoint, load it back, and require bit-identical weights and sampled actions."""
    from .io import config_digest
    from .model import CheckpointError, library_versions, load_checkpoint, save_checkpoint
    from .probe import library_sample, video_hiddens

    _, digest = config_digest(settings)
    save_checkpoint(net, folder, {"trained_from": settings["model"], "inputs": settings["data"]["inputs"],
                                  "train": {k: settings[k] for k in ("steps", "batch_size", "lr", "seed")},
                                  "config_digest": digest, "versions": library_versions()})
    loaded = load_checkpoint(folder).to(device).eval()
    mine, theirs = net.state_dict(), loaded.state_dict()
    differing = [k for k in mine if not torch.equal(mine[k], theirs[k])]
    check = samples.subset(settings["check_samples"])
    batch = check.batch(slice(None), device)
    actions = [library_sample(m, batch, video_hiddens(m, batch), ROUND_TRIP_STEPS) for m in (net, loaded)]
    diff = float((actions[0] - actions[1]).abs().max())
    if differing or not torch.equal(*actions):
        raise CheckpointError(f"{folder}: the reloaded checkpoint differs from the trained model "
                              f"(weights {differing[:5]}, max action difference {diff:g})")
    log.info("checkpoint %s reloads bit for bit: %d tensors, actions of %d samples identical", folder, len(mine),
             len(check))
    return {"tensors": len(mine), "samples": len(check), "steps": ROUND_TRIP_STEPS, "max_abs_action_diff": diff,
            "identical": True}
