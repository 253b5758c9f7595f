"""The closed loop's checks (issue 34): what the rollout is fed is compared with what the policy learned from, before
any episode; what can be checked from the config is checked there, before any job; the fixes point at the rule that
rebuilds a file; and docs/troubleshooting.md's closed-loop messages are the real ones, word for word. Every input is
built here, small (a LeRobot v3.0 dataset of synthetic episodes, a checkpoint of a tiny head, a rollout file)."""
from __future__ import annotations

import copy
import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, copy_workflow
from test_config_errors import matches, merged
from mimic_redundancy.core.io import ROLLOUT_ARRAYS, InputFileError, load_rollout, rollout_digest, save_npz
from mimic_redundancy.data.readers import DataError
from mimic_redundancy.pipeline import config as cfg
from mimic_redundancy.pipeline import sim_stages as stages
from mimic_redundancy.sim.backends import CONVENTIONS
from mimic_redundancy.sim.common import EpisodeRecord
from mimic_redundancy.sim.demos import write_dataset

CONFIGS = {name: yaml.safe_load((REPO / f"configs/{name}.yaml").read_text()) for name in ("metaworld", "libero")}
TASK, PROMPT = "button-press-topdown-v3", "press the button down from the top"
DEMOS_COMMAND = "snakemake --profile profiles/local results/demos/summary.json --forcerun demos"


def closed_loop(name: str, *overrides: dict) -> dict:
    """config.yaml with configs/<name>.yaml and `overrides` merged over it (as --configfile merges them); sim.tasks
    replaced, not merged, where an override gives it."""
    config = merged(CONFIGS[name], *overrides)
    for override in overrides:
        if "tasks" in override.get("sim", {}):
            config["sim"]["tasks"] = dict(override["sim"]["tasks"])
    return config


def refusal(config: dict) -> str:
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate_config(copy.deepcopy(config))
    return str(error.value)


# -- a demonstrations dataset: synthetic episodes written by the demos stage's own writer -----------------------------
def record(length: int, size: int, seed: int) -> EpisodeRecord:
    rng = np.random.default_rng(seed)
    return EpisodeRecord(TASK, 0, seed, rng.integers(0, 255, (length, size, size, 3), dtype=np.uint8),
                         rng.normal(size=(length, 9)).astype(np.float32),
                         rng.normal(size=(length, 39)).astype(np.float32),
                         rng.uniform(-1, 1, (length, 4)).astype(np.float32), True, length - 1, 0.0, 0.0)


def demos_dataset(workdir: Path, size: int = 32, fps: int = 20, episodes: int = 2) -> Path:
    """results/demos/dataset under `workdir` (where the demos rule writes it), Meta-World's conventions, camera
    corner: `episodes` episodes of 6 frames of size x size px."""
    root = workdir / cfg.DEMOS_DATASET
    root.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(root, [(0, record(6, size, i)) for i in range(episodes)], [PROMPT], "corner", fps, {"test": True},
                  CONVENTIONS["metaworld"])
    return root


def rollout_settings(**inputs) -> dict:
    """What check_dataset and _policy read of the rollout's settings (config.rollout_settings' keys)."""
    return {"demos": {"backend": "metaworld", "camera": "corner", "fps": 20},
            "inputs": {"camera": "auto", "state_key": "observation.environment_state", "action_key": "action",
                       "height": 32, "width": 32, "frames": 2, "frame_skip": 4, **inputs}}


def edit_info(root: Path, edit) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    edit(info)
    (root / "meta/info.json").write_text(json.dumps(info))


# -- defect 1: info.json's frame size against the video's ------------------------------------------------------------
def test_a_dataset_whose_info_json_frame_size_is_not_its_videos_is_refused(tmp_path, monkeypatch):
    """The env renders at info.json's size: a 64 px shape over 32 px videos rendered at 64 and resized, without a
    word. Now refused, naming both sizes and the demos rule's command."""
    monkeypatch.chdir(tmp_path)  # the rollout sees the dataset where the demos rule writes it
    root = demos_dataset(tmp_path)
    assert stages.check_dataset(cfg.DEMOS_DATASET, rollout_settings()) == (32, 32)
    edit_info(root, lambda info: info["features"]["observation.images.corner"].update(shape=[64, 64, 3]))
    with pytest.raises(DataError) as error:
        stages.check_dataset(cfg.DEMOS_DATASET, rollout_settings())
    message = str(error.value)
    assert "camera 'observation.images.corner' has frames of 64 x 64 px" in message, message
    assert "videos/observation.images.corner/chunk-000/file-000.mp4 is 32 x 32 px" in message, message
    assert message.endswith(f"rerun the demos rule: {DEMOS_COMMAND}"), message


def test_a_dataset_without_its_videos_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = demos_dataset(tmp_path)
    for video in root.glob("videos/*/*/*.mp4"):
        video.unlink()
    with pytest.raises(DataError, match="is a video, but none of the 1 video files its episodes name is here"):
        stages.check_dataset(cfg.DEMOS_DATASET, rollout_settings())


# -- defect 2: the frames the policy was trained on against the rollout's ---------------------------------------------
DIMS = {"chunk_len": 8, "action_dim": 4, "joint_dim": 39}  # Meta-World's action, its 39-dim environment state
TRAINED_INPUTS = {"source": "demos", "frames": 2, "frame_skip": 4, "height": 32, "width": 32,
                  "demos": {"backend": "metaworld", "fps": 80}}


