"""Reading real inputs: the LeRobot reader against mimic-video's own LiberoDataset (both through the real
huggingface_hub, served by the loopback Hub), the video_dir table, and the errors bad data gets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import ACTION_DIM, JOINT_DIM, write_lerobot, write_video_dir
from hub_server import HubServer
from mimic_redundancy.data.lerobot import read_lerobot
from mimic_redundancy.data.readers import DataError, data_dims, read_video_dir
from mimic_redundancy.data.samples import real_samples
from mimic_redundancy.data.sources import read_episodes
from mimic_redundancy.model.model import DimensionError, resolve_dims

REPO = "test-org/libero-tiny"
INPUTS = {"source": "lerobot", "frames": 5, "height": 32, "width": 32, "frame_skip": 2, "episodes": "all",
          "windows_per_episode": 2}
DIMS = {"chunk_len": 32, "action_dim": ACTION_DIM, "joint_dim": JOINT_DIM}

# Runs in a fresh process (HF_ENDPOINT is read when huggingface_hub is imported): the pipeline's prefetch
# and offline read of the dataset, and mimic-video's LiberoDataset on the same repo; saves both side by side.
COMPARE = """
import json, sys, numpy as np, torch
from mimic_redundancy.core import hub
from mimic_redundancy.data import lerobot
from mimic_redundancy.data.samples import real_samples
from mimic_redundancy.data.sources import read_episodes
from mimic_video.libero import LiberoDataset
inputs, dims, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
entries = lerobot.fetch(hub.required_repos({}, {"source": "lerobot", "lerobot": {"repo": sys.argv[4]}}), 10)
episodes = read_episodes(inputs, hub.local_snapshots({"repos": entries}))
ours = real_samples(episodes, [0], inputs, dims, None)
theirs = LiberoDataset(sys.argv[4], num_frames=inputs["frames"], action_chunk_len=dims["chunk_len"],
                       frame_skip=inputs["frame_skip"], resize=inputs["height"])
# LiberoDataset orders episodes as glob() lists the parquet files (file-system order); ours by episode_index.
# Put its items in our order: by the episode's video file, then the window start.
episode_of = {str(e.video): e.index for e in episodes}
key = lambda i: (episode_of[theirs.episodes[theirs.indices[i][0]].video_path], theirs.indices[i][1])
order = sorted(range(len(theirs)), key=key)
items = [theirs[i] for i in order]
np.savez(out, our_video=ours.video.numpy(), our_joint=ours.joint_state.numpy(), our_actions=ours.gt_actions.numpy(),
         our_prompts=np.array(ours.prompts), our_starts=np.array(ours.starts),
         video=torch.stack([i[0] for i in items]).numpy(), joint=torch.stack([i[1] for i in items]).numpy(),
         actions=torch.stack([i[2] for i in items]).numpy(), prompts=np.array([i[3] for i in items]),
         starts=np.array([key(i)[1] for i in order]))
