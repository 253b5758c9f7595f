"""LeRobot dataset layouts: which one a snapshot is, which files the selected episodes need, and their episodes.

Layouts, told apart by the dataset's own metadata (`codebase_version`):
  v1.6        `meta_data/` (no meta/info.json); parquet rows with the camera column = {path: videos/...mp4},
              the prompt in a column (`language_instruction`); what mimic-video's LiberoDataset reads.
  v2.0, v2.1  `meta/info.json` (features, data_path, video_path, chunks_size), `meta/episodes.jsonl`,
              `meta/tasks.jsonl`; one parquet per episode, `data/chunk-XXX/episode_XXXXXX.parquet`, and one mp4
              per episode and camera, `videos/chunk-XXX/<camera>/episode_XXXXXX.mp4`.
  v3.0        `meta/info.json`, `meta/episodes/chunk-XXX/file-XXX.parquet` (per episode: its data file, its video
              file per camera and its [from, to) seconds in it), `meta/tasks.parquet`; many episodes per
              `data/chunk-XXX/file-XXX.parquet` and per `videos/<camera>/chunk-XXX/file-XXX.mp4`.
A camera whose feature dtype is `image` keeps its frames in the parquet rows ({bytes, path}), in any layout.

Keys come from config: inputs.camera ('auto': observation.images.image when the dataset has it, else its first
camera), inputs.state_key, inputs.action_key, inputs.prompt ('auto': the task_index lookup in the tasks table,
v1.6: the language_instruction column; or a column name).

prefetch fetches through `fetch`: per dataset repo, `plan_fetch` first fetches the metadata alone, checks layout,
episodes and keys (failing in seconds, naming the key), and fetches then exactly the files the selected episodes
need (v2.x: their files; v3.0: the chunk files holding them; only the chosen camera's videos).
"""
from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from mimic_redundancy.data.readers import DataError, Episode, matrix

log = logging.getLogger(__name__)

SUPPORTED = ("v1.6", "v2.0", "v2.1", "v3.0")
SUPPORTED_TEXT = "supported layouts: v1.6 (meta_data/, mimic-video's LiberoDataset), v2.0, v2.1, v3.0 (meta/info.json)"
INFO = "meta/info.json"
DEFAULT_CAMERA = "observation.images.image"
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")  # features of every dataset
V16_PROMPT = "language_instruction"
# the metadata of every layout: small files, fetched first
METADATA_PATTERNS = {"v1.6": ["meta_data/*"], "v2.0": ["meta/info.json", "meta/episodes.jsonl", "meta/tasks.jsonl"],
                     "v3.0": ["meta/info.json", "meta/tasks.parquet", "meta/episodes/*/*.parquet"]}
METADATA_PATTERNS["v2.1"] = METADATA_PATTERNS["v2.0"]
V16_PATTERNS = ["data/*.parquet", "data/**/*.parquet", "videos/**/*", "meta_data/*"]  # what LiberoDataset fetches
DEMOS_SUMMARY = "results/demos/summary.json"  # the demos rule's output beside its dataset (pipeline/config.DEMOS_DATASET)


def demos_command() -> str:
    """The command that records the demos stage's dataset again, with the run's --configfile files
    (core/io.rebuild_command)."""
    from mimic_redundancy.core.io import rebuild_command

    return rebuild_command(DEMOS_SUMMARY)


def refetch(source: str = "lerobot") -> str:
    """How to get a damaged or incomplete dataset again: a Hub snapshot is fetched again (prefetch); the demos
    stage's dataset (inputs.source demos) is recorded again by the demos rule."""
    if source == "demos":
        return f"rerun the demos rule: {demos_command()}"
    return "fetch it again (rerun prefetch)"


