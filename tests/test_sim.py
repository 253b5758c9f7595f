"""Meta-World demonstrations: the scripted expert solves button-press-topdown, its episodes are identical in any
process, and the LeRobot v3.0 dataset written from them reads back through the pipeline's own reader (frames,
states and actions bit for bit: the video is lossless H.264 RGB); bad tasks, cameras and episode counts fail
naming the config key and what is allowed; a failed write leaves nothing behind."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

# our module first: it sets MUJOCO_GL=egl before mujoco is imported (metaworld imports it; it picks its GL then)
metaworld_env = pytest.importorskip("mimic_redundancy.sim.metaworld_env", exc_type=ModuleNotFoundError)

from mimic_redundancy.data.lerobot import read_lerobot  # noqa: E402
from mimic_redundancy.data.readers import episode_frames  # noqa: E402
from mimic_redundancy.sim import demos  # noqa: E402
from mimic_redundancy.sim.metaworld_env import SimError, run_expert  # noqa: E402

# the demo fixture runs ~4-8 s on 2 shared cores; the scripted policies warn that their gains exceed [-1, 1]
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")]
TASK, PROMPT, CAMERA = "button-press-topdown-v3", "press the button down from above", "corner"
SETTINGS = {"camera": CAMERA, "height": 32, "width": 32, "fps": 10, "max_steps": 150}
LAYOUTS = [(0, 0), (0, 1)]  # (layout_seed, layout_index) of the demos set
INPUTS = {"camera": f"observation.images.{CAMERA}", "state_key": "observation.environment_state",
          "action_key": "action", "prompt": "auto", "episodes": "all"}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A 2-episode demo dataset and the expert's records it was written from."""
    try:
        metaworld_env.check_rendering()
    except SimError as error:
        pytest.skip(str(error))
    records, original = [], metaworld_env.run_expert

    def recording(*args, **kwargs):
        records.append(original(*args, **kwargs))
        return records[-1]

    metaworld_env.run_expert = recording  # what write_demos calls, through sim.backends.simulator('metaworld')
    try:
        root = tmp_path_factory.mktemp("sim") / "demos"
        summary = demos.write_demos(root, {TASK: PROMPT}, LAYOUTS, **SETTINGS)
    finally:
        metaworld_env.run_expert = original
    return root, summary, records


def test_expert_succeeds(written):
    _, summary, records = written
    assert summary["tasks"][TASK] == {"kept": 2, "dropped": 0, "steps_to_success": [r.steps_to_success
                                                                                   for r in records]}
    record = run_expert(TASK, 0, 2, CAMERA, 32, 32, max_steps=150)
    for r in records + [record]:
        assert r.success and 0 < r.steps_to_success < 150
        assert len(r.actions) == r.steps_to_success + metaworld_env.STEPS_AFTER_SUCCESS
        assert r.frames.shape == (len(r.actions), 32, 32, 3) and r.frames.dtype == np.uint8
        assert r.states.shape == (len(r.actions), 9) and r.environment_states.shape == (len(r.actions), 39)
        assert np.abs(r.actions).max() <= 1.0


def test_round_trip_through_the_reader(written):
    root, summary, records = written
    assert summary["episodes"] == 2 and summary["frames"] == sum(len(r.actions) for r in records)
    episodes = read_lerobot(root, INPUTS)
    joints = read_lerobot(root, {**INPUTS, "state_key": "observation.state"}, frames=False)
    assert [e.index for e in episodes] == [0, 1]
    for episode, joint, record in zip(episodes, joints, records):
        assert episode.prompt == PROMPT
        frames = (episode_frames(episode).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(frames, record.frames)  # lossless: bit for bit
        np.testing.assert_array_equal(episode.states, record.environment_states)
        np.testing.assert_array_equal(joint.states, record.states)
        np.testing.assert_array_equal(episode.actions, record.actions)
    import pyarrow.parquet as pq

    table = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert table["layout_seed"] == [0, 0] and table["layout_index"] == [0, 1]
    provenance = json.loads((root / "meta/mimic_redundancy.json").read_text())
    assert set(provenance["packages"]) >= {"metaworld", "mujoco", "gymnasium", "numpy"}
    assert provenance["tasks"][TASK]["dropped"] == 0
    assert not list(root.parent.glob(".demos.*"))  # the temporary folder is gone


# in a fresh process: the same layout's first steps, as arrays
EPISODE = """
import sys, numpy as np
from mimic_redundancy.sim.metaworld_env import run_expert
r = run_expert("button-press-topdown-v3", 0, 3, "corner", 32, 32, max_steps=12)
np.savez(sys.argv[1], frames=r.frames, states=r.states, environment_states=r.environment_states, actions=r.actions)
"""


def test_same_episode_in_another_process(written, tmp_path):
    out = tmp_path / "episode.npz"
    subprocess.run([sys.executable, "-c", EPISODE, str(out)], check=True, timeout=120)
    theirs, ours = np.load(out), run_expert(TASK, 0, 3, CAMERA, 32, 32, max_steps=12)
    for key in ("frames", "states", "environment_states", "actions"):
        np.testing.assert_array_equal(theirs[key], getattr(ours, key))


def _episode(env, task, steps=40):
    """The expert's first `steps` steps in `env` from its reset: every frame, state and observation."""
    policy, obs = metaworld_env.expert(task), env.reset()
    seen = [obs.image, obs.state, obs.environment_state]
    for t in range(steps):
        obs, _ = env.step(policy(obs.environment_state), render=t % 4 == 0)
        seen += [obs.state, obs.environment_state] + ([obs.image] if obs.image is not None else [])
    return seen


def test_a_reset_env_and_the_shared_renderer_repeat_a_fresh_env_bit_for_bit():
    """A rollout job builds one env per episode and resets it for every rule, and all envs of a task render through
    one shared GL context: both must give what a fresh env with its own renderer gives. Pick-place moves its object
    and goal per layout, so a frame from the wrong layout's model would show."""
    task = "pick-place-v3"
    fresh = metaworld_env.MetaWorldEnv(task, 1, 0)
    first = _episode(fresh, task)
    own = np.ascontiguousarray(fresh.env.render()[::-1])  # gymnasium's own renderer for this env
    np.testing.assert_array_equal(own, fresh.render())
    fresh.close()
    other = metaworld_env.MetaWorldEnv(task, 1, 1)  # shares the GL context; a different layout
    moved = _episode(other, task)
    reused = metaworld_env.MetaWorldEnv(task, 1, 0)
    _episode(reused, task, steps=60)  # dirty it: warm start, contacts, the path length
    again = _episode(reused, task)
    reused.close(), other.close()
    assert len(again) == len(first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], moved[0])  # the layouts' frames differ: the test can see a wrong model


