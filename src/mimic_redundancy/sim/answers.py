"""The closed loop's answers, from rollout.npz (policies x rules x episodes), the nearest-demo baseline on the same
episodes, and early_stop.csv for the open-loop side (docs/closed-loop.md#the-decision).

Per task and rule: the success rate per policy and pooled with its 95% interval; the paired difference to the
reference K on the same (policy, episode) pairs with its 95% interval; the pre-specified non-inferiority test
(H0: difference <= -margin, one-sided `alpha`, Holm over the task's candidate rules, the reference never one); a
two-sided test of any difference (for the words "better" and "worse"); the power the run had and the pairs an
80%-powered run would need. Every interval and test is the more cautious of Tango's score method on the pooled pairs
and a crossed bootstrap over policies and episodes (core/paired.py). Across tasks and policies: rliable's IQM and
probability of improvement over the reference. Per rule and policy: an eval_info.json shaped like lerobot-eval's.

Words follow the adjusted tests: "shown non-inferior" / "not shown", "shown better" / "shown worse" / "no difference
shown"; nothing is called safe, better or worse otherwise.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np

from mimic_redundancy.core import paired
from mimic_redundancy.core.io import write_json

NEAREST = "nearest demo (replay)"  # the baseline's row: the nearest demonstration's actions, open loop
IQM_RESAMPLES = 2000


def _open_loop(early_stop_csv) -> dict[tuple[str, float], dict]:
    """(rule kind, param) -> the all-samples row of early_stop.csv (the rule's MSE on the demo windows)."""
    with open(early_stop_csv, newline="") as f:
        return {(row["rule"], float(row["param"])): row for row in csv.DictReader(f) if row["half"] == "all"}


def _finite(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _interval(exact: tuple[float, float], resampled: np.ndarray) -> tuple[float, float]:
    """On each side the wider of an exact/score interval and the crossed bootstrap's percentile interval."""
    low, high = paired.percentile_interval(resampled)
    return min(exact[0], low), max(exact[1], high)


def compare(rule: np.ndarray, reference: np.ndarray, draws, margin: float) -> dict:
    """A rule against the reference on the same pairs: rule, reference (P, S) bool (the baseline: (1, S), broadcast).
    The difference, its 95% interval, the non-inferiority p and the two-sided p (each the larger of Tango's/McNemar's
    and the bootstrap's), the discordant pairs."""
    rule, reference = np.broadcast_arrays(rule, reference)
    b, c, n = paired.discordant(rule, reference)
    difference = rule.astype(np.float64) - reference
    resampled = paired.crossed_means(difference, draws)
    tango_p = paired.tango_noninferiority_p(b, c, n, margin)
    boot_p = paired.bootstrap_noninferiority_p(resampled, margin)
    midp, boot_two = paired.mcnemar_midp(b, c), paired.bootstrap_two_sided_p(resampled)
    low, high = _interval(paired.tango_interval(b, c, n), resampled)
    return {"diff_vs_reference": (b - c) / n, "diff_ci_low": low, "diff_ci_high": high,
            "better_than_reference": b, "worse_than_reference": c, "discordance": (b + c) / n,
            "ni_p_tango": tango_p, "ni_p_bootstrap": boot_p, "ni_p": max(tango_p, boot_p),
            "mcnemar_midp": midp, "diff_p_bootstrap": boot_two, "diff_p": max(midp, boot_two)}


def _success(success: np.ndarray, draws) -> dict:
    """Success (P, S) bool: pooled rate, its 95% interval, per-policy rates and their spread."""
    k, n = int(success.sum()), success.size
    low, high = _interval(paired.clopper_pearson(k, n), paired.crossed_means(success.astype(np.float64), draws))
    per_policy = success.mean(axis=1)
    return {"successes": k, "success_rate": k / n, "ci_low": low, "ci_high": high,
            "success_rate_sd_policies": float(per_policy.std(ddof=1)) if per_policy.size > 1 else math.nan}


def _verdicts(rows: list[dict], alpha: float) -> None:
    """Holm over the task's candidate rules (the reference and the baseline excluded), and the words they allow."""
    candidates = [r for r in rows if r["role"] == "candidate"]
    for key in ("ni_p", "diff_p"):
        for row, adjusted in zip(candidates, paired.holm([r[key] for r in candidates])):
            row[f"{key}_holm"] = float(adjusted)
    for row in rows:
        if row["role"] == "reference":  # compared with itself: no test
            row.update({key: math.nan for key in ("diff_ci_low", "diff_ci_high", "ni_p_tango", "ni_p_bootstrap", "ni_p",
                                                  "mcnemar_midp", "diff_p_bootstrap", "diff_p")})
        if row["role"] != "candidate":
            row.update(ni_p_holm=math.nan, diff_p_holm=math.nan, shown_non_inferior=False,
                       verdict=row["role"] if row["role"] == "reference" else "baseline (not a candidate)")
            continue
        row["shown_non_inferior"] = bool(row["ni_p_holm"] <= alpha)
        difference = ("shown better" if row["diff_vs_reference"] > 0 else "shown worse") \
            if row["diff_p_holm"] <= 2 * alpha else "no difference shown"
        row["verdict"] = f"{'shown non-inferior' if row['shown_non_inferior'] else 'not shown non-inferior'}; {difference}"


def procedure_power(policies: int, episodes: int, discordance: float, margin: float, alpha: float,
                    sims: int = 400, resamples: int = 1000, seed: int = 0) -> float:
    """The power of this module's own non-inferiority test (the larger p of Tango's and the crossed bootstrap's,
    compare) at level `alpha`, simulated: P x S pairs that disagree with probability `discordance`, half each way
    (a true difference of 0), alike across policies and layouts (the favourable case: spread between policies only
    lowers it). Both parts of the test read the pairs' differences alone, so the differences are what is drawn."""
    rng = np.random.default_rng(seed)
    draws = paired.crossed_indices(policies, episodes, resamples, seed=seed)
    hits = 0
    for _ in range(sims):
        u = rng.random((policies, episodes))
        difference = np.where(u < discordance / 2, 1.0, np.where(u < discordance, -1.0, 0.0))
        b, c = int((difference > 0).sum()), int((difference < 0).sum())
        p_value = max(paired.tango_noninferiority_p(b, c, difference.size, margin),
                      paired.bootstrap_noninferiority_p(paired.crossed_means(difference, draws), margin))
        hits += p_value <= alpha
    return hits / sims


def episodes_needed(policies: int, discordance: float, margin: float, alpha: float, power: float = 0.8,
                    limit: int = 20_000, sims: int = 400) -> int | None:
    """Episodes per policy (the same for every policy) at which procedure_power reaches `power`: the smallest by
    bisection from Tango's exact size (core/paired.pairs_needed / policies), which the bootstrap part can only raise.
    None above `limit`."""
    start = paired.pairs_needed(discordance, margin, alpha, power)
    if start is None:
        return None
    low, high = max(1, start // policies // 2), max(2, -(-start // policies))
    while procedure_power(policies, high, discordance, margin, alpha, sims) < power:
        low, high = high, high * 2
        if high > limit:
            return None
    while high - low > max(1, high // 50):  # to 2%: the simulated power is itself +-2 points
        middle = (low + high) // 2
        low, high = (middle, high) if procedure_power(policies, middle, discordance, margin, alpha, sims) < power \
            else (low, middle)
    return high


def decide_rules(success: np.ndarray, ref: int, margin: float, alpha: float, draws) -> list[dict]:
    """The pre-specified decision on one task: success (P, R, S) bool, `ref` the reference rule's index; per rule its
    comparison with the reference (compare) and, Holm-adjusted over the other rules, its verdict (_verdicts). The
    reference is never a candidate."""
    rows = [{"role": "reference" if r == ref else "candidate", **compare(success[:, r], success[:, ref], draws, margin)}
            for r in range(success.shape[1])]
    _verdicts(rows, alpha)
    return rows


def rollout_tables(run: dict, open_loop: dict, settings: dict, nearest: dict | None = None) -> tuple[list[dict], dict]:
    """(rows of rollout.csv, rollout.json) from a rollout (io.load_rollout: arrays [P, R, S]) and the nearest-demo
    baseline on the same episodes (io.NEAREST_ARRAYS, or None)."""
    margin, alpha = settings["margin"], settings["alpha"]
    resamples = settings.get("bootstrap", 4000)
    kinds, params, names = run["rule_kind"], run["rule_param"], [str(r) for r in run["rule"]]
    reference_k = settings.get("reference") or max(int(params[r]) for r in range(len(kinds)) if kinds[r] == "fixed_k")
    ref = next((r for r in range(len(kinds)) if kinds[r] == "fixed_k" and int(params[r]) == reference_k), None)
    if ref is None:
        raise ValueError(f"config key 'rollout.reference': K={reference_k} is not among the rolled-out rules "
                         f"{names}; allowed: one of rollout.steps")
    policies = [int(p) for p in run["policy"]]
    episode_set = str(run["episode_set"])
    cost = {str(c): i for i, c in enumerate(run["costs"])}  # cost name -> its column of seconds
    rows, decisions, per_task_rates = [], {}, {}
    tasks = list(dict.fromkeys(run["task"].tolist()))
    for t, task in enumerate(tasks):
        mine = np.flatnonzero(run["task"] == task)
        n = mine.size
        success = run["success"][:, :, mine]  # (P, R, S)
        reference = success[:, ref]
        draws = paired.crossed_indices(len(policies), n, resamples, seed=t)
        m = len(names) - 1  # candidates: every rule but the reference
        task_rows = []
        for r, name in enumerate(names):
            nfe = run["nfe"][:, r][:, mine]
            row = {"task": task, "set": episode_set, "rule": name, "kind": str(kinds[r]), "param": float(params[r]),
                   "role": "reference" if r == ref else "candidate", "policies": len(policies), "episodes": n,
                   "pairs": len(policies) * n, **_success(success[:, r], draws),
                   **{f"successes_seed_{p}": int(success[i, r].sum()) for i, p in enumerate(policies)},
                   "nfe_per_decision": float(nfe[nfe >= 0].mean()),
                   "decisions_mean": float((nfe >= 0).sum(-1).mean()),
                   "steps_mean": float(run["steps"][:, r][:, mine].mean()), "reference": names[ref],
                   **compare(success[:, r], reference, draws, margin)}
            made = max(float((nfe >= 0).sum()), 1.0)  # decisions this rule made, over policies and episodes
            seconds = run["seconds"][:, r][:, mine]
            row.update(head_ms_per_decision=1000 * float(seconds[..., cost["head"]].sum()) / made,
                       backbone_ms_per_decision=1000 * float(seconds[..., cost["backbone"]].sum()) / made)
            mse = open_loop.get((str(kinds[r]), float(params[r])), {})
            row.update(open_loop_mse_vs_final=_finite(mse.get("mse_vs_final")),
                       open_loop_mse_vs_gt=_finite(mse.get("mse_vs_gt")),
                       **{f"seconds_{c}": float(v) for c, v in zip(run["costs"],
                                                                  run["seconds"][:, r][:, mine].mean(axis=(0, 1)))})
            task_rows.append(row)
        _sizing(task_rows, len(policies), n, margin, alpha / m)
        if nearest is not None:
            task_rows.append(_baseline_row(nearest, task, mine, reference, draws, margin, task_rows[ref]))
        _verdicts(task_rows, alpha)
        rows += task_rows
        decisions[task] = _decide(task_rows, names[ref], margin, alpha, len(policies), n)
        per_task_rates[task] = {name: success[:, r].mean(axis=1) for r, name in enumerate(names)}
    if nearest is not None:
        _versus_baseline(decisions, alpha)
    summary = {"episode_set": episode_set, "margin": margin, "alpha": alpha, "reference": names[ref],
               "multiplicity": "Holm over each task's candidate rules (every rule but the reference; the nearest-demo "
                               "baseline is not a candidate); the policy against the baseline: Holm over the tasks",
               "policies": policies, "n_policies": len(policies), "rules": names,
               "episodes_per_task": {t: d["episodes"] for t, d in decisions.items()}, "tasks": decisions,
               "across_tasks": across_tasks(per_task_rates, names, names[ref]),
               "n_episodes": int(run["task"].size), "layout_seeds": sorted({int(s) for s in run["layout_seed"]}),
               "preset": str(run["preset"]), "config_digest": str(run["config_digest"]),
               "intervals": "success: on each side the wider of Clopper-Pearson on the pooled (policy, episode) pairs "
                            "and the crossed bootstrap over policies and episodes (percentile); paired difference: the "
                            "wider of Tango's score interval on the pooled pairs and the crossed bootstrap; tests: the "
                            "larger p of Tango's score test (non-inferiority) or McNemar's mid-p (any difference) and "
                            "the bootstrap's; 95%, two-sided"}
    return rows, summary


def _sizing(rows: list[dict], policies: int, n: int, margin: float, alpha: float) -> None:
    """Per candidate: the power this run had for the margin at its observed discordance (Tango's exact power, and the
    procedure's own, simulated), and the episodes per policy an 80%-powered run needs at the 80% upper bound of the
    discordance (Tango's exact size, and the procedure's). At alpha / m: Holm's first step, the least power it has.
    The procedure's size is computed for the cheapest rule within the margin only (the one the decision sizes for)."""
    candidates = [r for r in rows if r["role"] == "candidate"]
    within = sorted((r for r in candidates if r["diff_vs_reference"] >= -margin),
                    key=lambda r: (r["nfe_per_decision"], -r["success_rate"]))
    for row in candidates:
        discordant = row["better_than_reference"] + row["worse_than_reference"]
        upper = paired.discordance_upper(discordant, row["pairs"])
        tango = paired.pairs_needed(upper, margin, alpha)
        row.update(power_tango=paired.tango_power(row["pairs"], row["discordance"], margin, alpha),
                   power=procedure_power(policies, n, row["discordance"], margin, alpha),
                   discordance_upper_80=upper,
                   episodes_needed_80_tango=math.nan if tango is None else math.ceil(tango / policies),
                   episodes_needed_80=math.nan)
    if within:
        needed = episodes_needed(policies, within[0]["discordance_upper_80"], margin, alpha)
        within[0]["episodes_needed_80"] = math.nan if needed is None else needed


def _baseline_row(nearest: dict, task: str, mine: np.ndarray, reference: np.ndarray, draws, margin: float,
                  reference_row: dict) -> dict:
    """The nearest-demo replay as a row of the table (compared with the reference rule, the policy's own)."""
    success = nearest["success"][mine][None]  # (1, S): no policy
    row = {"task": task, "set": reference_row["set"], "rule": NEAREST, "kind": "nearest_demo", "param": 0.0,
           "role": "baseline", "policies": 0, "episodes": mine.size, "pairs": mine.size,
           **_success(success, (np.zeros_like(draws[0][:, :1]), draws[1])),  # one row: no policy to resample
           "nfe_per_decision": 0.0, "decisions_mean": 0.0, "steps_mean": math.nan,
           "reference": reference_row["rule"], **compare(success, reference, draws, margin),
           "distance_mm_median": 1000 * float(np.median(nearest["distance"][mine])),
           "distance_mm_max": 1000 * float(np.max(nearest["distance"][mine]))}
    # the policy (its reference rule) against the baseline: reference - baseline, the same pairs
    versus = compare(reference, success, draws, margin)
    row["policy_vs_baseline"] = {"difference": versus["diff_vs_reference"], "ci_low": versus["diff_ci_low"],
                                 "ci_high": versus["diff_ci_high"], "p": versus["diff_p"],
                                 "policy_wins": versus["better_than_reference"],
                                 "baseline_wins": versus["worse_than_reference"]}
    sizes = [int(k) for k in nearest["subset_sizes"]]
    row["fewer_demos"] = [{"demos_per_task": k, "replay_success_rate": float(nearest["subset_success"][i][mine].mean()),
                           "distance_mm_median": 1000 * float(np.median(nearest["subset_distance"][i][mine]))}
                          for i, k in enumerate(sizes)]
    return row


def _versus_baseline(decisions: dict, alpha: float) -> None:
    """Whether the policy beats its nearest-demo baseline, per task: Holm over the tasks, two-sided 2 alpha."""
    tasks = list(decisions)
    adjusted = paired.holm([decisions[t]["nearest_demo"]["p"] for t in tasks])
    for task, p in zip(tasks, adjusted):
        answer = decisions[task]["nearest_demo"]
        answer["p_holm_across_tasks"] = float(p)
        beats = p <= 2 * alpha and answer["difference"] > 0
        answer["verdict"] = ("the policy is shown better than replaying the nearest demonstration: a test of "
                             "generalisation" if beats else
                             "the policy is not shown better than replaying the nearest demonstration: on this task "
                             "the study tests memorisation as much as generalisation")


def _decide(rows: list[dict], ref_name: str, margin: float, alpha: float, policies: int, n: int) -> dict:
    """The headline of one task: the cheapest rule shown non-inferior to the reference (Holm-adjusted), or what an
    80%-powered run would need; the seed's question (stop at 40); the baseline; open loop against closed loop."""
    from scipy.stats import spearmanr

    reference = next(r for r in rows if r["role"] == "reference")
    candidates = [r for r in rows if r["role"] == "candidate"]
    shown = sorted((r for r in candidates if r["shown_non_inferior"]),
                   key=lambda r: (r["nfe_per_decision"], -r["success_rate"]))
    pairs = policies * n
    where = (f"{policies} polic{'y' if policies == 1 else 'ies'} x {n} episodes = {pairs} pairs, margin {margin:.0%}, "
             f"one-sided alpha {alpha:g}, Holm over {len(candidates)} rules")
    out = {"episodes": n, "policies": policies, "pairs": pairs,
           "reference": {k: reference[k] for k in ("rule", "success_rate", "ci_low", "ci_high", "nfe_per_decision")},
           "shown_non_inferior": [r["rule"] for r in shown],
           "shown_better": [r["rule"] for r in candidates if "shown better" in r["verdict"]],
           "shown_worse": [r["rule"] for r in candidates if "shown worse" in r["verdict"]]}
    if shown:
        pick = shown[0]
        out["decision"] = (f"{pick['rule']} is shown non-inferior to {ref_name} ({where}): {pick['nfe_per_decision']:.1f} "
                           f"NFE per decision, success {pick['success_rate']:.0%} [{pick['ci_low']:.0%}, "
                           f"{pick['ci_high']:.0%}], difference {pick['diff_vs_reference']:+.0%} (95% CI "
                           f"[{pick['diff_ci_low']:+.0%}, {pick['diff_ci_high']:+.0%}]), adjusted p {pick['ni_p_holm']:.3g}")
        out["cheapest_shown_non_inferior"] = {k: pick[k] for k in (
            "rule", "nfe_per_decision", "success_rate", "ci_low", "ci_high", "diff_vs_reference", "diff_ci_low",
            "diff_ci_high", "ni_p", "ni_p_holm", "verdict")}
    else:
        out["cheapest_shown_non_inferior"] = None
        within = sorted((r for r in candidates if r["diff_vs_reference"] >= -margin),
                        key=lambda r: (r["nfe_per_decision"], -r["success_rate"]))
        if within:
            nearest = within[0]
            needed = nearest["episodes_needed_80"]
            size = ("more than 20,000 episodes per policy" if not math.isfinite(needed) else
                    f"{int(needed)} episodes per policy with {policies} policies (Tango's exact power alone: "
                    f"{int(nearest['episodes_needed_80_tango'])})")
            out["decision"] = (f"no rule is shown non-inferior to {ref_name} ({where}). The cheapest rule within the "
                               f"margin, {nearest['rule']} ({nearest['nfe_per_decision']:.1f} NFE per decision, observed "
                               f"{nearest['diff_vs_reference']:+.0%}), had power {nearest['power']:.0%}; 80% power "
                               f"needs {size}, at the 80% upper bound of its discordance "
                               f"({nearest['discordance_upper_80']:.3f}; observed {nearest['discordance']:.3f})")
            out["sizing"] = {k: nearest[k] for k in ("rule", "discordance", "discordance_upper_80", "power",
                                                     "power_tango", "episodes_needed_80", "episodes_needed_80_tango")}
        else:
            out["decision"] = (f"no rule is shown non-inferior to {ref_name} ({where}), and every rule's observed "
                               f"difference is below -{margin:.0%}")
    out["stop_at_40"] = [{k: r[k] for k in ("rule", "success_rate", "diff_vs_reference", "diff_ci_low", "diff_ci_high",
                                            "ni_p_holm", "diff_p_holm", "verdict")}
                         for r in candidates if r["kind"] in ("fixed_step_xt", "fixed_step_clean", "fixed_k")
                         and r["param"] == 40]
    out["pareto"] = pareto(rows)
    baseline = next((r for r in rows if r["role"] == "baseline"), None)
    if baseline is not None:
        out["nearest_demo"] = {"success_rate": baseline["success_rate"], "ci_low": baseline["ci_low"],
                               "ci_high": baseline["ci_high"], "distance_mm_median": baseline["distance_mm_median"],
                               "distance_mm_max": baseline["distance_mm_max"], **baseline["policy_vs_baseline"],
                               "fewer_demos": baseline["fewer_demos"]}
    known = [r for r in rows if r["role"] != "baseline" and math.isfinite(r["open_loop_mse_vs_gt"])]
    if len(known) >= 3 and len({r["success_rate"] for r in known}) > 1:
        result = spearmanr([r["open_loop_mse_vs_gt"] for r in known], [r["success_rate"] for r in known])
        out["open_loop_vs_closed_loop"] = {
            "spearman_mse_vs_gt_success": float(result.statistic), "p": float(result.pvalue), "rules": len(known),
            "reads": ("an association is shown (p <= 0.05); negative: lower open-loop MSE goes with more success"
                      if result.pvalue <= 0.05 else "no association shown (p > 0.05)")}
    else:
        out["open_loop_vs_closed_loop"] = {"spearman_mse_vs_gt_success": None, "p": None, "rules": len(known),
                                           "reads": "not computed: fewer than 3 rules with an open-loop MSE, or one "
                                                    "success rate for all: nothing to rank"}
    return out


def frontier(rows: list[dict], cost: str) -> list[str]:
    """The rules no other rule beats on both success and `cost` (lower is better): the Pareto frontier, cheapest
    first. A rule that ties another on both stays."""
    out = []
    for r in sorted(rows, key=lambda r: (r[cost], -r["success_rate"])):
        if not out or r["success_rate"] > max(q["success_rate"] for q in rows if q["rule"] in out):
            out.append(r["rule"])
    return out


def pareto(rows: list[dict]) -> dict:
    """Success against compute on one task: the frontier by NFE per decision and by measured head milliseconds per
    decision, and the backbone's share of a decision's model time at the reference (what cutting head evaluations
    can save at most is the rest)."""
    rules = [r for r in rows if r["role"] != "baseline"]
    reference = next(r for r in rules if r["role"] == "reference")
    model_ms = reference["head_ms_per_decision"] + reference["backbone_ms_per_decision"]
    return {"frontier_nfe": frontier(rules, "nfe_per_decision"), "frontier_head_ms": frontier(rules, "head_ms_per_decision"),
            "reference_head_ms_per_decision": reference["head_ms_per_decision"],
            "reference_backbone_ms_per_decision": reference["backbone_ms_per_decision"],
            "backbone_share_of_model_time": reference["backbone_ms_per_decision"] / model_ms if model_ms else None,
            "note": "head and backbone milliseconds per decision as the rollout measured them (batched calls split "
                    "evenly over their episodes), on this machine's CPU; a GPU changes both"}


def across_tasks(rates: dict[str, dict[str, np.ndarray]], names: list[str], reference: str) -> dict:
    """rliable's aggregates over tasks and policies (score: each policy's success rate on a task): the interquartile
    mean of every rule and the probability that a rule improves on the reference, with rliable's stratified bootstrap
    95% intervals (policies resampled within tasks)."""
    from rliable import library, metrics

    scores = {name: np.stack([rates[task][name] for task in rates], axis=1) for name in names}  # (P, T)
    import warnings

    state = np.random.RandomState(0)
    with warnings.catch_warnings():  # arch 7.2 deprecates random_state, which rliable 1.2 passes
        warnings.simplefilter("ignore", FutureWarning)
        iqm, iqm_ci = library.get_interval_estimates(scores, lambda x: np.array([metrics.aggregate_iqm(x)]),
                                                     reps=IQM_RESAMPLES, random_state=state)
        pairs = {name: (scores[name], scores[reference]) for name in names if name != reference}
        poi, poi_ci = library.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=IQM_RESAMPLES,
                                                     random_state=state) if pairs else ({}, {})
    return {"score": "success rate of each policy on each task", "runs": int(next(iter(scores.values())).shape[0]),
            "tasks": list(rates), "resamples": IQM_RESAMPLES,
            "iqm": {n: {"estimate": float(np.ravel(iqm[n])[0]), "ci_low": float(np.ravel(iqm_ci[n][0])[0]),
                        "ci_high": float(np.ravel(iqm_ci[n][1])[0])} for n in names},
            "probability_of_improvement_over_reference": {
                n: {"estimate": float(np.ravel(poi[n])[0]), "ci_low": float(np.ravel(poi_ci[n][0])[0]),
                    "ci_high": float(np.ravel(poi_ci[n][1])[0])} for n in pairs},
            "method": "rliable 1.2.0: metrics.aggregate_iqm, metrics.probability_of_improvement, "
                      "library.get_interval_estimates (stratified bootstrap, percentile)"}


def eval_infos(run: dict, out_dir) -> list[str]:
    """Per policy and rule, an eval_info.json shaped like lerobot-eval's (per_episode: episode_ix, sum_reward,
    max_reward, success, seed; aggregated: avg_sum_reward, avg_max_reward, pc_success, eval_s, eval_ep_s;
    video_paths), plus our fields. The rollout records no reward: sum_reward and max_reward are null."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    written = []
    for i, policy in enumerate(int(p) for p in run["policy"]):
        for r, rule in enumerate(str(x) for x in run["rule"]):
            nfe = run["nfe"][i, r]
            seconds = run["seconds"][i, r].sum(axis=-1)
            per_episode = [{"episode_ix": e, "sum_reward": None, "max_reward": None,
                            "success": bool(run["success"][i, r, e]), "seed": int(run["layout_seed"][e]),
                            "init_state": int(run["layout_index"][e]), "task": str(run["task"][e]),
                            "steps": int(run["steps"][i, r, e]),
                            "nfe_per_decision": float(nfe[e][nfe[e] >= 0].mean())} for e in range(run["task"].size)]
            info = {"per_episode": per_episode,
                    "aggregated": {"avg_sum_reward": None, "avg_max_reward": None,
                                   "pc_success": 100.0 * float(run["success"][i, r].mean()),
                                   "eval_s": float(seconds.sum()), "eval_ep_s": float(seconds.mean()),
                                   "rule": rule, "policy": policy, "nfe_per_decision": float(nfe[nfe >= 0].mean()),
                                   "set": str(run["episode_set"]), "n_episodes": int(run["task"].size)},
                    "video_paths": [],
                    "note": "lerobot-eval's eval_info.json fields, plus ours (task, init_state, steps, "
                            "nfe_per_decision, rule, policy, set); seed is the layout seed; no reward is recorded"}
            name = f"policy-{policy}/{slug(rule)}.json"
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(json.dumps(info, indent=1))
            written.append(name)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return written


def slug(rule: str) -> str:
    """A rule's name as a file name: K=50 -> K50, stop@40 clean -> stop40_clean, clean change<0.3 -> clean_change_lt0.3."""
    return rule.replace("=", "").replace("@", "").replace("<", "_lt").replace(" ", "_")


def write_answers(npz_path, early_stop_csv, settings: dict, table_path, summary_path, nearest_path=None,
                  eval_info_dir=None) -> None:
    from mimic_redundancy.analysis.metrics import write_csv
    from mimic_redundancy.core.io import NEAREST_ARRAYS, load_npz, load_rollout

    run = load_rollout(npz_path)
    nearest = None
    if nearest_path is not None:
        nearest = load_npz(nearest_path, NEAREST_ARRAYS)
        same = all(np.array_equal(nearest[k], run[k]) for k in ("task", "layout_seed", "layout_index"))
        if not same or str(nearest["episode_set"]) != str(run["episode_set"]):
            raise ValueError(f"{nearest_path}: holds other episodes than {npz_path} (set {nearest['episode_set']} "
                             f"against {run['episode_set']}); rerun the nearest_demo rule for set {run['episode_set']}")
    rows, summary = rollout_tables(run, _open_loop(early_stop_csv), settings, nearest)
    table = [{k: v for k, v in row.items() if not isinstance(v, (dict, list))} for row in rows]
    columns = list(dict.fromkeys(k for row in table for k in row))
    write_csv(table_path, [{k: row.get(k, math.nan) for k in columns} for row in table])
    extra = {"eval_info": eval_infos(run, eval_info_dir)} if eval_info_dir is not None else {}
    write_json(summary_path, {**summary, "rollout": str(npz_path), "nearest_demo": str(nearest_path), **extra})


RULE_STYLE = {  # kind -> marker, colour, label, x shift (rules at one NFE are shifted apart so none hides another)
    "fixed_k": ("o", "C0", "K Euler steps", 1.0), "fixed_step_xt": ("s", "C1", "stop at s: x_s", 0.9),
    "fixed_step_clean": ("D", "C2", "stop at s: clean prediction", 1.1),
    "clean_change": ("^", "C3", "clean-change rule (calibrated)", 1.0),
    "probeflow": ("v", "C4", "ProbeFlow", 1.05), "dense_jump": ("P", "C5", "Dense-Jump", 0.95)}


# the columns of rollout.csv and the keys of rollout.json that plot_rollout reads (besides successes_seed_<policy>)
FIGURE_COLUMNS = ("task", "role", "rule", "kind", "episodes", "policies", "nfe_per_decision", "success_rate", "ci_low",
                  "ci_high", "diff_vs_reference", "diff_ci_low", "diff_ci_high", "shown_non_inferior",
                  "open_loop_mse_vs_gt")
FIGURE_SUMMARY_KEYS = ("policies", "episode_set", "margin", "reference", "alpha", "preset", "tasks")


def figure_inputs(table_path, summary_path, columns: tuple, keys: tuple, per_policy: bool = False):
    """(rows of rollout.csv, rollout.json) with what a figure reads checked first: a table or summary from another
    version (or edited) is named with the command that rebuilds it, instead of a KeyError halfway through drawing."""
    from mimic_redundancy.core.io import input_error, read_json

    summary = read_json(summary_path)
    missing = [k for k in keys if k not in summary]
    if missing:
        raise input_error(summary_path, f"lacks the keys {missing} the figure reads")
    try:
        with open(table_path, newline="") as f:
            reader = csv.DictReader(f)
            rows, present = list(reader), list(reader.fieldnames or [])
    except FileNotFoundError:
        raise input_error(table_path, "no such file") from None
    wanted = (*columns, *(f"successes_seed_{p}" for p in summary["policies"])) if per_policy else columns
    missing = [c for c in wanted if c not in present]
    if missing or not rows:
        raise input_error(table_path, f"lacks the columns {missing} the figure draws (it has {present})" if missing
                          else "holds no rows")
    return rows, summary


def _task_rows(rows: list[dict], task: str) -> tuple[list[dict], dict | None]:
    """A task's rule rows (the baseline left out) and its nearest-demo row (None without one)."""
    return ([r for r in rows if r["task"] == task and r["role"] != "baseline"],
            next((r for r in rows if r["task"] == task and r["role"] == "baseline"), None))


def _legend_room(entries: int, columns: int, rows: int) -> float:
    """The figure's height fraction a legend of `entries` in `columns` below `rows` rows of panels needs."""
    return min(0.3, 0.11 * -(-entries // columns) / (rows + 0.7))


def _task_grid(plt, plots, tasks: list[str], columns: int, style: dict):
    """(figure, axes (tasks x columns)) at the report's width, a row per task."""
    return plt.subplots(len(tasks), columns, squeeze=False,
                        figsize=(style["width"], style["height"] * plots.ROW_HEIGHT * max(len(tasks), 1.4)))


def plot_rollout(table_path, summary_path, png, svg, style: dict) -> None:
    """Per task, three panels: success against NFE per decision (pooled over policies with its 95% interval, each
    policy's rate as a small dot, the nearest-demo replay as a grey band), the paired difference to the reference
    (95% interval, the margin; filled: shown non-inferior after Holm), and open-loop MSE against success. Drawn at the
    report's width (plots.REPORT_WIDTH_PX) with the shared fonts; the set, policies and episodes in every title."""
    import matplotlib.pyplot as plt

    from mimic_redundancy.report import plots

    rows, summary = figure_inputs(table_path, summary_path, FIGURE_COLUMNS, FIGURE_SUMMARY_KEYS, per_policy=True)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    seeds = [int(p) for p in summary["policies"]]
    f = lambda r, k: float(r[k])
    with plt.rc_context(plots.FONTS):
        fig, axes = _task_grid(plt, plots, tasks, 3, style)
        for row_axes, task in zip(axes, tasks):
            mine, baseline = _task_rows(rows, task)
            n, policies = int(mine[0]["episodes"]), int(mine[0]["policies"])
            counts = f"{policies} polic{'y' if policies == 1 else 'ies'} x {n} {summary['episode_set']} episodes"
            ax = row_axes[0]
            if baseline is not None:
                ax.axhspan(f(baseline, "ci_low"), f(baseline, "ci_high"), color="0.85", zorder=0)
                ax.axhline(f(baseline, "success_rate"), color="0.5", lw=1, label=NEAREST)
            for kind, (marker, colour, label, shift) in RULE_STYLE.items():
                pts = sorted((r for r in mine if r["kind"] == kind), key=lambda r: f(r, "nfe_per_decision"))
                if not pts:
                    continue
                x = [f(r, "nfe_per_decision") * shift for r in pts]
                y = [f(r, "success_rate") for r in pts]
                err = [[yy - f(r, "ci_low") for r, yy in zip(pts, y)], [f(r, "ci_high") - yy for r, yy in zip(pts, y)]]
                ax.errorbar(x, y, yerr=err, marker=marker, color=colour, capsize=2, markersize=4,
                            linestyle="-" if kind == "fixed_k" else "none", label=label)
                for k, seed in enumerate(seeds):  # each policy's own rate, spread sideways a little
                    ax.scatter([xx * (1 + 0.04 * (k - (len(seeds) - 1) / 2)) for xx in x],
                               [f(r, f"successes_seed_{seed}") / n for r in pts], s=5, color=colour, alpha=0.45,
                               linewidths=0, label="each policy" if kind == "fixed_k" and k == 0 else None)
            plots._log(ax, "x")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("NFE per decision")
            ax.set_ylabel("success rate")
            ax.set_title(f"{task.removesuffix('-v3')}\nsuccess, 95% CI")
            ax = row_axes[1]
            order = sorted((r for r in mine if r["role"] == "candidate"), key=lambda r: f(r, "nfe_per_decision"))
            for i, r in enumerate(order):
                d = f(r, "diff_vs_reference")
                shown = r["shown_non_inferior"] == "True"
                ax.errorbar([d], [i], xerr=[[d - f(r, "diff_ci_low")], [f(r, "diff_ci_high") - d]], fmt="o",
                            capsize=2, markersize=4, color="C0", mfc="C0" if shown else "white")
            ax.axvline(0, color="gray", lw=0.8)
            ax.axvline(-summary["margin"], color="red", lw=0.8, ls="--")
            ax.set_yticks(range(len(order)), [r["rule"] for r in order], fontsize=6)
            ax.set_xlabel(f"vs {summary['reference']} (red: -{summary['margin']:.0%} margin)")
            ax.set_title(f"paired difference, 95% CI\nfilled: shown non-inferior (Holm)")
            ax = row_axes[2]
            known = [r for r in mine if np.isfinite(f(r, "open_loop_mse_vs_gt"))]
            for r in known:
                marker, colour, _, _ = RULE_STYLE.get(r["kind"], ("o", "k", "", 1.0))
                ax.scatter(f(r, "open_loop_mse_vs_gt"), f(r, "success_rate"), marker=marker, color=colour, s=14)
            if known:
                plots._log(ax, "x")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("open-loop MSE vs expert")
            ax.set_ylabel("success rate")
            rho = summary["tasks"][task]["open_loop_vs_closed_loop"]["spearman_mse_vs_gt_success"]
            ax.set_title("open vs closed loop\n" + (f"Spearman {rho:.2f}" if rho is not None else "Spearman n/a"))
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
        fig.suptitle(f"closed loop, preset {summary['preset']}, reference {summary['reference']}: {counts} per task "
                     f"and rule\n(train seeds {seeds}; margin {summary['margin']:.0%}, one-sided alpha "
                     f"{summary['alpha']:g}, Holm over each task's rules)", fontsize=8)
        fig.tight_layout(rect=(0, _legend_room(len(labels), 3, len(tasks)), 1, 1))  # the legend's rows below
        for path, fmt in [(png, "png"), (svg, "svg")]:
            fig.savefig(path, format=fmt, dpi=style["dpi"])
        plt.close(fig)


def plot_pareto(table_path, summary_path, png, svg, style: dict) -> None:
    """Success against compute, per task: against NFE per decision and against measured head milliseconds per
    decision; every rule (95% interval across policies and episodes), the frontier as a line, the reference as a star,
    the nearest-demo replay as a grey band; the backbone's share of a decision's model time in the title (what
    cutting head evaluations cannot save)."""
    import matplotlib.pyplot as plt

    from mimic_redundancy.report import plots

    rows, summary = figure_inputs(table_path, summary_path, ("task", "role", "rule", "kind", "success_rate", "ci_low",
                                                             "ci_high", "nfe_per_decision", "head_ms_per_decision"),
                                  ("tasks", "n_policies", "n_episodes", "episode_set", "preset", "reference"))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    f = lambda r, k: float(r[k])
    with plt.rc_context(plots.FONTS):
        fig, axes = _task_grid(plt, plots, tasks, 2, style)
        for row_axes, task in zip(axes, tasks):
            mine, baseline = _task_rows(rows, task)
            answer = summary["tasks"][task]["pareto"]
            for ax, cost, front, label in [(row_axes[0], "nfe_per_decision", answer["frontier_nfe"], "NFE per decision"),
                                           (row_axes[1], "head_ms_per_decision", answer["frontier_head_ms"],
                                            "head ms per decision (measured)")]:
                if baseline is not None:
                    ax.axhspan(f(baseline, "ci_low"), f(baseline, "ci_high"), color="0.88", zorder=0)
                    ax.axhline(f(baseline, "success_rate"), color="0.5", lw=1, label=NEAREST)
                for r in mine:
                    marker, colour, _, _ = RULE_STYLE.get(r["kind"], ("o", "k", "", 1.0))
                    y = f(r, "success_rate")
                    ax.errorbar([f(r, cost)], [y], yerr=[[y - f(r, "ci_low")], [f(r, "ci_high") - y]],
                                marker="*" if r["role"] == "reference" else marker, markersize=9 if r["role"] ==
                                "reference" else 4, color=colour, capsize=2, linestyle="none")
                on = sorted((r for r in mine if r["rule"] in front), key=lambda r: f(r, cost))
                ax.plot([f(r, cost) for r in on], [f(r, "success_rate") for r in on], color="k", lw=0.8,
                        label="frontier")
                plots._log(ax, "x")
                ax.set_ylim(-0.05, 1.05)
                ax.set_xlabel(label)
                ax.set_ylabel("success rate")
            share = answer["backbone_share_of_model_time"]
            row_axes[0].set_title(f"{task.removesuffix('-v3')}: success vs NFE")
            row_axes[1].set_title("success vs head time" + (f"\n(backbone {share:.0%} of a decision's model time)"
                                                            if share is not None else ""))
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
        counts = f"{summary['n_policies']} policies x {summary['n_episodes'] // max(len(tasks), 1)} {summary['episode_set']} episodes"
        fig.suptitle(f"success against compute, preset {summary['preset']}: {counts} per rule, 95% CI, reference "
                     f"{summary['reference']} (star)", fontsize=8)
        fig.tight_layout(rect=(0, _legend_room(len(labels), 2, len(tasks)), 1, 1))
        for path, fmt in [(png, "png"), (svg, "svg")]:
            fig.savefig(path, format=fmt, dpi=style["dpi"])
        plt.close(fig)
