"""Closed-loop rollouts: the trained policy acts in the simulator (Meta-World or LIBERO: sim/backends.py), receding
horizon, under every sampling rule.

Per decision (at steps 0, execute_steps, 2 x execute_steps, ...) the policy sees the frames up to now, the state and
the prompt, samples an action chunk under the rule, and executes its first `execute_steps` actions; an episode ends
at its first success or after `max_steps` env steps.

Paired episodes: every rule sees the same episodes (task, layout_seed, layout_index), and at decision d of an
episode the same initial action noise x_0 (drawn from (seed, task, layout, d)) and the same backbone noise, so two
rules differ only by how they sample. The episodes of a job step together, in batches of `batch_size` of one task;
a batch is the unit of sharding (a sample's last bits depend on its batch), so sharded rollouts equal unsharded ones
bit for bit. Costs of a batched call (backbone, head) are split evenly over the episodes in it.
"""
from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch

from mimic_redundancy.sim.policy import Rule

log = logging.getLogger(__name__)
COSTS = ("sim", "render", "backbone", "head")  # the wall-time split of every episode, seconds


def episode_list(tasks: list[str], episode_set: dict) -> list[tuple[str, int, int]]:
    """Every (task, layout_seed, layout_index) rolled out, task-major: the episode set's layouts (sim.common.set_layouts:
    config `sets.<name>`) of each task."""
    from mimic_redundancy.sim.common import set_layouts

    return [(task, seed, index) for task in tasks for seed, index in set_layouts(episode_set)]