@dataclass
class Layout:
    """A dataset's metadata: version, info.json, episode rows by episode_index, tasks by task_index."""
    version: str
    root: Path
    info: dict
    episodes: dict[int, dict]
    tasks: dict[int, str]

    @property
    def features(self) -> dict:
        return self.info.get("features", {})

    def cameras(self) -> list[str]:
        return [k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") in ("video", "image")]

    def episodes_file(self) -> str:
        return "meta/episodes.jsonl" if self.version.startswith("v2") else "meta/episodes/"


def _context(version: str) -> str:
    return f"(dataset layout {version}; {SUPPORTED_TEXT})"


def _read_parquet(path: Path, columns: list[str] | None = None, source: str = "lerobot"):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=columns)
    except Exception as error:
        raise DataError(f"{path}: cannot read the parquet file ({type(error).__name__}: {error}); "
                        f"{refetch(source)}") from None


def _column_names(path: Path, source: str = "lerobot") -> list[str]:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except Exception as error:
        raise DataError(f"{path}: cannot read the parquet file ({type(error).__name__}: {error}); "
                        f"{refetch(source)}") from None


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: not found; a LeRobot v2.x dataset lists its episodes and tasks there "
                        f"{_context('v2.x')}")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not JSON lines ({error}); fetch it again (rerun prefetch)") from None


def read_layout(root: Path, source: str = "lerobot") -> Layout:
    """The layout and metadata of a dataset snapshot (the metadata files are enough). `source`: 'demos' for the demos
    stage's dataset (its fix is the demos rule, not prefetch)."""
    root = Path(root)
    info_path = root / INFO
    if not info_path.is_file() and source == "demos":
        raise DataError(f"{info_path}: not found; {refetch(source)}")
    if not info_path.is_file():
        if (root / "meta_data").is_dir():
            legacy = root / "meta_data/info.json"
            try:
                info = json.loads(legacy.read_text()) if legacy.is_file() else {}
            except json.JSONDecodeError as error:
                raise DataError(f"{legacy}: not JSON ({error}); fetch it again (rerun prefetch)") from None
            version = info.get("codebase_version", "v1.6")
            if version != "v1.6":
                raise DataError(f"{legacy}: codebase_version {version!r} in a meta_data/ folder is not a layout this "
                                f"pipeline reads; {SUPPORTED_TEXT}")
            return Layout("v1.6", root, info, {}, {})
        raise DataError(f"{info_path}: not found (nor a v1.6 meta_data/ folder): the dataset's layout cannot be told; "
                        f"{SUPPORTED_TEXT}. Check inputs.lerobot.repo (and revision): it must be a LeRobot dataset")
    try:
        info = json.loads(info_path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{info_path}: not JSON ({error}); {refetch(source)}") from None
    version = info.get("codebase_version")
    if version not in SUPPORTED[1:]:
        raise DataError(f"{info_path}: codebase_version {version!r} is not a layout this pipeline reads; "
                        f"{SUPPORTED_TEXT}. Convert the dataset with LeRobot's converter or pick another repo "
                        "(inputs.lerobot.repo)")
    for key in ("features", "data_path", "fps"):
        if key not in info:
            raise DataError(f"{info_path}: no '{key}' entry; a LeRobot {version} info.json has one {_context(version)}"
                            + (f"; {refetch(source)}" if source == "demos" else ""))
    if version.startswith("v2"):
        episodes = {int(row["episode_index"]): row for row in _jsonl(root / "meta/episodes.jsonl")}
        tasks = {int(row["task_index"]): str(row["task"]) for row in _jsonl(root / "meta/tasks.jsonl")}
    else:
        files = sorted((root / "meta/episodes").glob("*/*.parquet"))
        if not files:
            raise DataError(f"{root / 'meta/episodes'}: no episode metadata (chunk-XXX/file-XXX.parquet) "
                            f"{_context(version)}; {refetch(source)}")
        episodes = {}
        for path in files:
            table = _read_parquet(path, source=source)
            names = [c for c in table.column_names if not c.startswith("stats/")]
            for row in table.select(names).to_pylist():
                episodes[int(row["episode_index"])] = row
        tasks_path = root / "meta/tasks.parquet"
        if not tasks_path.is_file():
            raise DataError(f"{tasks_path}: not found; a LeRobot v3.0 dataset keeps its tasks there {_context(version)}"
                            + (f"; {refetch(source)}" if source == "demos" else ""))
        table = _read_parquet(tasks_path, source=source)
        text = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
        if text is None or "task_index" not in table.column_names:
            raise DataError(f"{tasks_path}: needs a task_index column and the task text (column 'task' or the "
                            f"index), found {table.column_names} {_context(version)}")
        tasks = {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(), table.column(text).to_pylist())}
    return Layout(version, root, info, episodes, tasks)


