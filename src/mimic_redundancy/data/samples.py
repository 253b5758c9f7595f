"""The samples every model stage runs on: synthetic inputs, or windows of real episodes (readers.py).

A sample is (seed, window): the window gives the video frames, joint state, prompt and, where known,
the ground-truth action chunk; the seed gives the sampler's initial noise (and the video noise).

Sources (config `inputs.source`):
  synthetic  video, joint state and noise drawn from the seed; the windows are the config prompts, and
             the ground-truth actions a fixed function of the joint state (learnable, so `train` has a target).
  lerobot    windows of the selected episodes of a LeRobot dataset (lerobot.py: layouts v1.6, v2.x, v3.0).
             A window starting at frame s is exactly `LiberoDataset.__getitem__`'s: frames
             s, s+skip, ..., the state at s and the actions s .. s+chunk_len-1.
  video_dir  one window per video of a folder with `episodes.csv`, from its first frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mimic_redundancy.data.readers import DataError, Episode, episode_frames


@dataclass
class Batch:
    """Inputs of a batch of samples; tensors on the model's device. Either the video (stages that run the
    backbone) or the cached hiddens (head-only stages, from a features file)."""
    seeds: list[int]
    prompts: list[str]
    video: torch.Tensor | None  # (b, frames, 3, h, w) in [0, 1]
    joint_state: torch.Tensor   # (b, dim_joint_state)
    noise: torch.Tensor         # (b, chunk_len, dim_action): the sampler's initial x_0
    hiddens: list[torch.Tensor] | None = None  # per extracted layer (b, tokens, dim_video_hidden), float32
    video_time: torch.Tensor | None = None     # (b,): the video-denoising time of the hiddens


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


# -- windows ---------------------------------------------------------------------------------------------------

def history_index(t: int, count: int, skip: int) -> list[int]:
    """Frames t-(count-1)*skip, ..., t-skip, t; before the episode's first frame, the first frame again (what a
    policy acting at frame t has seen: the closed loop's and its training windows' convention)."""
    return [max(0, t - (count - 1 - i) * skip) for i in range(count)]


def window_frames(frames: torch.Tensor, start: int, count: int, skip: int, size: tuple[int, int],
                  history: bool = False) -> torch.Tensor:
    """The window's frames: from `start` on (LiberoDataset's convention), or (`history`) those up to `start`."""
    from torch.nn.functional import interpolate

    clip = frames[history_index(start, count, skip)] if history else frames[start:start + (count - 1) * skip + 1:skip]
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


def synthetic_samples(pairs: list[tuple[int, str]], inputs: dict, dims: dict,
                      prompts: list[str] | None = None) -> SampleSet:
    """Per sample, video, joint state and noise drawn on the CPU from the sample's seed alone, so a
    sample's values do not depend on the batch it lands in or on the device. A sample's window is the index
    of its prompt in `prompts` (default: the pairs' prompts in order; a shard passes the whole run's)."""
    prompts = prompts or list(dict.fromkeys(p for _, p in pairs))
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
    if inputs.get("frame_window") == "history":  # the frames lie before the start: the action chunk sets the span
        span = chunk_len
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
                 per_episode: int | None, rows: range | None = None) -> SampleSet:
    """Samples seed-major over the windows of `episodes` (per_episode None: every window, for training); `rows`:
    only those samples, decoding only the episodes they need (a shard of a large run)."""
    chunk, size = dims["chunk_len"], (inputs["height"], inputs["width"])
    spans = [(e, start) for e in episodes for start in window_starts(e, inputs, chunk, per_episode)]
    picked = [(seed, w) for seed in seeds for w in range(len(spans))]
    picked = picked if rows is None else picked[rows.start:rows.stop]
    windows = {}  # window index -> (video, joint, gt)
    needed_windows = sorted({w for _, w in picked})
    for episode in episodes:
        mine = [w for w in needed_windows if spans[w][0] is episode]
        if not mine:
            continue
        frames = _checked_frames(episode, inputs)
        for w in mine:
            start = spans[w][1]
            gt = torch.full((chunk, dims["action_dim"]), math.nan)
            if episode.actions is not None:
                actions = episode.actions if episode.states.shape[0] == 1 else episode.actions[start:]
                if actions.shape[0] < chunk:
                    raise DataError(f"{episode.where}: {actions.shape[0]} action rows, fewer than chunk_len {chunk}")
                gt = torch.from_numpy(np.ascontiguousarray(actions[:chunk]))
            windows[w] = (window_frames(frames, start, inputs["frames"], inputs["frame_skip"], size,
                                        history=inputs.get("frame_window") == "history"),
                          torch.from_numpy(episode.states[start].copy()), gt)
        del frames
    take = lambda i: torch.stack([windows[w][i] for _, w in picked]) if picked else torch.zeros(0)
    return SampleSet(inputs["source"], [s for s, _ in picked], [spans[w][0].prompt for _, w in picked],
                     [w for _, w in picked], [spans[w][0].index for _, w in picked],
                     [spans[w][1] for _, w in picked], take(0), take(1),
                     torch.stack([_noise(s, dims) for s, _ in picked]) if picked else torch.zeros(0), take(2))


def _checked_frames(episode: Episode, inputs: dict) -> torch.Tensor:
    """The decoded frames of an episode, checked against its rows and the window length."""
    frames = episode_frames(episode)
    needed = 1 if inputs.get("frame_window") == "history" else (inputs["frames"] - 1) * inputs["frame_skip"] + 1
    if episode.states.shape[0] > 1 and frames.shape[0] < episode.states.shape[0]:
        raise DataError(f"{episode.video or episode.where}: {frames.shape[0]} video frames, but {episode.where} has "
                        f"{episode.states.shape[0]} rows (one per frame); the video is truncated")
    if frames.shape[0] < needed:
        raise DataError(f"{episode.video or episode.where}: {frames.shape[0]} frames, fewer than the {needed} a window needs "
                        f"(inputs.frames {inputs['frames']} x frame_skip {inputs['frame_skip']})")
    return frames


def count_samples(data: dict, dims: dict, episodes: list[Episode] | None, limit: int | None = None) -> int:
    """How many samples `load_samples` gives, from the window list alone (no video decoded)."""
    inputs, limit = data["inputs"], limit or data.get("limit")
    if inputs["source"] == "synthetic":
        total = len(data["samples"])
    else:
        total = len(data["seeds"]) * sum(len(window_starts(e, inputs, dims["chunk_len"], inputs["windows_per_episode"]))
                                         for e in episodes)
    return min(total, limit) if limit else total


def load_samples(data: dict, dims: dict, episodes: list[Episode] | None, limit: int | None = None,
                 rows: range | None = None) -> SampleSet:
    """The run's samples: data settings (config.data_settings) -> SampleSet, the first `limit` of them; `rows`:
    only those (a shard), reading only their data."""
    inputs, limit = data["inputs"], limit or data.get("limit")
    if limit and rows is not None:
        rows = range(rows.start, min(rows.stop, limit))
    elif limit:
        rows = range(limit)
    if inputs["source"] == "synthetic":
        pairs = [tuple(p) for p in data["samples"]]
        return synthetic_samples(pairs if rows is None else pairs[rows.start:rows.stop], inputs, dims,
                                 prompts=list(dict.fromkeys(p for _, p in pairs)))
    return real_samples(episodes, data["seeds"], inputs, dims, inputs["windows_per_episode"], rows)