def batches_of(episodes: list[tuple[str, int, int]], batch_size: int) -> list[list[int]]:
    """Indices of `episodes` in batches of at most batch_size, never mixing tasks."""
    out = []
    for task in dict.fromkeys(e[0] for e in episodes):
        mine = [i for i, e in enumerate(episodes) if e[0] == task]
        out += [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    return out


@contextlib.contextmanager
def opened(make_env, episodes: list[tuple[str, int, int]]):
    """One env per episode (make_env(task, layout_seed, layout_index)), closed on the way out. run_batch resets
    them, so one batch's envs serve every rule: building an env and its GL context (~0.5 s) is paid once per
    episode, not once per episode and rule."""
    envs = []
    try:
        for episode in episodes:
            envs.append(make_env(*episode))
        yield envs
    finally:
        for env in envs:
            env.close()


def run_batch(policy, rule: Rule, envs: list, episodes: list[tuple[str, int, int]], task_index: int, prompt: str,
              settings: dict) -> list[dict]:
    """Roll out one batch of episodes of one task under `rule`, in `envs` (one per episode, built for its layout:
    `opened`), each reset first; one result dict per episode."""
    execute, max_steps, chunk_len = settings["execute_steps"], settings["max_steps"], policy.dims["chunk_len"]
    if execute > chunk_len:
        raise ValueError(f"config key 'rollout.execute_steps': {execute} exceeds the policy's action chunk "
                         f"({chunk_len}); allowed: 1 to {chunk_len}")
    costs = np.zeros((len(envs), len(COSTS)))
    results = [{"success": False, "steps_to_success": -1, "steps": 0, "nfe": [], "actions": []} for _ in envs]
    observations = [env.reset() for env in envs]
    histories = [{0: o.image} for o in observations]
    live, t, decision = list(range(len(envs))), 0, 0
    while live and t < max_steps:
        chunk, nfe, backbone, head = policy.act(rule, [observations[i] for i in live],
                                                [histories[i] for i in live], t, prompt,
                                                [(task_index, episodes[i][2], decision) for i in live],
                                                settings)
        for row, i in enumerate(live):
            costs[i, 2] += backbone / len(live)
            costs[i, 3] += head / len(live)
            results[i]["nfe"].append(int(nfe[row]))
        for j in range(execute):
            render = policy.needs_frame(t + 1, execute)
            for row, i in enumerate(live):
                if results[i]["success"]:
                    continue
                sim, rendered = envs[i].sim_seconds, envs[i].render_seconds
                observations[i], success = envs[i].step(chunk[row, j], render=render)
                results[i]["actions"].append(np.clip(chunk[row, j], -1.0, 1.0))
                results[i]["steps"] = t + 1
                if render:
                    histories[i][t + 1] = observations[i].image
                costs[i, 0] += envs[i].sim_seconds - sim
                costs[i, 1] += envs[i].render_seconds - rendered
                if success:
                    results[i].update(success=True, steps_to_success=t + 1)
            t += 1
            if t >= max_steps or all(results[i]["success"] for i in live):
                break
        live = [i for i in live if not results[i]["success"]]
        decision += 1
    for result, cost in zip(results, costs):
        result["seconds"] = cost
    return results


def rollout_arrays(results: dict, rules: list[Rule], episodes: list[tuple[str, int, int]], prompts: dict,
                   settings: dict, action_dim: int) -> dict:
    """The rollout NPZ's arrays (io.ROLLOUT_ARRAYS) from results[(rule index, episode index)]."""
    n_rules, n_eps = len(rules), len(episodes)
    decisions = -(-settings["max_steps"] // settings["execute_steps"])  # fixed: shards concatenate along S
    out = {"success": np.zeros((n_rules, n_eps), bool), "steps_to_success": np.full((n_rules, n_eps), -1, np.int64),
           "steps": np.zeros((n_rules, n_eps), np.int64), "nfe": np.full((n_rules, n_eps, decisions), -1, np.int64),
           "actions": np.full((n_rules, n_eps, settings["max_steps"], action_dim), np.nan, np.float32),
           "seconds": np.zeros((n_rules, n_eps, len(COSTS)), np.float64)}
    for (r, e), result in results.items():
        out["success"][r, e] = result["success"]
        out["steps_to_success"][r, e] = result["steps_to_success"]
        out["steps"][r, e] = result["steps"]
        out["nfe"][r, e, :len(result["nfe"])] = result["nfe"]
        if result["actions"]:
            out["actions"][r, e, :len(result["actions"])] = np.stack(result["actions"])
        out["seconds"][r, e] = result["seconds"]
    out.update(task=np.array([e[0] for e in episodes]), layout_seed=np.array([e[1] for e in episodes], np.int64),
               layout_index=np.array([e[2] for e in episodes], np.int64),
               prompt=np.array([prompts[e[0]] for e in episodes]),
               rule=np.array([r.name for r in rules]), rule_kind=np.array([r.kind for r in rules]),
               rule_param=np.array([r.param for r in rules], np.float64), costs=np.array(COSTS),
               max_steps=np.int64(settings["max_steps"]), execute_steps=np.int64(settings["execute_steps"]))
    return out


def run_rollouts(policy, rules: list[Rule], episodes: list[tuple[str, int, int]], batches: list[list[int]],
                 prompts: dict, tasks: list[str], settings: dict, make_env) -> dict:
    """Every rule on every batch (a job's share of the episodes); the rollout NPZ's arrays over those episodes."""
    results, offset = {}, 0
    for b, batch in enumerate(batches):
        mine = [episodes[i] for i in batch]
        task = mine[0][0]
        with opened(make_env, mine) as envs:
            for r, rule in enumerate(rules):
                start = time.perf_counter()
                done = run_batch(policy, rule, envs, mine, tasks.index(task), prompts[task], settings)
                results.update({(r, offset + k): result for k, result in enumerate(done)})
                log.info("batch %d/%d (%s, %d episodes), %s: %d/%d successes in %.1f s", b + 1, len(batches), task,
                         len(batch), rule.name, sum(d["success"] for d in done), len(done),
                         time.perf_counter() - start)
        offset += len(batch)
    flat = [episodes[i] for batch in batches for i in batch]
    return rollout_arrays(results, rules, flat, prompts, settings, policy.dims["action_dim"])


def replay(make_env, task: str, layout_seed: int, layout_index: int, actions: np.ndarray, frames: bool = False):
    """Execute recorded actions (T, A; NaN rows: not executed) open loop in a fresh env with that layout:
    (success, steps to success or -1, the frames if asked)."""
    env = make_env(task, layout_seed, layout_index)
    shown, first = [], -1
    try:
        observation = env.reset()
        shown.append(observation.image)
        for t, action in enumerate(a for a in actions if np.isfinite(a).all()):
            observation, success = env.step(action, render=frames)
            if frames:
                shown.append(observation.image)
            if success:
                first = t + 1
                break
    finally:
        env.close()
    return first >= 0, first, (np.stack(shown) if frames else None)