def trained_checkpoint(folder: Path, inputs: dict = TRAINED_INPUTS) -> Path:
    """A checkpoint of a tiny head, saved and verified by the train stage's own verify_round_trip, which records the
    frames it was trained on; the check rows are random hiddens (no backbone is built)."""
    import torch

    from mimic_redundancy.model.features import FeatureSet
    from mimic_redundancy.model.model import build_head
    from mimic_redundancy.model.train import verify_round_trip

    model = {"preset": "small", "dim": 32, "depth": 1, "model_seed": 0, "device": "cpu"}
    net = build_head(model, torch.device("cpu"), DIMS, 16, None)
    g = torch.Generator().manual_seed(0)
    rows = 2
    checks = FeatureSet("demos", [0, 1], ["a", "b"], [0, 1], [0, 1], [0, 0], [0, 0],
                        [torch.randn(rows, 4, 16, generator=g)], torch.randn(rows, 39, generator=g),
                        torch.randn(rows, 8, 4, generator=g), torch.randn(rows, 8, 4, generator=g),
                        torch.zeros(rows, 1), torch.zeros(rows, 1, dtype=torch.int64))
    settings = {"model": model, "steps": 1, "batch_size": 1, "lr": 1e-3, "seed": 0, "draws": 1,
                "train_features": {"digest": "0" * 64, "data": {"inputs": inputs}}}
    backbone = {"kind": "tiny-random", "model_seed": 0, "tokenizer": "builtin", "extract_layer": 1, "dtype": "float32"}
    verify_round_trip(net, checks, folder, settings, backbone, {"repos": []}, torch.device("cpu"))
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return trained_checkpoint(tmp_path_factory.mktemp("policy") / "checkpoint")


def policy_settings(checkpoint: Path, fps: int = 80, **inputs) -> dict:
    settings = rollout_settings(**inputs)
    settings["demos"]["fps"] = fps
    return {**settings, "model": {"preset": "trained", "checkpoint": str(checkpoint)}}


def test_the_train_stage_records_the_frames_a_policy_saw(checkpoint):
    from mimic_redundancy.model.checkpoints import read_checkpoint_config, trained_frames

    recorded = read_checkpoint_config(checkpoint)["provenance"]["trained_frames"]
    assert recorded == {"height": 32, "width": 32, "frames": 2, "frame_skip": 4, "fps": 80, "source": "demos"}
    assert trained_frames(read_checkpoint_config(checkpoint))["where"] == "provenance.trained_frames"


def test_a_policy_shown_frames_of_another_size_is_refused_before_any_episode(checkpoint):
    """A policy trained at 32 px rolled out with inputs.height/width 64 ran every job without a word."""
    from mimic_redundancy.model.model import DimensionError
    from mimic_redundancy.sim import metaworld_env

    stages._check_trained_frames(policy_settings(checkpoint))  # the same frames: nothing to say
    with pytest.raises(DimensionError) as error:  # _policy checks before it builds the backbone
        stages._policy(policy_settings(checkpoint, height=64, width=64), "cpu", metaworld_env)
    assert str(error.value) == (
        f"{checkpoint}/config.json (provenance.trained_frames): the policy was trained with inputs.height 32, "
        "inputs.width 32, but this rollout shows it inputs.height 64, inputs.width 64; set inputs.height: 32, "
        "inputs.width: 32 (the policy's), or train a policy with these settings")


def test_a_policy_trained_at_another_rate_is_refused(checkpoint):
    """A checkpoint trained on 80 fps demonstrations with sim.fps 20 was never compared."""
    from mimic_redundancy.model.model import DimensionError
    from mimic_redundancy.sim import metaworld_env

    with pytest.raises(DimensionError, match="trained with sim.fps 80, but this rollout shows it sim.fps 20; set "
                                             "sim.fps: 80"):
        stages._policy(policy_settings(checkpoint, fps=20), "cpu", metaworld_env)


def test_an_older_checkpoint_is_checked_from_its_training_features(checkpoint, tmp_path, caplog):
    """Checkpoints trained here before the record: their config.json holds the training features' settings."""
    from mimic_redundancy.model.model import DimensionError

    older = tmp_path / "older"
    shutil.copytree(checkpoint, older)
    config = json.loads((older / "config.json").read_text())
    del config["provenance"]["trained_frames"]
    (older / "config.json").write_text(json.dumps(config))
    with pytest.raises(DimensionError, match=r"provenance.train_features.data.inputs\): the policy was trained with "
                                             "inputs.frames 2, but this rollout shows it inputs.frames 3"):
        stages._check_trained_frames(policy_settings(older, frames=3))
    config["provenance"] = {}  # trained elsewhere: nothing to compare with, and the log says so
    (older / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="mimic_redundancy"):
        stages._check_trained_frames(policy_settings(older, height=64))
    assert "records no training frames" in caplog.text


# -- checks that ran late, after expensive jobs: now at config time, before any job -----------------------------------
def test_execute_steps_beyond_the_policys_chunk_is_refused_at_config_time():
    """The rollout job refused it, after demos, features and train had run."""
    message = refusal(closed_loop("metaworld", {"rollout": {"execute_steps": 20}}))
    assert "config key 'rollout.execute_steps': 20 exceeds the action chunk of preset 'trained' (16, " \
           "presets.tiny-policy.chunk_len); allowed: 1 to 16" in message, message
    without = closed_loop("metaworld", {"rollout": {"execute_steps": 20}})
    del without["presets"]["tiny-policy"]["chunk_len"]  # mimic-video's default chunk, 32, takes 20
    cfg.validate_config(copy.deepcopy(without))
    without["rollout"]["execute_steps"] = 40
    assert "(32, presets.tiny-policy sets no chunk_len: mimic-video's default); allowed: 1 to 32" in refusal(without)


