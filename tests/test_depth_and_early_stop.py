"""The two analyses of issue 15 (adaptive early stopping, the video-denoising depth) in the session's shared DAG
run: their tables are recomputed from their NPZ files, and a change reruns exactly the stages that depend on it."""
from __future__ import annotations

import re
import shlex

import numpy as np
import pytest

from conftest import SMALL, copy_run, executed_rules, planned_rules, write_config
from mimic_redundancy.analysis.early_stop import early_stop_tables
from mimic_redundancy.analysis.metrics import read_csv, seed_spread
from mimic_redundancy.core.io import DEPTH_ARRAYS, SWEEP_ARRAYS, load_npz, load_probe
from mimic_redundancy.model.features import FeaturesError, load_features

pytestmark = pytest.mark.slow  # reads the session's shared DAG run (conftest.small_run), reruns copies of it


def test_tables_come_from_the_npz_files(completed):
    workdir, result = completed
    assert {"depth_features", "depth", "depth_metrics", "plot_depth", "early_stop", "plot_early_stop"} <= \
        set(executed_rules(result))
    out = workdir / "results/tiny"
    depth = load_npz(out / "depth.npz", DEPTH_ARRAYS)
    assert depth["times"].tolist() == [0.0, 1.0] and depth["final"].shape == (2, 4, 32, 20)
    np.testing.assert_allclose(depth["hidden_cosine"][0], 1.0, atol=1e-6)  # time 0 against itself
    table = read_csv(out / "depth.csv")
    mse = ((depth["final"][1].astype(np.float64) - depth["final"][0]) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(table["mse_vs_time0"], [0.0, mse.mean()], rtol=1e-6)
    spread, _ = seed_spread(depth["final"][0], depth["seed"], depth["window"])
    np.testing.assert_allclose(table["mse_seed_to_seed"][0], spread.mean(), rtol=1e-6)
    gt = depth["gt_actions"].astype(np.float64)
    vs_gt = [((depth["final"][t].astype(np.float64) - gt) ** 2).mean(axis=(1, 2)) for t in (0, 1)]
    np.testing.assert_allclose(table["diff_vs_gt_minus_time0"], [0.0, (vs_gt[1] - vs_gt[0]).mean()], atol=1e-12)
    assert table["n_samples"].tolist() == [4, 4] and table["n_seeds"].tolist() == [2, 2]
    assert np.all(table["backbone_seconds"] > 0)
    # the early-stopping table, recomputed from the probe and sweep NPZ files
    probe, sweep = load_probe(out / "probe.npz"), load_npz(out / "sweep.npz", SWEEP_ARRAYS)
    rows, _ = early_stop_tables(probe, sweep, {"eps": [0.3, 0.1, 0.05, 0.03, 0.01, 0.005, 0.001],
                                               "target_fraction": 0.1, "target_step": 5, "bootstrap": 2000})
    early = read_csv(out / "early_stop.csv", text_columns=("rule", "half"))
    np.testing.assert_allclose(early["mse_vs_final"], [r["mse_vs_final"] for r in rows], rtol=1e-6)
    np.testing.assert_allclose(early["nfe_mean"], [r["nfe_mean"] for r in rows])


def test_a_plot_change_reruns_no_model_job(small_run, tmp_path):
    workdir = copy_run(small_run[0], tmp_path / "run")
    planned = planned_rules(workdir, "--configfile", str(write_config(workdir, {**SMALL, "plot": {"dpi": 80}})))
    assert {"plot_depth", "plot_early_stop"} <= set(planned) and all(r.startswith("plot") for r in planned), planned


def test_a_change_of_the_depths_reruns_only_the_depth_stages(rerun):
    workdir, run = rerun
    probe = (workdir / "results/tiny/probe.npz").read_bytes()
    assert run({"depth": {"times": [0, 0.5, 1.0], "steps": 4}}) == ["depth", "depth_features", "depth_metrics",
                                                                      "plot_depth"]
    assert load_npz(workdir / "results/tiny/depth.npz", DEPTH_ARRAYS)["times"].tolist() == [0.0, 0.5, 1.0]
    assert (workdir / "results/tiny/probe.npz").read_bytes() == probe


def test_early_stop_settings_rerun_only_early_stop(small_run, tmp_path):
    workdir = copy_run(small_run[0], tmp_path / "run")
    change = {**SMALL, "early_stop": {"eps": [0.2, 0.02], "target_fraction": 0.2, "target_step": 2}}
    assert planned_rules(workdir, "--configfile", str(write_config(workdir, change))) == ["early_stop",
                                                                                          "plot_early_stop"]


def test_a_truncated_depth_features_file_gives_the_command_that_rebuilds_it(small_run, tmp_path, monkeypatch):
    workdir = copy_run(small_run[0], tmp_path / "run")
    path = workdir / "results/tiny/depth/features.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    monkeypatch.chdir(workdir)  # the stages see paths relative to the workflow folder
    with pytest.raises(FeaturesError) as error:
        load_features("results/tiny/depth/features.safetensors", kind="depth")
    command = re.search(r"`(snakemake [^`]+)`", str(error.value)).group(1)
    assert command == ("snakemake --profile profiles/local results/tiny/depth/features.safetensors "
                       "--forcerun depth_features"), error.value
    assert planned_rules(workdir, *shlex.split(command)[3:]) == ["depth_features"]  # as written: it rebuilds it