def test_envs_on_one_compile_with_a_reused_reset_frame_repeat_gymnasiums_own_env_bit_for_bit(monkeypatch):
    """A process compiles a task's scene once and builds every env on a copy of it (COMPILE_ONCE), and a reset hands
    out its first reset's frame while the scene is drawn from the same poses: an episode after another one, in either
    of two such envs, equals the episode of an env gymnasium compiled itself, bit for bit, frames included."""
    task = "pick-place-v3"
    monkeypatch.setattr(metaworld_env, "COMPILE_ONCE", False)
    own = metaworld_env.MetaWorldEnv(task, 1, 2)
    expected = _episode(own, task)
    own.close()
    monkeypatch.setattr(metaworld_env, "COMPILE_ONCE", True)
    envs = [metaworld_env.MetaWorldEnv(task, 1, 2) for _ in range(2)]
    try:
        _episode(envs[0], task, steps=30)
        for env in envs:
            got = _episode(env, task)
            assert len(got) == len(expected)
            for a, b in zip(expected, got):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(envs[0].reset().image, envs[0].render())  # the reused frame is today's
        assert envs[0].env.model is not envs[1].env.model  # each env steps its own copy
        assert envs[0].env.fullpath in metaworld_env._MODELS
    finally:
        for env in envs:
            env.close()


def test_bad_settings_name_the_key():
    with pytest.raises(SimError, match=r"'sim\.tasks': unknown Meta-World task 'button-press'; known tasks: "
                                       r".*button-press-topdown-v3"):
        metaworld_env.MetaWorldEnv("button-press", 0, 0)
    with pytest.raises(SimError, match=r"'sim\.camera': unknown camera 'front'; Meta-World's cameras: topview, "
                                       r"corner, corner2, corner3, corner4, behindGripper, gripperPOV"):
        metaworld_env.MetaWorldEnv(TASK, 0, 0, camera="front")
    with pytest.raises(SimError, match=r"'sets\.demos': layouts 10 \.\. 50 asked, but MT1 has 50 layouts per task "
                                       r"and seed \(0-49\); allowed: first \+ layouts <= 50"):
        metaworld_env.check_set("demos", {"layout_seeds": [0], "first": 10, "layouts": 41})
    with pytest.raises(SimError, match=r"'sim\.tasks': unknown Meta-World task 'nope-v3'"):
        demos.write_demos("unused", {TASK: PROMPT, "nope-v3": "x"}, LAYOUTS[:1], **SETTINGS)


def test_failed_episodes_dropped_and_failed_writes_leave_nothing(written, tmp_path, monkeypatch):
    _, _, records = written
    # layout 1 "fails": dropped and counted; the dataset keeps layout 0 only
    monkeypatch.setattr(metaworld_env, "run_expert", lambda task, seed, layout, *args: records[0] if layout == 0 else
                        dataclasses.replace(records[1], success=False, steps_to_success=-1))
    summary = demos.write_demos(tmp_path / "one", {TASK: PROMPT}, LAYOUTS, **SETTINGS)
    assert summary["tasks"][TASK]["kept"] == 1 and summary["tasks"][TASK]["dropped"] == 1
    [episode] = read_lerobot(tmp_path / "one", INPUTS, frames=False)
    np.testing.assert_array_equal(episode.actions, records[0].actions)
    provenance = json.loads((tmp_path / "one/meta/mimic_redundancy.json").read_text())
    assert provenance["tasks"][TASK]["layouts_dropped"] == [[0, 1]]

    def broken(*args):
        raise RuntimeError("killed while encoding")

    monkeypatch.setattr(demos, "write_video", broken)
    with pytest.raises(RuntimeError, match="killed"):
        demos.write_demos(tmp_path / "two", {TASK: PROMPT}, LAYOUTS, **SETTINGS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]  # neither "two" nor its temporary folder
