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

# Every run NPZ (probe, sweep, backbone) carries these, so each can be traced to its settings.
RUN_METADATA = {
    "seed": "int64 [S]: the seed of each sample (initial noise and video noise; synthetic: also video and joint state)",
    "prompt": "str [S]: the prompt of each sample",
    "source": "str []: the input source: synthetic, lerobot or video_dir",
    "window": "int64 [S]: the input window of each sample (synthetic: the index of its prompt)",
    "episode": "int64 [S]: the episode of the window (-1: synthetic)",
    "start": "int64 [S]: the window's first frame in its episode (-1: synthetic)",
    "preset": "str []: the model preset",
    "device": "str []: the device the run used",
    "config_json": "str []: the resolved settings of the run, JSON",
    "config_digest": "str []: sha256 of config_json",
    "versions_json": "str []: library versions, JSON",
}
# The probe NPZ contract (README "NPZ contract"). Shapes use S = samples, K = steps,
# N = action chunk length, D = action dimension.
PROBE_ARRAYS = {
    "trajectory": "float32 [K+1, S, N, D]: x_t after each Euler step; [0] is the initial noise, [-1] the final actions",
    "clean_prediction": "float32 [K, S, N, D]: the model's clean-action prediction at each step",
    "times": "float32 [K+1]: flow time of each trajectory entry, 0 (noise) .. 1 (data)",
    "gt_actions": "float32 [S, N, D]: the ground-truth action chunk of each sample; NaN where unknown",
    **RUN_METADATA,
}
SWEEP_ARRAYS = {
    "steps": "int64 [J]: the K of each sweep entry",
    "final": "float32 [J, S, N, D]: MimicVideo.sample's actions with K steps (same noise and hiddens as the probe)",
    "reference": "float32 [S, N, D]: the actions with reference_steps steps",
    "reference_steps": "int64 []",
    "wall_seconds": "float64 [J]: median wall time of sampling all S samples with K steps (hiddens excluded)",
    "repeats": "int64 []: timing repeats behind each median",
    **RUN_METADATA,
}
BACKBONE_ARRAYS = {
    "hidden_rel_diff": "float32 [K, S]: ||h_k - h_cached|| / ||h_cached|| of the hiddens recomputed at step k",
    "hidden_cosine": "float32 [K, S]: cosine(h_k, h_cached)",
    "hidden_step_rel_diff": "float32 [K-1, S]: ||h_k - h_{k-1}|| / ||h_{k-1}||",
    "final_cached": "float32 [S, N, D]: final actions with hiddens computed once",
    "final_recompute": "float32 [S, N, D]: final actions of MimicVideo.sample(video=...), hiddens recomputed per step",
    "seconds_cached": "float64 [S]: wall time of the cached mode (hiddens + sampling), batch 1",
    "seconds_recompute": "float64 [S]: wall time of the per-step recompute mode, batch 1",
    "fixed_video_noise": "bool []: the recompute reused the same video noise at every step",
    "total_samples": "int64 []: samples of the run; the analysis ran on the first S of them (backbone.samples)",
    "steps": "int64 []",
    **RUN_METADATA,
}

# The video-denoising depth (depth.npz): T = video times, H = hidden values per sample (all extracted layers).
DEPTH_ARRAYS = {
    "times": "float32 [T]: the video-denoising times, ascending (0 = clean video .. 1 = pure noise); [0] is 0",
    "final": "float32 [T, S, N, D]: MimicVideo.sample's actions (steps Euler steps) from the hiddens at each time",
    "hidden_cosine": "float32 [T, S]: cosine of each sample's hiddens at time t with its hiddens at time 0",
    "hidden_rel_diff": "float32 [T, S]: ||h_t - h_0|| / ||h_0|| per sample",
    "backbone_seconds": "float64 [T, S]: wall seconds of the backbone pass behind each row (batch 1)",
    "gt_actions": "float32 [S, N, D]: the ground-truth action chunk; NaN where unknown",
    "steps": "int64 []: Euler steps of the sampler (depth.steps)",
    "backbone_json": "str []: the backbone the hiddens come from (its spec, JSON)",
    **RUN_METADATA,
}


class InputFileError(ValueError):
    """A file a stage reads is missing, damaged or of the wrong kind; the message names it, what is wrong,
    and the command that rebuilds it."""


# The rule that writes each file under results/<preset>/, for the command that rebuilds it.
WRITTEN_BY = {
    "prefetch.json": "prefetch", "validate.json": "validate", "probe.npz": "probe", "sweep.npz": "sweep",
    "backbone.npz": "backbone", "metrics.csv": "metrics", "early_exit.csv": "metrics", "convergence.csv": "metrics",
    "convergence_by_part.csv": "metrics", "convergence.json": "metrics", "sweep.csv": "sweep_metrics",
    "backbone.csv": "backbone_metrics", "backbone.json": "backbone_metrics", "train/loss.csv": "train",
    "train/summary.json": "train", "early_stop.csv": "early_stop", "early_stop.json": "early_stop",
    "depth/features.safetensors": "depth_features", "depth.npz": "depth", "depth.csv": "depth_metrics",
    "depth.json": "depth_metrics",
}


