"""Tiny robot datasets the tests write themselves: a LeRobot repo (parquet + mp4, in the layout mimic-video's
LiberoDataset reads) and a `video_dir` folder (mp4 files + episodes.csv)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

ACTION_DIM, JOINT_DIM = 7, 8  # LIBERO's
EPISODE_FRAMES = 40
SIZE = 48  # pixels; the pipeline resizes to 32 like LiberoDataset(resize=32)
PROMPTS = ["open the top drawer of the cabinet", "put the bowl on the plate"]


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """frames (T, H, W, 3) uint8 -> an mp4 (MPEG-4 part 2, which every FFmpeg build has)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"qscale": "2"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def episode(index: int, frames: int = EPISODE_FRAMES, size: int = SIZE):
    """A moving square on a tinted background; states drift smoothly, actions are the next state's change."""
    rng = np.random.default_rng(index)
    t = np.arange(frames)
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    video[..., index % 3] = 60
    for k in t:
        x = int(k * (size - 12) / max(1, frames - 1))
        video[k, 10:22, x:x + 12] = 230
    base = rng.normal(size=JOINT_DIM)
    states = (base[None] + 0.05 * t[:, None] * np.linspace(-1, 1, JOINT_DIM)[None]).astype(np.float32)
    deltas = np.diff(states, axis=0, append=states[-1:]) * 10
    actions = np.concatenate([deltas[:, :ACTION_DIM - 1], np.sin(t / 5)[:, None]], axis=1).astype(np.float32)
    return video, states, actions


def write_lerobot(root: Path, episodes: int = 2) -> Path:
    """A LeRobot v3-style dataset repo folder: data/chunk-000/episode_*.parquet + one mp4 per episode."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for e in range(episodes):
        video, states, actions = episode(e)
        rel = f"videos/chunk-000/observation.images.image/episode_{e:06d}.mp4"
        write_video(root / rel, video)
        n = len(states)
        table = pa.table({
            "observation.images.image": [{"path": rel, "timestamp": float(i) / 10} for i in range(n)],
            "observation.state": [list(map(float, s)) for s in states],
            "action": [list(map(float, a)) for a in actions],
            # LIBERO stores bytes reprs like b'...'; LiberoDataset's clean_instruction strips them
            "language_instruction": [f"b'{PROMPTS[e % len(PROMPTS)]}'"] * n,
            "episode_index": [e] * n,
            "frame_index": list(range(n)),
        })
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
    (root / "meta_data").mkdir(exist_ok=True)
    (root / "meta_data/info.json").write_text('{"fps": 10, "robot_type": "test"}\n')
    return root


def write_video_dir(folder: Path, rows: int = 2, chunk_len: int = 32, with_actions: bool = True) -> Path:
    """mp4 files + episodes.csv (video, prompt, joint_state, actions: chunk rows separated by ';')."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "episodes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "prompt", "joint_state", "actions"])
        for e in range(rows):
            video, states, actions = episode(10 + e)
            write_video(folder / f"clip{e}.mp4", video[:12])
            chunk = "; ".join(" ".join(f"{v:.6f}" for v in a) for a in actions[:chunk_len]) if with_actions else ""
            writer.writerow([f"clip{e}.mp4", PROMPTS[e % len(PROMPTS)], " ".join(f"{v:.6f}" for v in states[0]), chunk])
    return folder
