"""Every figure reads at the width the report shows it (plots.REPORT_WIDTH_PX): drawn by the real plotting code,
in process, from the session's shared run (conftest.small_run; no new Snakemake run), each figure is that many pixels
wide, states N in its suptitle or in every panel's title, and matplotlib's own layout has no tick label, axis label
or title on another (in one panel, across panels, or on a neighbouring panel), no legend on a curve's points."""
from __future__ import annotations

import csv
import json
import re

import matplotlib.pyplot as plt
from matplotlib.backends.backend_agg import FigureCanvasAgg
import numpy as np
import pytest
import yaml

from mimic_redundancy.report import compare, plots

pytestmark = pytest.mark.slow  # reads the session's shared DAG run

N_STATED = re.compile(r"\bN ?= ?\d+")
# figure -> (plots function, its table and summary in results/<preset>/), as the plot rules pass them
FIGURES = {
    "convergence": ("convergence_figure", "metrics.csv", "convergence.json"),
    "heatmaps": ("heatmap_figure", "mse_by_part.csv", "convergence.json"),
    "sweep": ("sweep_figure", "sweep.csv", "convergence.json"),
    "backbone": ("backbone_figure", "backbone.csv", "backbone.json"),
    "early_stop": ("early_stop_figure", "early_stop.csv", "early_stop.json"),
    "depth": ("depth_figure", "depth.csv", "depth.json"),
}
COMPARE_FILES = {"probe": "probe.npz", "metrics": "metrics.csv", "thresholds": "convergence.csv",
                 "summary": "convergence.json", "sweep": "sweep.csv", "backbone_summary": "backbone.json",
                 "early_stop": "early_stop.csv", "early_stop_summary": "early_stop.json", "depth": "depth.csv",
                 "depth_summary": "depth.json"}


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions save (plots._save still writes them), to inspect their layout."""
    figures, save = [], plots._save

    def keep(fig, *args):
        figures.append(fig)
        save(fig, *args)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


@pytest.fixture
def run(completed):
    workdir = completed[0]
    return workdir / "results/tiny", plots_style(workdir)


def plots_style(workdir) -> dict:
    return yaml.safe_load((workdir / "config.yaml").read_text())["plot"]


def _texts(ax) -> list:
    """The drawn, non-empty tick labels, axis labels, titles and annotations of one axes (Axis._update_ticks: the
    ticks a draw draws, those within the view limits)."""
    ticks = [label for axis in (ax.xaxis, ax.yaxis) for tick in axis._update_ticks()
             for label in (tick.label1, tick.label2)]
    labels = [ax.xaxis.label, ax.yaxis.label, ax.title, ax._left_title, ax._right_title, *ax.texts]
    return [t for t in ticks + labels if t.get_visible() and t.get_text().strip()]


def _overlap(a, b, tolerance=0.5) -> bool:
    """Whether two display boxes overlap by more than `tolerance` pixels each way."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance)


def _inside(box, outer, tolerance=0.5) -> bool:
    return box.x0 >= outer.x0 - tolerance and box.x1 <= outer.x1 + tolerance and \
        box.y0 >= outer.y0 - tolerance and box.y1 <= outer.y1 + tolerance


