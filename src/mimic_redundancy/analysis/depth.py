"""The video-denoising depth: how the time at which the backbone's hiddens are taken changes the actions.

mimic-video conditions its action head on hiddens of a partly denoised video. `MimicVideo.forward(video=...,
time_video_denoise=t)` noises the observed video latents to time t (`lerp(latents, noise, t)`: 0 = clean,
1 = pure noise), runs the backbone once and tells the head t as well. The `depth_features` stage computes those
hiddens per probe sample and time (features.compute_features(video_times=...)); the `depth` stage samples the
actions with the head from each (MimicVideo.sample with `time_video_denoise=t`, `depth.steps` Euler steps); `write_depth_metrics` judges
them against time 0, the seed-to-seed spread and the ground truth. Note: the library's own inference path
(time 0 with one predicted future latent, the probe's) is another computation than t = 0 here (the clean video,
no future latent); docs/early-stopping-and-depth.md.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from mimic_redundancy.analysis.metrics import describe_probe, intervals_note, mse_vs, seed_spread, write_csv
from mimic_redundancy.core.io import DEPTH_ARRAYS, load_npz, write_json
from mimic_redundancy.core.stats import RESAMPLES, check_resamples, interval

log = logging.getLogger(__name__)


def time_rows(features) -> tuple[list[float], list[list[int]]]:
    """(ascending times, the row indices of each time) of a depth FeatureSet (time-major rows)."""
    column = features.video_time[:, 0].tolist()
    times = sorted(set(column))
    return times, [[i for i, t in enumerate(column) if t == time] for time in times]


def hidden_vectors(features, rows: list[int]):
    """Every extracted layer's hiddens of `rows`, flattened per row: (len(rows), values) float64."""
    import torch

    return torch.cat([h[rows].double().reshape(len(rows), -1) for h in features.hiddens], dim=1)


def run_depth(net, features, steps: int, batch_size: int, device) -> dict:
    """Final actions at every video time (the head told that time), and the hiddens' distance to time 0's.
    Arrays in io.DEPTH_ARRAYS' layout, less the run metadata."""
    import torch

    from mimic_redundancy.model.sampling import library_sample

    times, rows = time_rows(features)
    if times[0] != 0.0:
        raise ValueError(f"depth features start at video time {times[0]}, not 0 (the reference)")
    reference = hidden_vectors(features, rows[0])
    seconds = json.loads(features.meta.get("seconds_json", "[]"))
    finals, cosines, rel_diffs, per_time_seconds = [], [], [], []
    for time, index in zip(times, rows):
        actions = []
        for b in range(0, len(index), batch_size):
            batch = features.batch(index[b:b + batch_size], device)
            with torch.no_grad():
                actions.append(library_sample(net, batch, batch.hiddens, steps, batch.video_time).float().cpu())
        finals.append(torch.cat(actions))
        vectors = hidden_vectors(features, index)
        cosines.append(torch.nn.functional.cosine_similarity(vectors, reference, dim=1))
        rel_diffs.append((vectors - reference).norm(dim=1) / reference.norm(dim=1).clamp_min(1e-12))
        per_time_seconds.append([seconds[i] for i in index] if seconds else [np.nan] * len(index))
        log.info("video time %g: %d samples x %d steps; hiddens cosine to time 0 %.4f (mean)", time, len(index), steps,
                 float(cosines[-1].mean()))
    return {"times": np.asarray(times, dtype=np.float32), "final": torch.stack(finals).numpy(),
            "hidden_cosine": torch.stack(cosines).float().numpy(), "hidden_rel_diff": torch.stack(rel_diffs).float().numpy(),
            "backbone_seconds": np.asarray(per_time_seconds, dtype=np.float64),
            "gt_actions": features.gt_actions[rows[0]].float().numpy(), "steps": np.int64(steps),
            "backbone_json": features.meta.get("backbone_json", "{}")}


def _stat(row: dict, name: str, values: np.ndarray, units: np.ndarray, positive: bool, resamples: int) -> None:
    """The mean of `values` (one per unit in `units`; NaN left out) and its 95% interval (core.stats)."""
    mean, low, high = interval(values, units, positive=positive, resamples=resamples) if values.size else \
        (np.nan, np.nan, np.nan)
    row.update({name: mean, f"{name}_ci_low": low, f"{name}_ci_high": high})