def rebuild_command(path) -> str:
    """The command that rebuilds one results file. The target comes first: `--forcerun` takes every word
    after it as a rule, so `--forcerun probe results/tiny/probe.npz` would rerun the whole workflow."""
    parts = Path(path).as_posix().split("/")
    if "results" in parts:
        rel = parts[len(parts) - 1 - parts[::-1].index("results"):]  # results/<preset>/<name>
        rule = WRITTEN_BY.get("/".join(rel[2:]))
        if rule:
            return f"snakemake --profile profiles/local {'/'.join(rel)} --forcerun {rule}"
    return f"snakemake --profile profiles/local --force {path}"


def input_error(path, problem: str) -> InputFileError:
    return InputFileError(f"{path}: {problem}. Rebuild it: {rebuild_command(path)}")


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


def _strict(obj):
    """NaN/inf -> None, so the file is valid JSON (e.g. a CI that one sample cannot give)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json(path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path) -> dict:
    """A JSON object this pipeline wrote; errors name the file and the command that rebuilds it."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise input_error(path, "no such file") from None
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise input_error(path, f"not valid JSON ({error}); it is damaged or was cut short") from None
    if not isinstance(obj, dict):
        raise input_error(path, f"holds a JSON {type(obj).__name__}, not the object this pipeline writes")
    return obj


def config_digest(settings: dict) -> tuple[str, str]:
    """Canonical JSON of `settings` and its sha256."""
    import hashlib

    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def save_npz(path, arrays: dict, contract: dict) -> None:
    """Write `arrays` (exactly the contract's keys) as a pickle-free NPZ, atomically."""
    missing, extra = sorted(set(contract) - set(arrays)), sorted(set(arrays) - set(contract))
    if missing or extra:
        raise ValueError(f"NPZ arrays do not match the contract: missing {missing}, unexpected {extra}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a bare path
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def load_npz(path, contract: dict) -> dict[str, np.ndarray]:
    """Read an NPZ without pickles; errors name the file, what is wrong, and the command that rebuilds it."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise input_error(path, "no such file") from None
    except Exception as error:  # BadZipFile, zlib.error, EOFError, ValueError (pickles, bad headers), OSError
        raise input_error(path, f"not a readable NPZ ({type(error).__name__}: {error}); "
                                "it is damaged or was cut short") from None
    missing = sorted(set(contract) - set(arrays))
    if missing:
        raise input_error(path, f"missing arrays {missing} (is it the right kind of NPZ?)")
    return arrays


def load_probe(path) -> dict[str, np.ndarray]:
    """Read a probe NPZ (no pickles) and check it against the contract; errors name the file."""
    probe = load_npz(path, PROBE_ARRAYS)
    traj, clean = probe["trajectory"], probe["clean_prediction"]
    steps, samples = traj.shape[0] - 1, traj.shape[1]
    expected = {
        "clean_prediction": (steps, *traj.shape[1:]),
        "times": (steps + 1,),
        "seed": (samples,),
        "prompt": (samples,),
        "window": (samples,),
        "gt_actions": traj.shape[1:],
    }
    for key, shape in expected.items():
        if probe[key].shape != shape:
            raise input_error(path, f"array '{key}' has shape {probe[key].shape}, expected {shape}")
    if traj.ndim != 4 or clean.dtype != np.float32 or traj.dtype != np.float32:
        raise input_error(path, "trajectory/clean_prediction must be float32 [K+1|K, S, N, D]")
    return probe


def describe(source: str, seeds, windows, episodes, prompts) -> str:
    """'N=8 samples (4 seeds x 2 prompts)' or, for real data, '(4 seeds x 2 windows of 2 episodes, lerobot)'."""
    n_seeds, n_windows = len(set(np.asarray(seeds).tolist())), len(set(np.asarray(windows).tolist()))
    n = len(np.asarray(seeds))
    count = lambda k, noun: f"{k} {noun}" + ("" if k == 1 else "s")
    if source == "synthetic":
        return f"N={n} samples ({count(n_seeds, 'seed')} x {count(len(set(np.asarray(prompts).tolist())), 'prompt')})"
    n_episodes = len(set(np.asarray(episodes).tolist()))
    return (f"N={n} samples ({count(n_seeds, 'seed')} x {count(n_windows, 'window')} of "
            f"{count(n_episodes, 'episode')}, {source})")
