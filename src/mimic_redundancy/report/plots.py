"""Figures drawn from the metrics tables, summaries and NPZ files alone (never the model).

Every figure states its preset, N (samples) and how many seeds and prompts they come from;
curves are means over samples with 95% intervals over seeds (core.stats: on each side the wider of a Student-t interval,
on the log scale for errors, and Hesterberg's expanded percentile interval, resampling seeds; an error's band never
reaches below 0; no band with fewer than 4 seeds). Where two things are compared on
the same samples, a panel shows their paired difference with its interval, around a line at 0.

Every figure is drawn to be read at REPORT_WIDTH_PX. `snakemake --report` shows a PNG at its own pixel size
(shrunk, never grown, to the pane beside its navigation bar, which takes a fifth to a half of the window: 960 px of a
1920-px screen while a result's details are open), so each figure is plot.width inches at plot.dpi, 6.4 x 150 =
960 px by default, whatever its panels: they go in a grid of at most three columns (two where the panels carry
legends), rows plot.height * ROW_HEIGHT high, in FONTS (8 pt is 17 px at 150 dpi). tests/test_figures.py draws
each figure and checks with matplotlib's layout that no label overlaps another and that N is stated.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter  # noqa: E402
import numpy as np  # noqa: E402

from mimic_redundancy.analysis.metrics import read_csv  # noqa: E402
from mimic_redundancy.core.io import atomic_path, read_json  # noqa: E402


REPORT_WIDTH_PX = 960  # the width every figure is read at: plot.width (6.4 in) x plot.dpi (150), the defaults
ROW_HEIGHT = 0.7  # a grid's row, times plot.height: two rows are 5.9 in (880 px) at the defaults
FONTS = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "xtick.labelsize": 7.5, "ytick.labelsize": 7.5,
         "legend.fontsize": 7}


def _grid(style: dict, panels: int, columns: int = 2, row_height: float = ROW_HEIGHT):
    """A figure plot.width wide with `panels` axes in rows of `columns` (one row: plot.height high); returns the
    figure and the flat list of its cells (the last row's spare cells too: the caller uses or hides them)."""
    columns = min(columns, panels)
    rows = -(-panels // columns)
    height = style["height"] if rows == 1 else style["height"] * row_height * rows
    fig, axes = plt.subplots(rows, columns, figsize=(style["width"], height), squeeze=False)
    return fig, list(axes.flat)


def _log(ax, which: str = "y") -> None:
    """A log axis, called once its data are drawn. Under a decade matplotlib labels the minor ticks (2x10^0,
    3x10^0, ..), which run into each other at the report's width, and under two it may label one tick alone: such a
    range is labelled 1, 2, 5, 10, 20 .. instead."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    low, high = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    if high / low < 100:
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def _lines(*lines: str, width: int = 85) -> str:
    """A title of these lines, each wrapped at `width` characters: 85 at 9 pt fill most of the report's width."""
    return "\n".join(textwrap.fill(line, width) for line in lines)


def _provenance(preset: str, samples: str) -> str:
    return f"preset {preset}, {samples}"


def _band(ax, x, table, key, label, **style):
    line, = ax.plot(x, table[key], marker="o", ms=3, label=label, **style)
    low, high = table[f"{key}_ci_low"], table[f"{key}_ci_high"]
    if np.isfinite(low).any():
        ax.fill_between(x, low, high, alpha=0.2, color=line.get_color())


def _log_floor(values: np.ndarray) -> float:
    """The floor of a log MSE axis: values <= floor are the zeros of the final action itself (to float rounding)
    and are left out."""
    return 1e-9 * np.nanmax(values)


def _floor_axis(ax, means) -> None:
    """End a log axis two decades below the smallest mean drawn: a lower bound near a seed at 0 (a rule that returns
    the final action) would stretch it over decades where no mean lies; the band goes on below the axis."""
    means = np.asarray(means, dtype=np.float64)
    means = means[np.isfinite(means) & (means > 0)]
    if means.size:
        ax.set_ylim(bottom=max(ax.get_ylim()[0], means.min() / 100))


def _paired(ax, x, table, key, label, **style) -> None:
    """A paired difference with its 95% band, and the line at 0 (no difference)."""
    ax.axhline(0.0, color="grey", lw=0.8)
    _band(ax, x, table, key, label, **style)


def _save(fig, style: dict, png_path, svg_path) -> None:
    fig.tight_layout()
    for path, fmt in [(png_path, "png"), (svg_path, "svg")]:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=style["dpi"])
    plt.close(fig)


@plt.rc_context(FONTS)
def convergence_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """MSE vs the final action of x_t and of the clean prediction, and between the two, per probe step; below it
    (where the inputs have ground-truth actions) the error vs the ground truth."""
    table, summary = read_csv(table_path), read_json(summary_path)
    steps = table["step"]
    has_gt = "mse_vs_gt" in table
    fig, axes = _grid(style, 3 if has_gt else 2, columns=1)
    ax = axes[0]
    _band(ax, steps, table, "mse_vs_final", "$x_t$ vs final action")
    _band(ax, steps, table, "mse_clean_vs_final", "clean prediction $\\hat{x}_1$ vs final (early exit)")
    _band(ax, steps, table, "mse_xt_vs_clean", "$x_t$ vs $\\hat{x}_1$", ls="--")
    step, threshold = summary["convergence_step"], summary["convergence_threshold"]
    ax.axhline(summary["target_mse"], color="grey", ls=":", lw=1,
               label=f"{threshold:.0%} of the step-{summary['reference_step']} error gone")
    if step is not None:
        ax.axvline(step, color="grey", ls="--", lw=1, label=f"{threshold:.0%} convergence of $x_t$: step {step}")
    if style["log_y"]:
        _log(ax)  # the final step's 0 is simply not drawn
    ax.set_xlabel(f"Euler step (of {summary['steps']})")
    ax.set_ylabel("MSE")
    ax.set_title(_lines("Action denoising convergence, mean and 95% interval over seeds",
                        _provenance(summary["preset"], summary["samples"])))
    ax.legend()
    diff_ax = axes[-1]
    _paired(diff_ax, steps, table, "diff_xt_minus_clean_vs_final", "vs the final action")
    if has_gt:
        _paired(diff_ax, steps, table, "diff_xt_minus_clean_vs_gt", "vs ground truth")
    diff_ax.set_xlabel(f"Euler step (of {summary['steps']})")
    diff_ax.set_ylabel("MSE of $x_t$ minus $\\hat{x}_1$'s")
    diff_ax.set_title(f"Paired difference on the same samples (above 0: $\\hat{{x}}_1$ is closer), N={summary['n_samples']}")
    diff_ax.legend()
    if has_gt:
        gt_ax = axes[1]
        _band(gt_ax, steps, table, "mse_vs_gt", "$x_t$ vs ground truth")
        _band(gt_ax, steps, table, "mse_clean_vs_gt", "clean prediction vs ground truth")
        if style["log_y"]:
            _log(gt_ax)
        gt_ax.set_xlabel(f"Euler step (of {summary['steps']})")
        gt_ax.set_ylabel("MSE vs ground truth")
        gt_ax.set_title(f"Error vs ground truth, mean and 95% interval, N={summary['n_samples_gt']} samples with "
                        "ground-truth actions")
        gt_ax.legend()
    _save(fig, style, png_path, svg_path)


@plt.rc_context(FONTS)
def heatmap_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """Remaining error per action dimension and per chunk position (relative to the first probe step), from
    mse_by_part.csv (metrics.part_rows)."""
    table, summary = read_csv(table_path, text_columns=("axis",)), read_json(summary_path)
    steps = sorted({int(s) for s in table["step"]})
    fig, axes = _grid(style, 2)
    for ax, part in zip(axes, ["dimension", "position"]):
        name = {"dimension": "action dimension", "position": "chunk position"}[part]
        rows = table["axis"] == part
        parts = int(table["index"][rows].max()) + 1
        relative = np.full((parts, len(steps)), np.nan)
        relative[table["index"][rows].astype(int), [steps.index(int(s)) for s in table["step"][rows]]] = \
            table["relative_to_first_step"][rows]
        image = ax.imshow(relative, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1,
                          extent=(-0.5, len(steps) - 0.5, -0.5, parts - 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))  # at most 8 of the probe steps labelled
        ax.xaxis.set_major_formatter(lambda x, _: str(steps[int(x)]) if 0 <= x < len(steps) else "")
        ax.set_xlabel("Euler step")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name)
        ax.set_title(f"MSE vs final per {name}\n(relative to step {steps[0]})")
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.suptitle(_lines(_provenance(summary["preset"], summary["samples"])))
    _save(fig, style, png_path, svg_path)