"""


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory):
    return write_lerobot(tmp_path_factory.mktemp("hub") / "datasets" / REPO)


def test_lerobot_windows_equal_mimic_videos_libero_dataset(lerobot, tmp_path):
    hub_root = lerobot.parents[2]
    out = tmp_path / "both.npz"
    with HubServer(hub_root) as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(tmp_path / "hf"),
                   PYTHONPATH=str(Path(__file__).parents[1] / "src"))
        result = subprocess.run([sys.executable, "-c", COMPARE, json.dumps(INPUTS), json.dumps(DIMS), str(out), REPO],
                                env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    both = np.load(out)
    assert len(both["starts"]) == 2 * (40 - 32 + 1)  # every window of both 40-frame episodes
    np.testing.assert_array_equal(both["our_starts"], both["starts"])
    for ours, theirs in [("our_video", "video"), ("our_joint", "joint"), ("our_actions", "actions"),
                         ("our_prompts", "prompts")]:
        np.testing.assert_array_equal(both[ours], both[theirs], err_msg=ours)
    assert both["video"].shape == (18, 5, 3, 32, 32)
    assert set(both["prompts"]) == {"open the top drawer of the cabinet", "put the bowl on the plate"}


def test_probe_windows_are_evenly_spaced_and_seed_major(lerobot):
    samples = real_samples(read_lerobot(lerobot, INPUTS), [3, 4], INPUTS, DIMS, per_episode=3)
    assert samples.starts == [0, 4, 8] * 4 and samples.episodes == [0, 0, 0, 1, 1, 1] * 2
    assert samples.seeds == [3] * 6 + [4] * 6 and samples.windows == list(range(6)) * 2
    # the same window gets the same data under every seed, and a seed's noise does not depend on the window
    assert torch.equal(samples.video[0], samples.video[6]) and torch.equal(samples.noise[0], samples.noise[1])
    assert not torch.equal(samples.noise[0], samples.noise[6])


def test_episode_selection(lerobot):
    assert [e.index for e in read_episodes({**INPUTS, "episodes": [1]}, {"dataset": lerobot})] == [1]
    with pytest.raises(DataError, match=r"inputs.episodes': episodes \[5\] are not in the data \(it has 0-1, "):
        read_episodes({**INPUTS, "episodes": [0, 5]}, {"dataset": lerobot})


def test_video_dir_reads_prompts_states_and_actions(tmp_path):
    folder = write_video_dir(tmp_path / "videos")
    episodes = read_video_dir(folder)
    assert [e.prompt for e in episodes] == ["open the top drawer of the cabinet", "put the bowl on the plate"]
    assert episodes[0].states.shape == (1, JOINT_DIM) and episodes[0].actions.shape == (32, ACTION_DIM)
    samples = real_samples(episodes, [0], {**INPUTS, "source": "video_dir"}, DIMS, 1)
    assert samples.video.shape == (2, 5, 3, 32, 32) and samples.starts == [0, 0]
    assert torch.isfinite(samples.gt_actions).all()


def test_video_dir_without_actions_has_unknown_ground_truth(tmp_path):
    episodes = read_video_dir(write_video_dir(tmp_path / "videos", with_actions=False))
    assert "action_dim" not in data_dims(episodes)
    samples = real_samples(episodes, [0], {**INPUTS, "source": "video_dir"}, {**DIMS, "action_dim": 20}, 1)
    assert samples.gt_actions.shape == (2, 32, 20) and torch.isnan(samples.gt_actions).all()


def _rewrite_table(folder: Path, edit) -> Path:
    table = folder / "episodes.csv"
    table.write_text(edit(table.read_text()))
    return table


def test_a_corrupt_video_names_the_file(tmp_path):
    folder = write_video_dir(tmp_path / "videos")
    (folder / "clip1.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    with pytest.raises(DataError, match=r"clip1\.mp4: cannot decode the video .*corrupt or not a video"):
        real_samples(read_video_dir(folder), [0], {**INPUTS, "source": "video_dir"}, DIMS, 1)


def test_a_missing_video_names_the_file_and_the_table_row(tmp_path):
    folder = write_video_dir(tmp_path / "videos")
    (folder / "clip0.mp4").unlink()
    with pytest.raises(DataError, match=r"clip0\.mp4: video file not found \(named by .*episodes\.csv row 1 \(inputs\.episodes index 0\)\)"):
        real_samples(read_video_dir(folder), [0], {**INPUTS, "source": "video_dir"}, DIMS, 1)


def test_a_table_saved_as_excel_csv_utf8_is_read(tmp_path):
    folder = write_video_dir(tmp_path / "videos")
    plain = read_video_dir(folder)
    _rewrite_table(folder, lambda text: "\ufeff" + text)  # Excel's "CSV UTF-8" starts with a byte order mark
    assert [(e.prompt, e.video) for e in read_video_dir(folder)] == [(e.prompt, e.video) for e in plain]


def test_a_table_with_missing_columns_names_them(tmp_path):
    folder = write_video_dir(tmp_path / "videos")
    _rewrite_table(folder, lambda text: text.replace("joint_state", "state", 1))
    with pytest.raises(DataError, match=r"episodes\.csv: missing columns \['joint_state'\]"):
        read_video_dir(folder)


def test_a_lerobot_file_with_missing_columns_names_it(tmp_path):
    import pyarrow.parquet as pq

    root = write_lerobot(tmp_path / "ds")
    path = root / "data/chunk-000/episode_000001.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["action"]), path)
    with pytest.raises(DataError, match=r"episode_000001\.parquet: missing columns \['action'\]"):
        read_lerobot(root, INPUTS)


def test_ragged_actions_name_the_row(tmp_path):
    folder = write_video_dir(tmp_path / "videos")
    lines = (folder / "episodes.csv").read_text().splitlines()
    lines[2] = lines[2].replace(";", "; 1.0", 1)  # row 2: one action row longer than the others
    (folder / "episodes.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"episodes\.csv row 2 \(inputs\.episodes index 1\): column 'actions' has rows of different lengths \[7, 8\]"):
        read_video_dir(folder)


def test_too_short_episodes_say_what_a_window_needs(lerobot):
    with pytest.raises(DataError, match=r"episode 0\): 40 frames, but a window needs 64 \(chunk_len 64"):
        real_samples(read_lerobot(lerobot, INPUTS), [0], INPUTS, {**DIMS, "chunk_len": 64}, 1)


def test_dimensions_come_from_the_data_and_mismatches_name_both_sides(lerobot):
    dims = data_dims(read_lerobot(lerobot, INPUTS))
    model = {"preset": "tiny", "dim": 64, "depth": 1}
    assert resolve_dims(model, dims) == {"chunk_len": 32, "action_dim": ACTION_DIM, "joint_dim": JOINT_DIM}
    assert resolve_dims({**model, "chunk_len": 16}, dims)["chunk_len"] == 16
    with pytest.raises(DimensionError, match=r"action_dim mismatch: .*episode_000000\.parquet \(episode 0\) has 7, "
                                             r"but config presets\.tiny\.action_dim says 20; remove presets\.tiny\.action_dim"):
        resolve_dims({**model, "action_dim": 20}, dims)


def test_episodes_that_disagree_on_a_dimension_are_named(tmp_path):
    folder = write_video_dir(tmp_path / "videos")
    _rewrite_table(folder, lambda text: text.replace("clip1.mp4,put the bowl on the plate,", "clip1.mp4,put the bowl on the plate,9 "))
    with pytest.raises(DataError, match=r"episodes disagree on joint_dim: 8 in .*row 1 \(inputs\.episodes index 0\), "
                                          r"9 in .*row 2 \(inputs\.episodes index 1\)"):
        data_dims(read_video_dir(folder))
