"""The closed loop's pipeline stages (scripts/demos.py, rollout.py, rollout_metrics.py, rollout_videos.py call
these with Snakemake's values): demonstrations, rollouts, their answers, and replayed videos."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("mimic_redundancy")


def _check_simulator(demos: dict):
    """The simulator module, its tasks, camera and rendering checked before any episode: each error names the key
    and what is allowed."""
    from mimic_redundancy.sim.backends import simulator

    sim = simulator(demos["backend"])
    for task in demos["tasks"]:
        sim.check_task(task)
    sim.check_camera(demos["camera"])
    sim.check_rendering()
    return sim


def demos(settings: dict, dataset_dir, summary_path) -> None:
    """The scripted expert of every task on the demos set's layouts, written as a LeRobot v3.0 dataset."""
    from mimic_redundancy.core.io import write_json
    from mimic_redundancy.sim.common import set_layouts
    from mimic_redundancy.sim.demos import write_demos

    sim = _check_simulator(settings)
    sim.check_set("demos", settings["set"])
    summary = write_demos(Path(dataset_dir), settings["tasks"], set_layouts(settings["set"]), settings["camera"],
                          settings["height"], settings["width"], settings["fps"], settings["max_steps"],
                          settings["backend"])
    for task, counts in summary["tasks"].items():
        log.info("%s: %d demonstrations kept, %d dropped (the expert failed)", task, counts["kept"], counts["dropped"])
    write_json(summary_path, {**summary, "settings": settings, "dataset": str(dataset_dir)})


def check_dataset(dataset_dir, settings: dict) -> tuple[int, int]:
    """The dataset the policy learned from must hold what the env will show it, in the backend's conventions
    (sim/backends.py): the camera sim.camera stands for, its frame size in info.json the same as its videos', the
    state and action sizes, the fps; else stop, naming both. Returns the frame size the dataset stores (the env
    renders at it; the policy resizes as training did)."""
    from mimic_redundancy.data.lerobot import check_video_shape, demos_command, read_layout
    from mimic_redundancy.data.readers import DataError
    from mimic_redundancy.pipeline.config import DEMOS_DATASET, camera_problems
    from mimic_redundancy.sim.backends import CONVENTIONS

    # the demos stage's dataset (the rule passes config.DEMOS_DATASET), else a Hub snapshot: its fixes differ
    source = "demos" if Path(dataset_dir).as_posix().rstrip("/").endswith(DEMOS_DATASET) else "lerobot"
    info_path = Path(dataset_dir) / "meta/info.json"
    layout = read_layout(Path(dataset_dir), source)
    demos, inputs = settings["demos"], settings["inputs"]
    conventions = CONVENTIONS[demos["backend"]]
    key = conventions.camera_key(demos["camera"])
    for problem in camera_problems(inputs["camera"], demos["backend"], demos["camera"]):  # config validation's
        raise DataError(problem)
    remake = f"rerun the demos rule: {demos_command()}" if source == "demos" else "train the policy on a dataset " \
        "that holds it"
    feature = layout.features.get(key)
    if feature is None:
        raise DataError(f"{info_path}: no camera {key!r} (config key 'sim.camera' is {demos['camera']!r}); its "
                        f"cameras: {layout.cameras()}; set sim.camera to the camera the policy saw, or {remake}")
    sizes = {name: list(layout.features.get(inputs[k], {}).get("shape", [None]))[:1]
             for name, k in (("state", "state_key"), ("action", "action_key"))}
    wanted = {"state": [len(conventions.state_names)] if inputs["state_key"] == "observation.state" else None,
              "action": [len(conventions.action_names)]}
    for name, size in sizes.items():
        if wanted[name] is not None and size != wanted[name]:
            raise DataError(f"{info_path}: {inputs[name + '_key']!r} ({name}) has size {size[0]}, but "
                            f"{demos['backend']}'s env gives {wanted[name][0]} (config key 'inputs.{name}_key'); "
                            f"train the policy on a dataset in {demos['backend']}'s conventions")
    if layout.info.get("fps") != demos["fps"]:
        raise DataError(f"{info_path}: the demonstrations are at {layout.info.get('fps')} fps, but the closed loop "
                        f"steps at {demos['fps']} fps (sim.fps); " + (
                            f"rerun the demos rule and train with the same settings: {demos_command()}"
                            if source == "demos" else f"set sim.fps: {layout.info.get('fps')}, the dataset's"))
    check_video_shape(layout, key, source)  # the env renders at info.json's size: it must be the videos'
    shape = list(feature.get("shape", []))[:2]
    return int(shape[0]), int(shape[1])


