"""Tiny robot datasets the tests write themselves: LeRobot repos (v1.6, the layout mimic-video's LiberoDataset
reads; v2.1 and v3.0 as LeRobot publishes them, with mp4 files or images inside the parquet) and a `video_dir`
folder (mp4 files + episodes.csv)."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np

ACTION_DIM, JOINT_DIM = 7, 8  # LIBERO's
EPISODE_FRAMES = 40
SIZE = 48  # pixels; the pipeline resizes to 32 like LiberoDataset(resize=32)
PROMPTS = ["open the top drawer of the cabinet", "put the bowl on the plate"]
CAMERA = "observation.images.image"
FPS = 10


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
    """A LeRobot v1.6 dataset repo folder (mimic-video's LiberoDataset layout): meta_data/,
    data/chunk-000/episode_*.parquet + one mp4 per episode."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for e in range(episodes):
        video, states, actions = episode(e)
        rel = f"videos/chunk-000/{CAMERA}/episode_{e:06d}.mp4"
        write_video(root / rel, video)
        n = len(states)
        table = pa.table({
            CAMERA: [{"path": rel, "timestamp": float(i) / 10} for i in range(n)],
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


# -- LeRobot v2.1 and v3.0 -------------------------------------------------------------------------------------------
# Written from a v1.6 repo (`source`, by write_lerobot) so that every layout holds the same frames as the reference:
# mp4 files are copied (v2.1) or their packets concatenated without re-encoding (v3.0, as LeRobot's aggregation
# does), and in-parquet images are lossless PNGs of the decoded mp4 frames.

def _decoded(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="PNG")
    return out.getvalue()


def concat_videos(out: Path, inputs: list[Path], fps: int = FPS) -> list[tuple[float, float]]:
    """Concatenate mp4 files packet by packet (no re-encoding) into `out`; returns each input's [from, to) seconds."""
    import av

    out.parent.mkdir(parents=True, exist_ok=True)
    spans, offset = [], 0.0
    with av.open(str(out), mode="w") as container:
        stream = None
        for path in inputs:
            with av.open(str(path)) as source:
                video = source.streams.video[0]
                stream = stream or container.add_stream_from_template(video)
                shift, count = int(round(offset / video.time_base)), 0
                for packet in source.demux(video):
                    if packet.dts is None:
                        continue
                    packet.pts += shift
                    packet.dts += shift
                    packet.stream = stream
                    container.mux(packet)
                    count += 1
            spans.append((offset, offset + count / fps))
            offset += count / fps
    return spans


def write_lerobot_layout(root: Path, source: Path, version: str, frames: str = "video", per_file: int = 2,
                         camera: str = CAMERA, wrist: str = "observation.images.wrist_image",
                         state_key: str = "observation.state", action_key: str = "action",
                         instruction_column: bool = False) -> Path:
    """A LeRobot `version` ('v2.1' or 'v3.0') repo folder with the episodes of the v1.6 repo `source`; `frames`:
    'video' (mp4 files) or 'image' (PNG images inside the parquet). Two cameras (`camera`, `wrist`: the same frames);
    v3.0 puts `per_file` episodes into each data and video file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    mp4s = sorted((source / "videos/chunk-000" / CAMERA).glob("episode_*.mp4"))
    count = len(mp4s)
    image = {"dtype": frames, "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channel"]}
    features = {camera: image, wrist: image,
                state_key: {"dtype": "float32", "shape": [JOINT_DIM], "names": None},
                action_key: {"dtype": "float32", "shape": [ACTION_DIM], "names": None}}
    if instruction_column:
        features["language_instruction"] = {"dtype": "string", "shape": [1], "names": None}
    for key, dtype in [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")]:
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    v3 = version == "v3.0"
    info = {"codebase_version": version, "robot_type": "panda", "total_episodes": count,
            "total_frames": count * EPISODE_FRAMES, "total_tasks": len(PROMPTS), "chunks_size": 1000, "fps": FPS,
            "splits": {"train": f"0:{count}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet" if v3 else
                         "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": None if frames == "image" else
                          "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if v3 else
                          "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": features}
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))

    def rows(e: int, first_index: int) -> dict:
        _, states, actions = episode(e)
        n = len(states)
        table = {"observation.state": states, "action": actions}
        columns = {}
        if frames == "image":
            pngs = [{"bytes": _png(f), "path": f"frame_{i:06d}.png"} for i, f in enumerate(_decoded(mp4s[e]))]
            columns.update({camera: pngs, wrist: pngs})
        columns.update({state_key: [list(map(float, r)) for r in table["observation.state"]],
                        action_key: [list(map(float, r)) for r in table["action"]]})
        if instruction_column:
            columns["language_instruction"] = [f"b'{PROMPTS[e % len(PROMPTS)]}'"] * n
        columns.update({"timestamp": [i / FPS for i in range(n)], "frame_index": list(range(n)),
                        "episode_index": [e] * n, "index": list(range(first_index, first_index + n)),
                        "task_index": [e % len(PROMPTS)] * n})
        return columns

    tasks = [{"task_index": i, "task": p} for i, p in enumerate(PROMPTS)]
    if not v3:
        for e in range(count):
            path = root / info["data_path"].format(episode_chunk=0, episode_index=e)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(rows(e, e * EPISODE_FRAMES)), path)
            if frames == "video":
                for key in (camera, wrist):
                    dest = root / info["video_path"].format(episode_chunk=0, video_key=key, episode_index=e)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(mp4s[e], dest)
        (root / "meta/episodes.jsonl").write_text("".join(
            json.dumps({"episode_index": e, "tasks": [PROMPTS[e % len(PROMPTS)]], "length": EPISODE_FRAMES}) + "\n"
            for e in range(count)))
        (root / "meta/tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
        return root
    episodes_meta = []
    for file_index, start in enumerate(range(0, count, per_file)):
        group = list(range(start, min(start + per_file, count)))
        parts = [rows(e, e * EPISODE_FRAMES) for e in group]
        path = root / info["data_path"].format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({k: sum((p[k] for p in parts), []) for k in parts[0]}), path)
        spans = {}
        if frames == "video":
            for key in (camera, wrist):
                spans[key] = concat_videos(root / info["video_path"].format(video_key=key, chunk_index=0,
                                                                           file_index=file_index),
                                           [mp4s[e] for e in group])
        for k, e in enumerate(group):
            meta = {"episode_index": e, "tasks": [PROMPTS[e % len(PROMPTS)]], "length": EPISODE_FRAMES,
                    "data/chunk_index": 0, "data/file_index": file_index,
                    "dataset_from_index": e * EPISODE_FRAMES, "dataset_to_index": (e + 1) * EPISODE_FRAMES,
                    "stats/action/mean": [0.0] * ACTION_DIM}
            for key, span in spans.items():
                meta.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": file_index,
                             f"videos/{key}/from_timestamp": span[k][0], f"videos/{key}/to_timestamp": span[k][1]})
            episodes_meta.append(meta)
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episodes_meta), path)
    # what pandas writes for LeRobot's tasks DataFrame (task text as the unnamed index)
    pq.write_table(pa.table({"task_index": [t["task_index"] for t in tasks],
                             "__index_level_0__": [t["task"] for t in tasks]}), root / "meta/tasks.parquet")
    return root
