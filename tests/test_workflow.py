"""Real Snakemake runs of the whole DAG on the tiny model: outputs, the NPZ contract, and
that a change reruns exactly the stages that depend on it.

The session's shared run (conftest.small_run) is read here; the rerun tests plan on a copy of it (a dry run: what
reruns is decided while the DAG is built), and the tests that check what a rerun writes run it for real."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from conftest import SMALL, TINY_PRESET, copy_run, executed_rules, planned_rules, run_ok, snakemake, write_config
from mimic_redundancy.core.io import BACKBONE_ARRAYS, SWEEP_ARRAYS, load_npz, load_probe

pytestmark = pytest.mark.slow  # the session's shared DAG run and real reruns

FIGURES = ["plot", "plot_backbone", "plot_depth", "plot_early_stop", "plot_heatmaps", "plot_sweep"]
MODEL_JOBS = ["backbone", "depth", "depth_features", "features", "probe", "sweep"]
TABLES = ["backbone_metrics", "depth_metrics", "early_stop", "metrics", "sweep_metrics"]
ALL_BUT_PREFETCH = sorted(FIGURES + MODEL_JOBS + TABLES + ["validate"])
# what a change of the head alone reruns: not the backbone's features (inference, training, depth)
HEAD_AND_AFTER = sorted(set(ALL_BUT_PREFETCH) - {"features", "depth_features"})


@pytest.fixture
def plan(completed, tmp_path):
    """A private copy of the completed run, and a function that lists the jobs a run with config overrides would
    execute (a dry run)."""
    workdir = copy_run(completed[0], tmp_path / "run")

    def planned(overrides: dict):
        return planned_rules(workdir, "--configfile", str(write_config(workdir, {**SMALL, **overrides})))

    return workdir, planned


def test_full_run_writes_every_declared_output(completed):
    workdir, result = completed
    assert executed_rules(result) == sorted(ALL_BUT_PREFETCH + ["prefetch"])
    out = workdir / "results/tiny"
    for name in ["prefetch.json", "features/inference.safetensors", "features/train.safetensors", "validate.json", "probe.npz", "sweep.npz", "backbone.npz", "metrics.csv",
                 "early_exit.csv", "convergence.csv", "convergence_by_part.csv", "mse_by_part.csv", "convergence.json",
                 "sweep.csv", "backbone.csv", "backbone.json", "depth/features.safetensors", "depth.npz", "depth.csv",
                 "depth.json", "early_stop.csv", "early_stop.json"]:
        assert (out / name).stat().st_size > 0, name
    for figure in ["convergence", "heatmaps", "sweep", "backbone", "early_stop", "depth"]:
        assert (out / f"figures/{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
        assert b"<svg" in (out / f"figures/{figure}.svg").read_bytes()[:1000], figure
    for stage in ALL_BUT_PREFETCH + ["prefetch"]:
        assert (out / f"logs/{stage}.log").exists(), stage
    assert "batch 2/2: 2 samples x 10 steps" in (out / "logs/probe.log").read_text()
    assert "nothing to download" in json.loads((out / "prefetch.json").read_text())["note"]
    # the closing summary points at the figure and table and names the convergence step
    summary = json.loads((out / "convergence.json").read_text())
    assert "figure: results/tiny/figures/convergence.png" in result.stdout
    assert f"90% convergence: step {summary['convergence_step']} of 10" in result.stdout


def test_validate_report(completed):
    report = json.loads((completed[0] / "results/tiny/validate.json").read_text())
    assert report["passed"] and all(c["passed"] for c in report["checks"])
    assert {c["name"] for c in report["checks"]} >= {"parameters", "tokenizer", "finite hiddens", "head only",
                                                     "device", "output shape", "finite", "output device", "fidelity"}
    assert report["dtypes"] == dict.fromkeys(["action_head", "text_encoder", "transformer", "vae"], "float32")
    assert report["backbone"] == {"kind": "tiny-random", "model_seed": 0, "tokenizer": "builtin", "extract_layer": 1,
                                  "dtype": "float32"}
    # the seed's tiny model, as measured in FACTS.md
    assert report["parameters"] == {"total": 33_979_254, "action_head": 32_738_350, "video_wrapper": 1_240_904}
    assert report["output_shape"] == [2, 32, 20]
    assert report["fidelity_max_abs_diff"] <= 1e-5
    assert report["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert report["versions"]["mimic-video"] == "0.5.8"


def test_npz_follows_the_contract(completed):
    probe = load_probe(completed[0] / "results/tiny/probe.npz")
    assert probe["trajectory"].shape == (11, 4, 32, 20) and probe["trajectory"].dtype == np.float32
    assert probe["clean_prediction"].shape == (10, 4, 32, 20) and probe["clean_prediction"].dtype == np.float32
    np.testing.assert_allclose(probe["times"], np.linspace(0, 1, 11), atol=1e-7)
    assert probe["seed"].dtype == np.int64 and probe["seed"].tolist() == [0, 0, 1, 1]
    assert probe["prompt"].tolist() == ["pick up the red block", "open the top drawer"] * 2
    settings = json.loads(str(probe["config_json"]))
    assert settings["steps"] == 10 and settings["model"]["preset"] == "tiny"
    assert json.loads(str(probe["versions_json"]))["torch"].startswith("2.13.0")
    # the numerics in force are the config's, whatever threads Snakemake gave the job (profiles/local: 1, rule: 2)
    numerics = json.loads(str(probe["numerics_json"]))
    assert numerics["threads"] == 1 and numerics["deterministic"] is True and numerics["device"] == "cpu"
    assert settings["model"]["numerics"] == {"deterministic": True, "threads": 1}
    # index 0 is the initial noise: drawn from the sample's seed after its video and joint state
    g = torch.Generator().manual_seed(1)
    torch.rand(5, 3, 32, 32, generator=g), torch.randn(32, generator=g)
    np.testing.assert_array_equal(probe["trajectory"][0, 2], torch.randn(32, 20, generator=g).numpy())
    # the last Euler step lands on the last clean prediction (1 - t = 1/K)
    np.testing.assert_allclose(probe["trajectory"][-1], probe["clean_prediction"][-1], atol=1e-5)


def test_metrics_recomputed_from_the_npz(completed):
    out = completed[0] / "results/tiny"
    probe = load_probe(out / "probe.npz")
    traj, clean = probe["trajectory"].astype(np.float64), probe["clean_prediction"].astype(np.float64)
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10]
    for row in rows:
        s = int(row["step"])
        per_sample = [np.mean((traj[s, i] - traj[-1, i]) ** 2) for i in range(4)]
        clean_per_sample = [np.mean((clean[s - 1, i] - traj[-1, i]) ** 2) for i in range(4)]
        assert float(row["mse_vs_final"]) == pytest.approx(np.mean(per_sample), rel=1e-9)
        # 2 seeds are too few for an interval (core.stats.MIN_CLUSTERS): the bounds say so, empty, not made up
        assert row["mse_vs_final_ci_low"] == row["mse_vs_final_ci_high"] == "nan"
        assert float(row["mse_clean_vs_final"]) == pytest.approx(np.mean(clean_per_sample), rel=1e-9, abs=1e-12)
        assert float(row["diff_xt_minus_clean_vs_final"]) == pytest.approx(
            np.mean(per_sample) - np.mean(clean_per_sample), rel=1e-9, abs=1e-12)
        assert int(row["n_samples"]) == 4 and int(row["n_seeds"]) == 2
    summary = json.loads((out / "convergence.json").read_text())
    mse = [float(r["mse_vs_final"]) for r in rows]
    expected = next(int(r["step"]) for r, m in zip(rows, mse) if m <= 0.1 * mse[0])
    assert summary["convergence_step"] == expected
    assert summary["n_samples"] == 4 and summary["seeds"] == [0, 1] and summary["preset"] == "tiny"


def test_sweep_table_recomputed_from_the_npz_files(completed):
    out = completed[0] / "results/tiny"
    probe, sweep = load_probe(out / "probe.npz"), load_npz(out / "sweep.npz", SWEEP_ARRAYS)
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["steps"]) for r in rows] == [1, 2, 5, 10] == sweep["steps"].tolist()
    main = probe["trajectory"][-1].astype(np.float64)
    for row, final in zip(rows, sweep["final"].astype(np.float64)):
        assert float(row["mse_vs_main"]) == pytest.approx(np.mean((final - main) ** 2), rel=1e-9, abs=1e-15)
        assert float(row["mse_vs_reference"]) == pytest.approx(np.mean((final - sweep["reference"]) ** 2), rel=1e-9)
        assert float(row["wall_seconds"]) > 0 and int(row["n_samples"]) == 4
    # K = the probe's steps is the main run: MimicVideo.sample from the same noise and hiddens
    np.testing.assert_allclose(sweep["final"][-1], probe["trajectory"][-1], atol=1e-5)
    assert float(rows[-1]["mse_vs_main"]) < 1e-10
    assert int(sweep["reference_steps"]) == 20


def test_backbone_summary_recomputed_from_the_npz(completed):
    out = completed[0] / "results/tiny"
    run = load_npz(out / "backbone.npz", BACKBONE_ARRAYS)
    summary = json.loads((out / "backbone.json").read_text())
    assert run["hidden_rel_diff"].shape == (10, 4)
    # the library's first recompute draws the same seeded video noise as the cached hiddens
    np.testing.assert_allclose(run["hidden_rel_diff"][0], 0, atol=1e-6)
    assert (run["hidden_rel_diff"][1:] > 0.1).all(), "fresh video noise changes the hiddens at every step"
    modes = ((run["final_recompute"].astype(np.float64) - run["final_cached"]) ** 2).mean(axis=(1, 2))
    assert summary["final_mse_between_modes"] == pytest.approx(modes.mean(), rel=1e-9)
    # seed-to-seed spread: 2 seeds x 2 prompts -> one pair per prompt
    final = run["final_cached"].astype(np.float64)
    spread = [((final[0] - final[2]) ** 2).mean(), ((final[1] - final[3]) ** 2).mean()]
    assert summary["final_mse_seed_to_seed"] == pytest.approx(np.mean(spread), rel=1e-9)
    assert summary["final_mse_seed_to_seed_n"] == 2 and summary["n_samples"] == 4
    assert summary["seconds_recompute"] == pytest.approx(run["seconds_recompute"].sum())


def test_report_builds(completed, tmp_path):
    report = tmp_path / "report.html"
    result = snakemake(completed[0], "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text()
    for caption in ["Quality vs number of function evaluations", "Redundancy of the video backbone",
                    "Which parts converge last", "Convergence step at several thresholds"]:
        assert caption in html
    assert "N = 4 samples (2 seeds x 2 prompts), preset" in html


def test_second_run_does_nothing(plan):
    _, planned = plan
    assert planned({}) == []


def test_other_sources_settings_and_train_settings_rerun_nothing_here(plan):
    # synthetic inputs read neither the lerobot nor the video_dir keys; no checkpoint preset runs (compare: [])
    _, planned = plan
    assert planned({"inputs": {"video_dir": "elsewhere", "frame_skip": 3, "lerobot": {"repo": "org/other"}},
                    "train": {"steps": 7}}) == []


def test_plot_option_reruns_only_plot(plan):
    _, planned = plan
    assert planned({"plot": {"dpi": 80, "log_y": True}}) == FIGURES


def test_metrics_option_reruns_metrics_and_plot(plan):
    # plot_sweep too: its title names the samples from convergence.json, which metrics rewrites
    _, planned = plan
    assert planned({"metrics": {"probe_steps": [1, 5, 10], "convergence_thresholds": [0.95]}}) == [
        "metrics", "plot", "plot_heatmaps", "plot_sweep"]


def test_the_bootstrap_reruns_the_tables_with_intervals_and_their_figures_only(plan):
    """metrics.bootstrap reaches every table with intervals (a param of each rule), so changing it rewrites them and
    the figures drawn from them: no model stage."""
    _, planned = plan
    assert planned({"metrics": {**SMALL["metrics"], "bootstrap": 500}}) == sorted(TABLES + FIGURES)


def test_more_seeds_rerun_features_and_downstream_only(plan):
    # new samples: the backbone runs again (features), and every stage that reads them
    _, planned = plan
    assert planned({"seeds": [0, 1, 2]}) == ALL_BUT_PREFETCH


def test_probe_steps_rerun_the_head_stages_not_the_backbones_features(plan):
    # validate certifies the probe at the configured steps, so it reruns too; the hiddens do not change
    _, planned = plan
    assert planned({"probe": {"steps": 12, "batch_size": 4}}) == HEAD_AND_AFTER


def test_new_prompts_rerun_the_features_and_everything_after(plan):
    _, planned = plan
    assert planned({"prompts": ["pick up the red block", "close the drawer"]}) == ALL_BUT_PREFETCH


def test_changing_the_preset_reruns_validate_and_everything_after(plan):
    _, planned = plan
    tiny = dict(TINY_PRESET)
    # a different preset: its own results folder (every job of it), nothing of tiny's
    assert planned({"presets": {"tiny": tiny, "tiny-shallow": {**tiny, "depth": 2}}, "preset": "tiny-shallow"}) == \
        sorted(ALL_BUT_PREFETCH + ["prefetch"])
    # editing the selected preset's head reruns validate onward; the backbone's features stay
    assert planned({"presets": {"tiny": {**tiny, "depth": 2}}}) == HEAD_AND_AFTER


def test_a_different_model_seed_changes_the_weights_and_keeps_the_samples(rerun):
    """Every stage reruns; a real rerun of the features (also with one more seed): the new samples are added, the old
    ones keep their initial action noise, and the other backbone weights change the hiddens the head stages read.
    (The head's own weights follow model_seed too: tests/test_probe.py::test_weights_are_seeded.)"""
    from safetensors.torch import load_file

    workdir, _ = rerun
    features = workdir / "results/tiny/features/inference.safetensors"
    before = load_file(features)
    config = str(write_config(workdir, {**SMALL, "model_seed": 1, "seeds": [0, 1, 2]}))
    assert planned_rules(workdir, "--configfile", config) == ALL_BUT_PREFETCH  # every stage reruns
    assert executed_rules(run_ok(workdir, str(features.relative_to(workdir)), "--configfile", config)) == ["features"]
    after = load_file(features)
    assert after["seed"].tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(before["noise"], after["noise"][:4])  # same samples, same noise
    assert (before["hiddens.0"] - after["hiddens.0"][:4]).abs().max() > 1e-3  # other weights


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_job_that_fails_leaves_no_output_that_looks_complete(workflow):
    config = write_config(workflow, {**SMALL, "device": "cuda"})
    result = snakemake(workflow, "--configfile", str(config))
    assert result.returncode != 0
    log = (workflow / "results/tiny/logs/features.log").read_text()  # the first model job
    assert "config device 'cuda' asks for CUDA, but torch sees no CUDA device" in log
    assert "Error in rule features" in result.stderr + result.stdout
    assert not (workflow / "results/tiny/features/inference.safetensors").exists()
    assert not (workflow / "results/tiny/validate.json").exists()
    assert not (workflow / "results/tiny/probe.npz").exists()
    assert not list((workflow / "results/tiny").glob(".*tmp*"))


def test_editing_plot_code_reruns_only_figures(plan):
    workdir, planned = plan
    plots = workdir / "src/mimic_redundancy/report/plots.py"
    plots.write_text(plots.read_text() + "\n# edited\n")
    assert planned({}) == FIGURES


def test_lint_reports_nothing(workflow):
    result = snakemake(workflow, "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


NO_BACKBONE = """# makes the video backbone impossible to build in every Python process of this run
import mimic_video.cosmos_predict as cosmos_predict

def refuse(*args, **kwargs):
    raise RuntimeError("test: the video backbone must not be built here")

cosmos_predict.CosmosPredictWrapper.__init__ = refuse
"""


def test_head_stages_never_build_the_backbone_and_match_hiddens_computed_directly(rerun):
    """After features, the head stages run with CosmosPredictWrapper made to raise, and their NPZ equal the
    same stages run from hiddens that the whole model computes directly from the video."""
    import os

    from mimic_redundancy.analysis.probe import probe_trajectory
    from mimic_redundancy.core import numerics
    from mimic_redundancy.data.samples import synthetic_samples
    from mimic_redundancy.model.model import build_model
    from mimic_redundancy.model.sampling import video_hiddens
    from mimic_redundancy.pipeline import config as cfg

    workdir, _ = rerun
    before = {"probe": load_probe(workdir / "results/tiny/probe.npz"),
              "sweep": load_npz(workdir / "results/tiny/sweep.npz", SWEEP_ARRAYS)}
    (workdir / "no-backbone").mkdir()
    (workdir / "no-backbone/sitecustomize.py").write_text(NO_BACKBONE)
    env = {**os.environ, "PYTHONPATH": str(workdir / "no-backbone")}
    config = str(write_config(workdir, SMALL))
    targets = ["results/tiny/validate.json", "results/tiny/probe.npz", "results/tiny/sweep.npz"]
    result = snakemake(workdir, *targets, "--forcerun", "validate", "probe", "sweep", "--configfile", config, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert executed_rules(result) == ["probe", "sweep", "validate"]
    refused = snakemake(workdir, "results/tiny/features/inference.safetensors", "--forcerun", "features",
                        "--configfile", config, env=env)
    assert refused.returncode != 0  # the patch bites wherever the backbone is built
    assert "the video backbone must not be built here" in (workdir / "results/tiny/logs/features.log").read_text()

    probe = load_probe(workdir / "results/tiny/probe.npz")
    sweep = load_npz(workdir / "results/tiny/sweep.npz", SWEEP_ARRAYS)
    for key in ("trajectory", "clean_prediction", "gt_actions"):
        np.testing.assert_array_equal(probe[key], before["probe"][key])
    np.testing.assert_array_equal(sweep["final"], before["sweep"]["final"])
    # the same samples through the whole model, hiddens computed from the video in this process
    full = cfg.validate_config(yaml.safe_load((workdir / "config.yaml").read_text()) | SMALL)
    numerics.apply(full["numerics"], torch.device("cpu"))  # the jobs' numerics: bit for bit at any core count
    model = {**cfg.model_settings(full, "tiny"), **full["presets"]["tiny"], "device": "cpu"}
    net = build_model(model, torch.device("cpu"))
    samples = synthetic_samples(cfg.samples(full), full["inputs"], {"chunk_len": 32, "action_dim": 20, "joint_dim": 32})
    for start in range(0, len(samples), SMALL["probe"]["batch_size"]):  # the probe's batches: bit for bit
        batch = samples.batch(slice(start, start + SMALL["probe"]["batch_size"]), "cpu")
        trajectory, clean, _ = probe_trajectory(net, batch, video_hiddens(net, batch), 10)
        rows = slice(start, start + len(batch.seeds))
        np.testing.assert_array_equal(probe["trajectory"][:, rows], trajectory.numpy())
        np.testing.assert_array_equal(probe["clean_prediction"][:, rows], clean.numpy())


def test_backbone_samples_limits_the_recompute_and_says_so(rerun):
    """On a 7B backbone the per-step recompute costs probe.steps backbone passes per sample: backbone.samples takes
    the first N, and the table, summary and figure title say which."""
    workdir, run = rerun
    assert run({"backbone": {"samples": 2}}) == ["backbone", "backbone_metrics", "plot_backbone"]
    summary = json.loads((workdir / "results/tiny/backbone.json").read_text())
    assert summary["samples"] == "the first 2 of 4 samples (backbone.samples): N=2 samples (1 seed x 2 prompts)"
    assert summary["n_samples"] == 2 and summary["of_samples"] == 4
    with open(workdir / "results/tiny/backbone.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["n_samples"], r["of_samples"]) for r in rows} == {("2", "4")}
    assert load_npz(workdir / "results/tiny/backbone.npz", BACKBONE_ARRAYS)["seed"].tolist() == [0, 0]


def test_files_made_under_other_numerics_are_stale_and_refused(plan):
    """numerics.threads joins every model stage's settings: a change reruns every model stage and what follows (the
    job's CPUs do not), and a head stage refuses features computed under other numerics, naming the fix."""
    from mimic_redundancy.model.features import FeaturesError, load_features
    from mimic_redundancy.pipeline import config as cfg

    workdir, planned = plan
    assert planned({"numerics": {"threads": 2}}) == ALL_BUT_PREFETCH
    assert planned({}) == []  # the job's threads (Snakemake's --cores, Slurm's cpus_per_task) are not a setting
    other = cfg.validate_config(yaml.safe_load((workdir / "config.yaml").read_text()) | SMALL
                                | {"numerics": {"threads": 2, "deterministic": True}})
    with pytest.raises(FeaturesError, match="computed for other settings.*--forcerun features"):
        load_features(workdir / "results/tiny/features/inference.safetensors",
                      cfg.features_digest(other, "tiny", "inference"), "inference")
