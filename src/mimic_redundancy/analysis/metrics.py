"""Redundancy metrics computed from NPZ files alone.

"Step s" means s Euler steps (s model evaluations) have been taken: the state is
trajectory[s] and the freshest clean-action prediction is clean_prediction[s - 1].
Every mean over samples comes with a 95% interval (columns *_ci_low/high): core.stats' interval over seeds (on each
side the wider of a Student-t interval, on the log scale for errors, and Hesterberg's expanded percentile interval;
never below 0 for an error); where two things are compared on the same samples, the table
also holds their paired difference (columns diff_*) with its interval.
"""
from __future__ import annotations

import csv

import numpy as np

from mimic_redundancy.core.io import atomic_path, describe, load_probe, write_json
from mimic_redundancy.core.stats import METHOD, RESAMPLES, check_resamples, interval, intervals


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


def paired_differences(errors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sample paired differences [K+1, S] of x_t's error minus the clean prediction's (vs the final actions,
    and vs the ground truth where known): above 0, the clean prediction is the closer one on these samples."""
    diffs = {"xt_minus_clean_vs_final": errors["vs_final"] - errors["clean_vs_final"]}
    if "vs_gt" in errors:
        diffs["xt_minus_clean_vs_gt"] = errors["vs_gt"] - errors["clean_vs_gt"]
    return diffs


def summary_rows(errors: dict[str, np.ndarray], steps: list[int], seeds, resamples: int = RESAMPLES) -> list[dict]:
    """One row per step: mean and 95% interval (over seeds) of every error in `errors` and of the paired
    differences, N and the number of seeds (`seeds` [S]: each sample's)."""
    columns = {}
    for prefix, kind, positive in [("mse", errors, True), ("diff", paired_differences(errors), False)]:
        for name, per_sample in kind.items():  # the gt errors: samples with gt only (NaN elsewhere)
            mean, low, high = intervals(per_sample[steps], seeds, positive=positive, resamples=resamples)
            columns.update({f"{prefix}_{name}": mean, f"{prefix}_{name}_ci_low": low,
                            f"{prefix}_{name}_ci_high": high})
    rows = []
    for i, s in enumerate(steps):
        row = {"step": s, **{key: float(values[i]) for key, values in columns.items()}}
        row["n_samples"] = int(next(iter(errors.values())).shape[1])
        row["n_seeds"] = int(np.unique(seeds).size)
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
    errors, resamples = step_errors(probe), check_resamples(settings["bootstrap"], "metrics.bootstrap")
    rows = summary_rows(errors, sorted(settings["probe_steps"]), probe["seed"], resamples)
    write_csv(out["table"], rows)
    write_csv(out["early_exit"], summary_rows(errors, list(range(1, steps + 1)), probe["seed"], resamples))
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
        "n_seeds": int(np.unique(probe["seed"]).size),
        "intervals": intervals_note(resamples),
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


def intervals_note(resamples: int) -> str:
    return f"95% {METHOD}, {resamples} resamples"


def describe_probe(run: dict) -> str:
    return describe(str(run["source"]), run["seed"], run["window"], run["episode"], run["prompt"])


def _same_samples(a: dict, b: dict, a_path, b_path) -> None:
    if any(a[k].tolist() != b[k].tolist() for k in ("seed", "prompt", "window", "episode", "start")):
        raise ValueError(f"{a_path} and {b_path} hold different samples (seeds/windows): rerun both with one config")


def write_sweep_metrics(sweep_path, probe_path, table_path, resamples: int = RESAMPLES) -> None:
    """sweep.csv: per K, the error vs the main run (the probe's final actions) and vs the fine reference, with 95%
    intervals over seeds; the paired difference of K's error vs the reference minus the main run's (above 0: K
    steps are further from the ODE's solution than probe.steps are, on the same samples); and the wall time of
    sampling all samples with K steps."""
    from mimic_redundancy.core.io import SWEEP_ARRAYS, load_npz

    resamples = check_resamples(resamples, "metrics.bootstrap")
    sweep, probe = load_npz(sweep_path, SWEEP_ARRAYS), load_probe(probe_path)
    _same_samples(sweep, probe, sweep_path, probe_path)
    main, seeds = probe["trajectory"][-1], probe["seed"]
    main_vs_reference = mse_vs(main, sweep["reference"])
    columns = {}
    for name, target in [("vs_main", main), ("vs_reference", sweep["reference"])]:
        columns[f"mse_{name}"] = intervals(mse_vs(sweep["final"], target), seeds, positive=True, resamples=resamples)
    columns["diff_vs_reference_minus_main"] = intervals(mse_vs(sweep["final"], sweep["reference"]) - main_vs_reference,
                                                        seeds, positive=False, resamples=resamples)
    rows = []
    for j, (k, seconds) in enumerate(zip(sweep["steps"], sweep["wall_seconds"])):
        row = {"steps": int(k), "nfe": int(k)}
        for key, (mean, low, high) in columns.items():
            row.update({key: float(mean[j]), f"{key}_ci_low": float(low[j]), f"{key}_ci_high": float(high[j])})
        row.update({"wall_seconds": float(seconds), "samples_per_second": probe["seed"].size / float(seconds),
                    "main_steps": probe["trajectory"].shape[0] - 1, "reference_steps": int(sweep["reference_steps"]),
                    "timing_repeats": int(sweep["repeats"]), "n_samples": int(probe["seed"].size),
                    "n_seeds": int(np.unique(seeds).size)})
        rows.append(row)
    write_csv(table_path, rows)


def seed_spread(final: np.ndarray, seeds: np.ndarray, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MSE between the final actions of every two samples with the same input window and different seeds, the
    window of each pair: the pairs of one window share its input and their seeds, so the window is their unit)."""
    pairs = [(i, j) for i in range(len(seeds)) for j in range(i + 1, len(seeds))
             if windows[i] == windows[j] and seeds[i] != seeds[j]]
    return (np.array([((final[i].astype(np.float64) - final[j]) ** 2).mean() for i, j in pairs]),
            np.array([windows[i] for i, _ in pairs]))


def write_backbone_metrics(backbone_path, table_path, summary_path, resamples: int = RESAMPLES) -> None:
    """backbone.csv: per action step, how far the recomputed video hiddens are from the cached ones
    (relative difference, cosine) and from the previous step's; backbone.json: final-action
    difference between the modes vs the seed-to-seed spread, and the time of each mode."""
    from mimic_redundancy.core.io import BACKBONE_ARRAYS, load_npz

    resamples = check_resamples(resamples, "metrics.bootstrap")
    run = load_npz(backbone_path, BACKBONE_ARRAYS)
    steps, seeds = int(run["steps"]), run["seed"]
    previous = np.concatenate([np.full((1, seeds.size), np.nan), run["hidden_step_rel_diff"]])  # none at step 1
    columns = {name: intervals(values, seeds, positive=positive, resamples=resamples)
               for name, values, positive in [("rel_diff_vs_cached", run["hidden_rel_diff"], True),
                                              ("cosine_vs_cached", run["hidden_cosine"], False),
                                              ("rel_diff_vs_previous", previous, True)]}
    rows = []
    for k in range(steps):
        row = {"step": k + 1}
        for name, (mean, low, high) in columns.items():
            row.update({name: float(mean[k]), f"{name}_ci_low": float(low[k]), f"{name}_ci_high": float(high[k])})
        row["n_samples"] = int(run["seed"].size)
        row["n_seeds"] = int(np.unique(seeds).size)
        row["of_samples"] = int(run["total_samples"])  # the run's; backbone.samples may take the first few
        rows.append(row)
    write_csv(table_path, rows)
    modes = mse_vs(run["final_recompute"], run["final_cached"])
    spread, spread_windows = seed_spread(run["final_cached"], run["seed"], run["window"])
    subset = int(run["seed"].size) < int(run["total_samples"])
    summary = {"steps": steps, "n_samples": int(run["seed"].size), "of_samples": int(run["total_samples"]),
               "samples": (f"the first {run['seed'].size} of {int(run['total_samples'])} samples "
                           "(backbone.samples): " if subset else "") + describe_probe(run),
               "preset": str(run["preset"]),
               "device": str(run["device"]), "fixed_video_noise": bool(run["fixed_video_noise"]),
               "seconds_cached": float(run["seconds_cached"].sum()),
               "seconds_recompute": float(run["seconds_recompute"].sum()),
               "recompute_over_cached_time": float(run["seconds_recompute"].sum() / run["seconds_cached"].sum())}
    for name, values, units in [("final_mse_between_modes", modes, seeds), ("final_mse_seed_to_seed", spread,
                                                                            spread_windows)]:
        mean, low, high = interval(values, units, positive=True, resamples=resamples) if values.size else \
            (np.nan, np.nan, np.nan)
        summary.update({name: mean, f"{name}_ci": [low, high], f"{name}_n": int(values.size)})
    summary["intervals"] = intervals_note(resamples) + " (the seed-to-seed spread: over input windows)"
    summary["modes_over_seed_spread"] = summary["final_mse_between_modes"] / summary["final_mse_seed_to_seed"] \
        if spread.size else None
    write_json(summary_path, summary)


def paired_to_first(probe: dict, first: dict, steps: list[int], resamples: int) -> dict[str, np.ndarray]:
    """Per probe step, the paired difference of a preset's errors minus the first preset's on the same samples
    (x_t vs its own final action; vs the ground truth where both have it), with 95% intervals over seeds: columns
    like metrics.csv's (step, diff_vs_final, diff_vs_final_ci_low, ...)."""
    ours, theirs = step_errors(probe), step_errors(first)
    out = {"step": np.asarray(steps)}
    for name in [n for n in ("vs_final", "vs_gt") if n in ours and n in theirs]:
        mean, low, high = intervals(ours[name][steps] - theirs[name][steps], probe["seed"], positive=False,
                                    resamples=resamples)
        out.update({f"diff_{name}": mean, f"diff_{name}_ci_low": low, f"diff_{name}_ci_high": high})
    return out


def write_comparison(presets: list[str], files: dict, table_path, resamples: int = RESAMPLES) -> dict:
    """comparison.csv: one row per preset (same samples in every one): convergence steps, the error
    vs ground truth, the K-step sweep, the backbone-recompute effect, the calibrated early-stopping rules and
    the video-depth effect; for every preset after the first, the paired difference of its final actions' error vs
    the ground truth minus the first preset's, with its 95% interval. `files`: preset -> paths of its probe,
    convergence (thresholds), summary, sweep, backbone_summary, early_stop (+ _summary) and depth (+ _summary).
    Returns the loaded runs (with "paired": paired_to_first's columns, for every preset after the first)."""
    from mimic_redundancy.core.io import read_json

    resamples = check_resamples(resamples, "metrics.bootstrap")
    runs, rows = {}, []
    first = presets[0]
    first_probe = load_probe(files[first]["probe"])
    for preset in presets:
        paths = files[preset]
        probe = load_probe(paths["probe"])
        if preset != first:
            _same_samples(first_probe, probe, files[first]["probe"], paths["probe"])
        metrics, summary, sweep = read_csv(paths["metrics"]), read_json(paths["summary"]), read_csv(paths["sweep"])
        thresholds, backbone = read_csv(paths["thresholds"]), read_json(paths["backbone_summary"])
        row = {"preset": preset, "n_samples": summary["n_samples"], "samples": summary["samples"],
               "n_samples_gt": summary["n_samples_gt"]}
        for t, step_xt, step_clean in zip(thresholds["threshold"], thresholds["step_xt"], thresholds["step_clean"]):
            row[f"convergence_step_{t:g}"] = step_xt
            row[f"convergence_step_clean_{t:g}"] = step_clean
        row["mse_vs_final_first_step"] = summary["reference_mse"]
        row["final_mse_vs_gt"] = summary["final_mse_vs_gt"]
        paired = None if preset == first else \
            paired_to_first(probe, first_probe, [int(s) for s in metrics["step"]], resamples)
        errors, theirs = step_errors(probe), step_errors(first_probe)
        if "vs_gt" in errors and "vs_gt" in theirs:  # the final actions (the last step), paired on the samples
            # (the first preset's row: its difference to itself, exactly 0)
            mean, low, high = interval(errors["vs_gt"][-1] - theirs["vs_gt"][-1], probe["seed"], positive=False,
                                       resamples=resamples)
            row.update({f"final_mse_vs_gt_minus_{first}": mean, f"final_mse_vs_gt_minus_{first}_ci_low": low,
                        f"final_mse_vs_gt_minus_{first}_ci_high": high})
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
                        "paired": paired,
                        "early_stop": read_csv(paths["early_stop"], text_columns=("rule", "half")),
                        "depth": read_csv(paths["depth"]), "depth_summary": depth}
    write_csv(table_path, rows)
    return runs
