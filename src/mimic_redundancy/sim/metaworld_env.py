"""Meta-World (v3 tasks on MuJoCo, rendered headless on the CPU): one task layout as an env that returns camera
frames, joint states and Meta-World's observation vector, and its scripted expert recording demonstrations.

A layout is (task, layout_seed, layout_index): `metaworld.MT1(task, seed=layout_seed)` fixes 50 object/goal
placements (`train_tasks`); `layout_index` picks one. The same layout gives identical frames and states in any
process (a raw env's reset(seed=) is ignored by Meta-World; the layout alone decides).
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first mujoco import: headless via Mesa's EGL

import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402


from mimic_redundancy.sim.common import (RENDERING_FIX, STEPS_AFTER_SUCCESS, EpisodeRecord,  # noqa: E402, F401
                                         Observation, SimError, check_rendering, record_episode)
try:  # metaworld imports mujoco, which loads the GL backend MUJOCO_GL names, right now
    import metaworld  # noqa: E402
except ModuleNotFoundError as error:
    raise ModuleNotFoundError(f"{error}: the closed loop needs the simulator; install it with "
                              "pip install -e '.[metaworld]' (make sim installs both simulators)") from None
except (ImportError, RuntimeError, AttributeError) as error:
    raise SimError(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}: cannot render headless ({type(error).__name__}: "
                   f"{error}); {RENDERING_FIX}") from None

TASK_NAMES = tuple(metaworld.MT1.ENV_NAMES)  # the 50 v3 tasks, e.g. 'button-press-topdown-v3'
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
LAYOUTS = 50             # train_tasks per MT1 benchmark (metaworld's _N_GOALS)
STATE_DIM = 9            # qpos[:9]: 7 arm joints + 2 finger joints, radians / metres
ENV_STATE_DIM = 39       # Meta-World's observation: hand, gripper, object poses (x2: now and previous), goal
ACTION_DIM = 4           # xyz end-effector delta (x 1/100 m) + gripper effort, each in [-1, 1]
MAX_PATH_LENGTH = 1_000_000  # Meta-World raises after 500 steps; callers bound their episodes themselves

# the renderer's settings, applied to every env (demos and rollouts alike) and recorded in every dataset:
# shadows and reflections off (~0.2 -> ~0.03 s per 128x128 frame), no offscreen multisampling (17 -> 6.5 ms per
# 32x32 frame on llvmpipe); attribute paths of mujoco.MjModel
RENDERING = {"light_castshadow": 0, "mat_reflectance": 0.0, "vis.quality.offsamples": 0}

# the scripted policies warn on every new process that their gains exceed [-1, 1]; the env clips, as intended
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)


def check_task(task: str) -> None:
    if task not in TASK_NAMES:
        raise SimError(f"config key 'sim.tasks': unknown Meta-World task {task!r}; known tasks: "
                       f"{', '.join(TASK_NAMES)}")


def check_camera(camera: str) -> None:
    if camera not in CAMERAS:
        raise SimError(f"config key 'sim.camera': unknown camera {camera!r}; Meta-World's cameras: "
                       f"{', '.join(CAMERAS)}")


def check_layout(layout_index: int) -> None:
    if not 0 <= layout_index < LAYOUTS:
        raise SimError(f"layout {layout_index} does not exist: MT1 has {LAYOUTS} layouts per task and seed "
                       f"(0-{LAYOUTS - 1})")


def versions() -> dict[str, str]:
    """The simulator's package versions (recorded in every dataset and rollout)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("metaworld", "mujoco", "gymnasium")}


class _SharedRenderer:
    """One offscreen GL context per (task, camera, size) in a process, for every env of that task. The context holds
    the task's meshes and textures, the same in every layout; each frame's scene comes from its own env's model and
    data (mjv_updateScene), so the frames equal each env's own renderer's bit for bit (tested), while a GL context
    (~0.45 s to build on llvmpipe, ~150 MB) is built once per task instead of once per env."""

    def __init__(self, model, camera: str, height: int, width: int):
        import mujoco

        self.mujoco = mujoco
        self.renderer = mujoco.Renderer(model, height, width)
        self.option = mujoco.MjvOption()
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.camera.fixedcamid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)

    def render(self, model, data) -> np.ndarray:
        mujoco = self.mujoco
        mujoco.mjv_updateScene(model, data, self.option, None, self.camera, mujoco.mjtCatBit.mjCAT_ALL,
                               self.renderer.scene)
        return self.renderer.render()


_RENDERERS: dict[tuple, _SharedRenderer] = {}