def _numeric_vector(feature) -> bool:
    """A feature that holds one vector of numbers per frame (what the state and action keys must name)."""
    if not isinstance(feature, dict) or not str(feature.get("dtype", "")).startswith(("float", "int", "uint")):
        return False
    shape = feature.get("shape")
    return shape is None or isinstance(shape, list) and len(shape) == 1


def _kind(feature) -> str:
    """What an info.json feature is, for messages: 'a feature of dtype video (a camera)'."""
    if not isinstance(feature, dict):
        return f"not a feature description ({feature!r})"
    dtype = feature.get("dtype")
    if dtype in ("video", "image"):
        return f"a feature of dtype {dtype} (a camera)"
    return f"a feature of dtype {dtype}" + (f" and shape {feature['shape']}" if "shape" in feature else "")


def resolve_keys(layout: Layout, inputs: dict) -> dict:
    """camera, its dtype (video or image), state, action and prompt ('task_index' or a column), checked against
    info.json's features (v1.6 lists none: its parquet columns are checked when read)."""
    camera, prompt = inputs.get("camera", "auto"), inputs.get("prompt", "auto")
    keys = {"state": inputs.get("state_key", "observation.state"), "action": inputs.get("action_key", "action")}
    if layout.version == "v1.6":
        return {**keys, "camera": DEFAULT_CAMERA if camera == "auto" else camera, "camera_dtype": "video",
                "prompt": V16_PROMPT if prompt == "auto" else prompt}
    info, features, cameras = layout.root / INFO, layout.features, layout.cameras()
    if not cameras:
        raise DataError(f"{info}: no camera (no feature of dtype video or image): nothing to show the model "
                        f"{_context(layout.version)}")
    if camera == "auto":
        camera = DEFAULT_CAMERA if DEFAULT_CAMERA in cameras else cameras[0]
    if camera not in cameras:
        what = f"is {_kind(features[camera])}, not a camera" if camera in features else "is not in the dataset"
        raise DataError(f"{info}: camera {camera!r} (config key 'inputs.camera') {what}; its cameras: {cameras}. "
                        f"Set inputs.camera to one of them {_context(layout.version)}")
    numeric = [k for k, f in features.items() if _numeric_vector(f) and k not in BOOKKEEPING]
    for role, key in keys.items():
        if key not in features:
            raise DataError(f"{info}: {role} key {key!r} (config key 'inputs.{role}_key') is not a feature of the "
                            f"dataset; its numeric features: {numeric}. Set inputs.{role}_key to one of them "
                            f"{_context(layout.version)}")
        if not _numeric_vector(features[key]):
            raise DataError(f"{info}: {role} key {key!r} (config key 'inputs.{role}_key') is {_kind(features[key])}, "
                            f"not a numeric vector (dtype float or int, shape [n]); its numeric features: "
                            f"{numeric}. Set inputs.{role}_key to one of them {_context(layout.version)}")
    if prompt == "auto":
        prompt = "task_index"
    if prompt == "task_index" and ("task_index" not in features or not layout.tasks):
        raise DataError(f"{info}: inputs.prompt 'task_index' needs a task_index feature and a tasks table; set "
                        f"inputs.prompt to a text column {_context(layout.version)}")
    if prompt != "task_index" and prompt not in features:
        text = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") == "string"]
        raise DataError(f"{info}: prompt column {prompt!r} (config key 'inputs.prompt') is not a feature of the "
                        f"dataset; use 'task_index' (the tasks table) or a text column: {text or 'none here'} "
                        f"{_context(layout.version)}")
    return {**keys, "camera": camera, "camera_dtype": features[camera]["dtype"], "prompt": prompt}


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5': episode lists of real datasets run into the thousands."""
    parts, run = [], []
    for i in sorted(indices):
        if run and i != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(parts) or "none"


