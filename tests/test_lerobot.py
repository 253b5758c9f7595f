"""LeRobot layouts v1.6, v2.1 and v3.0, with mp4 files and with images inside the parquet, LIBERO's dimensions
(action 7, state 8): fetched by the pipeline's prefetch from the loopback Hub and read offline, their windows equal
mimic-video's LiberoDataset items element by element; a wrong layout, episode or key fails from the metadata,
before any data file is downloaded, naming the file or key and the supported layouts."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from conftest import SMALL, copy_workflow, executed_rules, snakemake, write_config
from datasets import ACTION_DIM, JOINT_DIM, write_lerobot, write_lerobot_layout
from hub_server import HubServer
from mimic_redundancy.data.lerobot import read_layout, read_lerobot
from mimic_redundancy.data.readers import DataError

V16 = "test-org/libero-v16"
INPUTS = {"source": "lerobot", "frames": 5, "height": 32, "width": 32, "frame_skip": 2, "episodes": "all",
          "windows_per_episode": 2}
DIMS = {"chunk_len": 32, "action_dim": ACTION_DIM, "joint_dim": JOINT_DIM}
SUPPORTED = r"supported layouts: v1\.6 \(meta_data/, mimic-video's LiberoDataset\), v2\.0, v2\.1, v3\.0"
# repo -> (writer arguments, the inputs keys that read it); all hold the 3 episodes of the v1.6 repo
LAYOUTS = {
    "test-org/libero-v21": ({"version": "v2.1"}, {"episodes": [0, 2], "train_episodes": [1]}),
    # physical-intelligence/libero's keys: cameras image + wrist_image in the parquet, state, actions
    "test-org/libero-v21-images": ({"version": "v2.1", "frames": "image", "camera": "image", "wrist": "wrist_image",
                                    "state_key": "state", "action_key": "actions"},
                                   {"state_key": "state", "action_key": "actions"}),
    "test-org/libero-v30": ({"version": "v3.0", "wrist": "observation.images.image2"}, {"episodes": [0, 1]}),
    "test-org/libero-v30-images": ({"version": "v3.0", "frames": "image", "instruction_column": True},
                                   {"episodes": [2], "camera": "observation.images.image",
                                    "prompt": "language_instruction"}),
}
BAD = "test-org/libero-v30-bad"  # a copy of libero-v30 that only failing cases ask for
FAILING = {  # case -> (repo, inputs keys, the message it must fail with)
    "camera": (BAD, {"camera": "observation.images.top"},
               r"meta/info\.json: camera 'observation\.images\.top' \(config key 'inputs\.camera'\) is not in the "
               r"dataset; its cameras: \['observation\.images\.image', 'observation\.images\.image2'\]"),
    "episode": (BAD, {"episodes": [0, 7]},
                r"config key 'inputs\.episodes': episodes \[7\] are not in the data \(it has 0-2, listed in "
                r"meta/episodes/\)"),
    "action": (BAD, {"action_key": "actions"},
               r"meta/info\.json: action key 'actions' \(config key 'inputs\.action_key'\) is not a feature of the "
               r"dataset; its numeric features: \['observation\.state', 'action'\]"),
    # a key naming a feature of the wrong kind: named at prefetch, not blamed on the dataset by the features job
    "state-is-a-camera": (BAD, {"state_key": "observation.images.image"},
                          r"meta/info\.json: state key 'observation\.images\.image' \(config key 'inputs\.state_key'\) "
                          r"is a feature of dtype video \(a camera\), not a numeric vector \(dtype float or int, shape "
                          r"\[n\]\); its numeric features: \['observation\.state', 'action'\]\. Set inputs\.state_key"),
    "camera-is-the-state": (BAD, {"camera": "observation.state"},
                            r"meta/info\.json: camera 'observation\.state' \(config key 'inputs\.camera'\) is a "
                            rf"feature of dtype float32 and shape \[{JOINT_DIM}\], not a camera; its cameras: "
                            r"\['observation\.images\.image', 'observation\.images\.image2'\]\. Set inputs\.camera"),
    "version": ("test-org/libero-v99", {}, r"meta/info\.json: codebase_version 'v9\.9' is not a layout"),
    "no-info": ("test-org/not-lerobot", {}, r"meta/info\.json not found \(nor a v1\.6 meta_data/ folder\)"),
    "train-episode": (BAD, {"train_episodes": [9]},
                      r"config key 'train\.episodes': episodes \[9\] are not in the data \(it has 0-2"),
    "v16-episode": (V16, {"episodes": [5]}, r"config key 'inputs\.episodes': episodes \[5\] are not in the data"),
    "v16-train-episode": (V16, {"train_episodes": [0, 4]}, r"config key 'train\.episodes': episodes \[4\] are not"),
}

# In a fresh process (HF_ENDPOINT is read when huggingface_hub is imported): the pipeline's prefetch of each repo
# (lerobot.fetch, what stages.prefetch calls), its offline read, and LiberoDataset on the v1.6 repo.
FETCH_AND_READ = """
import json, sys, time, numpy as np, torch
from mimic_redundancy.core import hub
from mimic_redundancy.data import lerobot
from mimic_redundancy.data.readers import DataError
from mimic_redundancy.data.samples import real_samples
from mimic_redundancy.data.sources import read_episodes
cases, base, dims, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
hub.go_online()
arrays, results = {}, {}
for name, (repo, keys) in cases.items():
    inputs = {**base, **keys, "lerobot": {"repo": repo}}
    start = time.perf_counter()
    try:
        entries = lerobot.fetch(hub.required_repos({}, inputs), 10)
    except DataError as error:
        results[name] = {"error": str(error), "seconds": time.perf_counter() - start}
        continue
    samples = real_samples(read_episodes(inputs, hub.local_snapshots({"repos": entries})), [0], inputs, dims, None)
    results[name] = {"entry": entries[0], "prompts": samples.prompts}
    for key in ["video", "joint_state", "gt_actions"]:
        arrays[f"{name}/{key}"] = getattr(samples, key).numpy()
    arrays[f"{name}/window"] = np.array([samples.episodes, samples.starts])
