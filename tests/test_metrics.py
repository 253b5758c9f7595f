"""Metrics on hand-made arrays, checked against independent arithmetic."""
from __future__ import annotations

import numpy as np
import pytest

from mimic_redundancy.metrics import convergence_step, metrics_rows

# The seed session's table: MSE of intermediate actions vs the final action (one sample).
SEED_STEPS = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
SEED_MSE = [0.2627, 0.2093, 0.1614, 0.1194, 0.0834, 0.0536, 0.0303, 0.0135, 0.0034, 0.0000]


def test_seed_table_converges_90_percent_at_step_40():
    assert convergence_step(SEED_STEPS, SEED_MSE, 0.9) == 40


@pytest.mark.parametrize("threshold, step", [(0.5, 20), (0.8, 35), (0.95, 45), (0.99, 50)])
def test_threshold_is_configurable(threshold, step):
    assert convergence_step(SEED_STEPS, SEED_MSE, threshold) == step


def test_no_step_reaches_the_threshold():
    assert convergence_step([1, 2, 3], [1.0, 0.9, 0.8], 0.9) is None


def test_metrics_rows_match_direct_computation():
    rng = np.random.default_rng(0)
    steps, samples = 6, 3
    probe = {"trajectory": rng.normal(size=(steps + 1, samples, 4, 2)).astype(np.float32),
             "clean_prediction": rng.normal(size=(steps, samples, 4, 2)).astype(np.float32)}
    rows = metrics_rows(probe, [6, 2])
    assert [r["step"] for r in rows] == [2, 6]
    final = probe["trajectory"][-1].astype(np.float64)
    x2 = [((probe["trajectory"][2, i] - final[i]) ** 2).mean() for i in range(samples)]
    c2 = [((probe["clean_prediction"][1, i] - final[i]) ** 2).mean() for i in range(samples)]
    assert rows[0]["mse_vs_final"] == pytest.approx(sum(x2) / samples)
    assert rows[0]["mse_clean_vs_final"] == pytest.approx(sum(c2) / samples)
    assert rows[0]["mse_vs_final_std"] == pytest.approx(np.std(x2, ddof=1))
    assert rows[1]["mse_vs_final"] == 0.0 and rows[1]["n_samples"] == samples
