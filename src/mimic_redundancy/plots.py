"""Figures drawn from the metrics tables, summaries and NPZ files alone (never the model).

Every figure states its preset, N (samples) and how many seeds and prompts they come from;
curves are means over samples with 95% Student-t confidence bands.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path, read_json  # noqa: E402
from .metrics import read_csv  # noqa: E402


def _provenance(preset: str, samples: str) -> str:
    return f"preset {preset}, {samples}"


def _band(ax, x, table, key, label, **style):
    line, = ax.plot(x, table[key], marker="o", ms=3, label=label, **style)
    low, high = table[f"{key}_ci_low"], table[f"{key}_ci_high"]
    if np.isfinite(low).any():
        ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())


def _log_floor(values: np.ndarray) -> tuple[float, float]:
    """(floor, bottom) of a log MSE axis: values <= floor are the zeros of the final action itself (to float
    rounding) and are left out; CI bounds are cut at bottom."""
    floor = 1e-9 * np.nanmax(values)
    return floor, np.nanmin(values[values > floor]) / 10


def _save(fig, style: dict, png_path, svg_path) -> None:
    fig.tight_layout()
    for path, fmt in [(png_path, "png"), (svg_path, "svg")]:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=style["dpi"])
    plt.close(fig)


def convergence_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """MSE vs the final action of x_t and of the clean prediction, and between the two, per probe step."""
    table, summary = read_csv(table_path), read_json(summary_path)
    steps = table["step"]
    has_gt = "mse_vs_gt" in table
    fig, axes = plt.subplots(1, 2 if has_gt else 1, figsize=(style["width"] * (1.6 if has_gt else 1), style["height"]),
                             squeeze=False)
    ax = axes[0, 0]
    _band(ax, steps, table, "mse_vs_final", "$x_t$ vs final action")
    _band(ax, steps, table, "mse_clean_vs_final", "clean prediction $\\hat{x}_1$ vs final (early exit)")
    _band(ax, steps, table, "mse_xt_vs_clean", "$x_t$ vs $\\hat{x}_1$", ls="--")
    step, threshold = summary["convergence_step"], summary["convergence_threshold"]
    ax.axhline(summary["target_mse"], color="grey", ls=":", lw=1,
               label=f"{threshold:.0%} of the step-{summary['reference_step']} error gone")
    if step is not None:
        ax.axvline(step, color="grey", ls="--", lw=1, label=f"{threshold:.0%} convergence of $x_t$: step {step}")
    if style["log_y"]:
        ax.set_yscale("log")  # the final step's 0 is simply not drawn
    ax.set_xlabel(f"Euler step (of {summary['steps']})")
    ax.set_ylabel("MSE")
    ax.set_title("Action denoising convergence, mean and 95% CI\n"
                 + _provenance(summary["preset"], summary["samples"]), fontsize=9)
    ax.legend(fontsize=7)
    if has_gt:
        gt_ax = axes[0, 1]
        _band(gt_ax, steps, table, "mse_vs_gt", "$x_t$ vs ground truth")
        _band(gt_ax, steps, table, "mse_clean_vs_gt", "clean prediction vs ground truth")
        if style["log_y"]:
            gt_ax.set_yscale("log")
        gt_ax.set_xlabel(f"Euler step (of {summary['steps']})")
        gt_ax.set_ylabel("MSE vs ground-truth actions")
        gt_ax.set_title(f"Error vs ground truth, mean and 95% CI\n{summary['n_samples_gt']} samples with "
                        "ground-truth actions", fontsize=9)
        gt_ax.legend(fontsize=7)
    _save(fig, style, png_path, svg_path)


def heatmap_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """Remaining error per action dimension and per chunk position (relative to the first probe step), from
    mse_by_part.csv (metrics.part_rows)."""
    table, summary = read_csv(table_path, text_columns=("axis",)), read_json(summary_path)
    steps = sorted({int(s) for s in table["step"]})
    fig, axes = plt.subplots(1, 2, figsize=(style["width"] * 1.6, style["height"]))
    for ax, part in zip(axes, ["dimension", "position"]):
        name = {"dimension": "action dimension", "position": "chunk position"}[part]
        rows = table["axis"] == part
        parts = int(table["index"][rows].max()) + 1
        relative = np.full((parts, len(steps)), np.nan)
        relative[table["index"][rows].astype(int), [steps.index(int(s)) for s in table["step"][rows]]] = \
            table["relative_to_first_step"][rows]
        image = ax.imshow(relative, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                          extent=(-0.5, len(steps) - 0.5, -0.5, parts - 0.5))
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
        ax.set_xlabel("Euler step")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.set_title(f"MSE vs final per {name}\n(relative to step {steps[0]})", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(_provenance(summary["preset"], summary["samples"]), fontsize=9)
    _save(fig, style, png_path, svg_path)


def sweep_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """Quality vs number of function evaluations, and wall time per K (sweep.csv; provenance from convergence.json)."""
    table, summary = read_csv(table_path), read_json(summary_path)
    nfe = table["nfe"]
    fig, (ax, ax_time) = plt.subplots(1, 2, figsize=(style["width"] * 1.6, style["height"]))
    for key, label in [("mse_vs_main", f"vs main run ({int(table['main_steps'][0])} steps)"),
                       ("mse_vs_reference", f"vs reference ({int(table['reference_steps'][0])} steps)")]:
        keep = table[key] > 0  # a log axis cannot show the 0 of K = the main run's steps
        _band(ax, nfe[keep], {k: v[keep] for k, v in table.items()}, key, label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("function evaluations K (Euler steps)")
    ax.set_ylabel("MSE of final actions")
    ax.set_title("Quality vs NFE, mean and 95% CI", fontsize=9)
    ax.legend(fontsize=7)
    ax_time.plot(nfe, table["wall_seconds"], marker="o")
    ax_time.set_xscale("log")
    ax_time.set_xlabel("function evaluations K")
    ax_time.set_ylabel(f"wall seconds for all {int(table['n_samples'][0])} samples")
    ax_time.set_title(f"Sampling time (median of {int(table['timing_repeats'][0])})", fontsize=9)
    fig.suptitle(_provenance(summary["preset"], summary["samples"]) + f", device {summary['device']}", fontsize=9)
    _save(fig, style, png_path, svg_path)


def backbone_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """How much the per-step recomputed video hiddens move, and what it does to the final actions."""
    table, summary = read_csv(table_path), read_json(summary_path)
    steps = table["step"]
    fig, (ax, ax_cos) = plt.subplots(1, 2, figsize=(style["width"] * 1.6, style["height"]))
    _band(ax, steps, table, "rel_diff_vs_cached", "vs hiddens cached once (step 1)")
    _band(ax, steps[1:], {k: v[1:] for k, v in table.items()}, "rel_diff_vs_previous", "vs previous step")
    ax.set_xlabel("action step")
    ax.set_ylabel("relative difference of video hiddens")
    ax.legend(fontsize=7)
    _band(ax_cos, steps, table, "cosine_vs_cached", "cosine vs cached")
    ax_cos.set_xlabel("action step")
    ax_cos.set_ylabel("cosine similarity")
    modes, spread = summary["final_mse_between_modes"], summary["final_mse_seed_to_seed"]
    ax_cos.set_title(f"final actions: MSE between modes {modes:.3g}, seed-to-seed {spread if spread is None else f'{spread:.3g}'}\n"
                     f"time: recompute {summary['seconds_recompute']:.1f} s vs cached {summary['seconds_cached']:.1f} s",
                     fontsize=8)
    noise = "fixed" if summary["fixed_video_noise"] else "fresh"
    fig.suptitle(f"Video-backbone recompute at every action step ({noise} video noise); "
                 + _provenance(summary["preset"], summary["samples"]), fontsize=9)
    _save(fig, style, png_path, svg_path)


EARLY_STOP_LINES = [("fixed_step_xt", "stop at step k, return $x_k$"),
                    ("fixed_step_clean", "stop at step k, return $\\hat{x}_1$"),
                    ("fixed_k", "sample with K steps (sweep)"),
                    ("clean_change_curve", "clean-change rule, every threshold"),
                    ("clean_change", "clean-change rule, early_stop.eps")]


def early_stop_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """Error against NFE of every stopping rule (means, 95% CIs), against the final action, the fine reference
    and the ground truth (where known); the calibrated clean-change rule on the evaluation half is starred."""
    table, summary = read_csv(table_path, text_columns=("rule", "half")), read_json(summary_path)
    targets = [("vs_final", "MSE vs the final action"),
               ("vs_reference", f"MSE vs the {summary['reference_steps']}-step reference")]
    if summary["n_samples_gt"]:
        targets.append(("vs_gt", f"MSE vs ground truth ({summary['n_samples_gt']} samples)"))
    fig, axes = plt.subplots(1, len(targets), figsize=(style["width"] * 0.8 * len(targets), style["height"]))
    for ax, (target, label) in zip(axes, targets):
        key = f"mse_{target}"
        # a log axis: leave out the zeros of returning the final action itself (to float rounding) and cut the
        # CI bounds at the axis floor
        floor, bottom = _log_floor(table[key])
        for rule, name in EARLY_STOP_LINES:
            keep = (table["rule"] == rule) & (table["half"] == "all") & (table[key] > floor)
            order = np.argsort(table["nfe_mean"][keep], kind="stable")
            part = {k: v[keep][order] for k, v in table.items()}
            part[f"{key}_ci_low"] = np.maximum(part[f"{key}_ci_low"], bottom)
            style_ = {"ls": "none"} if rule == "clean_change" else {}
            _band(ax, part["nfe_mean"], part, key, name, **style_)
        chosen = (table["rule"] == "clean_change") & (table["half"] == "evaluation")
        if chosen.any():
            ax.plot(table["nfe_mean"][chosen], table[f"mse_{target}"][chosen], marker="*", ms=14, ls="none",
                    color="black", label=f"calibrated eps {table['param'][chosen][0]:g}, evaluation half")
        if target == "vs_final":
            ax.axhline(summary["target_mse"], color="grey", ls=":", lw=1,
                       label=f"target: {summary['target_fraction']:g} x step-{summary['target_step']} error")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=bottom)
        ax.set_xlabel("model evaluations per sample (NFE, mean)")
        ax.set_ylabel(label)
        ax.legend(fontsize=6)
    fig.suptitle(f"Early stopping: error vs NFE, mean and 95% CI (cut at the axis); {_provenance(summary['preset'], summary['samples'])}"
                 f"; calibrated on seeds {summary['calibration_seeds']} ({summary['n_calibration']} samples), "
                 f"evaluated on seeds {summary['evaluation_seeds']} ({summary['n_evaluation']})", fontsize=8)
    _save(fig, style, png_path, svg_path)


def depth_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """Per video-denoising time: the final actions vs time 0's (with the seed-to-seed spread) and vs the ground
    truth, the hiddens' distance to time 0's, and the backbone seconds per sample."""
    table, summary = read_csv(table_path), read_json(summary_path)
    times = table["video_time"]
    fig, (ax, ax_hidden, ax_time) = plt.subplots(1, 3, figsize=(style["width"] * 2.2, style["height"]))
    _band(ax, times, table, "mse_vs_time0", "final actions vs time 0's")
    _band(ax, times, table, "mse_seed_to_seed", f"seed-to-seed spread ({int(table['n_seed_pairs'][0])} pairs)", ls="--")
    if summary["n_samples_gt"]:
        _band(ax, times, table, "mse_vs_gt", f"vs ground truth ({summary['n_samples_gt']} samples)")
    ax.set_xlabel("video-denoising time (0 clean .. 1 noise)")
    ax.set_ylabel(f"MSE of final actions ({summary['steps']} steps)")
    ax.legend(fontsize=7)
    _band(ax_hidden, times, table, "hidden_cosine_vs_time0", "cosine")
    _band(ax_hidden, times, table, "hidden_rel_diff_vs_time0", "relative difference")
    ax_hidden.set_xlabel("video-denoising time")
    ax_hidden.set_ylabel("video hiddens vs time 0's")
    ax_hidden.legend(fontsize=7)
    _band(ax_time, times, table, "backbone_seconds", "backbone pass")
    ax_time.set_xlabel("video-denoising time")
    ax_time.set_ylabel(f"backbone seconds per sample ({summary['device']}, batch 1)")
    note = "RANDOM tiny backbone: checks the pipeline, not a finding. " if summary["random_backbone"] else ""
    fig.suptitle(f"{note}Video-denoising depth, mean and 95% CI; "
                 f"{_provenance(summary['preset'], summary['samples'])}", fontsize=9)
    _save(fig, style, png_path, svg_path)


def train_loss_figure(loss_path, summary_path, style: dict, png_path, svg_path) -> None:
    """The training loss per step (log scale) with a running mean over a tenth of the steps."""
    table, summary = read_csv(loss_path), read_json(summary_path)
    fig, ax = plt.subplots(figsize=(style["width"], style["height"]))
    ax.plot(table["step"], table["loss"], lw=0.8, alpha=0.5, label="loss per step")
    window = summary["steps_per_tenth"]
    if len(table["loss"]) >= window:
        running = np.convolve(table["loss"], np.ones(window) / window, mode="valid")
        ax.plot(table["step"][window - 1:], running, lw=2, label=f"running mean of {window} steps")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MimicVideo flow-matching loss")
    ax.set_title(f"Training the action head on {summary['windows']} {summary['source']} windows, batch "
                 f"{summary['batch_size']}, lr {summary['lr']:g}, seed {summary['seed']}\n"
                 f"mean loss first tenth {summary['loss_first_tenth']:.3g} -> last tenth "
                 f"{summary['loss_last_tenth']:.3g} (ratio {summary['loss_ratio']:.3f}), {summary['seconds']:.0f} s",
                 fontsize=8)
    ax.legend(fontsize=7)
    _save(fig, style, png_path, svg_path)


def comparison_figure(runs: dict, style: dict, png_path, svg_path) -> None:
    """Presets side by side: convergence to the final action, error vs ground truth, and quality vs NFE.
    `runs`: preset -> {"metrics": metrics.csv columns, "summary": convergence.json, "sweep": sweep.csv columns,
    "early_stop", "depth": their tables' columns, "early_stop_summary", "depth_summary": their JSON}; two more
    panels: the threshold-free clean-change stopping curve and the video-depth effect."""
    has_gt = all("mse_vs_gt" in r["metrics"] for r in runs.values())
    panels = 3 if has_gt else 2
    fig, all_axes = plt.subplots(1, panels + 2, figsize=(style["width"] * (panels + 2) * 0.8, style["height"]))
    axes, (ax_stop, ax_depth) = all_axes[:panels], all_axes[panels:]
    for preset, run in runs.items():
        table, chosen = run["early_stop"], run["early_stop_summary"]["calibrated"]["clean_change"]
        floor, bottom = _log_floor(table["mse_vs_final"])
        curve = (table["rule"] == "clean_change_curve") & (table["mse_vs_final"] > floor)
        order = np.argsort(table["nfe_mean"][curve], kind="stable")
        part = {k: v[curve][order] for k, v in table.items()}
        part["mse_vs_final_ci_low"] = np.maximum(part["mse_vs_final_ci_low"], bottom)
        saved = chosen["nfe_saved_evaluation"]  # None: the target is not reached, or no evaluation half (one seed)
        eps = "target not reached" if chosen["param"] is None else f"eps {chosen['param']:g}" + \
            ("" if saved is None else f" saves {saved:.1f} NFE")
        _band(ax_stop, part["nfe_mean"], part, "mse_vs_final", f"{preset} ({eps})")
        depth = run["depth"]
        _band(ax_depth, depth["video_time"], depth, "mse_vs_time0",
              f"{preset}" + (" (random backbone)" if run["depth_summary"]["random_backbone"] else ""))
    ax_stop.set_title("clean-change stopping, every threshold\n(calibrated eps judged on the held-out seeds)", fontsize=9)
    ax_stop.set_xlabel("NFE per sample (mean)")
    ax_stop.set_ylabel("MSE vs final action")
    ax_stop.set_xscale("log")
    ax_stop.set_yscale("log")
    ax_depth.set_title("video-denoising depth: final actions vs time 0's", fontsize=9)
    ax_depth.set_xlabel("video-denoising time (0 clean .. 1 noise)")
    ax_depth.set_ylabel("MSE")
    ax_stop.legend(fontsize=7)
    ax_depth.legend(fontsize=7)
    for preset, run in runs.items():
        summary = run["summary"]
        label = f"{preset} ({summary['convergence_threshold']:.0%}: step {summary['convergence_step']})"
        _band(axes[0], run["metrics"]["step"], run["metrics"], "mse_vs_final", label)
        keep = run["sweep"]["mse_vs_reference"] > 0
        _band(axes[-1], run["sweep"]["nfe"][keep], {k: v[keep] for k, v in run["sweep"].items()},
              "mse_vs_reference", preset)
        if has_gt:
            _band(axes[1], run["metrics"]["step"], run["metrics"], "mse_vs_gt", preset)
    axes[0].set_title("$x_t$ vs its own final action", fontsize=9)
    axes[0].set_xlabel("Euler step")
    axes[0].set_ylabel("MSE")
    if has_gt:
        axes[1].set_title("$x_t$ vs ground-truth actions", fontsize=9)
        axes[1].set_xlabel("Euler step")
        axes[1].set_yscale("log")
    axes[-1].set_title("final actions with K steps vs the fine reference", fontsize=9)
    axes[-1].set_xlabel("function evaluations K")
    axes[-1].set_xscale("log")
    axes[-1].set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=7)
    first = next(iter(runs.values()))["summary"]
    fig.suptitle(f"{' vs '.join(runs)}: mean and 95% CI, each over {first['samples']}", fontsize=9)
    _save(fig, style, png_path, svg_path)