def _renderer(task: str, camera: str, height: int, width: int, model) -> _SharedRenderer:
    key = (task, camera, height, width)
    if key not in _RENDERERS:
        first = not _RENDERERS
        _RENDERERS[key] = _SharedRenderer(model, camera, height, width)
        if first:  # after the context: mujoco.egl's own exit hook (terminating the display) must run after ours
            atexit.register(close_renderers)
    return _RENDERERS[key]


def close_renderers() -> None:
    """Free the shared GL contexts (at exit, or EGL prints a traceback while the interpreter shuts down)."""
    while _RENDERERS:
        _RENDERERS.popitem()[1].renderer.close()


# Each task's scene XML compiled once per process (~0.18 s a compile, the whole cost of building an env): every env
# gets a copy of that model (mj_copyModel: the bytes a compile gives), so a rollout job's 20 envs of a task cost one
# compile. COMPILE_ONCE = False: gymnasium's own compile for every env (the tests compare the two).
COMPILE_ONCE = True
_MODELS: dict[str, object] = {}  # XML path -> its compiled mujoco.MjModel (only ever copied)


def _initialize_simulation(self):
    """gymnasium's MujocoEnv._initialize_simulation (1.x), the compile replaced by a copy of the path's first one."""
    import mujoco

    if self.fullpath not in _MODELS:
        _MODELS[self.fullpath] = mujoco.MjModel.from_xml_path(self.fullpath)
    model = copy.copy(_MODELS[self.fullpath])
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
    model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
    return model, mujoco.MjData(model)


@contextlib.contextmanager
def _compiling_once():
    """Inside: gymnasium builds Meta-World's envs on copies of a compile per XML (COMPILE_ONCE)."""
    from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

    if not COMPILE_ONCE:
        yield
        return
    original = MujocoEnv.__dict__["_initialize_simulation"]
    MujocoEnv._initialize_simulation = _initialize_simulation
    try:
        yield
    finally:
        MujocoEnv._initialize_simulation = original


@functools.lru_cache(maxsize=8)
def benchmark(task: str, layout_seed: int) -> metaworld.MT1:
    """MT1(task, seed): ~0.7 s (it resets an env 50 times), so built once per task and seed."""
    check_task(task)
    return metaworld.MT1(task, seed=layout_seed)


def _set(model, path: str, value) -> None:
    *parents, name = path.split(".")
    for parent in parents:
        model = getattr(model, parent)
    if isinstance(getattr(model, name), np.ndarray):
        getattr(model, name)[:] = value
    else:
        setattr(model, name, value)


class MetaWorldEnv:
    """One layout of one task, rendering `camera` at height x width. Counts seconds spent in physics
    (`sim_seconds`) and in rendering (`render_seconds`) since construction."""

    def __init__(self, task: str, layout_seed: int, layout_index: int, camera: str = "corner", height: int = 32,
                 width: int = 32):
        check_task(task)
        check_camera(camera)
        check_layout(layout_index)
        mt1 = benchmark(task, layout_seed)
        # one env per episode; reset() returns it to its layout bit for bit (physics, warm start and frames: tested),
        # so a rollout job reuses it for every rule
        with _compiling_once():
            self.env = mt1.train_classes[task](render_mode="rgb_array", camera_name=camera, width=width,
                                               height=height)
        self.env.set_task(mt1.train_tasks[layout_index])
        for path, value in RENDERING.items():
            _set(self.env.model, path, value)
        self.env.max_path_length = MAX_PATH_LENGTH
        self.key = (task, camera, height, width)
        self.sim_seconds = self.render_seconds = 0.0
        self._reset_frame = (None, None)  # (the state after reset, its frame): every reset gives the same state

    def _observation(self, obs: np.ndarray, render: bool = True) -> Observation:
        return Observation(self.render() if render else None, self.env.data.qpos[:STATE_DIM].astype(np.float32),
                           np.asarray(obs, dtype=np.float32))

    def reset(self) -> Observation:
        """The layout's first observation, rendered. A reset returns the env to the same state bit for bit (tested),
        so its frame is rendered once and handed out again while everything the frame is drawn from (the poses and
        colours of the bodies, geoms, sites, lights and cameras) is what it was drawn from: a rollout job resets each
        env once per rule."""
        start = time.perf_counter()
        obs, _ = self.env.reset()
        self.sim_seconds += time.perf_counter() - start
        data, model = self.env.data, self.env.model
        state = b"".join(a.tobytes() for a in (
            data.xpos, data.xquat, data.geom_xpos, data.geom_xmat, data.site_xpos, data.site_xmat, data.light_xpos,
            data.light_xdir, data.cam_xpos, data.cam_xmat, model.geom_rgba, model.site_rgba, model.geom_size,
            model.site_size, data.qpos))
        if self._reset_frame[0] != state:
            self._reset_frame = (state, self.render())
        return Observation(self._reset_frame[1].copy(), data.qpos[:STATE_DIM].astype(np.float32),
                           np.asarray(obs, dtype=np.float32))

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool]:
        """Apply `action` (4,), clipped to [-1, 1]; the next observation (its image None unless `render`: a
        closed loop renders only the frames its policy will see) and whether the task is solved now."""
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        start = time.perf_counter()
        obs, _, _, _, info = self.env.step(action)
        self.sim_seconds += time.perf_counter() - start
        return self._observation(obs, render), bool(info["success"])

    def render(self) -> np.ndarray:
        """The camera's frame, (H, W, 3) uint8; MuJoCo's rows come bottom-up, so they are reversed."""
        start = time.perf_counter()
        shared = _renderer(*self.key, self.env.model)
        image = np.ascontiguousarray(shared.render(self.env.model, self.env.data)[::-1])
        self.render_seconds += time.perf_counter() - start
        return image

    def close(self) -> None:
        """Free the env's own viewer, were one made (env.render()); the shared GL contexts stay (close_renderers).
        gymnasium's viewer frees its GL context on close but leaves its MjrContext to the garbage collector, which
        then deletes textures, buffers and meshes by their GL names in whatever context is current: a shared
        renderer's, whose names are the same (its later frames came out blank or noise). Freed in its own context."""
        for viewer in list(getattr(getattr(self.env, "mujoco_renderer", None), "_viewers", {}).values()):
            viewer.make_context_current()
            viewer.con.free()
        self.env.close()