def select_episodes(available: list[int], wanted, where: str, version: str, key: str = "inputs.episodes") -> list[int]:
    if wanted == "all":
        return sorted(available)
    unknown = [i for i in wanted if i not in set(available)]
    if unknown:
        raise DataError(f"config key '{key}': episodes {unknown} are not in the data (it has "
                        f"{_ranges(available)}, listed in {where}); select existing episode_index values "
                        f"{_context(version)}")
    return list(wanted)


def _format(template: str, where: Path, **values) -> str:
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as error:
        raise DataError(f"{where}: path template {template!r} does not fit this layout ({error})") from None


def episode_files(layout: Layout, keys: dict, index: int) -> dict:
    """{'data': parquet path, 'video': mp4 path or None, 'span': (from, to) seconds or None}, relative to the root."""
    info, row, where = layout.info, layout.episodes[index], layout.root / INFO
    video = keys["camera_dtype"] == "video"
    if video and not info.get("video_path"):
        raise DataError(f"{where}: camera {keys['camera']!r} is a video, but info.json has no video_path "
                        f"{_context(layout.version)}")
    if layout.version.startswith("v2"):
        chunk = index // int(info.get("chunks_size", 1000))
        return {"data": _format(info["data_path"], where, episode_chunk=chunk, episode_index=index),
                "video": _format(info["video_path"], where, episode_chunk=chunk, episode_index=index,
                                 video_key=keys["camera"]) if video else None, "span": None}
    try:
        files = {"data": _format(info["data_path"], where, chunk_index=row["data/chunk_index"],
                                 file_index=row["data/file_index"]), "video": None, "span": None}
        if video:
            prefix = f"videos/{keys['camera']}/"
            files["video"] = _format(info["video_path"], where, video_key=keys["camera"],
                                     chunk_index=row[prefix + "chunk_index"], file_index=row[prefix + "file_index"])
            files["span"] = (float(row[prefix + "from_timestamp"]), float(row[prefix + "to_timestamp"]))
    except KeyError as error:
        raise DataError(f"{layout.root / 'meta/episodes'}: episode {index} has no {error} entry "
                        f"{_context(layout.version)}") from None
    return files


def video_size(path: Path, fix: str) -> tuple[int, int]:
    """(height, width) of an mp4's first video stream, read from its header (PyAV)."""
    import av

    try:
        with av.open(str(path)) as container:
            context = container.streams.video[0].codec_context
            return int(context.height), int(context.width)
    except (av.FFmpegError, IndexError, OSError) as error:
        raise DataError(f"{path}: not a readable video ({type(error).__name__}: {error}); {fix}") from None


