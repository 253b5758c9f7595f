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


def _model_and_device(model: dict, manifest_path, threads: int):
    import torch

    from .hub import local_snapshots
    from .io import read_json
    from .model import build_model, resolve_device

    torch.set_num_threads(max(1, threads))
    device = resolve_device(model["device"])
    snapshots = local_snapshots(read_json(manifest_path))  # offline; fails at once if not prefetched
    start = time.perf_counter()
    net = build_model(model, device, snapshots)
    log.info("built preset '%s' on %s in %.1f s", model["preset"], device, time.perf_counter() - start)
    return net, device


def _save_run(npz_path, arrays: dict, contract: dict, settings: dict, device) -> None:
    """Add the run metadata every run NPZ carries (io.RUN_METADATA), then write the NPZ."""
    import json

    import numpy as np

    from .io import config_digest, save_npz
    from .model import library_versions

    pairs = settings["samples"]
    text, digest = config_digest(settings)
    arrays.update(seed=np.asarray([s for s, _ in pairs], dtype=np.int64), prompt=[p for _, p in pairs],
                  preset=settings["model"]["preset"], device=str(device), config_json=text, config_digest=digest,
                  versions_json=json.dumps(library_versions(), sort_keys=True))
    save_npz(npz_path, arrays, contract)


def prefetch(preset: str, settings: dict, timeout_s: float, manifest_path) -> None:
    """Fetch the preset's Hub repos (online: the only stage that is) and write the manifest last."""
    import os

    from . import hub
    from .io import write_json

    hub.go_online()
    repos = settings["repos"]
    if repos:
        entries = hub.fetch(repos, timeout_s)
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

    net, device = _model_and_device(settings["model"], manifest_path, threads)
    report = validate_model(net, device, settings)
    if not report["passed"]:
        log.error("validation report:\n%s", json.dumps(report, indent=2))
        failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["passed"]]
        raise ValidationFailed("validation failed: " + "; ".join(failed))
    write_json(report_path, report)


def probe(settings: dict, manifest_path, npz_path, threads: int = 1) -> None:
    from .io import PROBE_ARRAYS
    from .probe import run_probe

    net, device = _model_and_device(settings["model"], manifest_path, threads)
    pairs = [tuple(s) for s in settings["samples"]]
    log.info("probing %d samples x %d steps, batch size %d", len(pairs), settings["steps"], settings["batch_size"])
    start = time.perf_counter()
    arrays = run_probe(net, pairs, settings["inputs"], settings["steps"], settings["batch_size"], device)
    log.info("probe took %.1f s", time.perf_counter() - start)
    del arrays["seed"], arrays["prompt"]  # written by _save_run from the same pairs
    _save_run(npz_path, arrays, PROBE_ARRAYS, settings, device)


def sweep(settings: dict, manifest_path, npz_path, threads: int = 1) -> None:
    from .io import SWEEP_ARRAYS
    from .sweep import run_sweep

    net, device = _model_and_device(settings["model"], manifest_path, threads)
    pairs = [tuple(s) for s in settings["samples"]]
    arrays = run_sweep(net, pairs, settings["inputs"], settings["sweep_steps"], settings["reference_steps"],
                       settings["batch_size"], settings["repeats"], device)
    _save_run(npz_path, arrays, SWEEP_ARRAYS, settings, device)


def backbone(settings: dict, manifest_path, npz_path, threads: int = 1) -> None:
    from .backbone import run_backbone
    from .io import BACKBONE_ARRAYS

    net, device = _model_and_device(settings["model"], manifest_path, threads)
    pairs = [tuple(s) for s in settings["samples"]]
    arrays = run_backbone(net, pairs, settings["inputs"], settings["steps"], settings["fixed_video_noise"], device)
    _save_run(npz_path, arrays, BACKBONE_ARRAYS, settings, device)