def layout_problems(fig, dpi: int) -> list[str]:
    """What does not read in a drawn figure, from matplotlib's own layout at the PNG's dpi."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)  # plots._save closed the figure: a fresh canvas draws it again
    canvas.draw()
    renderer = canvas.get_renderer()
    shown = [ax for ax in fig.axes if ax.get_visible()]
    axes = [ax for ax in shown if ax.axison]  # the panels (a cell turned off may hold a legend)
    areas = {id(ax): ax.get_window_extent(renderer) for ax in shown}
    boxes = {id(ax): [(t, t.get_window_extent(renderer)) for t in _texts(ax)] for ax in axes}
    problems = []
    if fig._suptitle:
        suptitle = fig._suptitle.get_window_extent(renderer)
        boxes["suptitle"] = [(fig._suptitle, suptitle)]
        if not _inside(suptitle, fig.bbox):
            problems.append("the suptitle runs off the figure")
        problems += [f"the suptitle lies on {ax.get_title()!r}" for ax in axes if _overlap(areas[id(ax)], suptitle)]
    groups = list(boxes.items())
    for i, (key, mine) in enumerate(groups):
        for j, (text, box) in enumerate(mine):
            problems += [f"{text.get_text()!r} overlaps {other.get_text()!r}" for _, group in groups[i:]
                         for other, other_box in (mine[j + 1:] if group is mine else group) if _overlap(box, other_box)]
            problems += [f"{text.get_text()!r} lies on the panel {ax.get_title()!r}" for ax in axes
                         if id(ax) != key and _overlap(box, areas[id(ax)])]
            if not _inside(box, fig.bbox):
                problems.append(f"{text.get_text()!r} runs off the figure")
    for ax in shown:
        legend = ax.get_legend()
        if legend is None:
            continue
        box = legend.get_window_extent(renderer)
        if not _inside(box, fig.bbox):
            problems.append(f"the legend of {ax.get_title()!r} runs off the figure")
        problems += [f"the legend of {ax.get_title()!r} lies on {other.get_title()!r}" for other in axes
                     if other is not ax and _overlap(box, areas[id(other)])]
        points = [line.get_transform().transform(line.get_xydata()) for line in ax.get_lines()]
        covered = sum(int(box.contains(x, y)) for xy in points for x, y in xy if np.isfinite([x, y]).all())
        if covered:
            problems.append(f"the legend of {ax.get_title()!r} covers {covered} data points")
    titles = [ax.get_title() for ax in axes if not hasattr(ax, "_colorbar")]
    if not (fig._suptitle and N_STATED.search(fig._suptitle.get_text())) and \
            not all(N_STATED.search(t) for t in titles):
        problems.append(f"N is stated neither in the suptitle nor in every title: {titles}")
    return problems


def check(figures: list, png, style: dict) -> None:
    assert len(figures) == 1
    width = plt.imread(png).shape[1]
    assert width == plots.REPORT_WIDTH_PX == round(style["width"] * style["dpi"]), width
    assert layout_problems(figures[0], style["dpi"]) == []


@pytest.mark.parametrize("figure", FIGURES)
def test_figure_reads_at_report_width(figure, run, drawn, tmp_path):
    out, style = run
    function, table, summary = FIGURES[figure]
    png = tmp_path / f"{figure}.png"
    getattr(plots, function)(out / table, out / summary, style, png, tmp_path / f"{figure}.svg")
    check(drawn, png, style)


def test_comparison_figure_reads_at_report_width(run, drawn, tmp_path):
    """Two presets (the shared run's twice: the same samples, as compare requires) through the compare rule's code."""
    out, style = run
    files = {p: {k: out / name for k, name in COMPARE_FILES.items()} for p in ["tiny", "tiny-again"]}
    png = tmp_path / "comparison.png"
    compare.compare(list(files), files, style, tmp_path / "comparison.csv", png, tmp_path / "comparison.svg", 2000)
    check(drawn, png, style)


def test_train_loss_figure_reads_at_report_width(run, drawn, tmp_path):
    """The shared run trains nothing (compare: []): a loss table and summary of train's format, 200 steps."""
    _, style = run
    steps = np.arange(1, 201)
    loss = 2.0 * np.exp(-steps / 60) * (1 + 0.3 * np.sin(steps))
    with open(tmp_path / "loss.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss", "grad_norm", "seconds"])
        writer.writerows([s, l, 1.0, 0.1 * s] for s, l in zip(steps, loss))
    first, last = loss[:20].mean(), loss[-20:].mean()
    (tmp_path / "summary.json").write_text(json.dumps({
        "steps_per_tenth": 20, "windows": 64, "source": "synthetic", "batch_size": 8, "lr": 3e-4, "seed": 0,
        "loss_first_tenth": first, "loss_last_tenth": last, "loss_ratio": last / first, "seconds": 20.0}))
    png = tmp_path / "train_loss.png"
    plots.train_loss_figure(tmp_path / "loss.csv", tmp_path / "summary.json", style, png, tmp_path / "train_loss.svg")
    check(drawn, png, style)
