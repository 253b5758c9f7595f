"""Figures drawn from the metrics table and summary alone (never the model)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .io import atomic_path, read_json  # noqa: E402
from .metrics import read_table  # noqa: E402


def convergence_figure(table_path, summary_path, style: dict, png_path, svg_path) -> None:
    """MSE vs the final action of x_t and of the clean prediction per probe step, mean +- 1 std over samples."""
    table, summary = read_table(table_path), read_json(summary_path)
    steps = table["step"]
    keep = table["mse_vs_final"] > 0 if style["log_y"] else steps == steps  # log axis cannot show the final 0
    fig, ax = plt.subplots(figsize=(style["width"], style["height"]))
    for key, label in [("mse_vs_final", "intermediate actions $x_t$"),
                       ("mse_clean_vs_final", "clean prediction $\\hat{x}_1$")]:
        mean, std = table[key][keep], table[f"{key}_std"][keep]
        ax.plot(steps[keep], mean, marker="o", label=label)
        ax.fill_between(steps[keep], mean - std, mean + std, alpha=0.2)
    step, threshold = summary["convergence_step"], summary["convergence_threshold"]
    ax.axhline(summary["target_mse"], color="grey", ls=":", lw=1,
               label=f"{threshold:.0%} of the step-{summary['reference_step']} error gone")
    if step is not None:
        ax.axvline(step, color="grey", ls="--", lw=1, label=f"{threshold:.0%} convergence: step {step}")
    if style["log_y"]:
        ax.set_yscale("log")
    ax.set_xlabel(f"Euler step (of {summary['steps']})")
    ax.set_ylabel("MSE vs final action")
    n, seeds, prompts = summary["n_samples"], len(summary["seeds"]), len(summary["prompts"])
    ax.set_title(f"Action denoising convergence, preset {summary['preset']}\n"
                 f"N={n} samples ({seeds} seeds x {prompts} prompts), mean ± 1 std", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for path, fmt in [(png_path, "png"), (svg_path, "svg")]:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=style["dpi"])
    plt.close(fig)