@plt.rc_context(FONTS)
def sweep_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """Quality vs number of function evaluations, and wall time per K (sweep.csv; provenance from convergence.json)."""
    table, summary = read_csv(table_path), read_json(summary_path)
    nfe = table["nfe"]
    fig, (ax, ax_time, ax_diff, spare) = _grid(style, 4)
    spare.axis("off")
    for key, label in [("mse_vs_main", f"vs main run ({int(table['main_steps'][0])} steps)"),
                       ("mse_vs_reference", f"vs reference ({int(table['reference_steps'][0])} steps)")]:
        keep = table[key] > 0  # a log axis cannot show the 0 of K = the main run's steps
        _band(ax, nfe[keep], {k: v[keep] for k, v in table.items()}, key, label)
    _log(ax, "x")
    _log(ax)
    ax.set_xlabel("function evaluations K (Euler steps)")
    ax.set_ylabel("MSE of final actions")
    ax.set_title("Quality vs NFE, mean and 95% interval")
    ax.legend()
    main = int(table["main_steps"][0])
    _paired(ax_diff, nfe, table, "diff_vs_reference_minus_main", f"K steps minus {main} steps")
    _log(ax_diff, "x")
    ax_diff.set_xlabel("function evaluations K")
    ax_diff.set_ylabel("MSE vs reference, paired difference")
    ax_diff.set_title(f"K vs the {main}-step main run, same samples\n(above 0: K is further from the reference), "
                      f"N={int(table['n_samples'][0])}")
    ax_time.plot(nfe, table["wall_seconds"], marker="o")
    _log(ax_time, "x")
    ax_time.set_xlabel("function evaluations K")
    ax_time.set_ylabel(f"wall seconds for all {int(table['n_samples'][0])} samples")
    ax_time.set_title(f"Sampling time (median of {int(table['timing_repeats'][0])})")
    fig.suptitle(_lines(_provenance(summary["preset"], summary["samples"]) + f", device {summary['device']}"))
    _save(fig, style, png_path, svg_path)