from mimic_video.libero import LiberoDataset
theirs = LiberoDataset(cases["v16"][0], num_frames=base["frames"], action_chunk_len=dims["chunk_len"],
                       frame_skip=base["frame_skip"], resize=base["height"])
episode = lambda i: int(theirs.episodes[theirs.indices[i][0]].video_path[-10:-4])  # .../episode_000002.mp4
items = {f"{episode(i)}/{theirs.indices[i][1]}": theirs[i] for i in range(len(theirs))}
results["reference_prompts"] = {k: item[3] for k, item in items.items()}
for k, item in items.items():
    for j, key in enumerate(["video", "joint_state", "gt_actions"]):
        arrays[f"reference/{k}/{key}"] = item[j].numpy()
np.savez(out + ".npz", **arrays)
open(out + ".json", "w").write(json.dumps(results))
"""


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    """The loopback Hub's dataset repos: the same 3 episodes in every layout, and the broken ones."""
    root = tmp_path_factory.mktemp("hub") / "datasets"
    v16 = write_lerobot(root / V16, episodes=3)
    for repo, (writer, _) in LAYOUTS.items():
        write_lerobot_layout(root / repo, v16, **writer)
    shutil.copytree(root / "test-org/libero-v30", root / BAD)
    v99 = shutil.copytree(root / "test-org/libero-v21", root / "test-org/libero-v99")
    info = json.loads((v99 / "meta/info.json").read_text())
    (v99 / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v9.9"}))
    shutil.copytree(root / "test-org/libero-v21/data", root / "test-org/not-lerobot/data")
    return root.parent


def _env(tmp_path: Path, server: HubServer) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    return env


@pytest.fixture(scope="module")
def fetched(hub_root, tmp_path_factory):
    """(arrays, results, requests) of FETCH_AND_READ over every layout and failing case."""
    tmp = tmp_path_factory.mktemp("fetch")
    cases = {"v16": (V16, {}), **{repo: (repo, keys) for repo, (_, keys) in LAYOUTS.items()},
             **{name: (repo, keys) for name, (repo, keys, _) in FAILING.items()}}
    with HubServer(hub_root) as server:
        result = subprocess.run([sys.executable, "-c", FETCH_AND_READ, json.dumps(cases), json.dumps(INPUTS),
                                 json.dumps(DIMS), str(tmp / "out")], env=_env(tmp, server), capture_output=True,
                                text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(tmp / "out.npz"), json.loads((tmp / "out.json").read_text()), server.requests


@pytest.mark.parametrize("name", ["v16", *LAYOUTS])
def test_windows_equal_libero_datasets_items(fetched, name):
    arrays, results, _ = fetched
    episodes, starts = arrays[f"{name}/window"]
    wanted = dict(LAYOUTS).get(name, ({}, {}))[1].get("episodes", [0, 1, 2])
    # every window (start 0 .. 40 - 32) of each selected episode, in the selected order
    assert episodes.tolist() == [e for e in wanted for _ in range(9)] and starts.tolist() == list(range(9)) * len(wanted)
    for i, (episode, start) in enumerate(zip(episodes, starts)):
        for key in ["video", "joint_state", "gt_actions"]:
            np.testing.assert_array_equal(arrays[f"{name}/{key}"][i], arrays[f"reference/{episode}/{start}/{key}"],
                                          err_msg=f"{name} episode {episode} start {start} {key}")
        assert results[name]["prompts"][i] == results["reference_prompts"][f"{episode}/{start}"]
    assert arrays[f"{name}/video"].shape[1:] == (5, 3, 32, 32)
    assert arrays[f"{name}/gt_actions"].shape[1:] == (32, ACTION_DIM)
    assert arrays[f"{name}/joint_state"].shape[1:] == (JOINT_DIM,)


def test_prefetch_fetches_only_what_the_selected_episodes_need(fetched):
    results = fetched[1]
    files = {name: sorted(f["path"] for f in results[name]["entry"]["files"]) for name in LAYOUTS}
    meta21 = ["meta/episodes.jsonl", "meta/info.json", "meta/tasks.jsonl"]
    # episodes 0 and 2 are probed, 1 is trained on (train.episodes)
    assert files["test-org/libero-v21"] == [f"data/chunk-000/episode_00000{e}.parquet" for e in range(3)] + meta21 + [
        f"videos/chunk-000/observation.images.image/episode_00000{e}.mp4" for e in range(3)]
    assert files["test-org/libero-v21-images"] == [f"data/chunk-000/episode_00000{e}.parquet" for e in range(3)] + meta21
    meta30 = ["meta/episodes/chunk-000/file-000.parquet", "meta/info.json", "meta/tasks.parquet"]
    # episodes 0 and 1 share file-000; file-001 (episode 2) and the other camera's videos stay on the Hub
    assert files["test-org/libero-v30"] == ["data/chunk-000/file-000.parquet", *meta30,
                                            "videos/observation.images.image/chunk-000/file-000.mp4"]
    assert files["test-org/libero-v30-images"] == ["data/chunk-000/file-001.parquet", *meta30]
    layout = results["test-org/libero-v30"]["entry"]["layout"]
    assert layout["codebase_version"] == "v3.0" and layout["episodes"] == [0, 1]
    assert layout["keys"] == {"state": "observation.state", "action": "action", "camera": "observation.images.image",
                              "camera_dtype": "video", "prompt": "task_index"}
    assert results["test-org/libero-v21-images"]["entry"]["layout"]["keys"]["camera"] == "image"  # the first camera
    assert results["v16"]["entry"]["layout"] == {"codebase_version": "v1.6"}


@pytest.mark.parametrize("case", list(FAILING))
def test_a_wrong_layout_episode_or_key_fails_before_the_download(fetched, case):
    _, results, requests = fetched
    repo, _, message = FAILING[case]
    assert "error" in results[case], f"{case} did not fail"
    error = results[case]["error"]
    assert re.search(message, error), error
    assert re.search(SUPPORTED, error), error
    if repo != V16:  # v1.6 metadata lists no episodes: checked after its download, before the manifest
        fetched_files = [path for _, path in requests if f"/{repo}/resolve/" in path]
        assert not [p for p in fetched_files if "/data/" in p or "/videos/" in p], fetched_files
        assert results[case]["seconds"] < 10


@pytest.mark.parametrize("edit, message", [
    (lambda root: (root / "meta/info.json").write_text(
        (root / "meta/info.json").read_text().replace('"v3.0"', '"v4.0"')),
     r"meta/info\.json: codebase_version 'v4\.0' is not a layout this pipeline reads"),
    (lambda root: (root / "meta/info.json").unlink(),
     r"meta/info\.json: not found \(nor a v1\.6 meta_data/ folder\)"),
])
def test_a_snapshot_of_an_unknown_layout_names_the_file_and_the_supported_versions(hub_root, tmp_path, edit, message):
    root = shutil.copytree(hub_root / "datasets/test-org/libero-v30", tmp_path / "ds")
    edit(root)
    with pytest.raises(DataError, match=message + ".*" + SUPPORTED):
        read_layout(root)


@pytest.mark.parametrize("keys, message", [
    ({"camera": "observation.images.top"}, r"camera 'observation\.images\.top' \(config key 'inputs\.camera'\)"),
    ({"state_key": "state"}, r"state key 'state' \(config key 'inputs\.state_key'\) is not a feature"),
    ({"action_key": "actions"}, r"action key 'actions' \(config key 'inputs\.action_key'\) is not a feature"),
    ({"prompt": "instruction"}, r"prompt column 'instruction' \(config key 'inputs\.prompt'\) is not a feature"),
    ({"episodes": [3]}, r"config key 'inputs\.episodes': episodes \[3\] are not in the data"),
    ({"action_key": "observation.images.image"}, r"action key 'observation\.images\.image' \(config key "
                                                 r"'inputs\.action_key'\) is a feature of dtype video \(a camera\)"),
    ({"camera": "action"}, r"camera 'action' \(config key 'inputs\.camera'\) is a feature of dtype float32"),
])
def test_offline_reads_name_the_key_too(hub_root, keys, message):
    with pytest.raises(DataError, match=message + ".*" + SUPPORTED):
        read_lerobot(hub_root / "datasets/test-org/libero-v21", {**INPUTS, **keys})


def test_a_state_key_naming_an_image_camera_is_named(hub_root):
    """physical-intelligence/libero's layout keeps its frames in the parquet (dtype image): still a camera."""
    with pytest.raises(DataError, match=r"state key 'wrist_image' \(config key 'inputs\.state_key'\) is a feature of "
                                        r"dtype image \(a camera\), not a numeric vector.*its numeric features: "
                                        r"\['state', 'actions'\]"):
        read_lerobot(hub_root / "datasets/test-org/libero-v21-images",
                     {**INPUTS, "state_key": "wrist_image", "action_key": "actions"})


def test_a_truncated_data_file_is_detected(hub_root, tmp_path):
    import pyarrow.parquet as pq

    root = shutil.copytree(hub_root / "datasets/test-org/libero-v30", tmp_path / "ds")
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 70), path)  # episode 1 loses its last 10 rows
    with pytest.raises(DataError, match=r"file-000\.parquet \(episode 1\): 30 rows, but meta/episodes/ says 40"):
        read_lerobot(root, INPUTS)


