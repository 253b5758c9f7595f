"""One entry point per pipeline stage: what scripts/<stage>.py calls with Snakemake's values.

Heavy imports (torch, mimic-video) happen inside the stages that need them, so the cheap
stages (prefetch, metrics, plots) start fast.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("mimic_redundancy")


class ValidationFailed(RuntimeError):
    pass


def _prepare(settings: dict, manifest_path, threads: int, limit: int | None = None):
    """(model, device, samples) of a model stage: read the data's episodes (offline), take the dimensions
    from the model config and the data (a mismatch stops here, naming both), build the model, load samples."""
    import torch

    from .hub import local_snapshots
    from .io import read_json
    from .model import build_model, net_dims, resolve_device, resolve_dims
    from .readers import data_dims, read_episodes
    from .samples import load_samples

    torch.set_num_threads(max(1, threads))
    model, data = settings["model"], settings["data"]
    device = resolve_device(model["device"])
    snapshots = local_snapshots(read_json(manifest_path))  # offline; fails at once if not prefetched
    episodes = None if data["inputs"]["source"] == "synthetic" else read_episodes(data["inputs"], snapshots)
    dims = resolve_dims(model, data_dims(episodes) if episodes is not None else {})
    start = time.perf_counter()
    net = build_model(model, device, snapshots, dims)
    assert net_dims(net) == dims, (net_dims(net), dims)
    log.info("built preset '%s' on %s in %.1f s; chunk_len %d, action_dim %d, joint_dim %d", model["preset"], device,
             time.perf_counter() - start, dims["chunk_len"], dims["action_dim"], dims["joint_dim"])
    samples = load_samples(data, dims, episodes, limit)
    log.info("%d samples from %s", len(samples), data["inputs"]["source"])
    return net, device, samples


def _save_run(npz_path, arrays: dict, contract: dict, settings: dict, device, samples) -> None:
    """Add the run metadata every run NPZ carries (io.RUN_METADATA), then write the NPZ."""
    import json

    from .io import config_digest, save_npz
    from .model import library_versions

    text, digest = config_digest(settings)
    arrays.update(samples.metadata(), preset=settings["model"]["preset"], device=str(device), config_json=text,
                  config_digest=digest, versions_json=json.dumps(library_versions(), sort_keys=True))
    save_npz(npz_path, arrays, contract)


def prefetch(preset: str, settings: dict, timeout_s: float, manifest_path) -> None:
    """Fetch the preset's Hub repos (online: the only stage that is) and write the manifest last."""
    import os

    from . import hub
    from .io import write_json

    hub.go_online()
    repos = settings["repos"]
    if repos:
        from .lerobot import fetch  # hub.fetch, a dataset's metadata checked first (layout, episodes, keys)

        entries = fetch(repos, timeout_s)
        note = f"fetched {len(entries)} repo(s) into {os.environ.get('HF_HUB_CACHE')}"
    else:
        entries, note = [], f"preset '{preset}' needs nothing from the Hugging Face Hub: nothing to download"
    log.info(note)
    write_json(manifest_path, {"preset": preset, "repos": entries, "note": note,
                               "endpoint": os.environ.get("HF_ENDPOINT", "https://huggingface.co") if repos else None})


def validate(settings: dict, manifest_path, report_path, threads: int = 1) -> None:
    """Write the validation report; raise ValidationFailed (after logging the report) if a check fails."""
    import json

    from .io import write_json
    from .validation import validate_model

    net, device, samples = _prepare(settings, manifest_path, threads, limit=settings["limit"])
    report = validate_model(net, device, settings, samples)
    if not report["passed"]:
        log.error("validation report:\n%s", json.dumps(report, indent=2))
        failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["passed"]]
        raise ValidationFailed("validation failed: " + "; ".join(failed))
    write_json(report_path, report)


def probe(settings: dict, manifest_path, npz_path, threads: int = 1) -> None:
    from .io import PROBE_ARRAYS
    from .probe import run_probe

    net, device, samples = _prepare(settings, manifest_path, threads)
    log.info("probing %d samples x %d steps, batch size %d", len(samples), settings["steps"], settings["batch_size"])
    start = time.perf_counter()
    arrays = run_probe(net, samples, settings["steps"], settings["batch_size"], device)
    log.info("probe took %.1f s", time.perf_counter() - start)
    _save_run(npz_path, arrays, PROBE_ARRAYS, settings, device, samples)


def sweep(settings: dict, manifest_path, npz_path, threads: int = 1) -> None:
    from .io import SWEEP_ARRAYS
    from .sweep import run_sweep

    net, device, samples = _prepare(settings, manifest_path, threads)
    arrays = run_sweep(net, samples, settings["sweep_steps"], settings["reference_steps"],
                       settings["batch_size"], settings["repeats"], device)
    _save_run(npz_path, arrays, SWEEP_ARRAYS, settings, device, samples)


def backbone(settings: dict, manifest_path, npz_path, threads: int = 1) -> None:
    from .backbone import run_backbone
    from .io import BACKBONE_ARRAYS

    net, device, samples = _prepare(settings, manifest_path, threads)
    arrays = run_backbone(net, samples, settings["steps"], settings["fixed_video_noise"], device)
    _save_run(npz_path, arrays, BACKBONE_ARRAYS, settings, device, samples)


def train(settings: dict, manifest_path, checkpoint_dir, loss_path, summary_path, threads: int = 1) -> None:
    """Train the action head on the selected inputs, save the checkpoint, and prove it reloads bit for bit."""
    from .io import write_json
    from .metrics import write_csv
    from .train import train_model, verify_round_trip

    net, device, samples = _prepare(settings, manifest_path, threads)
    rows, summary = train_model(net, samples, settings, device)
    summary["round_trip"] = verify_round_trip(net, samples, checkpoint_dir, settings, device)
    write_csv(loss_path, rows)
    write_json(summary_path, summary)
