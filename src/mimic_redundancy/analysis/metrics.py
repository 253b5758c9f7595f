"""Redundancy metrics computed from NPZ files alone.

"Step s" means s Euler steps (s model evaluations) have been taken: the state is
trajectory[s] and the freshest clean-action prediction is clean_prediction[s - 1].
Every mean over samples comes with a 95% Student-t confidence interval (columns *_ci_low/high).
"""
from __future__ import annotations

import csv

import numpy as np

from mimic_redundancy.core.io import atomic_path, describe, load_probe, write_json
from mimic_redundancy.core.stats import mean_ci


def mse_vs(arrays: np.ndarray, final: np.ndarray, axis=(-2, -1)) -> np.ndarray:
    """Per-sample MSE over (chunk, action dim): [..., S, N, D] vs [S, N, D] -> [..., S]. One leading entry (step)
    at a time, so the float64 temporaries stay one [S, N, D] block however many steps a large run has."""
    if arrays.ndim > final.ndim:
        return np.stack([mse_vs(a, final, axis) for a in arrays])
    return ((arrays.astype(np.float64) - final) ** 2).mean(axis=axis)


def step_errors(probe: dict) -> dict[str, np.ndarray]:
    """Per-sample errors [K+1, S] indexed by step s (row 0 of the clean ones is undefined: NaN).

    vs_final: x_t after s steps vs the final actions (the seed session's curve);
    clean_vs_final: the clean prediction available after s steps vs the final actions (early exit);
    xt_vs_clean: the two against each other;
    vs_gt, clean_vs_gt (only where some sample has ground-truth actions): x_t and the clean prediction
    vs the ground truth, NaN for samples without it.
    """
    traj, clean = probe["trajectory"], probe["clean_prediction"]
    final = traj[-1]
    nan_row = np.full((1, traj.shape[1]), np.nan)
    errors = {
        "vs_final": mse_vs(traj, final),
        "clean_vs_final": np.concatenate([nan_row, mse_vs(clean, final)]),
        "xt_vs_clean": np.concatenate([nan_row, np.stack([mse_vs(x, c) for x, c in zip(traj[1:], clean)])]),
    }
    gt = probe.get("gt_actions")
    if gt is not None and np.isfinite(gt).all(axis=(-2, -1)).any():
        errors["vs_gt"] = mse_vs(traj, gt)
        errors["clean_vs_gt"] = np.concatenate([nan_row, mse_vs(clean, gt)])
    return errors


def gt_samples(probe: dict) -> int:
    """How many samples have ground-truth actions."""
    gt = probe.get("gt_actions")
    return 0 if gt is None else int(np.isfinite(gt).all(axis=(-2, -1)).sum())


def convergence_step(steps: list[int], mse: list[float], threshold: float) -> int | None:
    """First step whose MSE is at most (1 - threshold) x the MSE at the first step; None if none is."""
    target = (1.0 - threshold) * mse[0]
    return next((s for s, m in zip(steps, mse) if m <= target), None)


def summary_rows(errors: dict[str, np.ndarray], steps: list[int]) -> list[dict]:
    """One row per step: mean and 95% CI of every error in `errors`, and N."""
    rows = []
    for s in steps:
        row = {"step": s}
        for name, per_sample in errors.items():
            values = per_sample[s]
            mean, low, high = mean_ci(values[np.isfinite(values)])  # the gt errors: samples with gt only
            row.update({f"mse_{name}": float(mean), f"mse_{name}_ci_low": float(low),
                        f"mse_{name}_ci_high": float(high)})
        row["n_samples"] = int(next(iter(errors.values())).shape[1])
        if "vs_gt" in errors:
            row["n_samples_gt"] = int(np.isfinite(errors["vs_gt"][s]).sum())
        rows.append(row)
    return rows


PART_AXES = {"dimension": 3, "position": 2}  # action dimension D, chunk position N of [P, S, N, D]


def part_errors(probe: dict, probe_steps: list[int]) -> dict[str, np.ndarray]:
    """MSE vs the final actions per action dimension and per chunk position, at each probe step: name -> [P, parts]
    (mean over samples and the other axis)."""
    traj = probe["trajectory"]
    final = traj[-1].astype(np.float64)
    rows = {name: [] for name in PART_AXES}
    for step in sorted(probe_steps):  # one [S, N, D] block at a time (a large run's trajectory stays float32)
        sq = (traj[step].astype(np.float64) - final) ** 2
        for name, axis in PART_AXES.items():
            rows[name].append(sq.mean(axis=tuple(a for a in (0, 1, 2) if a != axis - 1)))  # keep N or D
    return {name: np.stack(values) for name, values in rows.items()}


