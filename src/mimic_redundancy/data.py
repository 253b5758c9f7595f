"""The samples every model stage runs on: synthetic inputs, LeRobot episodes, or the user's own videos.

A sample is (seed, window): the window gives the video frames, joint state, prompt and, where known,
the ground-truth action chunk; the seed gives the sampler's initial noise (and the video noise).

Sources (config `inputs.source`):
  synthetic  video, joint state and noise drawn from the seed; the windows are the config prompts, and
             the ground-truth actions a fixed function of the joint state (learnable, so `train` has a target).
  lerobot    a LeRobot dataset repo in the layout mimic-video's `LiberoDataset` reads (parquet rows with
             `observation.images.image` {path}, `observation.state`, `action`, `language_instruction`,
             `episode_index`; one mp4 per episode), prefetched as a dataset repo and read offline.
             A window starting at frame s is exactly `LiberoDataset.__getitem__`'s: frames
             s, s+skip, ..., the state at s and the actions s .. s+chunk_len-1.
  video_dir  a folder with `episodes.csv` (columns video, prompt, joint_state, and optionally actions)
             and the mp4 files it names; one window per video, from its first frame.
Every problem with the data raises DataError naming the file and what to fix.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

LEROBOT_COLUMNS = ["observation.images.image", "observation.state", "action", "language_instruction", "episode_index"]
VIDEO_DIR_TABLE = "episodes.csv"
VIDEO_DIR_COLUMNS = ["video", "prompt", "joint_state"]  # plus the optional 'actions'


class DataError(ValueError):
    """Input data the pipeline cannot use; the message names the file and the problem."""


@dataclass
class Episode:
    index: int
    video: Path
    states: np.ndarray          # (T, J): T frames (video_dir: the first frame only)
    actions: np.ndarray | None  # (T, D) per frame (video_dir: the chunk after the first frame), or None
    prompt: str
    where: str                  # the file (and row) it came from, for messages


@dataclass
class SampleSet:
    """Every sample of a run, on the CPU; `batch` moves a slice to the model's device."""
    source: str
    seeds: list[int]
    prompts: list[str]
    windows: list[int]        # index of the sample's input window (synthetic: its prompt)
    episodes: list[int]       # episode of the window (-1 for synthetic)
    starts: list[int]         # first frame of the window (-1 for synthetic)
    video: torch.Tensor       # (S, frames, 3, h, w) in [0, 1]
    joint_state: torch.Tensor  # (S, J)
    noise: torch.Tensor       # (S, N, D): the sampler's initial x_0
    gt_actions: torch.Tensor  # (S, N, D), NaN where the ground truth is unknown

    def __len__(self) -> int:
        return len(self.seeds)

    def batch(self, index, device):
        from .probe import Batch

        index = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        return Batch([self.seeds[i] for i in index], [self.prompts[i] for i in index], self.video[index].to(device),
                     self.joint_state[index].to(device), self.noise[index].to(device))

    def subset(self, n: int) -> "SampleSet":
        keep = slice(0, n)
        return SampleSet(self.source, self.seeds[keep], self.prompts[keep], self.windows[keep], self.episodes[keep],
                         self.starts[keep], self.video[keep], self.joint_state[keep], self.noise[keep],
                         self.gt_actions[keep])

    def metadata(self) -> dict:
        """The per-sample arrays every run NPZ carries (io.RUN_METADATA)."""
        return {"seed": np.asarray(self.seeds, dtype=np.int64), "prompt": list(self.prompts),
                "window": np.asarray(self.windows, dtype=np.int64), "episode": np.asarray(self.episodes, dtype=np.int64),
                "start": np.asarray(self.starts, dtype=np.int64), "source": self.source}


# -- reading episodes --------------------------------------------------------------------------------------------

