"""Stopping rules on planted trajectories whose NFE and error are worked out by hand (in process, no model)."""
from __future__ import annotations

import numpy as np
import pytest

from mimic_redundancy.analysis import early_stop as es

# 4 samples (seeds 0..3), 4 steps, one action value each, so an MSE is a squared difference.
# Clean predictions c_1..c_4 per sample; the final action is c_4. Relative changes (step 2, 3, 4):
#   seed 0: 1, 2, 2.1, 2.1 -> 1.0, 0.05, 0      seed 1: 4, 4, 4, 4 -> 0, 0, 0
#   seed 2: 1, 3, 3, 3     -> 2.0, 0, 0         seed 3: 2, 1, 1.5, 1.5 -> 0.5, 0.5, 0
CLEAN = np.array([[1, 4, 1, 2], [2, 4, 3, 1], [2.1, 4, 3, 1.5], [2.1, 4, 3, 1.5]], dtype=np.float32)
FINAL = CLEAN[-1]


def planted() -> tuple[dict, dict]:
    traj = np.zeros((5, 4), dtype=np.float32)  # x_0 .. x_3 are 0, x_4 the final action
    traj[-1] = FINAL
    shape = lambda a: a.reshape(*a.shape, 1, 1)
    probe = {"trajectory": shape(traj), "clean_prediction": shape(CLEAN),
             "gt_actions": np.full((4, 1, 1), np.nan, dtype=np.float32), "seed": np.arange(4),
             "prompt": np.array(["p"] * 4), "window": np.zeros(4, dtype=np.int64), "episode": -np.ones(4, dtype=np.int64),
             "start": -np.ones(4, dtype=np.int64), "source": np.array("synthetic"), "preset": np.array("planted"),
             "config_digest": np.array("0")}
    sweep = {"steps": np.array([1, 2]), "final": shape(np.stack([np.zeros(4), FINAL + 1]).astype(np.float32)),
             "reference": shape(FINAL + 0.5), "reference_steps": np.array(20)}
    return probe, sweep


def test_relative_change_of_the_clean_prediction():
    change = es.clean_change(planted()[0]["clean_prediction"])
    assert np.isnan(change[:2]).all()  # no change before two evaluations
    np.testing.assert_allclose(change[2:], [[1.0, 0, 2.0, 0.5], [0.05, 0, 0, 0.5], [0, 0, 0, 0]], atol=1e-6)


@pytest.mark.parametrize("eps, nfe, out", [
    (0.1, [3, 2, 3, 4], [2.1, 4, 3, 1.5]),
    (0.6, [3, 2, 3, 2], [2.1, 4, 3, 1.0]),
    (1.5, [2, 2, 3, 2], [2.0, 4, 3, 1.0]),
    (1e-9, [4, 2, 3, 4], FINAL),  # only an exact repeat is below: at the latest the last step, the final action
])
def test_clean_change_rule_stops_where_worked_out(eps, nfe, out):
    got_nfe, got_out = es.clean_change_stop(planted()[0], eps)
    assert got_nfe.tolist() == nfe
    np.testing.assert_allclose(got_out.ravel(), out, atol=1e-6)


def test_rows_give_nfe_and_error_by_hand():
    probe, sweep = planted()
    rows, _ = es.early_stop_tables(probe, sweep, {"eps": [0.6, 0.1], "target_fraction": 0.5, "target_step": 1, "bootstrap": 2000})
    row = lambda rule, param, half="all": next(r for r in rows if (r["rule"], r["param"], r["half"]) == (rule, param, half))
    r = row("clean_change", 0.6)  # NFE [3, 2, 3, 2]; only seed 3 errs: (1 - 1.5)^2 = 0.25
    assert (r["nfe_mean"], r["nfe_p50"], r["n_samples"], r["n_seeds"]) == (2.5, 2.5, 4, 4)
    assert r["nfe_p90"] == pytest.approx(3.0)
    assert r["mse_vs_final"] == pytest.approx(0.25 / 4)
    assert r["mse_vs_reference"] == pytest.approx((3 * 0.5 ** 2 + 1.0 ** 2) / 4, rel=1e-5)  # reference: final + 0.5
    # paired with the full run on the same samples: the final action is 0.5 from the reference everywhere
    assert r["diff_vs_reference_minus_full"] == pytest.approx((3 * 0.5 ** 2 + 1.0 ** 2) / 4 - 0.5 ** 2, rel=1e-5)
    # 3 of the 4 seeds at exactly 0: the interval is on the raw scale and stops at 0, where the mean could be
    assert r["mse_vs_final_ci_low"] == 0.0 < r["mse_vs_final"] < r["mse_vs_final_ci_high"]
    assert r["diff_vs_reference_minus_full_ci_low"] < r["diff_vs_reference_minus_full"]
    r = row("clean_change", 0.1)  # NFE [3, 2, 3, 4], p90 by linear interpolation: 3 + 0.7
    assert (r["nfe_mean"], r["mse_vs_final"]) == (3.0, 0.0)
    assert r["nfe_p90"] == pytest.approx(3.7)
    r = row("fixed_step_clean", 2)  # c_2 = [2, 4, 3, 1]
    assert (r["nfe_mean"], r["nfe_p90"]) == (2, 2)
    assert r["mse_vs_final"] == pytest.approx((0.01 + 0.25) / 4, rel=1e-5)
    assert row("fixed_step_xt", 2)["mse_vs_final"] == pytest.approx((2.1 ** 2 + 16 + 9 + 1.5 ** 2) / 4, rel=1e-5)
    assert row("fixed_step_xt", 4)["mse_vs_final"] == 0.0  # all steps: the final action itself
    r = row("fixed_k", 2)  # the sweep's 2-step actions, final + 1
    assert (r["nfe_mean"], r["mse_vs_final"]) == (2, pytest.approx(1.0))
    assert np.isnan(r["mse_vs_gt"])  # no ground truth here