def test_the_chunk_default_is_the_librarys():
    from mimic_redundancy.model.model import LIBRARY_DIMS

    assert cfg.LIBRARY_CHUNK_LEN == LIBRARY_DIMS["chunk_len"]


def test_more_rollout_shards_than_batches_are_refused_at_config_time():
    """1 task x 20 layouts of sets.dev in batches of 20: one batch, so 2 shards cannot split it (the rollout job said
    'shards for 1 samples', after training)."""
    message = refusal(closed_loop("metaworld", {"shards": 2}))
    assert "config key 'shards': 2 shards, but the rollout makes 1 batch (1 task x 1 batch of at most " \
           "rollout.batch_size 20 of the 20 layouts of sets.dev); allowed: shards up to 1, or a rollout.batch_size " \
           "of at most 19" in message, message
    assert "samples" not in message
    assert cfg.validate_config(closed_loop("metaworld", {"shards": 2, "rollout": {"batch_size": 10}}))["shards"] == 2


def test_a_libero_task_without_a_scripted_expert_is_refused_when_demos_are_made_here():
    spatial = {"libero_spatial/0": "pick up the black bowl between the plate and the ramekin and place it on the plate"}
    message = refusal(closed_loop("libero", {"sim": {"tasks": spatial}}))
    assert "config key 'sim.tasks': no scripted expert for LIBERO task 'libero_spatial/0'" in message, message


@pytest.mark.parametrize("name, camera, key", [("libero", "observation.images.wrist_image", "observation.images.image"),
                                                ("metaworld", "observation.images.topview",
                                                 "observation.images.corner")])
def test_a_camera_other_than_the_simulators_is_refused_at_config_time(name, camera, key):
    """check_dataset refused it only after the demos were recorded."""
    message = refusal(closed_loop(name, {"inputs": {"camera": camera}}))
    assert f"config key 'inputs.camera': the policy is trained on {camera!r}, but sim.camera" in message, message
    assert f"allowed: auto or {key}" in message
    assert cfg.validate_config(closed_loop(name, {"inputs": {"camera": "auto"}}))


@pytest.mark.parametrize("name, task", [("metaworld", "button-press-xx-v3"), ("libero", "libero_object/12")])
def test_an_unknown_task_is_named_once(name, task):
    """check_task, prompt_of (and LIBERO's check_expert) each refused it: the message came twice."""
    message = refusal(closed_loop(name, {"sim": {"tasks": {task: "x"}}}))
    assert message.count(f"unknown {'LIBERO' if name == 'libero' else 'Meta-World'} task {task!r}") == 1, message


def test_a_number_yaml_reads_as_text_is_named_with_how_to_write_it():
    message = refusal(merged(yaml.safe_load("rollout: {margin: 1.0e9}\ntrain: {lr: 1e-3}\nprobe: {steps: 1e3}")))
    assert "config key 'rollout.margin': '1.0e9' is not of type 'number': YAML 1.1" in message, message
    assert "takes 1.0e9 for text" in message and "write 1.0e+9" in message
    assert "config key 'train.lr': '1e-3' is not of type 'number'" in message and "write 1.0e-3" in message
    assert "config key 'probe.steps': '1e3' is not of type 'integer'" in message and "write 1000" in message
    assert yaml.safe_load("margin: 1.0e+9")["margin"] == 1.0e9  # what the message says to write is a number


def test_duplicate_episodes_are_named_as_duplicates():
    message = refusal(merged({"inputs": {"episodes": [0, 3, 0]}, "train": {"episodes": [1, 1]}}))
    assert "config key 'inputs.episodes': [0, 3, 0] has non-unique elements: 0 listed more than once; allowed: each " \
           "value once" in message, message
    assert "config key 'train.episodes': [1, 1] has non-unique elements: 1 listed more than once" in message
    assert "not valid under any of the given schemas" not in message
    assert "config key 'inputs.episodes.1': -1 is less than the minimum of 0" in refusal(
        merged({"inputs": {"episodes": [0, -1]}}))


# -- fixes that sent the user the wrong way: a demos dataset is rebuilt by the demos rule, not by prefetch -------------
DEMOS_INPUTS = {"source": "demos", "dataset": cfg.DEMOS_DATASET, "episodes": "all", "camera": "auto",
                "state_key": "observation.environment_state", "action_key": "action", "prompt": "auto",
                "frames": 2, "frame_skip": 4, "height": 32, "width": 32}


def test_a_demos_dataset_missing_rows_names_the_demos_rule_with_the_runs_configfile(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from mimic_redundancy.core.io import CONFIGFILES_ENV
    from mimic_redundancy.data.sources import read_episodes

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(CONFIGFILES_ENV, "configs/metaworld.yaml")
    root = demos_dataset(tmp_path)
    assert len(read_episodes(DEMOS_INPUTS)) == 2
    data = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(data).slice(0, 11), data)  # episode 1 loses its last row
    with pytest.raises(DataError) as error:
        read_episodes(DEMOS_INPUTS)
    assert str(error.value).endswith(
        "(episode 1): 5 rows, but meta/episodes/ says 6; the file is incomplete: rerun the demos rule: snakemake "
        "--profile profiles/local results/demos/summary.json --configfile configs/metaworld.yaml --forcerun demos"), \
        error.value
    assert "prefetch" not in str(error.value)


