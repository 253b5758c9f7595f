"""The closed loop's answers, from rollout.npz alone (and early_stop.csv for the open-loop side).

Per task and rule: the success rate with its exact (Clopper-Pearson) 95% interval; the paired difference to the
reference rule (the largest K) on the same episodes, with Tango's score 95% interval for paired proportions
and McNemar's exact test on the discordant pairs; the open-loop MSE of the same rule on the demo windows (early_stop.csv);
and the headline, a decision: the rule with the fewest head evaluations per decision that is non-inferior to the
reference within `margin` (the one-sided 95% lower bound of its paired difference above -margin). Where no
rule qualifies, the episodes a paired non-inferiority test would need (80% power) are estimated from the observed
discordance.
"""
from __future__ import annotations

import csv
import math

import numpy as np

from mimic_redundancy.core.io import ROLLOUT_ARRAYS, load_npz, write_json

Z_95_ONE_SIDED, Z_80 = 1.6448536269514722, 0.8416212335729143


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact binomial interval of a success rate (never outside [0, 1])."""
    from scipy.stats import beta

    alpha = 1 - level
    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return low, high


def mcnemar_exact(better: int, worse: int) -> float:
    """Two-sided exact McNemar p-value: the discordant pairs against a fair coin."""
    from scipy.stats import binomtest

    return 1.0 if better + worse == 0 else float(binomtest(better, better + worse, 0.5).pvalue)


def paired_difference(rule: np.ndarray, reference: np.ndarray, z: float = 1.959963984540054) -> tuple[float, float]:
    """Tango's asymptotic score interval (1998) of the paired difference of two success rates on the same episodes,
    rule - reference: the differences d0 where the score statistic T(d0) (restricted maximum likelihood of the
    discordant cell under d0) stays within +-z. It depends on the discordant pairs alone: 20 episodes that agree
    everywhere give [-0.16, +0.16] whatever the success rate, so 20 episodes cannot prove a 5-point margin. z = 1.645
    gives the one-sided 95% lower bound, a non-inferiority test at its nominal 5% (tested). Newcombe's hybrid interval
    (method 10) was used before: with no discordant pair and a success rate inside (0, 1) its correlation term
    shrinks it to +-3% on 20 episodes, and it declared a rule 5 points worse non-inferior 34% of the time."""
    rule, reference = rule.astype(bool), reference.astype(bool)
    n = rule.size
    b, c = int((rule & ~reference).sum()), int((~rule & reference).sum())  # the discordant pairs

    def score(d0: float) -> float:  # decreasing in d0
        a_, b_, c_ = 2 * n, -b - c + (2 * n - b + c) * d0, -c * d0 * (1 - d0)
        p21 = (math.sqrt(max(b_ * b_ - 4 * a_ * c_, 0.0)) - b_) / (2 * a_)
        variance, excess = n * (2 * p21 + d0 * (1 - d0)), b - c - n * d0
        return excess / math.sqrt(variance) if variance > 0 else math.copysign(math.inf, excess) if excess else 0.0

    def solve(target: float, low: float, high: float) -> float:  # bisection: score(root) = target
        for _ in range(100):
            middle = (low + high) / 2
            low, high = (middle, high) if score(middle) > target else (low, middle)
        return (low + high) / 2

    estimate, tiny = (b - c) / n, 1e-12
    lower = -1.0 if estimate == -1 else solve(z, -1 + tiny, estimate)
    upper = 1.0 if estimate == 1 else solve(-z, estimate, 1 - tiny)
    return lower, upper


def episodes_needed(discordance: float, margin: float, n: int) -> int:
    """Episodes for a paired non-inferiority test (one-sided 5%, 80% power, true difference 0) at this discordance
    (the fraction of episodes where the two rules disagree; at least one in n+1 when none was seen)."""
    disc = max(discordance, 1.0 / (n + 1))
    return int(math.ceil((Z_95_ONE_SIDED + Z_80) ** 2 * disc / margin ** 2))


def _open_loop(early_stop_csv) -> dict[tuple[str, float], dict]:
    """(rule kind, param) -> the all-samples row of early_stop.csv (the rule's MSE on the demo windows)."""
    with open(early_stop_csv, newline="") as f:
        return {(row["rule"], float(row["param"])): row for row in csv.DictReader(f) if row["half"] == "all"}


def rollout_tables(run: dict, open_loop: dict, settings: dict) -> tuple[list[dict], dict]:
    """(rows of rollout.csv, rollout.json)."""
    margin = settings["margin"]
    kinds, params = run["rule_kind"], run["rule_param"]
    ks = [r for r in range(len(kinds)) if kinds[r] == "fixed_k"]
    ref = max(ks, key=lambda r: params[r])
    rows, decisions = [], {}
    for task in dict.fromkeys(run["task"].tolist()):
        mine = np.flatnonzero(run["task"] == task)
        n = mine.size
        reference = run["success"][ref, mine]
        task_rows = []
        for r, name in enumerate(run["rule"]):
            success = run["success"][r, mine]
            k = int(success.sum())
            low, high = clopper_pearson(k, n)
            nfe = run["nfe"][r, mine]
            better, worse = int((success & ~reference).sum()), int((~success & reference).sum())
            d_low, d_high = paired_difference(success, reference)
            d_lower = paired_difference(success, reference, Z_95_ONE_SIDED)[0]
            mse = open_loop.get((str(kinds[r]), float(params[r])), {})
            seconds = run["seconds"][r, mine].mean(axis=0)
            row = {"task": task, "rule": str(name), "kind": str(kinds[r]), "param": float(params[r]), "episodes": n,
                   "successes": k, "success_rate": k / n, "ci_low": low, "ci_high": high,
                   "nfe_per_decision": float(nfe[nfe >= 0].mean()), "decisions_mean": float((nfe >= 0).sum(1).mean()),
                   "steps_mean": float(run["steps"][r, mine].mean()),
                   "reference": str(run["rule"][ref]), "diff_vs_reference": (k - int(reference.sum())) / n,
                   "diff_ci_low": d_low, "diff_ci_high": d_high, "diff_lower_one_sided_95": d_lower,
                   "better_than_reference": better, "worse_than_reference": worse,
                   "mcnemar_p": mcnemar_exact(better, worse), "non_inferior": bool(d_lower > -margin),
                   "open_loop_mse_vs_final": float(mse.get("mse_vs_final", "nan") or "nan"),
                   "open_loop_mse_vs_gt": float(mse.get("mse_vs_gt", "nan") or "nan"),
                   **{f"seconds_{c}": float(s) for c, s in zip(run["costs"], seconds)}}
            task_rows.append(row)
        rows += task_rows
        decisions[task] = _decide(task_rows, ref_name=str(run["rule"][ref]), margin=margin, n=n)
    summary = {"margin": margin, "reference": str(run["rule"][ref]), "episodes_per_task": {t: d["episodes"] for t, d in
                                                                                           decisions.items()},
               "tasks": decisions, "rules": [str(r) for r in run["rule"]],
               "n_episodes": int(run["success"].shape[1]), "layout_seed": sorted({int(s) for s in run["layout_seed"]}),
               "preset": str(run["preset"]), "config_digest": str(run["config_digest"]),
               "intervals": "success: exact Clopper-Pearson 95%; paired difference: Tango's asymptotic score "
                            "interval, 95% two-sided and the one-sided 95% lower bound; McNemar exact"}
    return rows, summary


def _decide(rows: list[dict], ref_name: str, margin: float, n: int) -> dict:
    """The headline of one task: the cheapest non-inferior rule, the seed's question (stop at 40 vs 50), and whether
    open-loop MSE ranks the rules as closed-loop success does."""
    from scipy.stats import spearmanr

    reference = next(r for r in rows if r["rule"] == ref_name)
    fitting = sorted((r for r in rows if r["non_inferior"]), key=lambda r: (r["nfe_per_decision"], -r["success_rate"]))
    pick = fitting[0] if fitting else None
    # what more episodes could decide: the cheapest rule whose observed difference is within the margin (a rule
    # observed far below it, e.g. stop@40 x_t at -45 points, would not become non-inferior with more episodes)
    candidates = sorted((r for r in rows if r is not reference and r["diff_vs_reference"] >= -margin),
                        key=lambda r: (r["nfe_per_decision"], -r["success_rate"]))
    out = {"episodes": n, "reference": {k: reference[k] for k in ("rule", "success_rate", "ci_low", "ci_high",
                                                                  "nfe_per_decision")}}
    if pick is None and candidates:
        nearest = candidates[0]
        discordance = (nearest["better_than_reference"] + nearest["worse_than_reference"]) / n
        out["decision"] = (f"no rule is non-inferior to {ref_name} within {margin:.0%} on {n} episodes; about "
                           f"{episodes_needed(discordance, margin, n)} episodes per rule would be needed to show "
                           f"{nearest['rule']} ({nearest['nfe_per_decision']:.1f} NFE per decision, observed "
                           f"{nearest['diff_vs_reference']:+.0%}) non-inferior (its discordance with {ref_name}: "
                           f"{discordance:.2f})")
    elif pick is None:
        out["decision"] = (f"no rule is non-inferior to {ref_name} within {margin:.0%} on {n} episodes, and every "
                           f"rule's observed difference is below -{margin:.0%}: more episodes would not change that")
    else:
        out["decision"] = (f"{pick['rule']}: {pick['nfe_per_decision']:.1f} NFE per decision, success "
                           f"{pick['success_rate']:.0%} [{pick['ci_low']:.0%}, {pick['ci_high']:.0%}], difference to "
                           f"{ref_name} {pick['diff_vs_reference']:+.0%} (95% CI [{pick['diff_ci_low']:+.0%}, "
                           f"{pick['diff_ci_high']:+.0%}]; one-sided lower bound {pick['diff_lower_one_sided_95']:+.0%} > "
                           f"-{margin:.0%}), N={n} episodes")
        out["cheapest_non_inferior"] = {k: pick[k] for k in ("rule", "nfe_per_decision", "success_rate", "ci_low",
                                                             "ci_high", "diff_vs_reference", "diff_ci_low",
                                                             "diff_ci_high", "diff_lower_one_sided_95", "mcnemar_p")}
    seed_question = [r for r in rows if r["kind"] in ("fixed_step_xt", "fixed_step_clean", "fixed_k") and r["param"] == 40]
    out["stop_at_40"] = [{k: r[k] for k in ("rule", "success_rate", "diff_vs_reference", "diff_ci_low", "diff_ci_high",
                                            "mcnemar_p", "non_inferior")} for r in seed_question]
    known = [r for r in rows if math.isfinite(r["open_loop_mse_vs_gt"])]
    if len(known) >= 3 and len({r["success_rate"] for r in known}) > 1:
        rho = spearmanr([r["open_loop_mse_vs_gt"] for r in known], [r["success_rate"] for r in known]).statistic
        out["open_loop_vs_closed_loop"] = {"spearman_mse_vs_gt_success": float(rho), "rules": len(known),
                                           "reads": "negative: lower open-loop MSE goes with more success"}
    else:
        out["open_loop_vs_closed_loop"] = {"spearman_mse_vs_gt_success": None, "rules": len(known),
                                           "reads": "not computed: fewer than 3 rules with an open-loop MSE, or one "
                                                    "success rate for all"}
    return out


def write_answers(npz_path, early_stop_csv, settings: dict, table_path, summary_path) -> None:
    from mimic_redundancy.analysis.metrics import write_csv

    run = load_npz(npz_path, ROLLOUT_ARRAYS)
    rows, summary = rollout_tables(run, _open_loop(early_stop_csv), settings)
    write_csv(table_path, rows)
    write_json(summary_path, {**summary, "rollout": str(npz_path)})


def plot_rollout(table_path, summary_path, png, svg, style: dict) -> None:
    """Per task, three panels: success against NFE per decision (the K curve and the early stops, exact 95% CIs),
    the paired difference to the reference (Tango 95% CI, the margin), and open-loop MSE against success. Drawn at
    the report's width (plots.REPORT_WIDTH_PX) with the shared fonts; N stated in every panel's title."""
    import json

    import matplotlib.pyplot as plt

    from mimic_redundancy.report import plots

    with open(table_path, newline="") as f:
        rows = list(csv.DictReader(f))
    summary = json.loads(open(summary_path).read())
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    kinds = {"fixed_k": ("o", "C0", "K Euler steps", 1.0), "fixed_step_xt": ("s", "C1", "stop at s: x_s", 0.9),
             "fixed_step_clean": ("D", "C2", "stop at s: clean prediction", 1.1),
             "clean_change": ("^", "C3", "clean-change rule (calibrated)", 1.0)}  # marker, colour, label, x shift
    f = lambda r, k: float(r[k])
    with plt.rc_context(plots.FONTS):
        fig, axes = plt.subplots(len(tasks), 3, squeeze=False,
                                 figsize=(style["width"], style["height"] * plots.ROW_HEIGHT * max(len(tasks), 1.4)))
        for row_axes, task in zip(axes, tasks):
            mine = [r for r in rows if r["task"] == task]
            n = int(mine[0]["episodes"])
            ax = row_axes[0]
            for kind, (marker, colour, label, shift) in kinds.items():
                pts = sorted((r for r in mine if r["kind"] == kind), key=lambda r: f(r, "nfe_per_decision"))
                if pts:  # the stops share an NFE: shifted apart so neither hides the other
                    x = [f(r, "nfe_per_decision") * shift for r in pts]
                    y = [f(r, "success_rate") for r in pts]
                    err = [[yy - f(r, "ci_low") for r, yy in zip(pts, y)],
                           [f(r, "ci_high") - yy for r, yy in zip(pts, y)]]
                    ax.errorbar(x, y, yerr=err, marker=marker, color=colour, capsize=2, markersize=4,
                                linestyle="-" if kind == "fixed_k" else "none", label=label)
            plots._log(ax, "x")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("NFE per decision")
            ax.set_ylabel("success rate")
            ax.set_title(f"{task.removesuffix('-v3')}\nsuccess, exact 95% CI, N={n}")
            ax = row_axes[1]
            order = sorted(mine, key=lambda r: f(r, "nfe_per_decision"))
            y = np.arange(len(order))
            d = [f(r, "diff_vs_reference") for r in order]
            ax.errorbar(d, y, xerr=[[dd - f(r, "diff_ci_low") for r, dd in zip(order, d)],
                                    [f(r, "diff_ci_high") - dd for r, dd in zip(order, d)]], fmt="o", capsize=2,
                        markersize=3)
            ax.axvline(0, color="gray", lw=0.8)
            ax.axvline(-summary["margin"], color="red", lw=0.8, ls="--")
            ax.set_yticks(y, [r["rule"] for r in order], fontsize=6)
            ax.set_xlabel(f"vs {summary['reference']} (red: -{summary['margin']:.0%} margin)")
            ax.set_title(f"paired difference, Tango 95% CI\nN={n}")
            ax = row_axes[2]
            known = [r for r in mine if np.isfinite(f(r, "open_loop_mse_vs_gt"))]
            for r in known:
                marker, colour, _, _ = kinds[r["kind"]]
                ax.scatter(f(r, "open_loop_mse_vs_gt"), f(r, "success_rate"), marker=marker, color=colour, s=14)
            if known:
                plots._log(ax, "x")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("open-loop MSE vs expert")
            ax.set_ylabel("success rate")
            rho = summary["tasks"][task]["open_loop_vs_closed_loop"]["spearman_mse_vs_gt_success"]
            ax.set_title(f"open vs closed, N={n}\n" + (f"Spearman {rho:.2f}" if rho is not None else "Spearman n/a"))
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
        fig.suptitle(f"closed loop, preset {summary['preset']}: N={summary['n_episodes'] // max(len(tasks), 1)} "
                     f"episodes per task and rule (layout seeds {summary['layout_seed']})", fontsize=9)
        fig.tight_layout(rect=(0, 0.15 / (len(tasks) + 0.7), 1, 1))  # the legend's two rows below
        for path, fmt in [(png, "png"), (svg, "svg")]:
            fig.savefig(path, format=fmt, dpi=style["dpi"])
        plt.close(fig)
