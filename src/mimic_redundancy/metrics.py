"""Redundancy metrics computed from a probe NPZ alone.

"Step s" means s Euler steps (s model evaluations) have been taken: the state is
trajectory[s] and the freshest clean-action prediction is clean_prediction[s - 1].
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .io import atomic_path, load_probe, write_json

COLUMNS = ["step", "mse_vs_final", "mse_vs_final_std", "mse_clean_vs_final", "mse_clean_vs_final_std", "n_samples"]


def mse_vs(arrays: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Per-sample MSE over (chunk, action dim): [..., S, N, D] vs [S, N, D] -> [..., S]."""
    return ((arrays.astype(np.float64) - final) ** 2).mean(axis=(-2, -1))


def step_errors(probe: dict) -> tuple[np.ndarray, np.ndarray]:
    """(x_t vs final [K+1, S], clean prediction vs final [K, S]); row s-1 of the second is step s."""
    final = probe["trajectory"][-1]
    return mse_vs(probe["trajectory"], final), mse_vs(probe["clean_prediction"], final)


def convergence_step(steps: list[int], mse: list[float], threshold: float) -> int | None:
    """First step whose MSE is at most (1 - threshold) x the MSE at the first step; None if none is."""
    target = (1.0 - threshold) * mse[0]
    return next((s for s, m in zip(steps, mse) if m <= target), None)


def metrics_rows(probe: dict, probe_steps: list[int]) -> list[dict]:
    x_err, clean_err = step_errors(probe)
    return [{
        "step": s,
        "mse_vs_final": float(x_err[s].mean()),
        "mse_vs_final_std": float(x_err[s].std(ddof=1)) if x_err.shape[1] > 1 else 0.0,
        "mse_clean_vs_final": float(clean_err[s - 1].mean()),
        "mse_clean_vs_final_std": float(clean_err[s - 1].std(ddof=1)) if x_err.shape[1] > 1 else 0.0,
        "n_samples": int(x_err.shape[1]),
    } for s in sorted(probe_steps)]


def write_metrics(npz_path, settings: dict, table_path, summary_path) -> None:
    probe = load_probe(npz_path)
    steps = probe["trajectory"].shape[0] - 1
    too_large = [s for s in settings["probe_steps"] if s > steps]
    if too_large:
        raise ValueError(f"{npz_path} holds {steps} steps; metrics.probe_steps {too_large} exceed it")
    rows = metrics_rows(probe, settings["probe_steps"])
    with atomic_path(table_path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    threshold = settings["convergence_threshold"]
    step = convergence_step([r["step"] for r in rows], [r["mse_vs_final"] for r in rows], threshold)
    write_json(summary_path, {
        "convergence_threshold": threshold,
        "convergence_step": step,
        "reference_step": rows[0]["step"],
        "reference_mse": rows[0]["mse_vs_final"],
        "target_mse": (1.0 - threshold) * rows[0]["mse_vs_final"],
        "steps": steps,
        "n_samples": int(probe["seed"].size),
        "seeds": sorted({int(s) for s in probe["seed"]}),
        "prompts": sorted({str(p) for p in probe["prompt"]}),
        "preset": str(probe["preset"]),
        "device": str(probe["device"]),
        "source": str(Path(npz_path)),
        "config_digest": str(probe["config_digest"]),
    })


def read_table(table_path) -> dict[str, np.ndarray]:
    with open(table_path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {c: np.array([float(r[c]) for r in rows]) for c in COLUMNS}
