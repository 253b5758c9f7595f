"""Expert demonstrations as a LeRobot v3.0 dataset, readable by `mimic_redundancy.data.lerobot.read_lerobot`, in the
conventions of the simulator's datasets (sim/backends.py: Meta-World's own; LIBERO's as the Hub's LIBERO datasets).

Layout written (one data file and one video file: demos at these sizes are a few MB; LeRobot itself splits files
at ~100 MB of data and ~500 MB of video):
  meta/info.json                                   codebase_version v3.0, fps, features
  meta/tasks.parquet                               task_index + the prompt (the pandas index, as LeRobot writes it)
  meta/episodes/chunk-000/file-000.parquet         per episode: length, files, [from, to) seconds, layout_seed,
                                                   layout_index, <backend>_task, steps_to_success
  meta/mimic_redundancy.json                       provenance: package versions, seeds, layouts, dropped episodes
  data/chunk-000/file-000.parquet                  per frame: observation.state (Meta-World 9, LIBERO 8),
                                                   observation.environment_state (Meta-World's 39), action
                                                   (Meta-World 4, LIBERO 7), timestamp, frame_index,
                                                   episode_index, index, task_index
  videos/observation.images.<camera>/chunk-000/file-000.mp4   all episodes back to back, frame i at i / fps s
The video is H.264 lossless RGB (libx264rgb, qp 0), so decoded frames equal the rendered ones bit for bit (LeRobot
encodes lossy AV1 yuv420p; the lossy round trip would blur the question of what the model sees).
Episodes whose expert fails within max_steps are dropped and counted; kept episodes are numbered 0..K-1.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from fractions import Fraction
from importlib.metadata import version
from pathlib import Path

import numpy as np

from mimic_redundancy.sim.backends import CONVENTIONS, Conventions, simulator
from mimic_redundancy.sim.common import STEPS_AFTER_SUCCESS, EpisodeRecord, SimError

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CODEC = {"name": "libx264rgb", "pix_fmt": "rgb24", "options": {"qp": "0", "preset": "veryfast", "bf": "0"}}
PACKAGES = ("numpy", "av")  # besides the simulator's own (its versions())


def camera_key(camera: str, backend: str = "metaworld") -> str:
    return CONVENTIONS[backend].camera_key(camera)


def features(conventions: Conventions, camera: str, height: int, width: int, fps: int, environment_dim: int) -> dict:
    """info.json's features: what each column (and the video) holds."""
    video_info = {"video.height": height, "video.width": width, "video.codec": "h264", "video.pix_fmt": "gbrp",
                  "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}
    out = {conventions.camera_key(camera): {"dtype": "video", "shape": [height, width, 3],
                                            "names": ["height", "width", "channels"], "info": video_info},
           "observation.state": {"dtype": "float32", "shape": [len(conventions.state_names)],
                                 "names": conventions.state_names}}
    if conventions.environment_state:
        out["observation.environment_state"] = {"dtype": "float32", "shape": [environment_dim], "names": None}
    out["action"] = {"dtype": "float32", "shape": [len(conventions.action_names)], "names": conventions.action_names}
    for key, dtype in [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")]:
        out[key] = {"dtype": dtype, "shape": [1], "names": None}
    return out


# for people to watch (browsers play H.264 in yuv420p, not the lossless RGB the dataset keeps)
VIEWING_CODEC = {"name": "libx264", "pix_fmt": "yuv420p", "options": {"crf": "18", "preset": "veryfast"}}


def write_video(path: Path, frames: np.ndarray, fps: int, codec: dict = CODEC) -> None:
    """frames (N, H, W, 3) uint8 -> an mp4 whose frame i has pts i (time i / fps s), losslessly encoded (CODEC)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec["name"], rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], codec["pix_fmt"]
        stream.options = dict(codec["options"])
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _vectors(rows: np.ndarray):
    """(N, n) float32 -> an arrow fixed_size_list<float32>[n] column (what LeRobot's datasets write)."""
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), pa.float32()), rows.shape[1])