def _check_trained_frames(settings: dict) -> None:
    """The frames the rollout shows the policy (inputs.height, width, frames, frame_skip; the rate sim.fps) against
    those it was trained on, as its checkpoint records them (checkpoints.trained_frames): a policy fed frames of
    another size or rate runs every episode without a word, so any difference stops the rollout, naming both."""
    from mimic_redundancy.model.checkpoints import FRAME_KEYS, read_checkpoint_config, trained_frames
    from mimic_redundancy.model.model import DimensionError

    folder = settings["model"].get("checkpoint")
    if folder is None:  # a head built from settings (random weights): it was trained on nothing
        return
    trained = trained_frames(read_checkpoint_config(folder))
    if trained is None:
        log.warning("%s/config.json records no training frames (a checkpoint trained elsewhere, or format v1): "
                    "inputs.height, width, frames, frame_skip and sim.fps are not compared with its training", folder)
        return
    shown = {**{f"inputs.{k}": settings["inputs"][k] for k in FRAME_KEYS}, "sim.fps": settings["demos"]["fps"]}
    was = {**{f"inputs.{k}": trained[k] for k in FRAME_KEYS if k in trained},
           **({"sim.fps": trained["fps"]} if trained.get("fps") is not None else {})}
    differ = [key for key in shown if key in was and was[key] != shown[key]]
    if differ:
        raise DimensionError(f"{folder}/config.json ({trained['where']}): the policy was trained with "
                             + ", ".join(f"{key} {was[key]}" for key in differ) + ", but this rollout shows it "
                             + ", ".join(f"{key} {shown[key]}" for key in differ) + "; set "
                             + ", ".join(f"{key}: {was[key]}" for key in differ)
                             + " (the policy's), or train a policy with these settings")


def _policy(settings: dict, device, sim):
    """The trained head and the backbone it was trained on, checked against the simulator's dimensions and the
    frames it was trained on (before anything is built)."""
    from mimic_redundancy.model.model import DimensionError, build_backbone, build_head, net_dims, resolve_dims
    from mimic_redundancy.sim.policy import STATE_KEYS, Policy

    _check_trained_frames(settings)
    inputs, backend = settings["inputs"], settings["demos"]["backend"]
    states = {"observation.state": sim.STATE_DIM}
    if hasattr(sim, "ENV_STATE_DIM"):
        states["observation.environment_state"] = sim.ENV_STATE_DIM
    if inputs["state_key"] not in states:
        raise DimensionError(f"config key 'inputs.state_key': {inputs['state_key']!r} is no state {backend} gives; "
                             f"allowed: {', '.join(k for k in STATE_KEYS if k in states)}")
    # the head's dimensions as its checkpoint (or preset) fixes them, checked before the backbone is built
    dims = resolve_dims(settings["model"], {})
    state = states[inputs["state_key"]]
    where = settings["model"].get("checkpoint", f"preset {settings['model']['preset']}")
    if dims["action_dim"] != sim.ACTION_DIM or dims["joint_dim"] != state:
        raise DimensionError(f"{where}: the policy acts in {dims['action_dim']} dimensions from a {dims['joint_dim']}-dim "
                             f"state, but {backend}'s actions have {sim.ACTION_DIM} and its {inputs['state_key']} "
                             f"(inputs.state_key) {state}; train the checkpoint on these demonstrations")
    wrapper = build_backbone(settings["backbone"], device)
    net = build_head(settings["model"], device, dims, wrapper.dim_latent, wrapper.head_rng_state)
    if net_dims(net) != dims:  # what was built is what was checked
        raise DimensionError(f"{where}: the head built has dimensions {net_dims(net)}, but its settings say {dims}")
    return Policy(net, wrapper, device, inputs)