def read_lerobot(root: Path) -> list[Episode]:
    """Episodes of a LeRobot dataset snapshot, in episode_index order, rows in file order within each."""
    import pyarrow.parquet as pq
    from mimic_video.libero import clean_instruction

    root = Path(root)
    paths = sorted((root / "data").rglob("*.parquet"))
    if not paths:
        raise DataError(f"{root}: no parquet files under data/; a LeRobot dataset keeps its frames in "
                        "data/**/*.parquet (check inputs.lerobot.repo)")
    rows: dict[int, list] = {}
    for path in paths:
        try:
            table = pq.read_table(path)
        except Exception as error:
            raise DataError(f"{path}: cannot read the parquet file ({type(error).__name__}: {error})") from None
        missing = [c for c in LEROBOT_COLUMNS if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: missing columns {missing}; mimic-video's LiberoDataset format needs "
                            f"{LEROBOT_COLUMNS} (found {table.column_names})")
        columns = [table.column(c).to_pylist() for c in LEROBOT_COLUMNS]
        for image, state, action, instruction, episode in zip(*columns):
            rows.setdefault(int(episode), []).append((image, state, action, instruction, path))
    episodes = []
    for index in sorted(rows):
        frames = rows[index]
        image, path = frames[0][0], frames[0][4]
        if not isinstance(image, dict) or not image.get("path"):
            raise DataError(f"{path}: episode {index}: column 'observation.images.image' holds {type(image).__name__}, "
                            "not a {path: ...} reference to a video file (only datasets with separate mp4 files "
                            "are supported, as in mimic-video's LiberoDataset)")
        where = f"{path} (episode {index})"
        states = _matrix([f[1] for f in frames], where, "observation.state")
        actions = _matrix([f[2] for f in frames], where, "action")
        episodes.append(Episode(index, root / image["path"], states, actions, clean_instruction(frames[0][3]), where))
    return episodes


def _matrix(rows: list, where: str, column: str) -> np.ndarray:
    lengths = {len(r) if r is not None else 0 for r in rows}
    if len(lengths) != 1 or 0 in lengths:
        raise DataError(f"{where}: column '{column}' has rows of different or zero lengths {sorted(lengths)}")
    values = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(values).all():
        raise DataError(f"{where}: column '{column}' holds NaN or infinite values")
    return values


def _floats(text: str, where: str, column: str) -> np.ndarray:
    try:
        values = np.asarray([float(v) for v in text.split()], dtype=np.float32)
    except ValueError:
        raise DataError(f"{where}: column '{column}' must hold numbers separated by spaces, got {text!r}") from None
    if values.size == 0 or not np.isfinite(values).all():
        raise DataError(f"{where}: column '{column}' must hold finite numbers separated by spaces, got {text!r}")
    return values


def read_video_dir(folder: Path) -> list[Episode]:
    """Episodes of a `video_dir` folder: one per row of its episodes.csv."""
    folder = Path(folder)
    table = folder / VIDEO_DIR_TABLE
    if not table.is_file():
        raise DataError(f"{table}: no such file; inputs.video_dir needs a table {VIDEO_DIR_TABLE} with columns "
                        f"{VIDEO_DIR_COLUMNS} (and optionally actions) beside the videos")
    with open(table, newline="", encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8" starts with a BOM
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in VIDEO_DIR_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{table}: missing columns {missing} (found {header}); needed: {VIDEO_DIR_COLUMNS}, "
                            "optional: actions")
        rows = list(reader)
    if not rows:
        raise DataError(f"{table}: the table has no rows")
    episodes = []
    for i, row in enumerate(rows):
        where = f"{table} row {i + 1} (inputs.episodes index {i})"  # rows count from 1, episodes from 0
        if not (row["prompt"] or "").strip():
            raise DataError(f"{where}: empty prompt")
        joint = _floats(row["joint_state"] or "", where, "joint_state")
        actions = None
        if (row.get("actions") or "").strip():
            chunk = [_floats(r, where, "actions") for r in row["actions"].split(";")]
            if len({a.size for a in chunk}) != 1:
                raise DataError(f"{where}: column 'actions' has rows of different lengths "
                                f"{sorted({a.size for a in chunk})} (rows are separated by ';')")
            actions = np.stack(chunk)
        episodes.append(Episode(i, folder / row["video"], joint[None], actions, row["prompt"].strip(), where))
    return episodes


