"""Checks that the action head runs on the cached features, and that the probe reproduces MimicVideo.sample,
before any probing. The backbone's own checks (tokenizer, finite hiddens) ran in the features stage and are
copied from the features file."""
from __future__ import annotations

import json
import logging
import os

import torch

from mimic_redundancy.analysis.probe import probe_trajectory
from mimic_redundancy.core.hub import OFFLINE_FLAGS
from mimic_redundancy.core.io import describe
from mimic_redundancy.model.model import library_versions, net_dims, parameter_counts
from mimic_redundancy.model.sampling import library_sample

log = logging.getLogger(__name__)


def validate_model(net, device: torch.device, settings: dict, samples) -> dict:
    """Run every check; the report's `passed` is True only if all of them pass."""
    checks = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})
        log.info("%s %s: %s", "PASS" if passed else "FAIL", name, detail)

    meta = samples.meta
    counts = parameter_counts(net, int(meta["backbone_parameters"]))
    check("parameters", counts["total"] == counts["action_head"] + counts["video_wrapper"] > 0,
          f"{counts['total']:,} = action head {counts['action_head']:,} + video wrapper {counts['video_wrapper']:,}")
    for backbone_check in json.loads(meta["checks_json"]):  # run by the features stage
        check(backbone_check["name"], backbone_check["passed"], backbone_check["detail"])
    check("head only", net.video_predict_wrapper is None,
          "the action head was built alone: no transformer, VAE or T5 encoder in this job")

    off_device = sorted({str(p.device) for p in net.parameters()} - {str(device)})
    check("device", not off_device, f"all parameters on {device}" if not off_device else f"parameters on {off_device}")

    batch = samples.batch(slice(None), device)
    hiddens = batch.hiddens
    trajectory, clean, _ = probe_trajectory(net, batch, hiddens, settings["steps"])
    reference = library_sample(net, batch, hiddens, settings["steps"])
    expected = (len(batch.seeds), *net.action_shape)
    check("output shape", tuple(reference.shape) == expected == tuple(trajectory.shape[1:]),
          f"sample {tuple(reference.shape)}, probe {tuple(trajectory.shape[1:])}, expected {expected}")
    finite = all(bool(torch.isfinite(t).all()) for t in (*hiddens, trajectory, clean, reference))
    check("finite", finite, "hiddens, trajectory, clean predictions and samples are finite" if finite
          else "non-finite values in hiddens/trajectory/samples")
    outputs_on = sorted({str(t.device) for t in (*hiddens, trajectory, clean, reference)})
    check("output device", outputs_on == [str(device)], f"outputs on {outputs_on}")
    diff = float((trajectory[-1] - reference).abs().max())
    check("fidelity", diff <= settings["tolerance"],
          f"max |probe final - MimicVideo.sample| = {diff:.3g} over {len(batch.seeds)} samples x "
          f"{settings['steps']} steps (tolerance {settings['tolerance']:g})")

    return {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "preset": settings["model"]["preset"],
        "device": str(device),
        "cuda_device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "parameters": counts,
        "output_shape": list(reference.shape),
        "dimensions": net_dims(net),
        "dtypes": {**json.loads(meta["dtypes_json"]), "action_head": "float32"},
        "backbone": json.loads(meta["backbone_json"]),
        "samples": describe(samples.source, samples.seeds, samples.windows, samples.episodes, samples.prompts),
        "fidelity_max_abs_diff": diff,
        "versions": library_versions(),
        "hub_environment": {k: os.environ.get(k) for k in (*OFFLINE_FLAGS, "HF_HOME", "HF_HUB_CACHE")},
        "settings": settings,
    }