def test_a_demos_dataset_without_its_info_json_names_the_demos_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = demos_dataset(tmp_path)
    (root / "meta/info.json").unlink()
    with pytest.raises(DataError) as error:
        stages.check_dataset(cfg.DEMOS_DATASET, rollout_settings())
    assert str(error.value) == f"{cfg.DEMOS_DATASET}/meta/info.json: not found; rerun the demos rule: {DEMOS_COMMAND}"
    (root / "meta/info.json").write_text('{"codebase_version": "v3.0", "fea')  # cut short
    with pytest.raises(DataError, match=f"not JSON .*; rerun the demos rule: {DEMOS_COMMAND}"):
        stages.check_dataset(cfg.DEMOS_DATASET, rollout_settings())


# -- tracebacks, now messages naming the file and the command that rebuilds it -------------------------------------
def test_a_truncated_early_stop_json_is_named_with_its_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = Path("results/tiny/early_stop.json")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"calibrated": {"clean_change": {"param": 0.01}}}))
    assert stages.calibrated_eps(path) == 0.01
    path.write_text(json.dumps({"calibrated": {"clean_change": {"param": None}}}))
    assert stages.calibrated_eps(path) is None
    path.write_text('{"calibrated": {"clean_ch')
    with pytest.raises(InputFileError) as error:
        stages.calibrated_eps(path)
    assert str(error.value).startswith("results/tiny/early_stop.json: not valid JSON (")
    assert str(error.value).endswith("Rebuild it: snakemake --profile profiles/local results/tiny/early_stop.json "
                                     "--forcerun early_stop")
    path.write_text(json.dumps({"calibrated": {}}))
    with pytest.raises(InputFileError, match="has no calibrated.clean_change.param"):
        stages.calibrated_eps(path)


