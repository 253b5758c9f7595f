"""The closed loop's pipeline stages (scripts/demos.py, rollout.py, rollout_metrics.py, rollout_videos.py call
these with Snakemake's values): demonstrations, rollouts, their answers, and replayed videos."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger("mimic_redundancy")


def _check_simulator(demos: dict) -> None:
    """Tasks, camera and rendering, before any episode: each error names the key and what is allowed."""
    from .metaworld_env import check_camera, check_rendering, check_task

    for task in demos["tasks"]:
        check_task(task)
    check_camera(demos["camera"])
    check_rendering()


def demos(settings: dict, dataset_dir, summary_path) -> None:
    """The scripted expert of every task on layouts 0 .. demos-1, written as a LeRobot v3.0 dataset."""
    from ..io import write_json
    from .demos import write_demos

    _check_simulator(settings)
    summary = write_demos(Path(dataset_dir), settings["tasks"], settings["demos"], settings["layout_seed"],
                          settings["camera"], settings["height"], settings["width"], settings["fps"],
                          settings["max_steps"])
    for task, counts in summary["tasks"].items():
        log.info("%s: %d demonstrations kept, %d dropped (the expert failed)", task, counts["kept"], counts["dropped"])
    write_json(summary_path, {**summary, "settings": settings, "dataset": str(dataset_dir)})


def check_dataset(dataset_dir, settings: dict) -> None:
    """The demonstrations the policy learned from must show what the env will show it: the same fps, camera and
    image size; else stop, naming both."""
    from ..lerobot import read_layout
    from ..readers import DataError
    from .demos import camera_key

    info_path = Path(dataset_dir) / "meta/info.json"
    layout = read_layout(Path(dataset_dir))
    demos, inputs = settings["demos"], settings["inputs"]
    key = camera_key(demos["camera"])
    feature = layout.features.get(key)
    if feature is None:
        raise DataError(f"{info_path}: no camera {key!r} (config key 'sim.camera' is {demos['camera']!r}); its "
                        f"cameras: {layout.cameras()}; rerun the demos rule with the camera the policy sees")
    shape = list(feature.get("shape", []))[:2]
    if shape != [inputs["height"], inputs["width"]] or layout.info.get("fps") != demos["fps"]:
        raise DataError(f"{info_path}: the demonstrations are {shape[0]}x{shape[1]} px at {layout.info.get('fps')} fps, "
                        f"but the policy is fed {inputs['height']}x{inputs['width']} px (inputs.height, inputs.width) at "
                        f"{demos['fps']} fps (sim.fps); rerun the demos rule and train with the same settings")


def _policy(settings: dict, device):
    """The trained head and the backbone it was trained on, checked against the simulator's dimensions."""
    from ..model import DimensionError, build_backbone, build_head, net_dims, resolve_dims
    from .metaworld_env import ACTION_DIM, ENV_STATE_DIM, STATE_DIM
    from .policy import STATE_KEYS, Policy

    inputs = settings["inputs"]
    if inputs["state_key"] not in STATE_KEYS:
        raise DimensionError(f"config key 'inputs.state_key': {inputs['state_key']!r} is no state the simulator gives; "
                             f"allowed: {', '.join(STATE_KEYS)}")
    wrapper = build_backbone(settings["backbone"], device)
    net = build_head(settings["model"], device, resolve_dims(settings["model"], {}), wrapper.dim_latent)
    dims = net_dims(net)
    state = {"observation.environment_state": ENV_STATE_DIM, "observation.state": STATE_DIM}[inputs["state_key"]]
    where = settings["model"].get("checkpoint", f"preset {settings['model']['preset']}")
    if dims["action_dim"] != ACTION_DIM or dims["joint_dim"] != state:
        raise DimensionError(f"{where}: the policy acts in {dims['action_dim']} dimensions from a {dims['joint_dim']}-dim "
                             f"state, but Meta-World's actions have {ACTION_DIM} and its {inputs['state_key']} "
                             f"(inputs.state_key) {state}; train the checkpoint on these demonstrations")
    return Policy(net, wrapper, device, inputs)