def write_depth_metrics(npz_path, table_path, summary_path, resamples: int = RESAMPLES) -> None:
    """depth.csv: per video time, the final actions' MSE vs time 0's, vs the ground truth and its paired difference
    to time 0's (above 0: the noised video's hiddens give worse actions on these samples), the seed-to-seed spread,
    the hiddens' cosine and relative difference to time 0's, and the backbone seconds per sample (95% intervals over
    seeds; the spread's over input windows); depth.json: the same in brief, with what the backbone is."""
    resamples = check_resamples(resamples, "metrics.bootstrap")
    run = load_npz(npz_path, DEPTH_ARRAYS)
    final, seeds, windows, gt = run["final"], run["seed"], run["window"], run["gt_actions"]
    has_gt = np.isfinite(gt).all(axis=(-2, -1))
    gt_at_0 = mse_vs(final[0][has_gt], gt[has_gt]) if has_gt.any() else np.array([])
    spread_at_0, _ = seed_spread(final[0], seeds, windows)
    spread_0 = float(spread_at_0.mean()) if spread_at_0.size else np.nan
    rows = []
    for t, time in enumerate(run["times"]):
        row = {"video_time": float(time)}
        _stat(row, "mse_vs_time0", mse_vs(final[t], final[0]), seeds, True, resamples)
        gt_at_t = mse_vs(final[t][has_gt], gt[has_gt]) if has_gt.any() else np.array([])
        _stat(row, "mse_vs_gt", gt_at_t, seeds[has_gt], True, resamples)
        _stat(row, "diff_vs_gt_minus_time0", gt_at_t - gt_at_0, seeds[has_gt], False, resamples)
        spread, spread_windows = seed_spread(final[t], seeds, windows)
        _stat(row, "mse_seed_to_seed", spread, spread_windows, True, resamples)
        row["mse_vs_time0_over_seed_spread"] = row["mse_vs_time0"] / spread_0 if spread_0 > 0 else np.nan
        _stat(row, "hidden_cosine_vs_time0", run["hidden_cosine"][t].astype(np.float64), seeds, False, resamples)
        _stat(row, "hidden_rel_diff_vs_time0", run["hidden_rel_diff"][t].astype(np.float64), seeds, True, resamples)
        _stat(row, "backbone_seconds", run["backbone_seconds"][t], seeds, True, resamples)
        row.update({"n_samples": int(seeds.size), "n_seeds": int(np.unique(seeds).size),
                    "n_samples_gt": int(has_gt.sum()), "n_seed_pairs": int(spread.size), "steps": int(run["steps"])})
        rows.append(row)
    write_csv(table_path, rows)
    backbone = json.loads(str(run["backbone_json"]))
    random_backbone = backbone.get("kind") == "tiny-random"
    largest = max(rows[1:], key=lambda r: r["mse_vs_time0"], default=rows[0])
    write_json(summary_path, {
        "times": [float(t) for t in run["times"]], "steps": int(run["steps"]), "n_samples": int(seeds.size),
        "n_seeds": int(np.unique(seeds).size), "samples": describe_probe(run), "n_samples_gt": int(has_gt.sum()),
        "preset": str(run["preset"]), "device": str(run["device"]), "backbone": backbone,
        "intervals": intervals_note(resamples) + " (the seed-to-seed spread: over input windows)",
        "random_backbone": random_backbone,
        "note": ("the random-weight tiny backbone: this checks the pipeline and is not a finding" if random_backbone
                 else "pretrained backbone"),
        "mse_vs_time0": {f"{r['video_time']:g}": r["mse_vs_time0"] for r in rows},
        "mse_vs_gt": {f"{r['video_time']:g}": r["mse_vs_gt"] for r in rows},
        "seed_spread_time0": spread_0, "largest_effect_time": largest["video_time"],
        "largest_effect_over_seed_spread": largest["mse_vs_time0_over_seed_spread"],
        "backbone_seconds_per_sample": {f"{r['video_time']:g}": r["backbone_seconds"] for r in rows},
        "npz": str(npz_path), "config_digest": str(run["config_digest"])})