@plt.rc_context(FONTS)
def backbone_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """How much the per-step recomputed video hiddens move, and what it does to the final actions."""
    table, summary = read_csv(table_path), read_json(summary_path)
    steps = table["step"]
    fig, (ax, ax_cos) = _grid(style, 2)
    _band(ax, steps, table, "rel_diff_vs_cached", "vs hiddens cached once (step 1)")
    _band(ax, steps[1:], {k: v[1:] for k, v in table.items()}, "rel_diff_vs_previous", "vs previous step")
    ax.set_xlabel("action step")
    ax.set_ylabel("relative difference of video hiddens")
    ax.set_title("video hiddens move, mean and 95% CI")
    ax.legend()
    _band(ax_cos, steps, table, "cosine_vs_cached", "cosine vs cached")
    ax_cos.set_xlabel("action step")
    ax_cos.set_ylabel("cosine similarity vs cached hiddens")
    ax_cos.set_title("cosine vs cached, mean and 95% CI")
    modes, spread = summary["final_mse_between_modes"], summary["final_mse_seed_to_seed"]
    noise = "fixed" if summary["fixed_video_noise"] else "fresh"
    fig.suptitle(_lines(f"Video-backbone recompute at every action step ({noise} video noise)",
                        _provenance(summary["preset"], summary["samples"]),
                        f"final actions: MSE between modes {modes:.3g}, seed-to-seed "
                        + ("n/a (one seed)" if spread is None else f"{spread:.3g}"),
                        f"time: recompute {summary['seconds_recompute']:.1f} s vs cached "
                        f"{summary['seconds_cached']:.1f} s"))
    _save(fig, style, png_path, svg_path)


EARLY_STOP_LINES = [("fixed_step_xt", "stop at step k, return $x_k$"),
                    ("fixed_step_clean", "stop at step k, return $\\hat{x}_1$"),
                    ("fixed_k", "sample with K steps (sweep)"),
                    ("clean_change_curve", "clean-change rule, every threshold"),
                    ("clean_change", "clean-change rule, early_stop.eps")]