def read_episodes(inputs: dict, snapshots: dict | None = None) -> list[Episode]:
    """The selected episodes of a real-data source (inputs.episodes: 'all' or a list of indices)."""
    if inputs["source"] == "lerobot":
        if not snapshots or "dataset" not in snapshots:
            raise DataError("inputs.source 'lerobot' needs the dataset prefetched: run the prefetch rule")
        episodes = read_lerobot(snapshots["dataset"])
    else:
        episodes = read_video_dir(Path(inputs["video_dir"]))
    wanted = inputs["episodes"]
    if wanted == "all":
        return episodes
    by_index = {e.index: e for e in episodes}
    unknown = [i for i in wanted if i not in by_index]
    if unknown:
        raise DataError(f"config key 'inputs.episodes': episodes {unknown} are not in the data "
                        f"(it has {sorted(by_index)})")
    return [by_index[i] for i in wanted]


def data_dims(episodes: list[Episode]) -> dict:
    """Dimensions the data fixes (joint_dim, and action_dim where actions are known), and where they come from."""
    dims = {}
    for key, arrays in [("joint_dim", [(e.states.shape[1], e.where) for e in episodes]),
                        ("action_dim", [(e.actions.shape[1], e.where) for e in episodes if e.actions is not None])]:
        values = sorted({n for n, _ in arrays})
        if len(values) > 1:
            first = {n: w for n, w in reversed(arrays)}
            raise DataError(f"episodes disagree on {key}: " + ", ".join(f"{n} in {first[n]}" for n in values))
        if values:
            dims[key] = (values[0], arrays[0][1])
    return dims


# -- video -------------------------------------------------------------------------------------------------------

def decode_video(path: Path, where: str) -> torch.Tensor:
    """All frames of a video as (T, 3, H, W) floats in [0, 1], decoded like LiberoDataset (av, rgb24)."""
    import av

    if not Path(path).is_file():
        raise DataError(f"{path}: video file not found (named by {where})")
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")).float() / 255.0)
    except Exception as error:
        raise DataError(f"{path}: cannot decode the video ({type(error).__name__}: {error}); it is corrupt or "
                        f"not a video: re-encode it (e.g. mp4, H.264) or drop it from {where}") from None
    if not frames:
        raise DataError(f"{path}: the video has no frames (named by {where})")
    return torch.stack(frames).permute(0, 3, 1, 2)


def window_frames(frames: torch.Tensor, start: int, count: int, skip: int, size: tuple[int, int]) -> torch.Tensor:
    from torch.nn.functional import interpolate

    clip = frames[start:start + (count - 1) * skip + 1:skip]
    if tuple(clip.shape[-2:]) == tuple(size):
        return clip
    return interpolate(clip, size=size, mode="bilinear", antialias=True)


# -- samples -----------------------------------------------------------------------------------------------------

def synthetic_actions(joint_state: torch.Tensor, chunk_len: int, action_dim: int) -> torch.Tensor:
    """The synthetic ground truth: a smooth ramp towards tanh of the joint state (cycled to action_dim)."""
    index = torch.arange(action_dim) % joint_state.shape[-1]
    target = torch.tanh(joint_state[..., index])  # (..., D)
    ramp = torch.linspace(1.0 / chunk_len, 1.0, chunk_len)  # (N,)
    return ramp[:, None] * target[..., None, :]


def _noise(seed: int, dims: dict) -> torch.Tensor:
    return torch.randn(dims["chunk_len"], dims["action_dim"], generator=torch.Generator().manual_seed(seed))


def synthetic_samples(pairs: list[tuple[int, str]], inputs: dict, dims: dict) -> SampleSet:
    """Per sample, video, joint state and noise drawn on the CPU from the sample's seed alone, so a
    sample's values do not depend on the batch it lands in or on the device."""
    prompts = list(dict.fromkeys(p for _, p in pairs))
    videos, joints, noises = [], [], []
    for seed, _ in pairs:
        g = torch.Generator().manual_seed(seed)
        videos.append(torch.rand(inputs["frames"], 3, inputs["height"], inputs["width"], generator=g))
        joints.append(torch.randn(dims["joint_dim"], generator=g))
        noises.append(torch.randn(dims["chunk_len"], dims["action_dim"], generator=g))
    joint = torch.stack(joints)
    return SampleSet("synthetic", [s for s, _ in pairs], [p for _, p in pairs], [prompts.index(p) for _, p in pairs],
                     [-1] * len(pairs), [-1] * len(pairs), torch.stack(videos), joint, torch.stack(noises),
                     synthetic_actions(joint, dims["chunk_len"], dims["action_dim"]))