def expert(task: str):
    """Meta-World's scripted policy for `task`: a callable obs (39,) -> action (4,) float32."""
    from metaworld.policies import ENV_POLICY_MAP

    check_task(task)
    policy = ENV_POLICY_MAP[task]()
    return lambda obs: np.asarray(policy.get_action(obs), dtype=np.float32)


def run_expert(task: str, layout_seed: int, layout_index: int, camera: str = "corner", height: int = 32,
               width: int = 32, max_steps: int = 200, noise: float | None = None) -> EpisodeRecord:
    """The expert on one layout: records observation t, then acts; stops STEPS_AFTER_SUCCESS steps after the first
    success or after max_steps actions, so T = min(max_steps, steps_to_success + STEPS_AFTER_SUCCESS).
    `noise`: std of Gaussian noise added to each expert action (before clipping), drawn from a generator seeded by
    the layout, so noisy episodes repeat too."""
    expert_policy = expert(task)
    return record_episode(MetaWorldEnv(task, layout_seed, layout_index, camera, height, width), task, layout_seed,
                          layout_index, lambda env: lambda obs: expert_policy(obs.environment_state), max_steps, noise)


# the backend interface (sim/backends.py) besides check_*, versions and run_expert
Env = MetaWorldEnv


def prompt_of(task: str, given: str) -> str:
    """The prompt of a task: Meta-World has none, so the config's (sim.tasks: task -> prompt)."""
    check_task(task)
    return given


def check_set(name: str, spec: dict) -> None:
    """An episode set's layouts exist: first .. first+layouts-1 of each MT1 seed, of its 50."""
    last = spec["first"] + spec["layouts"] - 1
    if last >= LAYOUTS:
        raise SimError(f"config key 'sets.{name}': layouts {spec['first']} .. {last} asked, but MT1 has {LAYOUTS} "
                       f"layouts per task and seed (0-{LAYOUTS - 1}); allowed: first + layouts <= {LAYOUTS} (list more "
                       "layout_seeds for more episodes)")


def layout_key(layout_seed: int, layout_index: int):
    """What makes two episodes the same layout: MT1's seed and index (two seeds share no layout)."""
    return layout_seed, layout_index


def layout_vectors(task: str, layouts: list[tuple[int, int]]) -> np.ndarray:
    """(n, d) float64, metres: what each (layout_seed, layout_index) randomizes, MT1's `rand_vec` (the object's and
    the goal's positions; button-press: the button's)."""
    import pickle

    return np.array([pickle.loads(benchmark(task, seed).train_tasks[index].data)["rand_vec"] for seed, index in layouts],
                    dtype=np.float64)


def step_limit(task: str) -> int | None:
    """The benchmark's episode step limit (None: Meta-World sets none here; rollout.max_steps decides)."""
    return None