@plt.rc_context(FONTS)
def early_stop_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """Error against NFE of every stopping rule (means, 95% CIs), against the final action, the fine reference
    and the ground truth (where known); the calibrated clean-change rule on the evaluation half is starred. One
    legend for every panel, in the grid's next cell."""
    table, summary = read_csv(table_path, text_columns=("rule", "half")), read_json(summary_path)
    targets = [("vs_final", "MSE vs the final action"),
               ("vs_reference", f"MSE vs the {summary['reference_steps']}-step reference")]
    if summary["n_samples_gt"]:
        targets.append(("vs_gt", f"MSE vs ground truth (N={summary['n_samples_gt']})"))
    paired = "vs_gt" if summary["n_samples_gt"] else "vs_reference"
    fig, cells = _grid(style, len(targets) + 2)
    axes, diff_ax, legend_cell = cells[:len(targets)], cells[len(targets)], cells[len(targets) + 1]

    def lines(ax, key, floor=None):
        for rule, name in EARLY_STOP_LINES:
            keep = (table["rule"] == rule) & (table["half"] == "all")
            if floor is not None:  # a log axis: leave out the zeros of returning the final action itself
                keep &= table[key] > floor
            order = np.argsort(table["nfe_mean"][keep], kind="stable")
            part = {k: v[keep][order] for k, v in table.items()}
            style_ = {"ls": "none"} if rule == "clean_change" else {}
            _band(ax, part["nfe_mean"], part, key, name, **style_)

    for ax, (target, label) in zip(axes, targets):
        key = f"mse_{target}"
        floor = _log_floor(table[key])
        lines(ax, key, floor)
        chosen = (table["rule"] == "clean_change") & (table["half"] == "evaluation")
        if chosen.any():
            ax.plot(table["nfe_mean"][chosen], table[f"mse_{target}"][chosen], marker="*", ms=14, ls="none",
                    color="black", label=f"calibrated eps {table['param'][chosen][0]:g}, evaluation half")
        if target == "vs_final":
            ax.axhline(summary["target_mse"], color="grey", ls=":", lw=1,
                       label=f"target: {summary['target_fraction']:g} x step-{summary['target_step']} error")
        _log(ax, "x")
        _log(ax)
        _floor_axis(ax, table[key][(table["half"] == "all") & (table[key] > floor)])
        ax.set_xlabel("model evaluations per sample (NFE, mean)")
        ax.set_ylabel(label)
    diff_ax.axhline(0.0, color="grey", lw=0.8)
    lines(diff_ax, f"diff_{paired}_minus_full")
    _log(diff_ax, "x")
    diff_ax.set_xlabel("model evaluations per sample (NFE, mean)")
    diff_ax.set_ylabel(f"{dict(targets)[paired].split(' (')[0]}:\nrule minus the full run")
    diff_ax.set_title("paired difference to the full run\n(above 0: the rule is worse)")
    legend_cell.legend(*axes[0].get_legend_handles_labels(), loc="center", fontsize=7)
    for cell in cells[len(targets) + 1:]:
        cell.axis("off")
    fig.suptitle(_lines("Early stopping: error vs NFE, mean and 95% interval over seeds",
                        _provenance(summary["preset"], summary["samples"]),
                        f"calibrated on seeds {summary['calibration_seeds']} ({summary['n_calibration']} samples), "
                        f"evaluated on seeds {summary['evaluation_seeds']} ({summary['n_evaluation']})"))
    _save(fig, style, png_path, svg_path)