def calibrated_eps(early_stop_path) -> float | None:
    """The clean-change threshold early_stop.json calibrated on the demo windows (None: none reached the target)."""
    return json.loads(Path(early_stop_path).read_text())["calibrated"]["clean_change"]["param"]


def rollout(settings: dict, dataset_dir, early_stop_path, npz_path, threads: int = 1, shard: str | None = None) -> None:
    """Every rule on this job's share of the episodes (whole batches), in closed loop."""
    import numpy as np

    from .. import numerics
    from ..config import shard_rows
    from ..io import ROLLOUT_ARRAYS, config_digest, save_npz
    from ..model import library_versions, resolve_device
    from .metaworld_env import MetaWorldEnv, versions
    from .policy import rules_of
    from .rollout import batches_of, episode_list, run_rollouts

    run, demos = settings["rollout"], settings["demos"]
    _check_simulator(demos)
    check_dataset(dataset_dir, settings)
    device = resolve_device(settings["device"])
    numerics.apply(settings["numerics"], device, job_cpus=threads)
    policy = _policy(settings, device)
    eps = calibrated_eps(early_stop_path) if run["clean_change"] else None
    if run["clean_change"] and eps is None:
        log.warning("early_stop.json calibrated no clean-change threshold: that rule is not rolled out")
    rules = rules_of(run, eps)
    tasks = list(demos["tasks"])
    episodes = episode_list(tasks, run["episodes"], run["layout_seed"])
    batches = batches_of(episodes, run["batch_size"])
    picked = shard_rows(shard, len(batches))
    first = sum(map(len, batches[:picked.start]))  # this shard's episodes, for the gather's check
    record = {"shard": shard, "rows": [first, first + sum(map(len, batches[picked.start:picked.stop]))]}
    batches = batches[picked.start:picked.stop]
    log.info("%d rules x %d episodes in %d batches%s: %s", len(rules), sum(map(len, batches)), len(batches),
             f" (shard {shard})" if shard else "", ", ".join(r.name for r in rules))
    inputs = settings["inputs"]
    make_env = lambda task, seed, index: MetaWorldEnv(task, seed, index, demos["camera"], inputs["height"],
                                                      inputs["width"])
    start = time.perf_counter()
    arrays = run_rollouts(policy, rules, episodes, batches, demos["tasks"],
                          tasks, {**run, "probe_steps": settings["probe_steps"]}, make_env)
    log.info("rolled out in %.1f s", time.perf_counter() - start)
    text, digest = config_digest({**settings, "shard": record} if shard else settings)
    arrays.update(preset=settings["model"]["preset"], device=str(device), config_json=text, config_digest=digest,
                  versions_json=json.dumps({**library_versions(), **versions()}, sort_keys=True),
                  numerics_json=json.dumps(numerics.record(device), sort_keys=True),
                  total_episodes=np.int64(len(episodes)))
    save_npz(npz_path, arrays, ROLLOUT_ARRAYS)


def rollout_videos(settings: dict, npz_path, size: int, videos_dir, summary_path) -> None:
    """Replay, open loop in a fresh env, the first success and the first failure of every rule (each task), as mp4
    at size x size; a replay that does not give the recorded outcome stops the stage (the rollout is not
    reproducible)."""
    import shutil

    import numpy as np

    from ..io import ROLLOUT_ARRAYS, atomic_path, input_error, load_npz, write_json
    from .demos import VIEWING_CODEC, write_video
    from .metaworld_env import MetaWorldEnv
    from .rollout import replay

    run = load_npz(npz_path, ROLLOUT_ARRAYS)
    demos = settings["demos"]
    _check_simulator(demos)
    make_env = lambda task, seed, index: MetaWorldEnv(task, seed, index, demos["camera"], size, size)
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