def part_rows(probe: dict, probe_steps: list[int]) -> list[dict]:
    """mse_by_part.csv: one row per (axis, part, probe step), the MSE and its fraction of the first probe step's."""
    steps, rows = sorted(probe_steps), []
    for name, per_part in part_errors(probe, steps).items():
        first = np.where(per_part[:1] > 0, per_part[:1], 1.0)
        for index in range(per_part.shape[1]):
            rows += [{"axis": name, "index": index, "step": s, "mse_vs_final": float(per_part[p, index]),
                      "relative_to_first_step": float(per_part[p, index] / first[0, index])}
                     for p, s in enumerate(steps)]
    return rows


def part_convergence(probe: dict, probe_steps: list[int], threshold: float) -> list[dict]:
    """Convergence step of each action dimension and each chunk position (which parts converge last)."""
    steps, rows = sorted(probe_steps), []
    for name, per_part in part_errors(probe, steps).items():
        for index in range(per_part.shape[1]):
            curve = per_part[:, index].tolist()
            rows.append({"axis": name, "index": index, "convergence_step": convergence_step(steps, curve, threshold),
                         "mse_at_first_step": curve[0]})
    return rows


def write_csv(path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def read_csv(path, text_columns: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Columns of a CSV written by write_csv, as float arrays (empty cells -> NaN; `text_columns` as str);
    errors name the file, what is wrong, and the command that rebuilds it."""
    from mimic_redundancy.core.io import input_error

    try:
        with open(path, newline="") as f:
            text = f.read()
        reader = csv.DictReader(text.splitlines())
        rows = list(reader)
        header = reader.fieldnames or []
    except FileNotFoundError:
        raise input_error(path, "no such file") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise input_error(path, f"not a readable CSV ({error})") from None
    if not rows:
        raise input_error(path, "the table has no rows" if header else "the file is empty")
    if not text.endswith("\n"):  # write_csv ends every line; a last row cut mid-number still parses
        raise input_error(path, "the last line has no line end: the file was cut short")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if None in row or None in row.values():
            raise input_error(path, f"line {line} does not have the header's {len(header)} cells; "
                                    "the file is damaged or was cut short")
    try:
        return {c: np.array([r[c] for r in rows]) if c in text_columns else
                np.array([float(r[c]) if r[c] not in ("", "None") else np.nan for r in rows]) for c in header}
    except ValueError as error:
        raise input_error(path, f"a cell is not a number ({error})") from None


def write_metrics(npz_path, settings: dict, out: dict) -> None:
    """metrics.csv (probe steps), early_exit.csv (every step), convergence.csv (per threshold),
    convergence_by_part.csv, mse_by_part.csv (the heatmaps' values) and convergence.json (the headline, at the
    first threshold)."""
    probe = load_probe(npz_path)
    steps = probe["trajectory"].shape[0] - 1
    too_large = [s for s in settings["probe_steps"] if s > steps]
    if too_large:
        raise ValueError(f"{npz_path} holds {steps} steps; metrics.probe_steps {too_large} exceed it")
    errors = step_errors(probe)
    rows = summary_rows(errors, sorted(settings["probe_steps"]))
    write_csv(out["table"], rows)
    write_csv(out["early_exit"], summary_rows(errors, list(range(1, steps + 1))))
    thresholds = settings["convergence_thresholds"]
    table = [{"threshold": t,
              "step_xt": convergence_step([r["step"] for r in rows], [r["mse_vs_final"] for r in rows], t),
              "step_clean": convergence_step([r["step"] for r in rows], [r["mse_clean_vs_final"] for r in rows], t)}
             for t in thresholds]
    write_csv(out["thresholds"], table)
    write_csv(out["parts"], part_convergence(probe, settings["probe_steps"], thresholds[0]))
    write_csv(out["part_errors"], part_rows(probe, settings["probe_steps"]))
    headline = thresholds[0]
    write_json(out["summary"], {
        "convergence_threshold": headline,
        "convergence_step": table[0]["step_xt"],
        "reference_step": rows[0]["step"],
        "reference_mse": rows[0]["mse_vs_final"],
        "target_mse": (1.0 - headline) * rows[0]["mse_vs_final"],
        "steps": steps,
        "n_samples": int(probe["seed"].size),
        "samples": describe_probe(probe),
        "source": str(probe["source"]),
        "n_samples_gt": gt_samples(probe),
        "final_mse_vs_gt": rows[-1].get("mse_vs_gt") if rows[-1]["step"] == steps else None,
        "seeds": sorted({int(s) for s in probe["seed"]}),
        "prompts": sorted({str(p) for p in probe["prompt"]}),
        "preset": str(probe["preset"]),
        "device": str(probe["device"]),
        "npz": str(npz_path),
        "config_digest": str(probe["config_digest"]),
    })


def describe_probe(run: dict) -> str:
    return describe(str(run["source"]), run["seed"], run["window"], run["episode"], run["prompt"])


def _same_samples(a: dict, b: dict, a_path, b_path) -> None:
    if any(a[k].tolist() != b[k].tolist() for k in ("seed", "prompt", "window", "episode", "start")):
        raise ValueError(f"{a_path} and {b_path} hold different samples (seeds/windows): rerun both with one config")


def write_sweep_metrics(sweep_path, probe_path, table_path) -> None:
    """sweep.csv: per K, the error vs the main run (the probe's final actions) and vs the fine
    reference, with 95% CIs, and the wall time of sampling all samples with K steps."""
    from mimic_redundancy.core.io import SWEEP_ARRAYS, load_npz

    sweep, probe = load_npz(sweep_path, SWEEP_ARRAYS), load_probe(probe_path)
    _same_samples(sweep, probe, sweep_path, probe_path)
    main = probe["trajectory"][-1]
    rows = []
    for k, final, seconds in zip(sweep["steps"], sweep["final"], sweep["wall_seconds"]):
        row = {"steps": int(k), "nfe": int(k)}
        for name, target in [("vs_main", main), ("vs_reference", sweep["reference"])]:
            mean, low, high = mean_ci(mse_vs(final, target))
            row.update({f"mse_{name}": float(mean), f"mse_{name}_ci_low": float(low), f"mse_{name}_ci_high": float(high)})
        row.update({"wall_seconds": float(seconds), "samples_per_second": probe["seed"].size / float(seconds),
                    "main_steps": probe["trajectory"].shape[0] - 1, "reference_steps": int(sweep["reference_steps"]),
                    "timing_repeats": int(sweep["repeats"]), "n_samples": int(probe["seed"].size)})
        rows.append(row)
    write_csv(table_path, rows)


def seed_spread(final: np.ndarray, seeds: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """MSE between the final actions of every two samples with the same input window and different seeds."""
    pairs = [(i, j) for i in range(len(seeds)) for j in range(i + 1, len(seeds))
             if windows[i] == windows[j] and seeds[i] != seeds[j]]
    return np.array([((final[i].astype(np.float64) - final[j]) ** 2).mean() for i, j in pairs])


def write_backbone_metrics(backbone_path, table_path, summary_path) -> None:
    """backbone.csv: per action step, how far the recomputed video hiddens are from the cached ones
    (relative difference, cosine) and from the previous step's; backbone.json: final-action
    difference between the modes vs the seed-to-seed spread, and the time of each mode."""
    from mimic_redundancy.core.io import BACKBONE_ARRAYS, load_npz

    run = load_npz(backbone_path, BACKBONE_ARRAYS)
    steps = int(run["steps"])
    rows = []
    for k in range(steps):
        row = {"step": k + 1}
        for name, values in [("rel_diff_vs_cached", run["hidden_rel_diff"][k]),
                             ("cosine_vs_cached", run["hidden_cosine"][k]),
                             ("rel_diff_vs_previous", run["hidden_step_rel_diff"][k - 1] if k else None)]:
            mean, low, high = mean_ci(values) if values is not None else (np.nan, np.nan, np.nan)
            row.update({name: float(mean), f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)})
        row["n_samples"] = int(run["seed"].size)
        row["of_samples"] = int(run["total_samples"])  # the run's; backbone.samples may take the first few
        rows.append(row)
    write_csv(table_path, rows)
    modes = mse_vs(run["final_recompute"], run["final_cached"])
    spread = seed_spread(run["final_cached"], run["seed"], run["window"])
    subset = int(run["seed"].size) < int(run["total_samples"])
    summary = {"steps": steps, "n_samples": int(run["seed"].size), "of_samples": int(run["total_samples"]),
               "samples": (f"the first {run['seed'].size} of {int(run['total_samples'])} samples "
                           "(backbone.samples): " if subset else "") + describe_probe(run),
               "preset": str(run["preset"]),
               "device": str(run["device"]), "fixed_video_noise": bool(run["fixed_video_noise"]),
               "seconds_cached": float(run["seconds_cached"].sum()),
               "seconds_recompute": float(run["seconds_recompute"].sum()),
               "recompute_over_cached_time": float(run["seconds_recompute"].sum() / run["seconds_cached"].sum())}
    for name, values in [("final_mse_between_modes", modes), ("final_mse_seed_to_seed", spread)]:
        mean, low, high = mean_ci(values) if values.size else (np.nan, np.nan, np.nan)
        summary.update({name: float(mean), f"{name}_ci": [float(low), float(high)], f"{name}_n": int(values.size)})
    summary["modes_over_seed_spread"] = summary["final_mse_between_modes"] / summary["final_mse_seed_to_seed"] \
        if spread.size else None
    write_json(summary_path, summary)


def write_comparison(presets: list[str], files: dict, table_path) -> dict:
    """comparison.csv: one row per preset (same samples in every one): convergence steps, the error
    vs ground truth, the K-step sweep, the backbone-recompute effect, the calibrated early-stopping rules and
    the video-depth effect. `files`: preset -> paths of its probe, convergence (thresholds), summary, sweep,
    backbone_summary, early_stop (+ _summary) and depth (+ _summary). Returns the loaded runs."""
    from mimic_redundancy.core.io import read_json

    runs, rows = {}, []
    first = presets[0]
    for preset in presets:
        paths = files[preset]
        probe = load_probe(paths["probe"])
        if preset != first:
            _same_samples(load_probe(files[first]["probe"]), probe, files[first]["probe"], paths["probe"])
        metrics, summary, sweep = read_csv(paths["metrics"]), read_json(paths["summary"]), read_csv(paths["sweep"])
        thresholds, backbone = read_csv(paths["thresholds"]), read_json(paths["backbone_summary"])
        row = {"preset": preset, "n_samples": summary["n_samples"], "samples": summary["samples"],
               "n_samples_gt": summary["n_samples_gt"]}
        for t, step_xt, step_clean in zip(thresholds["threshold"], thresholds["step_xt"], thresholds["step_clean"]):
            row[f"convergence_step_{t:g}"] = step_xt
            row[f"convergence_step_clean_{t:g}"] = step_clean
        row["mse_vs_final_first_step"] = summary["reference_mse"]
        row["final_mse_vs_gt"] = summary["final_mse_vs_gt"]
        for k, mse in zip(sweep["nfe"].astype(int), sweep["mse_vs_reference"]):
            row[f"mse_k{k}_vs_reference"] = float(mse)
        row["final_mse_between_backbone_modes"] = backbone["final_mse_between_modes"]
        row["final_mse_seed_to_seed"] = backbone["final_mse_seed_to_seed"]
        early, depth = read_json(paths["early_stop_summary"]), read_json(paths["depth_summary"])
        row["early_stop_target_mse"] = early["target_mse"]
        for rule, chosen in early["calibrated"].items():  # calibrated on one half of the seeds, judged on the other
            row[f"early_stop_{rule}_param"] = chosen["param"]
            row[f"early_stop_{rule}_nfe_saved"] = chosen["nfe_saved_evaluation"]
            row[f"early_stop_{rule}_mse_vs_final"] = chosen["mse_vs_final_evaluation"]
        for time, mse in depth["mse_vs_time0"].items():
            row[f"depth_mse_vs_time0_t{time}"] = mse
        row["depth_largest_effect_over_seed_spread"] = depth["largest_effect_over_seed_spread"]
        row["depth_random_backbone"] = depth["random_backbone"]
        rows.append(row)
        runs[preset] = {"metrics": metrics, "summary": summary, "sweep": sweep, "early_stop_summary": early,
                        "early_stop": read_csv(paths["early_stop"], text_columns=("rule", "half")),
                        "depth": read_csv(paths["depth"]), "depth_summary": depth}
    write_csv(table_path, rows)
    return runs