def calibrated_eps(early_stop_path) -> float | None:
    """The clean-change threshold early_stop.json calibrated on the demo windows (None: none reached the target). A
    damaged file, or one without the threshold, is named with the command that rebuilds it."""
    import math

    from mimic_redundancy.core.io import input_error, read_json

    summary = read_json(early_stop_path)
    try:
        eps = summary["calibrated"]["clean_change"]["param"]
    except (KeyError, TypeError):
        raise input_error(early_stop_path, "has no calibrated.clean_change.param (the clean-change threshold the "
                                           "early_stop rule calibrates; null when none reached the target)") from None
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps)
                            or eps <= 0):
        raise input_error(early_stop_path, f"calibrated.clean_change.param is {eps!r}, not a positive number or null")
    return eps


def policy_dataset(dataset) -> Path:
    """The dataset the policy learned from: a dataset folder (the demonstrations), or a Hub manifest (prefetch.json:
    the LeRobot dataset's snapshot in the Hub cache, read offline)."""
    from mimic_redundancy.core.hub import local_snapshots
    from mimic_redundancy.core.io import read_json

    if str(dataset).endswith(".json"):
        return Path(local_snapshots(read_json(dataset))["dataset"])
    return Path(dataset)


def rollout(settings: dict, dataset_dir, early_stop_path, npz_path, threads: int = 1, shard: str | None = None) -> None:
    """One policy (settings['policy']), every rule, on this job's share of the episode set (whole batches), in closed
    loop. `dataset_dir`: the dataset the policy learned from, or the manifest locating it (policy_dataset)."""
    import numpy as np

    from mimic_redundancy.core import numerics
    from mimic_redundancy.core.io import (ROLLOUT_ARRAYS, ROLLOUT_EPISODE_ARRAYS, config_digest, file_digest,
                                          rollout_digest, save_npz)
    from mimic_redundancy.model.model import library_versions, resolve_device
    from mimic_redundancy.pipeline.config import shard_rows
    from mimic_redundancy.sim.policy import rules_of
    from mimic_redundancy.sim.rollout import batches_of, episode_list, run_rollouts

    run, demos = settings["rollout"], settings["demos"]
    sim = _check_simulator(demos)
    height, width = check_dataset(policy_dataset(dataset_dir), settings)
    device = resolve_device(settings["device"])
    numerics.apply(settings["numerics"], device, job_cpus=threads)
    policy = _policy(settings, device, sim)
    eps = calibrated_eps(early_stop_path) if run["clean_change"] else None
    if run["clean_change"] and eps is None:
        log.warning("early_stop.json calibrated no clean-change threshold: that rule is not rolled out")
    rules = rules_of(run, eps)
    tasks = list(demos["tasks"])
    episodes = episode_list(tasks, settings["episodes"])
    batches = batches_of(episodes, run["batch_size"])
    picked = shard_rows(shard, len(batches))
    first = sum(map(len, batches[:picked.start]))  # this shard's episodes, for the gather's check
    record = {"shard": shard, "rows": [first, first + sum(map(len, batches[picked.start:picked.stop]))]}
    batches = batches[picked.start:picked.stop]
    log.info("policy %d: %d rules x %d episodes of set %s in %d batches%s: %s", settings["policy"], len(rules),
             sum(map(len, batches)), settings["episodes"]["set"], len(batches), f" (shard {shard})" if shard else "",
             ", ".join(r.name for r in rules))
    # the env renders at the dataset's frame size; the policy resizes its frames as its training did
    make_env = lambda task, seed, index: sim.Env(task, seed, index, demos["camera"], height, width)
    start = time.perf_counter()
    arrays = run_rollouts(policy, rules, episodes, batches, demos["tasks"],
                          tasks, {**run, "probe_steps": settings["probe_steps"]}, make_env)
    log.info("rolled out in %.1f s", time.perf_counter() - start)
    for key in ROLLOUT_EPISODE_ARRAYS + ("seconds",):  # one policy: the policy axis P has length 1
        arrays[key] = arrays[key][None]
    checkpoint = settings["model"]["checkpoint"]
    arrays.update(policy=np.array([settings["policy"]], np.int64), policy_checkpoint=np.array([checkpoint]),
                  policy_digest=np.array([file_digest(Path(checkpoint) / "model.safetensors")]),
                  episode_set=np.asarray(settings["episodes"]["set"]))
    text, digest = config_digest({**settings, "shard": record} if shard else settings)
    arrays.update(preset=settings["model"]["preset"], device=str(device), config_json=text, config_digest=digest,
                  versions_json=json.dumps({**library_versions(), **sim.versions()}, sort_keys=True),
                  numerics_json=json.dumps(numerics.record(device), sort_keys=True),
                  total_episodes=np.int64(len(episodes)))
    arrays["arrays_digest"] = rollout_digest(arrays)
    save_npz(npz_path, arrays, ROLLOUT_ARRAYS)