def write_dataset(root: Path, episodes: list[tuple[int, EpisodeRecord]], prompts: list[str], camera: str,
                  fps: int, provenance: dict, conventions: Conventions = CONVENTIONS["metaworld"]) -> None:
    """The LeRobot v3.0 files of `episodes` ((task_index, record) pairs, in episode order) into `root`."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    key = conventions.camera_key(camera)
    lengths = [len(r.actions) for _, r in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    height, width = episodes[0][1].frames.shape[1:3]
    environment_dim = episodes[0][1].environment_states.shape[1]
    info = {"codebase_version": "v3.0", "robot_type": conventions.robot_type, "total_episodes": len(episodes),
            "total_frames": int(starts[-1]), "total_tasks": len(prompts), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
            "features": features(conventions, camera, height, width, fps, environment_dim)}
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info, indent=4))
    (root / "meta/mimic_redundancy.json").write_text(json.dumps(provenance, indent=4))

    frame_index = np.concatenate([np.arange(n) for n in lengths])
    columns = {"observation.state": _vectors(np.concatenate([r.states for _, r in episodes]))}
    if conventions.environment_state:
        columns["observation.environment_state"] = _vectors(np.concatenate([r.environment_states for _, r in episodes]))
    data = pa.table({
        **columns,
        "action": _vectors(np.concatenate([r.actions for _, r in episodes])),
        "timestamp": pa.array((frame_index / fps).astype(np.float32)),
        "frame_index": pa.array(frame_index.astype(np.int64)),
        "episode_index": pa.array(np.repeat(np.arange(len(episodes)), lengths).astype(np.int64)),
        "index": pa.array(np.arange(starts[-1], dtype=np.int64)),
        "task_index": pa.array(np.repeat([t for t, _ in episodes], lengths).astype(np.int64)),
    })
    path = root / DATA_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True)
    pq.write_table(data, path)
    write_video(root / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0),
                np.concatenate([r.frames for _, r in episodes]), fps)

    rows = []
    for e, (task_index, r) in enumerate(episodes):
        rows.append({"episode_index": e, "tasks": [prompts[task_index]], "length": lengths[e],
                     "data/chunk_index": 0, "data/file_index": 0,
                     "dataset_from_index": int(starts[e]), "dataset_to_index": int(starts[e + 1]),
                     f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                     # frame i of the shared video sits at i / fps s: [from, to) covers exactly this episode
                     f"videos/{key}/from_timestamp": starts[e] / fps,
                     f"videos/{key}/to_timestamp": starts[e + 1] / fps,
                     f"{conventions.backend}_task": r.task, "layout_seed": r.layout_seed, "layout_index": r.layout_index,
                     "steps_to_success": r.steps_to_success})
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    # LeRobot keeps its tasks as a DataFrame indexed by the task text; pandas stores that index as a column
    tasks = pd.DataFrame({"task_index": np.arange(len(prompts), dtype=np.int64)}, index=pd.Index(prompts))
    pq.write_table(pa.Table.from_pandas(tasks), root / "meta/tasks.parquet")


def write_demos(out_root: Path, tasks: dict[str, str], layouts: list[tuple[int, int]], camera: str,
                height: int, width: int, fps: int, max_steps: int, backend: str = "metaworld") -> dict:
    """Run the backend's expert on the demonstration layouts ((layout_seed, layout_index) pairs: the `demos` episode
    set, sim.common.set_layouts) of each task (-> prompt), keep the successful episodes and write them as a LeRobot
    v3.0 dataset at `out_root`, atomically (built in a temporary folder beside it, renamed at the end). Returns a
    summary: episodes kept/dropped per task, frames, seconds in physics, rendering and writing."""
    sim, conventions = simulator(backend), CONVENTIONS[backend]
    if not tasks:
        raise SimError(f"config key 'sim.tasks': no tasks given; name at least one {backend} task (-> its prompt)")
    for task in tasks:
        sim.check_task(task)
    sim.check_camera(camera)
    start = time.perf_counter()
    out_root = Path(out_root)
    prompts = list(tasks.values())
    kept, per_task, sim_s, render_s = [], {}, 0.0, 0.0
    for task_index, task in enumerate(tasks):
        stats = per_task[task] = {"prompt": tasks[task], "kept": 0, "dropped": 0, "layouts_kept": [],
                                  "layouts_dropped": [], "steps_to_success": []}
        for layout_seed, layout_index in layouts:
            record = sim.run_expert(task, layout_seed, layout_index, camera, height, width, max_steps)
            sim_s, render_s = sim_s + record.sim_seconds, render_s + record.render_seconds
            if record.success:
                kept.append((task_index, record))
                stats["kept"] += 1
                stats["layouts_kept"].append([layout_seed, layout_index])
                stats["steps_to_success"].append(record.steps_to_success)
            else:
                stats["dropped"] += 1
                stats["layouts_dropped"].append([layout_seed, layout_index])
    if not kept:
        raise SimError(f"no expert episode succeeded within {max_steps} steps ({', '.join(tasks)}): nothing to "
                       "write; allow more steps or pick other tasks (sim.tasks)")
    provenance = {"backend": backend, "packages": {**sim.versions(), **{name: version(name) for name in PACKAGES}},
                  "mujoco_gl": os.environ.get("MUJOCO_GL"), "rendering": getattr(sim, "RENDERING", None),
                  "layouts": [list(pair) for pair in layouts], "camera": camera,
                  "height": height, "width": width, "fps": fps, "max_steps": max_steps,
                  "steps_after_success": STEPS_AFTER_SUCCESS, "codec": CODEC, "tasks": per_task,
                  "episodes": [{"episode_index": e, "task": r.task, "layout_seed": r.layout_seed,
                                "layout_index": r.layout_index, "steps_to_success": r.steps_to_success}
                               for e, (_, r) in enumerate(kept)]}
    write_start = time.perf_counter()
    out_root.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_root.with_name(f".{out_root.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        write_dataset(temporary, kept, prompts, camera, fps, provenance, conventions)
        if out_root.exists():  # an older dataset: moved aside first, so the rename below cannot fail on it
            old = out_root.with_name(f".{out_root.name}.old-{os.getpid()}")
            out_root.rename(old)
            shutil.rmtree(old)
        temporary.rename(out_root)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return {"episodes": len(kept), "frames": sum(len(r.actions) for _, r in kept),
            "tasks": {t: {k: s[k] for k in ("kept", "dropped", "steps_to_success")} for t, s in per_task.items()},
            "sim_seconds": sim_s, "render_seconds": render_s, "write_seconds": time.perf_counter() - write_start,
            "seconds": time.perf_counter() - start}
