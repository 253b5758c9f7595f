"""Metrics on hand-made arrays, checked against independent arithmetic."""
from __future__ import annotations

import numpy as np
import pytest

from mimic_redundancy.analysis.metrics import convergence_step, part_rows, step_errors, summary_rows

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
    from mimic_redundancy.core.stats import interval

    rng = np.random.default_rng(0)
    steps, samples = 6, 8
    seeds = np.repeat(np.arange(4), 2)  # 4 seeds x 2 prompts
    probe = {"trajectory": rng.normal(size=(steps + 1, samples, 4, 2)).astype(np.float32),
             "clean_prediction": rng.normal(size=(steps, samples, 4, 2)).astype(np.float32)}
    rows = summary_rows(step_errors(probe), [2, 6], seeds, 500)  # what write_metrics writes to metrics.csv
    assert [r["step"] for r in rows] == [2, 6]
    final = probe["trajectory"][-1].astype(np.float64)
    x2 = np.array([((probe["trajectory"][2, i] - final[i]) ** 2).mean() for i in range(samples)])
    c2 = np.array([((probe["clean_prediction"][1, i] - final[i]) ** 2).mean() for i in range(samples)])
    assert rows[0]["mse_vs_final"] == pytest.approx(x2.mean())
    assert rows[0]["mse_clean_vs_final"] == pytest.approx(c2.mean())
    # the interval over the 4 seeds (core.stats, tested in test_stats.py): above 0, around the mean
    assert (rows[0]["mse_vs_final_ci_low"], rows[0]["mse_vs_final_ci_high"]) == \
        pytest.approx(interval(x2, seeds, positive=True, resamples=500)[1:])
    assert 0 < rows[0]["mse_vs_final_ci_low"] < rows[0]["mse_vs_final"] < rows[0]["mse_vs_final_ci_high"]
    # the paired difference of the same samples, x_t's error minus the clean prediction's, may cross 0
    assert rows[0]["diff_xt_minus_clean_vs_final"] == pytest.approx((x2 - c2).mean())
    assert (rows[0]["diff_xt_minus_clean_vs_final_ci_low"], rows[0]["diff_xt_minus_clean_vs_final_ci_high"]) == \
        pytest.approx(interval(x2 - c2, seeds, positive=False, resamples=500)[1:])
    x_vs_clean = [((probe["trajectory"][2, i].astype(np.float64) - probe["clean_prediction"][1, i]) ** 2).mean()
                  for i in range(samples)]
    assert rows[0]["mse_xt_vs_clean"] == pytest.approx(np.mean(x_vs_clean))
    assert rows[1]["mse_vs_final"] == 0.0 and rows[1]["n_samples"] == samples and rows[1]["n_seeds"] == 4
    assert rows[1]["mse_vs_final_ci_low"] == rows[1]["mse_vs_final_ci_high"] == 0.0  # the final action vs itself


def test_seed_spread_pairs_same_prompt_different_seed():
    from mimic_redundancy.analysis.metrics import seed_spread

    final = np.stack([np.full((2, 2), v) for v in [0.0, 10.0, 1.0, 30.0]])
    spread, windows = seed_spread(final, np.array([0, 0, 1, 1]), np.array(["a", "b", "a", "b"]))
    assert sorted(zip(spread.tolist(), windows.tolist())) == [(1.0, "a"), (400.0, "b")]


def test_part_convergence_finds_the_slow_dimension():
    from mimic_redundancy.analysis.metrics import part_convergence

    steps = 4
    traj = np.zeros((steps + 1, 1, 2, 3), dtype=np.float32)
    for s in range(steps + 1):
        traj[s, 0, :, 0] = [4, 3, 2, 0.9, 0][s]  # dimension 0: MSE 9, 4, 0.81 <= 0.1 x 9 at step 3
        traj[s, 0, :, 1] = 0.0 if s >= 1 else 1.0  # dimension 1: converged at step 1
        traj[s, 0, :, 2] = 1.0 if s < steps else 0  # dimension 2: only at the end
    rows = part_convergence({"trajectory": traj}, [1, 2, 3, 4], 0.9)
    by_dim = {r["index"]: r["convergence_step"] for r in rows if r["axis"] == "dimension"}
    assert by_dim == {0: 3, 1: 1, 2: 4}


def test_slurm_cancelled_state_is_normalised():
    from mimic_redundancy.pipeline.slurm_compat import normalise_state, patch_slurm_status_query

    assert normalise_state("CANCELLED by 0") == "CANCELLED"
    assert [normalise_state(s) for s in ["COMPLETED", "RUNNING", "FAILED", "CANCELLED"]] == [
        "COMPLETED", "RUNNING", "FAILED", "CANCELLED"]
    assert patch_slurm_status_query() and patch_slurm_status_query()  # idempotent


def test_the_heatmaps_table_holds_the_per_part_errors():
    """mse_by_part.csv (what plot_heatmaps draws) against the maths done directly on the trajectory."""
    rng = np.random.default_rng(0)
    traj = rng.normal(size=(11, 4, 6, 3)).astype(np.float32)
    rows = part_rows({"trajectory": traj}, [10, 2, 4])
    sq = (traj[[2, 4, 10]].astype(np.float64) - traj[-1]) ** 2
    direct = {"dimension": sq.mean(axis=(1, 2)), "position": sq.mean(axis=(1, 3))}
    assert len(rows) == 3 * (3 + 6)
    for row in rows:
        p = [2, 4, 10].index(row["step"])
        per_part = direct[row["axis"]]
        assert row["mse_vs_final"] == pytest.approx(per_part[p, row["index"]], rel=1e-12)
        assert row["relative_to_first_step"] == pytest.approx(per_part[p, row["index"]] / per_part[0, row["index"]])


def test_step_and_part_errors_hold_one_step_at_a_time():
    """A large run's metrics job stays within a probe job's memory: the float64 temporaries are one step's
    [S, N, D] block, not a float64 copy of the whole trajectory (docs/sharding.md, 1,000 samples)."""
    import tracemalloc

    from mimic_redundancy.analysis.metrics import part_errors, step_errors

    rng = np.random.default_rng(0)
    probe = {"trajectory": rng.standard_normal((51, 200, 32, 20), dtype=np.float32),
             "clean_prediction": rng.standard_normal((50, 200, 32, 20), dtype=np.float32),
             "gt_actions": np.full((200, 32, 20), np.nan, np.float32)}
    tracemalloc.start()
    errors, parts = step_errors(probe), part_errors(probe, [5, 25, 50])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.25 * probe["trajectory"].nbytes, peak  # a float64 copy would be 2x
    expected = ((probe["trajectory"][7].astype(np.float64) - probe["trajectory"][-1]) ** 2).mean(axis=(-2, -1))
    assert np.array_equal(errors["vs_final"][7], expected) and parts["dimension"].shape == (3, 20)