def check_video_shape(layout: Layout, camera: str, source: str = "lerobot") -> None:
    """info.json's frame size of a video camera (its shape: height, width, channels) against the videos themselves:
    every video file of the camera that its episodes name and that is here (a Hub snapshot holds the selected
    episodes' files alone; at least one must be). A disagreement is refused, naming both sizes: the closed loop
    renders at info.json's size. (A camera of dtype image keeps its frames in the parquet rows: no video to check.)"""
    feature, info = layout.features.get(camera, {}), layout.root / INFO
    if feature.get("dtype") != "video":
        return
    fix = (refetch(source) if source == "demos" else "correct features['" + camera + "'].shape in meta/info.json "
           "to the videos' size, or pick another dataset (inputs.lerobot.repo)")
    keys = {"camera": camera, "camera_dtype": "video"}
    named = list(dict.fromkeys(episode_files(layout, keys, index)["video"] for index in sorted(layout.episodes)))
    present = [name for name in named if (layout.root / name).is_file()]
    if not present:
        raise DataError(f"{info}: camera {camera!r} is a video, but none of the {len(named)} video files its episodes "
                        f"name is here (e.g. {layout.root / named[0] if named else 'none named'}); "
                        + (refetch(source) if source == "demos" else "fetch the dataset again (rerun prefetch)"))
    shape = list(feature.get("shape") or [])[:2]
    if len(shape) < 2:
        raise DataError(f"{info}: camera {camera!r} has shape {feature.get('shape')!r}, not [height, width, channels]; "
                        f"{fix}")
    for name in present:
        size = list(video_size(layout.root / name, fix))
        if size != shape:
            raise DataError(f"{info}: camera {camera!r} has frames of {shape[0]} x {shape[1]} px (height x width, "
                            f"its shape {feature.get('shape')}), but its video {layout.root / name} is "
                            f"{size[0]} x {size[1]} px; {fix}")


# -- prefetch: metadata first, then exactly the files the selected episodes need --------------------------------

def plan_fetch(repo: dict, timeout_s: float) -> dict:
    """Check a dataset repo from its metadata alone and return its record with the exact files to fetch.

    `repo` is a hub.required_repos record whose 'select' holds the inputs keys (episodes, camera, state_key,
    action_key, prompt). Raises DataError (layout, episodes, keys) or HubError (the Hub) within seconds."""
    from huggingface_hub import HfApi, constants

    from mimic_redundancy.core import hub

    name = f"dataset {repo['repo']}@{repo['revision']}"
    try:
        info = HfApi().repo_info(repo["repo"], repo_type="dataset", revision=repo["revision"], timeout=timeout_s)
    except Exception as error:
        raise hub.HubError(f"cannot resolve {name} on the Hub at {constants.ENDPOINT} (within {timeout_s:g} s): "
                           f"{type(error).__name__}: {error}. Check the repo and revision, and run prefetch on a "
                           "machine that reaches the Hub (the head node)") from None
    listed = {s.rfilename for s in info.siblings or []}
    if INFO not in listed and not any(f.startswith("meta_data/") for f in listed):
        raise DataError(f"{name} (commit {info.sha}): {INFO} not found (nor a v1.6 meta_data/ folder), so its layout "
                        f"cannot be told; {SUPPORTED_TEXT}. Check inputs.lerobot.repo and revision")
    patterns = sorted({p for ps in METADATA_PATTERNS.values() for p in ps})
    metadata = sorted(f for f in listed if any(fnmatch.fnmatch(f, p) for p in patterns))
    pinned = {**repo, "revision": info.sha, "requested_revision": repo["revision"]}
    [entry] = hub.fetch([{**pinned, "allow_patterns": metadata}], timeout_s)
    try:
        layout = read_layout(Path(entry["snapshot"]))
        version = layout.version
        if version == "v1.6":  # its metadata lists no episodes: fetched whole, checked by check_snapshot
            return {**pinned, "allow_patterns": repo.get("allow_patterns", V16_PATTERNS),
                    "layout": {"codebase_version": version}}
        select = repo.get("select", {})
        keys = resolve_keys(layout, select)
        episodes = select_episodes(list(layout.episodes), select.get("episodes", "all"), layout.episodes_file(),
                                   version)
        if select.get("train_episodes", "inputs") != "inputs":  # the train rule reads these too
            episodes += [e for e in select_episodes(list(layout.episodes), select["train_episodes"],
                                                    layout.episodes_file(), version, "train.episodes")
                         if e not in episodes]
        needed = []
        for index in episodes:
            files = episode_files(layout, keys, index)
            needed += [f for f in (files["data"], files["video"]) if f and f not in needed]
    except DataError as error:  # the message names the cached file; say which repo it came from
        raise DataError(f"{name}: {error}") from None
    missing = [f for f in needed if f not in listed]
    if missing:
        raise DataError(f"{name}: files the metadata names for the selected episodes are not in the repo: "
                        f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; the dataset is incomplete at this "
                        "revision: pick another revision or other episodes (inputs.episodes)")
    log.info("%s: layout %s, episodes %s, camera %s (%s): %d data/video files to fetch", name, version,
             _ranges(episodes), keys["camera"], keys["camera_dtype"], len(needed))
    return {**pinned, "allow_patterns": metadata + needed,
            "layout": {"codebase_version": version, "episodes": episodes, "keys": keys, "selected_files": needed}}


