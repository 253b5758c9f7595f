"""Stopping rules for the action sampler, judged from probe.npz and sweep.npz alone (no model runs).

NFE convention (docs/early-stopping-and-depth.md): the probe's step s is the s-th head evaluation. Stopping
after step s costs s evaluations and may return x_s (`trajectory[s]`) or the clean prediction that evaluation
made, x1_hat_s (`clean_prediction[s - 1]`, computed from x_(s-1)); both cost s. Sampling with K Euler steps
(the sweep) costs K.

Rules, each giving per sample (NFE, actions):
  fixed_step_xt     stop after step k, return x_k
  fixed_step_clean  stop after step k, return x1_hat_k
  clean_change      stop after the first step s >= 2 where ||x1_hat_s - x1_hat_(s-1)|| / ||x1_hat_(s-1)|| < eps
                    (the change needs two evaluations), return x1_hat_s; no such step: all K steps, the final action
  fixed_k           MimicVideo.sample with K steps (sweep.npz), at NFE K

Calibration: samples are split by seed (sorted distinct seeds, even positions calibrate, odd ones evaluate), so
both halves hold every window. The target is `target_fraction` x the mean MSE vs final of x_t at `target_step`
on the calibration half; each rule's calibrated parameter is the one with the fewest mean NFE on that half whose
mean MSE vs final is at most the target; it is then judged on the evaluation half.
"""
from __future__ import annotations

import logging

import numpy as np

from mimic_redundancy.analysis.metrics import _same_samples, describe_probe, intervals_note, mse_vs, write_csv
from mimic_redundancy.core.io import SWEEP_ARRAYS, load_npz, load_probe, write_json
from mimic_redundancy.core.stats import RESAMPLES, check_resamples, interval

RULES = ["fixed_step_xt", "fixed_step_clean", "clean_change", "fixed_k"]
CURVE = "clean_change_curve"  # the clean-change rule over every threshold: the threshold-free curve
CURVE_POINTS = 40
log = logging.getLogger(__name__)


def clean_change(clean: np.ndarray) -> np.ndarray:
    """Relative change of the clean prediction [K+1, S] indexed by step s: ||c_s - c_(s-1)|| / ||c_(s-1)||
    with c_s = clean[s - 1]; rows 0 and 1 are NaN (no previous prediction)."""
    c = clean.astype(np.float64).reshape(clean.shape[0], clean.shape[1], -1)
    change = np.linalg.norm(c[1:] - c[:-1], axis=-1) / np.maximum(np.linalg.norm(c[:-1], axis=-1), 1e-12)
    nan = np.full((2, clean.shape[1]), np.nan)
    return np.concatenate([nan, change])