@pytest.mark.slow
def test_a_v30_dataset_runs_through_the_dag(hub_root, tmp_path):
    """One real Snakemake run: prefetch (metadata, then the selected files), then the job that reads the dataset
    (features) offline. (The head stages read only the features: the v2.1 DAG in tests/test_real_inputs.py.)"""
    workdir = copy_workflow(tmp_path / "wf")
    overrides = {**SMALL, "seeds": [0], "inputs": {"source": "lerobot", "lerobot": {"repo": "test-org/libero-v30"},
                                                   "camera": "observation.images.image2", "episodes": [1],
                                                   "frame_skip": 2, "windows_per_episode": 2}}
    config = write_config(workdir, overrides)
    with HubServer(hub_root) as server:
        result = snakemake(workdir, "results/tiny/features/inference.safetensors", "--configfile", str(config),
                           env=_env(tmp_path, server), timeout=600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert executed_rules(result) == ["features", "prefetch"]
    manifest = json.loads((workdir / "results/tiny/prefetch.json").read_text())
    [entry] = manifest["repos"]
    assert entry["layout"]["keys"]["camera"] == "observation.images.image2"
    assert sorted(f["path"] for f in entry["files"] if not f["path"].startswith("meta/")) == [
        "data/chunk-000/file-000.parquet", "videos/observation.images.image2/chunk-000/file-000.mp4"]
    with safe_open(str(workdir / "results/tiny/features/inference.safetensors"), "pt") as features:
        assert features.get_tensor("episode").tolist() == [1, 1] and features.get_tensor("start").tolist() == [0, 8]
        actions = features.get_tensor("gt_actions")
    assert actions.shape[1:] == (32, ACTION_DIM) and actions.isfinite().all()
