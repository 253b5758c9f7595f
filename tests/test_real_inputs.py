"""The whole DAG on real inputs, in real Snakemake runs: a LeRobot dataset repo served by the loopback Hub
(prefetched as a dataset repo, then offline), training, the trained checkpoint preset beside the random model;
and a folder of the user's own videos, including what bad videos and mismatched dimensions do."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from conftest import SMALL, TINY_PRESET, copy_workflow, executed_rules, snakemake, write_config
from datasets import ACTION_DIM, JOINT_DIM, write_lerobot, write_video_dir
from hub_server import HubServer
from mimic_redundancy.analysis.metrics import read_csv
from mimic_redundancy.core.io import load_probe

pytestmark = pytest.mark.slow  # real Snakemake runs on real inputs
REPO = "test-org/libero-tiny"
PER_PRESET = ["backbone", "backbone_metrics", "depth", "depth_metrics", "early_stop", "metrics", "plot",
              "plot_backbone", "plot_depth", "plot_early_stop", "plot_heatmaps", "plot_sweep", "probe", "sweep",
              "sweep_metrics", "validate"]  # plus prefetch, features and depth_features for tiny alone
# train on episode 1 only: the probe's episode 0 is held out. The sweep and the per-step backbone recompute, which
# the small_run checks in full, are cut to what the comparison needs (2 K values; the first 2 samples).
LEROBOT = {**SMALL, "compare": ["trained"], "train": {"steps": 20, "batch_size": 4, "episodes": [1]},
           "sweep": {"steps": [1, 5], "reference_steps": 10, "repeats": 1},
           "backbone": {"fixed_video_noise": False, "samples": 2},
           "inputs": {"source": "lerobot", "lerobot": {"repo": REPO}, "frame_skip": 2, "windows_per_episode": 2}}


def run(workdir, overrides: dict, *args: str, endpoint: str | None = None):
    config = write_config(workdir, overrides)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    if endpoint:
        env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1")
    return snakemake(workdir, *args, "--configfile", str(config), env=env, timeout=900)


def ok(result):
    assert result.returncode == 0, f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def lerobot_run(tmp_path_factory):
    """prefetch (dataset repo) -> tiny: validate, probe, ... and train -> trained: the same -> compare."""
    hub_root = tmp_path_factory.mktemp("hub")
    write_lerobot(hub_root / "datasets" / REPO)
    workdir = copy_workflow(tmp_path_factory.mktemp("lerobot"))
    with HubServer(hub_root) as server:
        result = ok(run(workdir, LEROBOT, endpoint=server.url))
        requests_after_run = len(server.requests)
        again = ok(run(workdir, LEROBOT, endpoint=server.url))
        assert len(server.requests) == requests_after_run  # offline after prefetch; nothing fetched again
    return workdir, result, again


def test_lerobot_dag_runs_every_stage_for_both_models(lerobot_run):
    workdir, result, again = lerobot_run
    # the trained preset reuses tiny's manifest and features: the backbone runs once for both
    assert executed_rules(result) == sorted(PER_PRESET * 2 + ["prefetch", "features", "depth_features", "train",
                                                              "plot_train", "compare"])
    assert executed_rules(again) == []
    manifest = json.loads((workdir / "results/tiny/prefetch.json").read_text())
    assert [(r["role"], r["repo"], r["repo_type"]) for r in manifest["repos"]] == [("dataset", REPO, "dataset")]
    for name in ["figures/convergence.png", "figures/train_loss.png", "train/seed-0/loss.csv"]:
        assert (workdir / "results/tiny" / name).stat().st_size > 0
    assert (workdir / "results/compare/figures/comparison.png").read_bytes()[:4] == b"\x89PNG"


def test_lerobot_samples_and_ground_truth_metrics(lerobot_run):
    workdir = lerobot_run[0]
    probe = load_probe(workdir / "results/tiny/probe.npz")
    assert str(probe["source"]) == "lerobot"
    # 2 seeds x (2 windows of each of 2 episodes); windows evenly spaced: starts 0 and the last (40 - 32)
    assert probe["episode"].tolist() == [0, 0, 1, 1] * 2 and probe["start"].tolist() == [0, 8] * 4
    assert probe["trajectory"].shape[2:] == (32, ACTION_DIM) and np.isfinite(probe["gt_actions"]).all()
    table = read_csv(workdir / "results/tiny/metrics.csv")
    # the ground-truth columns, recomputed from the NPZ alone
    final_vs_gt = ((probe["trajectory"][-1].astype(np.float64) - probe["gt_actions"]) ** 2).mean(axis=(1, 2))
    assert table["mse_vs_gt"][-1] == pytest.approx(final_vs_gt.mean(), rel=1e-9)
    assert (table["n_samples_gt"] == 8).all()
    summary = json.loads((workdir / "results/tiny/convergence.json").read_text())
    assert summary["samples"] == "N=8 samples (2 seeds x 4 windows of 2 episodes, lerobot)"
    assert summary["final_mse_vs_gt"] == pytest.approx(final_vs_gt.mean(), rel=1e-9)


def test_training_lowers_the_loss_and_the_checkpoint_reloads_bit_for_bit(lerobot_run):
    workdir = lerobot_run[0]
    summary = json.loads((workdir / "results/tiny/train/seed-0/summary.json").read_text())
    assert summary["windows"] == 40 - 32 + 1 and summary["source"] == "lerobot"  # every window of episode 1
    # the flow-matching loss is heavy-tailed (each step draws its own flow times); 20 steps, tenths of 2
    assert summary["loss_last_tenth"] < 0.5 * summary["loss_first_tenth"], summary
    assert summary["round_trip"]["identical"] and summary["round_trip"]["max_abs_action_diff"] == 0.0
    with open(workdir / "results/tiny/train/seed-0/loss.csv") as f:
        assert len(list(csv.DictReader(f))) == 20
    config = json.loads((workdir / "results/tiny/train/seed-0/checkpoint/config.json").read_text())
    # the dimensions came from the data
    assert (config["mimic_video"]["dim_action"], config["mimic_video"]["dim_joint_state"]) == (ACTION_DIM, JOINT_DIM)
    trained_on = config["provenance"]["train_features"]["data"]["inputs"]
    assert trained_on["lerobot"]["repo"] == REPO and trained_on["episodes"] == [1]
    manifest = json.loads((workdir / "results/tiny/prefetch.json").read_text())
    assert config["provenance"]["hub_inputs"] == [{"role": "dataset", "repo": REPO, "repo_type": "dataset",
                                                   "commit": manifest["repos"][0]["resolved_revision"]}]
    assert len(manifest["repos"][0]["resolved_revision"]) == 40


def test_the_comparison_puts_random_and_trained_side_by_side(lerobot_run):
    workdir = lerobot_run[0]
    random, trained = (load_probe(workdir / f"results/{p}/probe.npz") for p in ["tiny", "trained"])
    for key in ["seed", "episode", "start", "gt_actions"]:
        np.testing.assert_array_equal(random[key], trained[key])
    with open(workdir / "results/compare/comparison.csv") as f:
        rows = {r["preset"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["tiny", "trained"]
    for preset, probe in [("tiny", random), ("trained", trained)]:
        final_vs_gt = ((probe["trajectory"][-1].astype(np.float64) - probe["gt_actions"]) ** 2).mean()
        assert float(rows[preset]["final_mse_vs_gt"]) == pytest.approx(final_vs_gt, rel=1e-9)
    # the trained model's actions moved towards the ground truth it was trained on
    assert float(rows["trained"]["final_mse_vs_gt"]) < float(rows["tiny"]["final_mse_vs_gt"])


@pytest.fixture
def video_run(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    folder = write_video_dir(workdir / "data/videos")
    overrides = {**SMALL, "inputs": {"source": "video_dir", "video_dir": "data/videos"}}
    return workdir, folder, overrides


TARGETS = ["results/tiny/convergence.json"]


def test_video_dir_dag_and_a_corrupt_video(video_run):
    workdir, folder, overrides = video_run
    result = ok(run(workdir, overrides, *TARGETS))
    assert executed_rules(result) == ["features", "metrics", "prefetch", "probe", "validate"]
    summary = json.loads((workdir / "results/tiny/convergence.json").read_text())
    assert summary["samples"] == "N=4 samples (2 seeds x 2 windows of 2 episodes, video_dir)"
    assert summary["n_samples_gt"] == 4
    # the videos are inputs: a damaged one reruns the model stages, which stop naming it
    (folder / "clip1.mp4").write_bytes(b"not a video at all" * 100)
    failed = run(workdir, overrides, *TARGETS)
    assert failed.returncode != 0
    log = (workdir / "results/tiny/logs/features.log").read_text()  # the one model stage that reads the videos
    assert "data/videos/clip1.mp4: cannot decode the video" in log and "re-encode it" in log
    assert not (workdir / "results/tiny/features/inference.safetensors").exists()
    assert not list((workdir / "results/tiny").glob(".*tmp*"))


def test_video_dir_with_mismatched_dimensions_fails_naming_both(video_run):
    workdir, _, overrides = video_run
    tiny = {**TINY_PRESET, "action_dim": 20}
    result = run(workdir, {**overrides, "presets": {"tiny": tiny}}, *TARGETS)
    assert result.returncode != 0
    log = (workdir / "results/tiny/logs/features.log").read_text()
    assert ("DimensionError: action_dim mismatch: " in log and "episodes.csv row 1 (inputs.episodes index 0) has 7, but config "
            "presets.tiny.action_dim says 20; remove presets.tiny.action_dim" in log), log[-2000:]
    assert not (workdir / "results/tiny/validate.json").exists()


def test_video_dir_table_with_a_missing_column_fails_naming_it(video_run):
    workdir, folder, overrides = video_run
    table = folder / "episodes.csv"
    table.write_text(table.read_text().replace("prompt,", "task,", 1))
    result = run(workdir, overrides, *TARGETS)
    assert result.returncode != 0
    log = (workdir / "results/tiny/logs/features.log").read_text()
    assert "data/videos/episodes.csv: missing columns ['prompt']" in log
