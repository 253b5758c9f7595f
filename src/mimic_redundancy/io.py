"""Atomic file writes and the probe NPZ contract.

Every output is written to a hidden temporary file beside its target and renamed into place,
so a killed job never leaves a file that looks complete.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# The probe NPZ contract (README "NPZ contract"). Shapes use S = samples, K = steps,
# N = action chunk length, D = action dimension.
PROBE_ARRAYS = {
    "trajectory": "float32 [K+1, S, N, D]: x_t after each Euler step; [0] is the initial noise, [-1] the final actions",
    "clean_prediction": "float32 [K, S, N, D]: the model's clean-action prediction at each step",
    "times": "float32 [K+1]: flow time of each trajectory entry, 0 (noise) .. 1 (data)",
    "seed": "int64 [S]: the seed of each sample (synthetic video, joint state, noise, video noise)",
    "prompt": "str [S]: the prompt of each sample",
    "preset": "str []: the model preset",
    "device": "str []: the device the probe ran on",
    "config_json": "str []: the resolved settings of the run, JSON",
    "config_digest": "str []: sha256 of config_json",
    "versions_json": "str []: library versions, JSON",
}


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def config_digest(settings: dict) -> tuple[str, str]:
    """Canonical JSON of `settings` and its sha256."""
    import hashlib

    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def save_probe(path, arrays: dict) -> None:
    missing = sorted(set(PROBE_ARRAYS) - set(arrays))
    if missing:
        raise ValueError(f"probe arrays lack {missing}: the NPZ contract needs {sorted(PROBE_ARRAYS)}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a bare path
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def load_probe(path) -> dict[str, np.ndarray]:
    """Read a probe NPZ (no pickles) and check it against the contract; errors name the file."""
    with np.load(path, allow_pickle=False) as npz:
        probe = {k: npz[k] for k in npz.files}
    missing = sorted(set(PROBE_ARRAYS) - set(probe))
    if missing:
        raise ValueError(f"{path}: not a probe NPZ, missing arrays {missing}")
    traj, clean = probe["trajectory"], probe["clean_prediction"]
    steps, samples = traj.shape[0] - 1, traj.shape[1]
    expected = {
        "clean_prediction": (steps, *traj.shape[1:]),
        "times": (steps + 1,),
        "seed": (samples,),
        "prompt": (samples,),
    }
    for key, shape in expected.items():
        if probe[key].shape != shape:
            raise ValueError(f"{path}: array '{key}' has shape {probe[key].shape}, expected {shape}")
    if traj.ndim != 4 or clean.dtype != np.float32 or traj.dtype != np.float32:
        raise ValueError(f"{path}: trajectory/clean_prediction must be float32 [K+1|K, S, N, D]")
    return probe