def fixed_step(probe: dict, k: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(NFE [S], actions [S, N, D]) of stopping after step k and returning x_k (kind 'xt') or x1_hat_k ('clean')."""
    samples = probe["trajectory"].shape[1]
    out = probe["trajectory"][k] if kind == "xt" else probe["clean_prediction"][k - 1]
    return np.full(samples, k), out


def clean_change_stop(probe: dict, eps: float, change: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(NFE [S], actions [S, N, D]) of the clean-change rule with threshold eps."""
    clean = probe["clean_prediction"]
    steps = clean.shape[0]
    change = clean_change(clean) if change is None else change
    below = np.nan_to_num(change, nan=np.inf) < eps  # [K+1, S]; rows 0, 1 never stop
    nfe = np.where(below.any(axis=0), below.argmax(axis=0), steps)
    return nfe, clean[nfe - 1, np.arange(clean.shape[1])]


def calibration_split(seeds) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, evaluation) sample indices: the distinct seeds, sorted, alternate between the halves."""
    seeds = np.asarray(seeds)
    distinct = np.unique(seeds)
    calibration = np.flatnonzero(np.isin(seeds, distinct[0::2]))
    evaluation = np.flatnonzero(np.isin(seeds, distinct[1::2]))
    return calibration, evaluation


def judge(nfe: np.ndarray, out: np.ndarray, targets: dict, index: np.ndarray, seeds: np.ndarray,
          final: np.ndarray, resamples: int = RESAMPLES) -> dict:
    """NFE (mean, p50, p90), the MSE vs every target (mean and 95% interval over seeds) and, against every target
    but the final action itself, the paired difference to the full run's MSE (diff_*_minus_full: above 0, stopping
    early is worse on these samples) over the samples `index`."""
    row = {}
    picked = nfe[index].astype(np.float64)
    for name, value in [("nfe_mean", np.mean), ("nfe_p50", lambda v: np.percentile(v, 50)),
                        ("nfe_p90", lambda v: np.percentile(v, 90))]:
        row[name] = float(value(picked)) if picked.size else np.nan
    units = seeds[index]
    for name, target in targets.items():
        error = mse_vs(out[index], target[index])
        stats = {f"mse_{name}": (error, True)}
        if name != "vs_final":
            stats[f"diff_{name}_minus_full"] = (error - mse_vs(final[index], target[index]), False)
        for key, (values, positive) in stats.items():
            mean, low, high = interval(values, units, positive=positive, resamples=resamples) if values.size else \
                (np.nan, np.nan, np.nan)
            row.update({key: mean, f"{key}_ci_low": low, f"{key}_ci_high": high})
    row["n_samples"] = int(index.size)
    row["n_seeds"] = int(np.unique(units).size)
    return row


def candidates(probe: dict, sweep: dict, eps_list: list[float]) -> dict[str, list[tuple[float, np.ndarray, np.ndarray]]]:
    """Per rule, its parameters with (NFE, actions) per sample."""
    steps = probe["clean_prediction"].shape[0]
    change = clean_change(probe["clean_prediction"])
    return {
        "fixed_step_xt": [(k, *fixed_step(probe, k, "xt")) for k in range(1, steps + 1)],
        "fixed_step_clean": [(k, *fixed_step(probe, k, "clean")) for k in range(1, steps + 1)],
        "clean_change": [(eps, *clean_change_stop(probe, eps, change)) for eps in sorted(eps_list, reverse=True)],
        "fixed_k": [(int(k), np.full(probe["trajectory"].shape[1], int(k)), final)
                    for k, final in zip(sweep["steps"], sweep["final"])],
    }


def curve_thresholds(change: np.ndarray, points: int = CURVE_POINTS) -> np.ndarray:
    """Thresholds tracing the clean-change rule from 'stop at step 2' to 'never stop' (geometric spacing)."""
    values = change[np.isfinite(change) & (change > 0)]
    if not values.size:
        return np.array([1.0])
    return np.geomspace(values.min(), values.max() * 1.01, points)[::-1]


def calibrate(options, final: np.ndarray, index: np.ndarray, target: float):
    """The option (param, nfe, out) with the fewest mean NFE on `index` whose mean MSE vs final is <= target."""
    fitting = [o for o in options if mse_vs(o[2][index], final[index]).mean() <= target]
    return min(fitting, key=lambda o: o[1][index].mean()) if fitting else None


def early_stop_tables(probe: dict, sweep: dict, settings: dict) -> tuple[list[dict], dict]:
    """(rows of early_stop.csv, the summary early_stop.json): every rule and parameter on all samples, the
    threshold-free curve, and each rule calibrated on one half and judged on the other."""
    traj = probe["trajectory"]
    steps, seeds = traj.shape[0] - 1, np.asarray(probe["seed"])
    final = traj[-1]
    targets = {"vs_final": final, "vs_reference": sweep["reference"]}
    gt = probe["gt_actions"]
    has_gt = bool(np.isfinite(gt).all(axis=(-2, -1)).any())
    if has_gt:
        targets["vs_gt"] = gt
    everyone = np.arange(traj.shape[1])
    calibration, evaluation = calibration_split(seeds)
    k0 = settings["target_step"]
    target = settings["target_fraction"] * float(mse_vs(traj[k0][calibration], final[calibration]).mean())
    base = {"target_mse": target, "probe_steps": steps}
    resamples = check_resamples(settings["bootstrap"], "metrics.bootstrap")
    no_gt = {f"{key}{end}": np.nan for key in ("mse_vs_gt", "diff_vs_gt_minus_full") for end in ("", "_ci_low", "_ci_high")}

    def row(rule, param, half, nfe, out, index, calibrated=False):
        return {"rule": rule, "param": param, "half": half, **judge(nfe, out, targets, index, seeds, final, resamples),
                **({} if has_gt else no_gt),
                "n_samples_gt": int(np.isfinite(gt[index]).all(axis=(-2, -1)).sum()), **base,
                "calibrated": int(calibrated)}

    options = candidates(probe, sweep, settings["eps"])
    rows = [row(rule, param, "all", nfe, out, everyone) for rule in RULES for param, nfe, out in options[rule]]
    change = clean_change(probe["clean_prediction"])
    rows += [row(CURVE, float(eps), "all", *clean_change_stop(probe, eps, change), everyone)
             for eps in curve_thresholds(change)]
    chosen, halves = {}, [("calibration", calibration), ("evaluation", evaluation)]
    if not evaluation.size:  # one seed: nothing is held out, so no rule is judged (null, not false)
        halves = halves[:1]
        log.warning("early stopping: %d seed(s) %s, so the evaluation half is empty and the calibrated rules are not "
                    "evaluated; add a seed (config key 'seeds') to judge them", np.unique(seeds).size,
                    np.unique(seeds).tolist())
    for rule in RULES:
        pick = calibrate(options[rule], final, calibration, target)
        param, nfe, out = pick if pick else (np.nan, np.full(len(seeds), steps), final)
        for half, index in halves:
            if pick:
                rows.append(row(rule, param, half, nfe, out, index, calibrated=True))
        evaluated = judge(nfe, out, targets, evaluation, seeds, final, resamples) if pick and evaluation.size else {}
        reaches = bool(evaluated["mse_vs_final"] <= target) if evaluated else None  # None: no rule, or not evaluated
        chosen[rule] = {"param": None if not pick else float(param),
                        "nfe_mean_evaluation": evaluated.get("nfe_mean"),
                        "nfe_saved_evaluation": steps - evaluated["nfe_mean"] if evaluated else None,
                        "mse_vs_final_evaluation": evaluated.get("mse_vs_final"),
                        "reaches_target_on_evaluation": reaches,
                        # the paired difference to the full run's error vs the ground truth, on the evaluation half
                        "diff_vs_gt_minus_full_evaluation": evaluated.get("diff_vs_gt_minus_full"),
                        "diff_vs_gt_minus_full_evaluation_ci": [evaluated.get("diff_vs_gt_minus_full_ci_low"),
                                                                evaluated.get("diff_vs_gt_minus_full_ci_high")]}
    summary = {"target_mse": target, "target_step": k0, "target_fraction": settings["target_fraction"],
               "evaluated": bool(evaluation.size),
               "probe_steps": steps, "eps": sorted(settings["eps"], reverse=True),
               "calibration_seeds": sorted({int(s) for s in seeds[calibration]}),
               "evaluation_seeds": sorted({int(s) for s in seeds[evaluation]}),
               "n_calibration": int(calibration.size), "n_evaluation": int(evaluation.size),
               "n_samples": int(seeds.size), "n_seeds": int(np.unique(seeds).size), "samples": describe_probe(probe),
               "n_samples_gt": int(np.isfinite(gt).all(axis=(-2, -1)).sum()), "reference_steps": int(sweep["reference_steps"]),
               "preset": str(probe["preset"]), "calibrated": chosen, "intervals": intervals_note(resamples), "config_digest": str(probe["config_digest"])}
    return rows, summary


def write_early_stop(probe_path, sweep_path, settings: dict, table_path, summary_path) -> None:
    probe, sweep = load_probe(probe_path), load_npz(sweep_path, SWEEP_ARRAYS)
    _same_samples(probe, sweep, probe_path, sweep_path)
    rows, summary = early_stop_tables(probe, sweep, settings)
    write_csv(table_path, rows)
    write_json(summary_path, {**summary, "probe": str(probe_path), "sweep": str(sweep_path)})