@plt.rc_context(FONTS)
def depth_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """Per video-denoising time: the final actions vs time 0's (with the seed-to-seed spread) and vs the ground
    truth, the hiddens' distance to time 0's, and the backbone seconds per sample."""
    table, summary = read_csv(table_path), read_json(summary_path)
    times = table["video_time"]
    fig, (ax, legend_cell, ax_hidden, ax_time) = _grid(style, 4)  # the first panel's legend beside it
    _band(ax, times, table, "mse_vs_time0", "final actions vs time 0's")
    _band(ax, times, table, "mse_seed_to_seed", f"seed-to-seed spread ({int(table['n_seed_pairs'][0])} pairs)", ls="--")
    if summary["n_samples_gt"]:
        _band(ax, times, table, "mse_vs_gt", f"vs ground truth (N={summary['n_samples_gt']})")
        _paired(ax, times, table, "diff_vs_gt_minus_time0", "vs ground truth minus time 0's (paired)", ls=":")
    ax.set_xlabel("video-denoising time (0 clean .. 1 noise)")
    ax.set_ylabel(f"MSE of final actions ({summary['steps']} steps)")
    ax.set_title("final actions")
    legend_cell.legend(*ax.get_legend_handles_labels(), loc="center left", title="final actions (left)")
    legend_cell.axis("off")
    _band(ax_hidden, times, table, "hidden_cosine_vs_time0", "cosine")
    _band(ax_hidden, times, table, "hidden_rel_diff_vs_time0", "relative difference")
    ax_hidden.set_xlabel("video-denoising time")
    ax_hidden.set_ylabel("video hiddens vs time 0's")
    ax_hidden.set_title("video hiddens")
    ax_hidden.legend()
    _band(ax_time, times, table, "backbone_seconds", "backbone pass")
    ax_time.set_xlabel("video-denoising time")
    ax_time.set_ylabel(f"seconds per sample ({summary['device']}, batch 1)")
    ax_time.set_title("backbone time")
    note = ["RANDOM tiny backbone: checks the pipeline, not a finding."] if summary["random_backbone"] else []
    fig.suptitle(_lines(*note, "Video-denoising depth, mean and 95% interval over seeds (the spread's: over windows)",
                        _provenance(summary["preset"], summary["samples"])))
    _save(fig, style, png_path, svg_path)


@plt.rc_context(FONTS)
def train_loss_figure(loss_paths, summary_paths, style: dict, png_path, svg_path) -> None:
    """The training loss per step (log scale) with a running mean over a tenth of the steps, one curve per policy
    (train.seeds; a single path: one policy)."""
    loss_paths = [loss_paths] if isinstance(loss_paths, (str, Path)) else list(loss_paths)
    summary_paths = [summary_paths] if isinstance(summary_paths, (str, Path)) else list(summary_paths)
    fig, (ax,) = _grid(style, 1)
    summaries = [read_json(path) for path in summary_paths]
    for k, (loss_path, summary) in enumerate(zip(loss_paths, summaries)):
        table = read_csv(loss_path)
        label = f"seed {summary['seed']}" if len(loss_paths) > 1 else "loss per step"
        ax.plot(table["step"], table["loss"], lw=0.8, alpha=0.5 if len(loss_paths) == 1 else 0.15, color=f"C{k}",
                label=None if len(loss_paths) > 1 else label)
        window = summary["steps_per_tenth"]
        if len(table["loss"]) >= window:
            running = np.convolve(table["loss"], np.ones(window) / window, mode="valid")
            ax.plot(table["step"][window - 1:], running, lw=2, color=f"C{k}" if len(loss_paths) > 1 else "C1",
                    label=f"{label + ': ' if len(loss_paths) > 1 else ''}running mean of {window} steps")
    _log(ax)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MimicVideo flow-matching loss")
    first = summaries[0]
    seeds = ", ".join(str(s["seed"]) for s in summaries)
    ratios = ", ".join(f"{s['loss_ratio']:.3f}" for s in summaries)
    ax.set_title(_lines(f"Training the action head on N={first['windows']} {first['source']} windows, batch "
                        f"{first['batch_size']}, lr {first['lr']:g}, {len(summaries)} polic"
                        f"{'y' if len(summaries) == 1 else 'ies'} (seed {seeds})",
                        f"mean loss first tenth {first['loss_first_tenth']:.3g} -> last tenth "
                        f"{first['loss_last_tenth']:.3g} (ratio {ratios}), {first['seconds']:.0f} s", width=90),
                 fontsize=8)
    ax.legend()
    _save(fig, style, png_path, svg_path)