def fetch(repos: list[dict], timeout_s: float) -> list[dict]:
    """hub.fetch, a dataset repo's metadata checked first (plan_fetch) and only the files it needs fetched;
    the manifest entries carry what was selected ('layout')."""
    from mimic_redundancy.core import hub

    entries = hub.fetch([plan_fetch(r, timeout_s) if r["role"] == "dataset" else r for r in repos], timeout_s)
    for entry in entries:
        check_snapshot(entry)
    return entries


def check_snapshot(entry: dict) -> None:
    """After the download: the selected episodes and keys read from the fetched files (v1.6 is checked only here,
    its metadata listing no episodes); raises DataError naming the key."""
    if entry.get("role") == "dataset" and entry.get("layout", {}).get("codebase_version") == "v1.6":
        select = entry.get("select", {})
        read_lerobot(Path(entry["snapshot"]), {"episodes": "all", **select}, frames=False)
        if select.get("train_episodes", "inputs") != "inputs":
            read_lerobot(Path(entry["snapshot"]), {**select, "episodes": select["train_episodes"]}, frames=False,
                         key="train.episodes")


# -- reading episodes ---------------------------------------------------------------------------------------------

def read_lerobot(root: Path, inputs: dict, frames: bool = True, key: str = "inputs.episodes") -> list[Episode]:
    """The selected episodes (inputs.episodes) of a dataset snapshot, in that order ('all': by episode_index);
    rows in file order within each. `frames=False` skips collecting the in-parquet images (checks only)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    source = inputs.get("source", "lerobot")
    layout = read_layout(root, source)
    keys = resolve_keys(layout, inputs)
    if layout.version == "v1.6":
        return _read_v16(layout, keys, inputs.get("episodes", "all"), key)
    indices = select_episodes(list(layout.episodes), inputs.get("episodes", "all"), layout.episodes_file(),
                              layout.version, key)
    plans = {i: episode_files(layout, keys, i) for i in indices}
    columns = ["episode_index", keys["state"], keys["action"]]
    columns += [keys["prompt"]] if keys["prompt"] != "task_index" else ["task_index"]
    columns += [keys["camera"]] if keys["camera_dtype"] == "image" and frames else []
    rows: dict[int, list[dict]] = {}
    for data in dict.fromkeys(p["data"] for p in plans.values()):
        path = layout.root / data
        if not path.is_file():
            raise DataError(f"{path}: not found; " + (refetch(source) if source == "demos" else
                                                      "prefetch fetches the files of the selected episodes: rerun it "
                                                      "after changing inputs.episodes or the keys"))
        names = _column_names(path, source)
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{path}: missing columns {missing} that info.json lists (found {names}) "
                            f"{_context(layout.version)}")
        wanted = {i for i, p in plans.items() if p["data"] == data}
        # only the columns and rows used: a v3.0 file holds other episodes, and other cameras' images
        table = _read_parquet(path, list(dict.fromkeys(columns)), source)
        table = table.filter(pc.is_in(table.column("episode_index"), pa.array(sorted(wanted), table.schema.field(
            "episode_index").type)))
        for row in table.to_pylist():
            rows.setdefault(row["episode_index"], []).append(row)
    episodes = []
    for index in indices:
        plan, frames_ = plans[index], rows.get(index, [])
        where = f"{layout.root / plan['data']} (episode {index})"
        length = layout.episodes[index].get("length")
        if not frames_ or (length is not None and len(frames_) != int(length)):
            raise DataError(f"{where}: {len(frames_)} rows, but {layout.episodes_file()} says {length}; the file is "
                            f"incomplete: {refetch(source)}")
        if keys["prompt"] == "task_index":
            task = frames_[0]["task_index"]
            if task not in layout.tasks:
                raise DataError(f"{where}: task_index {task} is not in the tasks table {_context(layout.version)}")
            prompt = layout.tasks[task]
        else:  # LIBERO's text columns hold bytes reprs (b'...'), which LiberoDataset's clean_instruction strips
            from mimic_video.libero import clean_instruction

            prompt = clean_instruction(frames_[0][keys["prompt"]])
        images = None
        if keys["camera_dtype"] == "image" and frames:
            images = [_image_bytes(f[keys["camera"]], where, keys["camera"]) for f in frames_]
        episodes.append(Episode(index, layout.root / plan["video"] if plan["video"] else None,
                                matrix([f[keys["state"]] for f in frames_], where, keys["state"]),
                                matrix([f[keys["action"]] for f in frames_], where, keys["action"]),
                                prompt.strip(), where, plan["span"], images))
    return episodes


def _image_bytes(value, where: str, camera: str) -> bytes:
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    raise DataError(f"{where}: column {camera!r} holds {type(value).__name__}, not an image {{bytes, path}} as its "
                    "feature dtype 'image' says; the file does not match info.json")


def _read_v16(layout: Layout, keys: dict, wanted, key: str = "inputs.episodes") -> list[Episode]:
    """The layout mimic-video's LiberoDataset reads: every data/**/*.parquet, rows grouped by episode_index."""
    from mimic_video.libero import clean_instruction

    root = layout.root
    paths = sorted((root / "data").rglob("*.parquet"))
    if not paths:
        raise DataError(f"{root}: no parquet files under data/; a LeRobot dataset keeps its frames in "
                        f"data/**/*.parquet (check inputs.lerobot.repo) {_context('v1.6')}")
    columns = [keys["camera"], keys["state"], keys["action"], keys["prompt"], "episode_index"]
    config_key = {keys["camera"]: "inputs.camera", keys["state"]: "inputs.state_key",
                  keys["action"]: "inputs.action_key", keys["prompt"]: "inputs.prompt"}
    rows: dict[int, list] = {}
    for path in paths:
        table = _read_parquet(path)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            named = ", ".join(f"{c!r} ({config_key[c]})" if c in config_key else repr(c) for c in missing)
            raise DataError(f"{path}: missing columns {missing}: {named}; found {table.column_names}. Set the "
                            f"config keys to columns of the dataset {_context('v1.6')}")
        for image, state, action, text, episode in zip(*(table.column(c).to_pylist() for c in columns)):
            rows.setdefault(int(episode), []).append((image, state, action, text, path))
    indices = select_episodes(list(rows), wanted, "data/**/*.parquet", "v1.6", key)
    episodes = []
    for index in indices:
        frames = rows[index]
        image, path = frames[0][0], frames[0][4]
        where = f"{path} (episode {index})"
        images = None
        if isinstance(image, dict) and image.get("bytes"):
            images = [_image_bytes(f[0], where, keys["camera"]) for f in frames]
        elif not isinstance(image, dict) or not image.get("path"):
            raise DataError(f"{where}: column {keys['camera']!r} holds {type(image).__name__}, neither a {{path: ...}} "
                            "reference to a video file nor an image {bytes, path}")
        episodes.append(Episode(index, None if images else root / image["path"],
                                matrix([f[1] for f in frames], where, keys["state"]),
                                matrix([f[2] for f in frames], where, keys["action"]),
                                clean_instruction(frames[0][3]), where, None, images))
    return episodes
