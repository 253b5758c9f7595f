"""The nearest-demo baseline: for every episode of a rollout set, the demonstration whose layout is nearest (the
Euclidean distance of the simulator's layout vectors in metres, `layout_vectors`: Meta-World's object and goal
positions, LIBERO's free bodies), that distance, and that demonstration's recorded actions replayed open loop in the
episode's layout, under the rollout's step limit. A policy that does no better than this replay has memorised its
demonstrations rather than generalised from them (docs/closed-loop.md#the-nearest-demo-baseline).

The same with only the first k demonstrations of each task (`subsets`) measures what fewer demonstrations would
change: the distances grow, and a replay that still succeeds says the layouts are too close to test generalisation.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def demo_records(dataset_dir) -> list[dict]:
    """Every demonstration of a demos dataset (sim/demos.py, LeRobot v3.0), in episode order: task, layout_seed,
    layout_index and the actions executed (T, A) float32."""
    import pyarrow.parquet as pq

    from mimic_redundancy.sim.demos import DATA_PATH

    root = Path(dataset_dir)
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    actions = np.stack(pq.read_table(root / DATA_PATH.format(chunk_index=0, file_index=0),
                                     columns=["action"]).column("action").to_pylist()).astype(np.float32)
    task_key = next(k for k in episodes[0] if k.endswith("_task"))  # metaworld_task / libero_task
    return [{"task": e[task_key], "layout_seed": int(e["layout_seed"]), "layout_index": int(e["layout_index"]),
             "actions": actions[e["dataset_from_index"]:e["dataset_to_index"]]} for e in episodes]


def replay_in(env, actions: np.ndarray) -> tuple[bool, int]:
    """Reset `env` (a backend's Env: reset returns it to its layout bit for bit) and execute `actions` open loop,
    rendering nothing: (success, steps to the first success or -1)."""
    env.reset()
    for t, action in enumerate(actions):
        _, success = env.step(action, render=False)
        if success:
            return True, t + 1
    return False, -1


def nearest_demo(sim, demos: list[dict], episodes: list[tuple[str, int, int]], max_steps: int, make_env,
                 subsets: list[int]) -> dict:
    """The baseline's arrays (io.NEAREST_ARRAYS, without the run metadata) for `episodes` ((task, seed, index)),
    replaying in make_env(task, seed, index). subsets: k's of 'the first k demonstrations of each task'."""
    tasks = list(dict.fromkeys(e[0] for e in episodes))
    sizes = sorted(set(subsets))
    distance, nearest_episode, success, first = [], [], [], []
    subset_distance = np.zeros((len(sizes), len(episodes)))
    subset_success = np.zeros((len(sizes), len(episodes)), bool)
    row = 0
    for task in tasks:
        mine = [i for i, d in enumerate(demos) if d["task"] == task]
        if not mine:
            raise ValueError(f"the demonstrations hold no episode of task {task!r}: rerun the demos rule")
        demo_vectors = sim.layout_vectors(task, [(demos[i]["layout_seed"], demos[i]["layout_index"]) for i in mine])
        here = [e for e in episodes if e[0] == task]
        vectors = sim.layout_vectors(task, [(seed, index) for _, seed, index in here])
        distances = np.linalg.norm(vectors[:, None] - demo_vectors[None], axis=-1)  # (episodes, demos)
        for e, (_, seed, index) in enumerate(here):
            picks = [int(distances[e].argmin())] + [int(distances[e, :min(k, len(mine))].argmin()) for k in sizes]
            env = make_env(task, seed, index)  # one env per episode, reset for each demonstration replayed in it
            try:
                outcomes = {d: replay_in(env, demos[mine[d]]["actions"][:max_steps]) for d in dict.fromkeys(picks)}
            finally:
                env.close()
            distance.append(distances[e, picks[0]])
            nearest_episode.append(mine[picks[0]])
            success.append(outcomes[picks[0]][0])
            first.append(outcomes[picks[0]][1])
            for k, d in enumerate(picks[1:]):
                subset_distance[k, row + e], subset_success[k, row + e] = distances[e, d], outcomes[d][0]
        log.info("%s: nearest demo a median %.1f mm away; its replay succeeds in %d of %d episodes", task,
                 1000 * float(np.median(distances.min(axis=1))), sum(success[row:]), len(here))
        row += len(here)
    return {"task": np.array([e[0] for e in episodes]), "layout_seed": np.array([e[1] for e in episodes], np.int64),
            "layout_index": np.array([e[2] for e in episodes], np.int64), "distance": np.array(distance, np.float64),
            "nearest_episode": np.array(nearest_episode, np.int64), "success": np.array(success, bool),
            "steps_to_success": np.array(first, np.int64), "subset_sizes": np.array(sizes, np.int64),
            "subset_distance": subset_distance, "subset_success": subset_success, "max_steps": np.int64(max_steps)}
