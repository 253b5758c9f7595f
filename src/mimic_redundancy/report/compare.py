"""Presets side by side (e.g. the random and the trained model): one table and one figure."""
from __future__ import annotations

from mimic_redundancy.analysis.metrics import write_comparison
from mimic_redundancy.report.plots import comparison_figure


def compare(presets: list[str], files: dict, style: dict, table_path, png_path, svg_path, resamples: int) -> None:
    runs = write_comparison(presets, files, table_path, resamples)
    comparison_figure(runs, style, png_path, svg_path)
