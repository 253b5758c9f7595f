"""Episodes of real data and their frames: a LeRobot dataset snapshot (its layouts live in lerobot.py) or a
`video_dir` folder (episodes.csv beside the mp4 files).

An Episode is what the samples need of one recorded episode: per-frame joint states and actions, its prompt,
and where its frames are: a whole mp4 file, a time span of an mp4 shared by many episodes (LeRobot v3.0), or
encoded images stored in the parquet rows. Every problem with the data raises DataError naming the file or
config key, what was expected, and the fix.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VIDEO_DIR_TABLE = "episodes.csv"
VIDEO_DIR_COLUMNS = ["video", "prompt", "joint_state"]  # plus the optional 'actions'


class DataError(ValueError):
    """Input data the pipeline cannot use; the message names the file (or key) and the problem."""


@dataclass
class Episode:
    index: int
    video: Path | None          # the mp4 holding the frames; None when `images` holds them
    states: np.ndarray          # (T, J): T frames (video_dir: the first frame only)
    actions: np.ndarray | None  # (T, D) per frame (video_dir: the chunk after the first frame), or None
    prompt: str
    where: str                  # the file (and row) it came from, for messages
    span: tuple[float, float] | None = None  # seconds [from, to) of the episode in a shared mp4 (LeRobot v3.0)
    images: list[bytes] | None = None        # encoded frames (PNG, JPEG) stored in the parquet, one per row


def matrix(rows: list, where: str, column: str) -> np.ndarray:
    """Per-frame vectors of a column as a (T, n) float32 array; ragged, empty or non-finite rows are errors."""
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


# -- frames ------------------------------------------------------------------------------------------------------

def _rgb(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).float() / 255.0


def decode_video(path: Path, where: str, span: tuple[float, float] | None = None) -> torch.Tensor:
    """The frames of a video (those whose time lies in `span`, seconds, when given) as (T, 3, H, W) floats in
    [0, 1], decoded like LiberoDataset (av, rgb24)."""
    import av

    if not Path(path).is_file():
        raise DataError(f"{path}: video file not found (named by {where})")
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if span is not None:
                # half a frame of slack: timestamps are stored as floats; seek lands on the keyframe before
                rate = float(stream.average_rate or stream.guessed_rate or 1000)
                start, end = span[0] - 0.5 / rate, span[1] - 0.5 / rate
                container.seek(max(0, int(start / stream.time_base)), stream=stream, backward=True)
            for frame in container.decode(stream):
                if span is not None:
                    if frame.time < start:
                        continue
                    if frame.time >= end:
                        break
                frames.append(_rgb(frame.to_ndarray(format="rgb24")))
    except Exception as error:
        raise DataError(f"{path}: cannot decode the video ({type(error).__name__}: {error}); it is corrupt or "
                        f"not a video: re-encode it (e.g. mp4, H.264) or drop it from {where}") from None
    if not frames:
        where_in = f" between {span[0]:g} s and {span[1]:g} s" if span else ""
        raise DataError(f"{path}: the video has no frames{where_in} (named by {where})")
    return torch.stack(frames).permute(0, 3, 1, 2)


def decode_images(images: list[bytes], where: str) -> torch.Tensor:
    """Encoded images (PNG, JPEG: LeRobot's `image` features) as (T, 3, H, W) floats in [0, 1]."""
    from PIL import Image

    frames = []
    for i, data in enumerate(images):
        try:
            with Image.open(io.BytesIO(data)) as image:
                frames.append(_rgb(np.array(image.convert("RGB"))))
        except Exception as error:
            raise DataError(f"{where}: the image of frame {i} cannot be decoded ({type(error).__name__}: {error}); "
                            "the parquet file is damaged: fetch it again (delete it from the Hub cache, rerun prefetch)"
                            ) from None
    return torch.stack(frames).permute(0, 3, 1, 2)


def episode_frames(episode: Episode) -> torch.Tensor:
    """All frames of an episode, (T, 3, H, W) in [0, 1]."""
    if episode.images is not None:
        return decode_images(episode.images, episode.where)
    return decode_video(episode.video, episode.where, episode.span)