def nearest_demo(settings: dict, dataset_dir, npz_path) -> None:
    """The nearest-demo baseline on one episode set (sim/nearest_demo.py), in the rollout's episode order."""
    import numpy as np

    from mimic_redundancy.core.io import NEAREST_ARRAYS, config_digest, save_npz
    from mimic_redundancy.sim.nearest_demo import demo_records, nearest_demo as baseline
    from mimic_redundancy.sim.rollout import episode_list

    demos = settings["demos"]
    sim = _check_simulator(demos)
    episodes = episode_list(list(demos["tasks"]), settings["episodes"])
    make_env = lambda task, seed, index: sim.Env(task, seed, index, demos["camera"], demos["height"], demos["width"])
    start = time.perf_counter()
    arrays = baseline(sim, demo_records(dataset_dir), episodes, settings["max_steps"], make_env, settings["subsets"])
    text, digest = config_digest(settings)
    arrays.update(episode_set=np.asarray(settings["episodes"]["set"]), config_json=text, config_digest=digest,
                  versions_json=json.dumps(sim.versions(), sort_keys=True))
    save_npz(npz_path, arrays, NEAREST_ARRAYS)
    log.info("nearest-demo baseline on %d episodes in %.1f s: %d successes", len(episodes),
             time.perf_counter() - start, int(arrays["success"].sum()))


def rollout_videos(settings: dict, npz_path, size: int, videos_dir, summary_path) -> None:
    """Replay, open loop in a fresh env, the first success and the first failure of every rule (each task; the first
    policy), as mp4
    at size x size; a replay that does not give the recorded outcome stops the stage (the rollout is not
    reproducible)."""
    import shutil

    import numpy as np

    from mimic_redundancy.core.io import input_error, load_rollout, write_json
    from mimic_redundancy.sim.demos import VIEWING_CODEC, write_video
    from mimic_redundancy.sim.rollout import replay

    run = load_rollout(npz_path)
    for key in ("success", "steps_to_success", "actions"):  # the first policy's episodes
        run[key] = run[key][0]
    demos = settings["demos"]
    sim = _check_simulator(demos)
    make_env = lambda task, seed, index: sim.Env(task, seed, index, demos["camera"], size, size)
    videos = Path(videos_dir)
    tmp = videos.with_name(f".{videos.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shown = []
    for r, rule in enumerate(run["rule"]):
        for task in dict.fromkeys(run["task"].tolist()):
            for outcome in (True, False):
                mine = np.flatnonzero((run["task"] == task) & (run["success"][r] == outcome))
                if not mine.size:
                    continue
                e = int(mine[0])
                success, first, frames = replay(make_env, task, int(run["layout_seed"][e]), int(run["layout_index"][e]),
                                                run["actions"][r, e], frames=True)
                if success != bool(run["success"][r, e]) or first != int(run["steps_to_success"][r, e]):
                    raise input_error(npz_path, f"replaying episode {e} ({task}, layout {run['layout_index'][e]}) of "
                                                f"rule {rule} gave success {success} at step {first}, but the rollout "
                                                f"recorded {bool(run['success'][r, e])} at {run['steps_to_success'][r, e]}")
                name = f"{task}_{str(rule).replace(' ', '_').replace('<', 'lt').replace('@', 'at')}_{'success' if outcome else 'failure'}.mp4"
                write_video(tmp / name, frames, demos["fps"] // 4 or 1, VIEWING_CODEC)
                shown.append({"rule": str(rule), "task": task, "episode": e, "success": outcome,
                              "layout_seed": int(run["layout_seed"][e]), "layout_index": int(run["layout_index"][e]),
                              "steps": len(frames) - 1, "video": name, "replayed_outcome_matches": True})
    shutil.rmtree(videos, ignore_errors=True)
    tmp.rename(videos)
    write_json(summary_path, {"videos": shown, "size": size, "n_videos": len(shown),
                              "note": "each video is the episode's recorded actions replayed open loop in a fresh env "
                                      "with its layout; the replay gave the recorded outcome"})
    log.info("%d videos, every replay matched its recorded outcome", len(shown))