@plt.rc_context(FONTS)
def comparison_figure(runs: dict, style: dict, png_path, svg_path) -> None:
    """Presets side by side: convergence to the final action, error vs ground truth (where known), quality vs
    NFE, the threshold-free clean-change stopping curve and the video-depth effect, in a grid of three columns;
    the last cell is the legend, one entry per preset with its convergence step, calibrated stopping rule and
    backbone. `runs`: preset -> {"metrics": metrics.csv columns, "summary": convergence.json, "sweep": sweep.csv
    columns, "early_stop", "depth": their tables' columns, "early_stop_summary", "depth_summary": their JSON}."""
    has_gt = all("mse_vs_gt" in r["metrics"] for r in runs.values())
    panels = 6 if has_gt else 5
    fig, cells = _grid(style, panels + 1, columns=3, row_height=0.65)
    ax_final, ax_gt = cells[0], cells[1] if has_gt else None
    ax_sweep, ax_stop, ax_depth, ax_paired = cells[panels - 4:panels]
    paired = "diff_vs_gt" if has_gt else "diff_vs_final"
    first = next(iter(runs))
    ax_paired.axhline(0.0, color="grey", lw=0.8)
    entries, stop_means = [], []
    for preset, run in runs.items():
        summary, metrics = run["summary"], run["metrics"]
        line, = ax_final.plot([], [])  # the preset's colour, the same in every panel
        style_ = {"color": line.get_color()}
        _band(ax_final, metrics["step"], metrics, "mse_vs_final", preset, **style_)
        if has_gt:
            _band(ax_gt, metrics["step"], metrics, "mse_vs_gt", preset, **style_)
        keep = run["sweep"]["mse_vs_reference"] > 0
        _band(ax_sweep, run["sweep"]["nfe"][keep], {k: v[keep] for k, v in run["sweep"].items()},
              "mse_vs_reference", preset, **style_)
        table, chosen = run["early_stop"], run["early_stop_summary"]["calibrated"]["clean_change"]
        curve = (table["rule"] == "clean_change_curve") & (table["mse_vs_final"] > _log_floor(table["mse_vs_final"]))
        order = np.argsort(table["nfe_mean"][curve], kind="stable")
        part = {k: v[curve][order] for k, v in table.items()}
        _band(ax_stop, part["nfe_mean"], part, "mse_vs_final", preset, **style_)
        stop_means += list(part["mse_vs_final"])
        if run["paired"] is not None:
            _band(ax_paired, run["paired"]["step"], run["paired"], paired, preset, **style_)
        depth = run["depth"]
        _band(ax_depth, depth["video_time"], depth, "mse_vs_time0", preset, **style_)
        saved = chosen["nfe_saved_evaluation"]  # None: the target is not reached, or no evaluation half (one seed)
        eps = "target not reached" if chosen["param"] is None else f"eps {chosen['param']:g}" + \
            ("" if saved is None else f" saves {saved:.1f} NFE")
        entries.append((line, f"{preset}\n{summary['convergence_threshold']:.0%} converged: step "
                              f"{summary['convergence_step']}\nstop: {eps}"
                        + ("\nrandom video backbone" if run["depth_summary"]["random_backbone"] else "")))
    ax_final.set_title("$x_t$ vs its own final action")
    ax_final.set_xlabel("Euler step")
    ax_final.set_ylabel("MSE")
    if has_gt:
        _log(ax_gt)
        ax_gt.set_title("$x_t$ vs ground-truth actions")
        ax_gt.set_xlabel("Euler step")
        ax_gt.set_ylabel("MSE")
    _log(ax_sweep, "x")
    _log(ax_sweep)
    ax_sweep.set_title("K steps vs the reference")
    ax_sweep.set_xlabel("function evaluations K")
    ax_sweep.set_ylabel("MSE of final actions")
    _log(ax_stop, "x")
    _log(ax_stop)
    _floor_axis(ax_stop, stop_means)
    ax_stop.set_title("clean-change stop, every eps")
    ax_stop.set_xlabel("NFE per sample (mean)")
    ax_stop.set_ylabel("MSE vs final action")
    ax_depth.set_title("video depth vs time 0")
    ax_depth.set_xlabel("video time (0 clean .. 1 noise)")
    ax_depth.set_ylabel("MSE of final actions")
    ax_paired.set_title(f"paired difference to {first}\n(above 0: worse than {first})")
    ax_paired.set_xlabel("Euler step")
    ax_paired.set_ylabel("MSE of $x_t$ vs " + ("ground truth" if has_gt else "its final action"))
    cells[panels].legend(*zip(*entries), loc="center", fontsize=7, labelspacing=1.0)
    for cell in cells[panels:]:
        cell.axis("off")
    first = runs[first]["summary"]
    fig.suptitle(_lines(f"{' vs '.join(runs)}: mean and 95% interval over seeds", f"each over {first['samples']}"))
    _save(fig, style, png_path, svg_path)