def window_starts(episode: Episode, inputs: dict, chunk_len: int, per_episode: int | None) -> list[int]:
    """`per_episode` evenly spaced window starts (None: every start), each window inside the episode."""
    span = max(chunk_len, (inputs["frames"] - 1) * inputs["frame_skip"] + 1)
    if episode.states.shape[0] == 1:  # video_dir: one window, from the first frame
        return [0]
    last = episode.states.shape[0] - span
    if last < 0:
        raise DataError(f"{episode.where}: {episode.states.shape[0]} frames, but a window needs {span} "
                        f"(chunk_len {chunk_len}, frames {inputs['frames']} x frame_skip {inputs['frame_skip']}); "
                        "use shorter windows or drop the episode (inputs.episodes)")
    if per_episode is None or per_episode > last + 1:
        return list(range(last + 1))
    if per_episode == 1:
        return [0]
    return sorted({round(i * last / (per_episode - 1)) for i in range(per_episode)})


def real_samples(episodes: list[Episode], seeds: list[int], inputs: dict, dims: dict,
                 per_episode: int | None) -> SampleSet:
    """Samples seed-major over the windows of `episodes` (per_episode None: every window, for training)."""
    chunk, size = dims["chunk_len"], (inputs["height"], inputs["width"])
    windows = []  # (episode, start, video, joint, gt)
    for episode in episodes:
        frames = decode_video(episode.video, episode.where)
        needed = (inputs["frames"] - 1) * inputs["frame_skip"] + 1
        if episode.states.shape[0] > 1 and frames.shape[0] < episode.states.shape[0]:
            raise DataError(f"{episode.video}: {frames.shape[0]} video frames, but {episode.where} has "
                            f"{episode.states.shape[0]} rows (one per frame); the video is truncated")
        if frames.shape[0] < needed:
            raise DataError(f"{episode.video}: {frames.shape[0]} frames, fewer than the {needed} a window needs "
                            f"(inputs.frames {inputs['frames']} x frame_skip {inputs['frame_skip']})")
        for start in window_starts(episode, inputs, chunk, per_episode):
            gt = torch.full((chunk, dims["action_dim"]), math.nan)
            if episode.actions is not None:
                actions = episode.actions if episode.states.shape[0] == 1 else episode.actions[start:]
                if actions.shape[0] < chunk:
                    raise DataError(f"{episode.where}: {actions.shape[0]} action rows, fewer than chunk_len {chunk}")
                gt = torch.from_numpy(np.ascontiguousarray(actions[:chunk]))
            windows.append((episode, start, window_frames(frames, start, inputs["frames"], inputs["frame_skip"], size),
                            torch.from_numpy(episode.states[start].copy()), gt))
    picked = [(seed, w) for seed in seeds for w in range(len(windows))]
    take = lambda i: torch.stack([windows[w][i] for _, w in picked])
    return SampleSet(inputs["source"], [s for s, _ in picked], [windows[w][0].prompt for _, w in picked],
                     [w for _, w in picked], [windows[w][0].index for _, w in picked],
                     [windows[w][1] for _, w in picked], take(2), take(3),
                     torch.stack([_noise(s, dims) for s, _ in picked]), take(4))


def load_samples(data: dict, dims: dict, episodes: list[Episode] | None, limit: int | None = None) -> SampleSet:
    """The run's samples: data settings (config.data_settings) -> SampleSet, the first `limit` of them."""
    inputs = data["inputs"]
    if inputs["source"] == "synthetic":
        samples = synthetic_samples([tuple(p) for p in data["samples"]], inputs, dims)
    else:
        samples = real_samples(episodes, data["seeds"], inputs, dims, inputs["windows_per_episode"])
    return samples.subset(limit) if limit else samples
