"""What every simulator backend shares (Meta-World, LIBERO): the error type, the observation and episode records the
rollout loop and the demo writer read, and the headless-rendering check.

Kept free of simulator imports (numpy and the standard library only; mujoco is imported inside check_rendering),
so that config validation and the demo/rollout code can use these without loading a simulator, and so that a
backend's module can set MUJOCO_GL before anything imports mujoco.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


class SimError(ValueError):
    """A simulator setting the pipeline cannot use; the message names the config key and what is allowed."""


SETS = ("demos", "dev", "test")  # the closed loop's episode sets per task (config `sets`), disjoint


def set_layouts(spec: dict) -> list[tuple[int, int]]:
    """The (layout_seed, layout_index) of an episode set (config `sets.<name>`), seed-major: layouts first ..
    first+layouts-1 of each seed in layout_seeds."""
    return [(seed, spec.get("first", 0) + i) for seed in spec["layout_seeds"] for i in range(spec["layouts"])]


STEPS_AFTER_SUCCESS = 10  # a demonstration goes on this many steps after the first success, then stops

RENDERING_FIX = ("install Mesa's EGL (apt-get install -y libegl1) and set MUJOCO_GL=egl, or OSMesa (apt-get install "
                 "-y libosmesa6) and set MUJOCO_GL=osmesa")


@dataclass
class Observation:
    image: np.ndarray | None       # (H, W, 3) uint8, right side up (None: not rendered)
    state: np.ndarray              # (state_dim,) float32: the robot's proprioception (the backend says which)
    environment_state: np.ndarray  # the simulator's privileged state vector (the backend says which)


@dataclass
class EpisodeRecord:
    """One expert episode: row t is observation t and the action taken from it (T rows)."""
    task: str
    layout_seed: int
    layout_index: int
    frames: np.ndarray              # (T, H, W, 3) uint8
    states: np.ndarray              # (T, state_dim) float32
    environment_states: np.ndarray  # (T, environment_state_dim) float32
    actions: np.ndarray             # (T, action_dim) float32, as executed (clipped to [-1, 1])
    success: bool
    steps_to_success: int           # actions taken until the first success, or -1
    sim_seconds: float
    render_seconds: float


def check_rendering() -> None:
    """Render one tiny frame with the MUJOCO_GL backend; raise SimError with the fix when it cannot."""
    import mujoco

    backend = os.environ.get("MUJOCO_GL", "egl")
    # mujoco picks its GL backend once, at its first import: set MUJOCO_GL before anything imports it
    chosen = getattr(mujoco, "GLContext", None)
    chosen = chosen.__module__.rsplit(".", 1)[-1] if chosen is not None else "none"
    if chosen != backend:
        raise SimError(f"MUJOCO_GL={backend}, but mujoco was imported earlier with the {chosen!r} backend (MUJOCO_GL "
                       "unset or different then, e.g. by importing a simulator package before the backend module): "
                       "import mimic_redundancy.sim.metaworld_env or mimic_redundancy.sim.libero_env first (they set "
                       "MUJOCO_GL=egl), or export MUJOCO_GL=egl before Python starts")
    try:
        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>")
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        with mujoco.Renderer(model, 8, 8) as renderer:
            renderer.update_scene(data)
            renderer.render()
    except Exception as error:
        raise SimError(f"MUJOCO_GL={backend}: cannot render headless ({type(error).__name__}: {error}); "
                       f"{RENDERING_FIX}") from None


def record_episode(env, task: str, layout_seed: int, layout_index: int, make_policy, max_steps: int,
                   noise: float | None = None, noise_dims: int | None = None) -> EpisodeRecord:
    """A scripted expert's episode in `env` (a backend's Env), closed at the end: resets it, builds the policy
    (make_policy(env), after the reset: an observation -> action callable), then records observation t and acts;
    stops STEPS_AFTER_SUCCESS steps after the first success or after max_steps actions, so T = min(max_steps,
    steps_to_success + STEPS_AFTER_SUCCESS). `noise`: std of Gaussian noise added to the first `noise_dims` dims
    of each action (default: all) before clipping to [-1, 1], drawn from a generator seeded by the layout, so noisy
    episodes repeat too."""
    if max_steps < 1:
        raise SimError(f"max_steps must be at least 1, got {max_steps}")
    rng = np.random.default_rng([layout_seed, layout_index])
    frames, states, env_states, actions, first = [], [], [], [], -1
    try:
        obs = env.reset()
        policy = make_policy(env)
        for t in range(max_steps):
            action = np.array(policy(obs), dtype=np.float32)
            if noise:
                dims = action.size if noise_dims is None else noise_dims
                action[:dims] += rng.normal(0.0, noise, dims).astype(np.float32)
            action = np.clip(action, -1.0, 1.0)
            frames.append(obs.image), states.append(obs.state)
            env_states.append(np.asarray(obs.environment_state, dtype=np.float32)), actions.append(action)
            obs, success = env.step(action)
            if success and first < 0:
                first = t + 1
            if first >= 0 and t + 1 >= first + STEPS_AFTER_SUCCESS:
                break
    finally:
        env.close()
    return EpisodeRecord(task, layout_seed, layout_index, np.stack(frames), np.stack(states), np.stack(env_states),
                         np.stack(actions), first >= 0, first, env.sim_seconds, env.render_seconds)