def test_calibrated_on_one_half_and_judged_on_the_other():
    probe, sweep = planted()
    # target: 0.001 x mean (x_1 - final)^2 over the calibration half (seeds 0, 2) = 0.001 x (2.1^2 + 3^2) / 2
    rows, summary = es.early_stop_tables(probe, sweep, {"eps": [1.5, 0.6, 0.1], "target_fraction": 0.001,
                                                        "target_step": 1, "bootstrap": 2000})
    assert summary["target_mse"] == pytest.approx(0.001 * (2.1 ** 2 + 9) / 2, rel=1e-5)
    assert (summary["calibration_seeds"], summary["evaluation_seeds"]) == ([0, 2], [1, 3])
    assert summary["evaluated"] is True
    # on seeds 0, 2, eps 1.5 errs 0.01 / 2 = 0.005 <= 0.0067 with the fewest NFE (2.5): chosen; on seeds 1, 3
    # it takes 2 NFE and errs (0 + 0.25) / 2, above the target
    chosen = summary["calibrated"]["clean_change"]
    assert chosen["param"] == 1.5
    assert (chosen["nfe_mean_evaluation"], chosen["nfe_saved_evaluation"]) == (2.0, 2.0)
    assert chosen["mse_vs_final_evaluation"] == pytest.approx(0.125)
    assert chosen["reaches_target_on_evaluation"] is False
    halves = {r["half"]: r for r in rows if r["rule"] == "clean_change" and r["calibrated"]}
    assert halves["calibration"]["nfe_mean"] == 2.5 and halves["calibration"]["mse_vs_final"] == pytest.approx(0.005, rel=1e-5)
    assert halves["evaluation"]["n_samples"] == 2
    assert summary["calibrated"]["fixed_step_clean"]["param"] == 2  # c_2 of seeds 0, 2 errs (0.01 + 0) / 2
    assert summary["calibrated"]["fixed_k"]["param"] is None  # no K of the sweep reaches the target


def test_one_seed_leaves_the_calibrated_rules_not_evaluated():
    """seeds: [0] leaves the evaluation half empty: the rules are calibrated on every sample and not judged (null,
    not `reaches_target_on_evaluation: false`), and no evaluation row of 0 samples is written."""
    probe, sweep = planted()
    probe["seed"] = np.zeros(4, dtype=np.int64)
    rows, summary = es.early_stop_tables(probe, sweep, {"eps": [1.5, 0.6, 0.1], "target_fraction": 0.5,
                                                        "target_step": 1, "bootstrap": 2000})
    assert summary["evaluated"] is False
    assert (summary["calibration_seeds"], summary["evaluation_seeds"], summary["n_evaluation"]) == ([0], [], 0)
    assert summary["calibrated"]["clean_change"]["param"] is not None  # calibrated on the one half there is
    for rule, chosen in summary["calibrated"].items():
        assert [chosen[k] for k in ("nfe_mean_evaluation", "nfe_saved_evaluation", "mse_vs_final_evaluation",
                                    "reaches_target_on_evaluation")] == [None] * 4, (rule, chosen)
    assert {r["half"] for r in rows} == {"all", "calibration"}


def test_the_threshold_free_curve_spans_stop_at_two_to_never():
    probe, sweep = planted()
    rows, _ = es.early_stop_tables(probe, sweep, {"eps": [0.1], "target_fraction": 0.1, "target_step": 1, "bootstrap": 2000})
    curve = [r for r in rows if r["rule"] == es.CURVE]
    assert len(curve) == es.CURVE_POINTS
    assert min(r["nfe_mean"] for r in curve) == 2.0  # the largest threshold: every sample stops at step 2
    assert max(r["nfe_mean"] for r in curve) <= 4.0


@pytest.mark.parametrize("seeds", [[0, 1, 2, 3], [5, 5, 7, 7, 9, 9, 11, 11, 13, 13], [3, 1, 2, 1, 3, 2], [42, 42]])
def test_calibration_split_has_no_overlap(seeds):
    calibration, evaluation = es.calibration_split(seeds)
    assert not set(calibration) & set(evaluation)
    assert sorted([*calibration, *evaluation]) == list(range(len(seeds)))  # every sample in one half
    seeds = np.asarray(seeds)
    assert not set(seeds[calibration]) & set(seeds[evaluation])  # split by seed: a seed's samples stay together