def synthetic_rollout(policies=(0, 1), episodes: int = 6, max_steps: int = 4, execute: int = 2, seed: int = 0,
                      success: np.ndarray | None = None):
    """A rollout.npz's arrays that load_rollout accepts: rules K=1 and K=10 on `episodes` episodes of one task (layout
    seed 1, layouts 0 ..), each a success at step 2 (random, or where `success` [P, R, S] says) or a failure after
    max_steps, the actions finite while the episode runs."""
    from mimic_redundancy.sim.rollout import COSTS

    rng = np.random.default_rng(seed)
    p, r, s, m = len(policies), 2, episodes, -(-max_steps // execute)
    success = rng.random((p, r, s)) < 0.6 if success is None else success
    steps = np.where(success, 2, max_steps).astype(np.int64)
    actions = rng.uniform(-1, 1, (p, r, s, max_steps, 4)).astype(np.float32)
    actions[np.arange(max_steps) >= steps[..., None]] = np.nan
    decisions = -(-steps // execute)
    nfe = np.where(np.arange(m) < decisions[..., None], np.array([1, 10])[None, :, None, None], -1).astype(np.int64)
    arrays = {"success": success, "steps_to_success": np.where(success, 2, -1).astype(np.int64), "steps": steps,
              "nfe": nfe, "actions": actions, "seconds": rng.random((p, r, s, 4)),
              "policy": np.array(policies, np.int64), "policy_checkpoint": np.array([f"ckpt-{q}" for q in policies]),
              "policy_digest": np.array(["0" * 64] * p), "task": np.array([TASK] * s),
              "layout_seed": np.ones(s, np.int64), "layout_index": np.arange(s, dtype=np.int64),
              "episode_set": np.asarray("dev"), "prompt": np.array([PROMPT] * s), "rule": np.array(["K=1", "K=10"]),
              "rule_kind": np.array(["fixed_k", "fixed_k"]), "rule_param": np.array([1.0, 10.0]),
              "costs": np.array(COSTS), "max_steps": np.int64(max_steps), "execute_steps": np.int64(execute),
              "total_episodes": np.int64(s), "preset": np.asarray("trained"), "device": np.asarray("cpu"),
              "config_json": np.asarray("{}"), "config_digest": np.asarray("0" * 64),
              "versions_json": np.asarray("{}"), "numerics_json": np.asarray("{}")}
    arrays["arrays_digest"] = np.asarray(rollout_digest(arrays))
    return arrays


def rollout_file(path, **kwargs) -> Path:
    path = Path(path)
    save_npz(path, synthetic_rollout(**kwargs), ROLLOUT_ARRAYS)
    load_rollout(path)  # a valid rollout
    return path


@pytest.fixture
def answers(tmp_path, monkeypatch):
    """results/trained/rollout.csv and rollout.json holding exactly the columns and keys plot_rollout says it reads
    (FIGURE_COLUMNS, FIGURE_SUMMARY_KEYS), and the figure drawn from them: the lists are complete. (write_answers
    takes a minute here: its sizing and rliable's bootstrap.)"""
    from mimic_redundancy.sim.answers import FIGURE_COLUMNS, FIGURE_SUMMARY_KEYS, plot_rollout

    monkeypatch.chdir(tmp_path)
    folder = Path("results/trained")
    folder.mkdir(parents=True)
    rows = [{"task": TASK, "role": role, "rule": rule, "kind": kind, "episodes": 10, "policies": 2,
             "nfe_per_decision": nfe, "success_rate": rate, "ci_low": rate - 0.2, "ci_high": min(rate + 0.2, 1.0),
             "diff_vs_reference": rate - 0.8, "diff_ci_low": rate - 1.0, "diff_ci_high": rate - 0.6,
             "shown_non_inferior": role == "candidate" and rate > 0.7, "open_loop_mse_vs_gt": 0.1 / max(nfe, 1),
             "successes_seed_0": round(10 * rate), "successes_seed_1": round(10 * rate)}
            for role, rule, kind, nfe, rate in [("candidate", "K=1", "fixed_k", 1, 0.3), ("reference", "K=10",
                                                                                        "fixed_k", 10, 0.8),
                                                ("candidate", "stop@5 clean", "fixed_step_clean", 5, 0.75),
                                                ("baseline", "nearest demo", "nearest_demo", 0, 0.5)]]
    assert set(rows[0]) == {*FIGURE_COLUMNS, "successes_seed_0", "successes_seed_1"}
    with open(folder / "rollout.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {"policies": [0, 1], "episode_set": "dev", "margin": 0.05, "reference": "K=10", "alpha": 0.025,
               "preset": "trained", "tasks": {TASK: {"open_loop_vs_closed_loop": {"spearman_mse_vs_gt_success": -1.0}}}}
    assert set(summary) == set(FIGURE_SUMMARY_KEYS)
    (folder / "rollout.json").write_text(json.dumps(summary))
    style = {"width": 6, "height": 4, "dpi": 50, "log_y": True}
    plot_rollout(folder / "rollout.csv", folder / "rollout.json", folder / "rollout.png", folder / "rollout.svg", style)
    return folder, style


def test_a_rollout_table_without_the_columns_the_figure_draws_is_named(answers):
    """rollout.csv without ci_low: a KeyError in the middle of the drawing."""
    from mimic_redundancy.sim.answers import plot_rollout

    folder, style = answers
    with open(folder / "rollout.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(folder / "rollout.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in rows[0] if c != "ci_low"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(InputFileError) as error:
        plot_rollout(folder / "rollout.csv", folder / "rollout.json", folder / "a.png", folder / "a.svg", style)
    message = str(error.value)
    assert message.startswith("results/trained/rollout.csv: lacks the columns ['ci_low'] the figure draws (it has ["), \
        message
    assert message.endswith("Rebuild it: snakemake --profile profiles/local results/trained/rollout.csv --forcerun "
                            "rollout_metrics")


def read_only(folder: Path):
    """Make `folder` unwritable for this user: chmod, or (root passes every permission check) the immutable
    attribute, which root's writes also meet (as a read-only mount). Returns the undo, or skips where neither works."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("root, and no immutable attribute here: nothing makes a folder read-only for this user")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_results_folder_is_named(tmp_path):
    results = tmp_path / "results"
    assert cfg.read_only_problem(str(results)) is None  # none yet: the first job makes it
    (results / "tiny").mkdir(parents=True)
    assert cfg.read_only_problem(str(results)) is None
    undo = read_only(results / "tiny")
    try:
        problem = cfg.read_only_problem(str(results))
    finally:
        undo()
    assert problem == (f"{results}/ is read-only: this user cannot write {results}/tiny/, so no job could write its "
                       f"outputs; make it writable (chmod -R u+w {results}, or mount it read-write), or run the "
                       "workflow in a copy of this folder that you can write")


@pytest.mark.slow
def test_a_read_only_results_folder_stops_the_dag_build(tmp_path):
    """Snakemake's own ProtectedOutputException came per rule, once a job was about to write; rules/common.smk now
    stops the DAG build, naming the folder."""
    workdir = copy_workflow(tmp_path / "wf")
    (workdir / "results").mkdir()
    undo = read_only(workdir / "results")
    try:
        result = subprocess.run([str(SNAKEMAKE), "--profile", "profiles/local", "-n"], cwd=workdir,
                                capture_output=True, text=True, timeout=300)
    finally:
        undo()
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "WorkflowError" in output, output[-2000:]
    assert "results/ is read-only: this user cannot write results/, so no job could write its outputs" in output


# -- docs/troubleshooting.md's closed-loop messages are the real ones, word for word ---------------------------------
def error_of(action) -> str:
    """The message of the error `action()` stops with (every error of ours is a ValueError)."""
    try:
        action()
    except ValueError as error:
        return str(error)
    raise AssertionError("no error")


def config_error(name: str, *overrides: dict):
    return lambda d: refusal(closed_loop(name, *overrides))


def without_simulator(d: Path) -> str:
    """The simulator's module cannot be imported (not installed): None in sys.modules makes import fail as if."""
    module = "mimic_redundancy.sim.metaworld_env"
    saved = sys.modules.get(module)
    sys.modules[module] = None
    try:
        return refusal(closed_loop("metaworld"))
    finally:
        if saved is not None:
            sys.modules[module] = saved
        else:
            del sys.modules[module]


def dataset_error(change=None, **settings):
    """check_dataset's message on results/demos/dataset (in the case's folder) after `change(root)`."""
    def produce(d: Path) -> str:
        root = demos_dataset(d)
        if change:
            change(root)
        checked = rollout_settings()
        for key, value in settings.items():
            checked[key].update(value)
        return error_of(lambda: stages.check_dataset(cfg.DEMOS_DATASET, checked))
    return produce


def missing_rows(d: Path) -> str:
    import pyarrow.parquet as pq

    from mimic_redundancy.data.sources import read_episodes

    data = demos_dataset(d) / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(data).slice(0, 11), data)
    return error_of(lambda: read_episodes(DEMOS_INPUTS))


def frames_error(d: Path) -> str:
    folder = trained_checkpoint(d / "results/tiny-policy/train/seed-0/checkpoint")
    return error_of(lambda: stages._check_trained_frames(policy_settings(folder, height=64, width=64)))


def state_key_error(d: Path) -> str:
    from mimic_redundancy.sim import libero_env

    settings = policy_settings(trained_checkpoint(d / "checkpoint"))
    return error_of(lambda: stages._policy({**settings, "demos": {**settings["demos"], "backend": "libero"}}, "cpu",
                                           libero_env))


def dims_error(d: Path) -> str:
    """A policy of Meta-World's 39-dim environment state given its 9-dim observation.state: refused from the
    checkpoint's config.json, before the backbone is built."""
    from mimic_redundancy.sim import metaworld_env

    settings = policy_settings(trained_checkpoint(d / "checkpoint"), state_key="observation.state")
    return error_of(lambda: stages._policy(settings, "cpu", metaworld_env))


def early_stop_error(text: str):
    def produce(d: Path) -> str:
        path = Path("results/trained/early_stop.json")
        path.parent.mkdir(parents=True)
        path.write_text(text)
        return error_of(lambda: stages.calibrated_eps(path))
    return produce


POLICY_FILE = "results/trained/rollout/policy-{}/rollout.npz"


def policy_file(policy: int, held: int | None = None, seed: int = 0, **changes) -> str:
    """One policy's rollout file (as the rollout job writes it, one shard), holding policy `held`'s rollouts."""
    held = policy if held is None else held
    arrays = synthetic_rollout(policies=(held,))
    arrays["config_json"] = np.asarray(json.dumps({"policy": held, "model": {"checkpoint": f"ckpt-{held}"},
                                                   "rollout": {"seed": seed}, "shard": {"shard": "1-of-1",
                                                                                        "rows": [0, 6]}}))
    arrays.update(changes)
    arrays["arrays_digest"] = np.asarray(rollout_digest(arrays))
    save_npz(POLICY_FILE.format(policy), arrays, ROLLOUT_ARRAYS)
    return POLICY_FILE.format(policy)


def gather_error(**second):
    """gather_rollout's message on policy 0's file and policy 1's, made with `second` (policy_file's arguments)."""
    def produce(d: Path) -> str:
        from mimic_redundancy.core.shards import gather_rollout

        paths = [[policy_file(0)], [policy_file(1, **second)]]
        return error_of(lambda: gather_rollout(paths, "results/trained/rollout.npz", [0, 1]))
    return produce


def damaged_rollout(change):
    """load_rollout's message on one policy's file after `change(arrays)`; the digest rewritten unless `change` says
    it changes the arrays behind it (returns 'keep digest')."""
    def produce(d: Path) -> str:
        arrays = synthetic_rollout(policies=(0,))
        keep = change(arrays) == "keep digest"
        if not keep:
            arrays["arrays_digest"] = np.asarray(rollout_digest(arrays))
        save_npz(POLICY_FILE.format(0), arrays, ROLLOUT_ARRAYS)
        return error_of(lambda: load_rollout(POLICY_FILE.format(0)))
    return produce


def cut(arrays: dict) -> None:
    for key in ("success", "steps_to_success", "steps", "nfe", "actions", "seconds"):
        arrays[key] = arrays[key][:, :, :5]


def shrink(arrays: dict) -> None:
    for key in ("success", "steps_to_success", "steps", "nfe", "actions", "seconds"):
        arrays[key] = arrays[key][:, :, :5]
    for key in ("task", "layout_seed", "layout_index", "prompt"):
        arrays[key] = arrays[key][:5]


def contradict(arrays: dict) -> None:
    arrays["success"][0, 0, 0] = not arrays["success"][0, 0, 0]


def edit_actions(arrays: dict) -> str:
    arrays["actions"][0, 0, 0, 0] = 0.5
    return "keep digest"


def reference_error(d: Path) -> str:
    from mimic_redundancy.sim.answers import rollout_tables

    run = load_rollout(rollout_file("results/trained/rollout.npz"))
    return error_of(lambda: rollout_tables(run, {}, {"margin": 0.05, "alpha": 0.025, "reference": 5}))


def nearest_error(d: Path) -> str:
    from mimic_redundancy.core.io import NEAREST_ARRAYS
    from mimic_redundancy.sim.answers import write_answers

    arrays = synthetic_rollout()
    arrays["episode_set"] = np.asarray("test")
    arrays["arrays_digest"] = np.asarray(rollout_digest(arrays))
    save_npz("results/trained/rollout.npz", arrays, ROLLOUT_ARRAYS)
    s = arrays["task"].size
    nearest = {"task": arrays["task"], "layout_seed": arrays["layout_seed"], "layout_index": arrays["layout_index"],
               "distance": np.zeros(s), "nearest_episode": np.zeros(s, np.int64), "success": np.ones(s, bool),
               "steps_to_success": np.ones(s, np.int64), "subset_sizes": np.array([1]),
               "subset_distance": np.zeros((1, s)), "subset_success": np.ones((1, s), bool), "max_steps": np.int64(4),
               "episode_set": np.asarray("dev"), "config_json": np.asarray("{}"),
               "config_digest": np.asarray("0" * 64), "versions_json": np.asarray("{}")}
    save_npz("results/demos/nearest-test.npz", nearest, NEAREST_ARRAYS)
    return error_of(lambda: write_answers("results/trained/rollout.npz", "early_stop.csv", {}, "t.csv", "t.json",
                                          "results/demos/nearest-test.npz"))


def figure_error(drop_column: str | None = None, drop_key: str | None = None):
    def produce(d: Path) -> str:
        from mimic_redundancy.sim.answers import FIGURE_COLUMNS, FIGURE_SUMMARY_KEYS, plot_rollout

        folder = Path("results/trained")
        folder.mkdir(parents=True)
        columns = [c for c in (*FIGURE_COLUMNS, "successes_seed_0") if c != drop_column]
        (folder / "rollout.csv").write_text(",".join(columns) + "\n" + ",".join("1" for _ in columns) + "\n")
        summary = {k: [0] if k == "policies" else {} for k in FIGURE_SUMMARY_KEYS if k != drop_key}
        (folder / "rollout.json").write_text(json.dumps(summary))
        return error_of(lambda: plot_rollout(folder / "rollout.csv", folder / "rollout.json", "a.png", "a.svg", {}))
    return produce


LIBERO_SPATIAL = {"libero_spatial/0": "pick up the black bowl between the plate and the ramekin and place it on the "
                                      "plate"}
# each documented message (docs/troubleshooting.md, the closed-loop section's tables) -> what produces the real one,
# run in a fresh folder of its own (the working directory)
CLOSED_LOOP = {
    "config key 'rollout.steps': [60] exceed probe.steps (50)": config_error("metaworld", {"rollout": {"steps": [1, 60]}}),
    "config key 'rollout.reference': K=3 is not rolled out": config_error("metaworld", {"rollout": {"reference": 3}}),
    "config key 'rollout.steps': K=10 is the reference and the only rule, so nothing is compared with it":
        config_error("metaworld", {"rollout": {"steps": [10], "stop_steps": [], "clean_change": False}}),
    "config key 'rollout.also_against': [3] are not other rolled-out K's":
        config_error("metaworld", {"rollout": {"also_against": [3]}}),
    "config key 'inputs.frame_window': the closed loop's policy sees only the frames up to now, so its training "
    "windows must too": config_error("metaworld", {"inputs": {"frame_window": "forward"}}),
    "config key 'inputs.source': demos needs the simulator: ...": without_simulator,
    "config key 'sim.tasks': unknown Meta-World task 'button-press-xx-v3'; known tasks: ...":
        config_error("metaworld", {"sim": {"tasks": {"button-press-xx-v3": "x"}}}),
    "config key 'sim.tasks': unknown LIBERO task 'libero_object/12'; libero_object has tasks ...":
        config_error("libero", {"sim": {"tasks": {"libero_object/12": "x"}}}),
    "config key 'sim.tasks': no scripted expert for LIBERO task 'libero_spatial/0' (...)":
        config_error("libero", {"sim": {"tasks": LIBERO_SPATIAL}}),
    "config key 'sim.tasks': libero_object/0's prompt is 'pick up the soup', but LIBERO's datasets give a task's "
    "language as its prompt: ...": config_error("libero", {"sim": {"tasks": {"libero_object/0": "pick up the soup"}}}),
    "config key 'sim.camera': unknown camera 'top'; Meta-World's cameras: ...":
        config_error("metaworld", {"sim": {"camera": "top"}}),
    "config key 'inputs.camera': the policy is trained on 'observation.images.wrist_image', but sim.camera 'agentview' "
    "is 'observation.images.image' in libero's datasets; allowed: auto or observation.images.image":
        config_error("libero", {"inputs": {"camera": "observation.images.wrist_image"}}),
    "config key 'sets.test': layouts 40 .. 59 asked, but MT1 has 50 layouts per task and seed":
        config_error("metaworld", {"sets": {"test": {"layout_seeds": [2], "first": 40, "layouts": 20}}}),
    "config key 'sets.test': layouts 40 .. 59 mix shipped init states (0-49) and sampled placements (50 and up); "
    "allowed: first + layouts <= 50, or first >= 50":
        config_error("libero", {"sets": {"test": {"layout_seeds": [1], "first": 40, "layouts": 20}}}),
    "config keys 'sets.demos' and 'sets.dev': the episode sets overlap at 5 layouts (...)":
        config_error("metaworld", {"sets": {"dev": {"layout_seeds": [0], "first": 0, "layouts": 5}}}),
    "config key 'rollout.max_steps': 600 exceeds libero_object/0's step limit 280":
        config_error("libero", {"rollout": {"max_steps": 600}}),
    "config key 'rollout.execute_steps': 200 exceeds rollout.max_steps (150)":
        config_error("metaworld", {"rollout": {"execute_steps": 200, "max_steps": 150}}),
    "config key 'rollout.execute_steps': 20 exceeds the action chunk of preset 'trained' (16, "
    "presets.tiny-policy.chunk_len); allowed: 1 to 16": config_error("metaworld", {"rollout": {"execute_steps": 20}}),
    "config key 'shards': 2 shards, but the rollout makes 1 batch (1 task x 1 batch of at most rollout.batch_size 20 "
    "of the 20 layouts of sets.dev); allowed: shards up to 1, or a rollout.batch_size of at most 19":
        config_error("metaworld", {"shards": 2}),
    "config key 'sim': ... ('sim.demos' is now 'sets.demos.layouts': docs/closed-loop.md#episode-sets)":
        config_error("metaworld", {"sim": {"demos": 10}}),
    # in the jobs
    "results/demos/dataset/meta/info.json: not found; rerun the demos rule: ...":
        dataset_error(lambda root: (root / "meta/info.json").unlink()),
    "results/demos/dataset/data/chunk-000/file-000.parquet (episode 1): 5 rows, but meta/episodes/ says 6; the file "
    "is incomplete: rerun the demos rule: ...": missing_rows,
    ".../meta/info.json: camera 'observation.images.corner' has frames of 64 x 64 px (height x width, its shape "
    "[64, 64, 3]), but its video .../chunk-000/file-000.mp4 is 32 x 32 px": dataset_error(
        lambda root: edit_info(root, lambda i: i["features"]["observation.images.corner"].update(shape=[64, 64, 3]))),
    ".../meta/info.json: camera 'observation.images.corner' is a video, but none of the 1 video files its episodes "
    "name is here": dataset_error(lambda root: [v.unlink() for v in root.glob("videos/*/*/*.mp4")]),
    ".../meta/info.json: no camera 'observation.images.topview' (config key 'sim.camera' is 'topview')":
        dataset_error(demos={"camera": "topview"}),
    ".../meta/info.json: 'observation.state' (state) has size 9, but libero's env gives 8 (config key "
    "'inputs.state_key')": dataset_error(demos={"backend": "libero", "camera": "corner"},
                                          inputs={"state_key": "observation.state",
                                                  "camera": "observation.images.corner"}),
    ".../meta/info.json: the demonstrations are at 80 fps, but the closed loop steps at 20 fps (sim.fps)":
        dataset_error(lambda root: edit_info(root, lambda i: i.update(fps=80))),
    ".../checkpoint/config.json (provenance.trained_frames): the policy was trained with inputs.height 32, "
    "inputs.width 32, but this rollout shows it inputs.height 64, inputs.width 64; set inputs.height: 32, "
    "inputs.width: 32 (the policy's), or train a policy with these settings": frames_error,
    "config key 'inputs.state_key': 'observation.environment_state' is no state libero gives; allowed: "
    "observation.state": state_key_error,
    ".../checkpoint: the policy acts in 4 dimensions from a 39-dim state, but metaworld's actions have 4 and its "
    "observation.state (inputs.state_key) 9": dims_error,
    "results/<preset>/early_stop.json: not valid JSON (...); it is damaged or was cut short":
        early_stop_error('{"calibrated": {"clean_ch'),
    "results/<preset>/early_stop.json: has no calibrated.clean_change.param": early_stop_error('{"calibrated": {}}'),
    "results/<preset>/rollout/policy-0/rollout.npz: array 'success' has shape (1, 2, 5), but 1 policies, 2 rules and 6 "
    "episodes need (1, 2, 6)": damaged_rollout(cut),
    "results/<preset>/rollout/policy-0/rollout.npz: holds 5 episodes, but the run rolled out 6 (total_episodes): "
    "episodes are missing": damaged_rollout(shrink),
    "results/<preset>/rollout/policy-0/rollout.npz: array 'success' contradicts the others at policy 0, rule K=1, "
    "episode 0: success disagrees with steps_to_success (-1: never)": damaged_rollout(contradict),
    "results/<preset>/rollout/policy-0/rollout.npz: its arrays differ from the digest written with them "
    "(arrays_digest)": damaged_rollout(edit_actions),
    "results/<preset>/rollout/policy-1/rollout.npz: holds the rollouts of policy 0 (...), but it stands for policy 1: "
    "a file of another policy": gather_error(held=0),
    "results/<preset>/rollout/policy-1/rollout.npz: policy 1 was rolled out with other settings than policy 0 (...): "
    "rollout.seed differ": gather_error(seed=1),
    "results/<preset>/rollout/policy-1/rollout.npz: 'max_steps' differs from policy 0's (...)":
        gather_error(max_steps=np.int64(5)),
    "config key 'rollout.reference': K=5 is not among the rolled-out rules ['K=1', 'K=10']": reference_error,
    "results/demos/nearest-test.npz: holds other episodes than results/<preset>/rollout.npz (set dev against test); "
    "rerun the nearest_demo rule for set test": nearest_error,
    "results/<preset>/rollout.csv: lacks the columns ['ci_low'] the figure draws": figure_error(drop_column="ci_low"),
    "results/<preset>/rollout.json: lacks the keys ['policies'] the figure reads": figure_error(drop_key="policies"),
}
# needs a simulator episode (slow): the replay of a rollout whose recorded outcome the replay does not give
REPLAY = ("results/<preset>/rollout.npz: replaying episode 0 (button-press-topdown-v3, layout 0) of rule K=1 gave "
          "success False at step -1, but the rollout recorded True at 2")


def test_the_guides_closed_loop_messages_are_the_real_ones(tmp_path, monkeypatch):
    from test_config_errors import documented_table_messages

    documented = documented_table_messages("The closed loop")
    assert sorted(documented) == sorted([*CLOSED_LOOP, REPLAY]), \
        "a message was added to or dropped from the guide's closed-loop section: list it here"
    wrong = []
    for i, (message, produce) in enumerate(CLOSED_LOOP.items()):
        folder = tmp_path / f"case-{i}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        real = produce(folder)
        if not matches(message, real):
            wrong.append(f"documented: {message}\nreal:       {real}")
    assert not wrong, "\n\n".join(wrong)


def test_the_guides_read_only_message_is_the_real_one(tmp_path, monkeypatch):
    from test_config_errors import guide_section

    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    [documented] = [m for m in re.findall(r"`([^`]+)`", guide_section("Snakemake itself"))
                    if m.startswith("results/ is read-only")]
    undo = read_only(tmp_path / "results")
    try:
        real = cfg.read_only_problem("results")
    finally:
        undo()
    assert matches(documented, real), (documented, real)


@pytest.mark.slow
def test_the_guides_replay_message_is_the_real_one(tmp_path, monkeypatch):
    """A rollout whose recorded success its replay in the simulator does not give (2 random actions press no
    button): rollout_videos stops, naming the episode and both outcomes."""
    monkeypatch.chdir(tmp_path)
    success = np.zeros((1, 2, 6), bool)
    success[0, 0, 0] = True  # episode 0 under K=1: recorded a success at step 2
    save_npz("results/trained/rollout.npz", synthetic_rollout(policies=(0,), success=success), ROLLOUT_ARRAYS)
    settings = {"demos": {"backend": "metaworld", "camera": "corner", "fps": 20, "tasks": {TASK: PROMPT}}}
    real = error_of(lambda: stages.rollout_videos(settings, "results/trained/rollout.npz", 32, "results/trained/videos",
                                                  "results/trained/videos.json"))
    assert matches(REPLAY, real), (REPLAY, real)
