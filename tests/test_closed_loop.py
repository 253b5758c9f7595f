"""The closed loop on Meta-World (configs/metaworld.yaml, made small): demonstrations -> features -> train -> rollouts
at every rule, through real Snakemake runs; replays, determinism across processes, shards, the expert through the
rollout loop, what reruns, and bad input. One small closed-loop run (`loop`) is shared by the module's tests."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import (REPO, SNAKEMAKE, copy_run, copy_workflow, executed_rules, merged, planned_rules, run_ok, snakemake,
                      write_config)

# our module first: it sets MUJOCO_GL=egl before mujoco is imported
metaworld_env = pytest.importorskip("mimic_redundancy.sim.metaworld_env", exc_type=ModuleNotFoundError)

from mimic_redundancy.core.io import ROLLOUT_ARRAYS, load_npz  # noqa: E402
from mimic_redundancy.pipeline import config as cfg  # noqa: E402
from mimic_redundancy.sim.metaworld_env import SimError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")]
TASK = "button-press-topdown-v3"
# configs/metaworld.yaml, small: 4 demos, 2 probed, a 30-step head, 4 episodes per rule in 2 batches of 2, 2 shards
LOOP = {
    "shards": 2,  # every model stage and the rollout in 2 jobs, gathered
    "sim": {"demos": 4, "max_steps": 120},
    "inputs": {"episodes": [0, 1]},
    "probe": {"steps": 10, "batch_size": 4},
    "metrics": {"probe_steps": [2, 4, 6, 8, 10]},
    "sweep": {"steps": [1, 5, 10], "reference_steps": 20},
    "early_stop": {"target_step": 2},
    "train": {"steps": 30},
    "rollout": {"steps": [1, 10], "stop_steps": [5], "episodes": 4, "batch_size": 2, "max_steps": 24,
                "execute_steps": 8},
}
TARGETS = ["results/trained/rollout.json", "results/trained/figures/rollout.png", "results/trained/rollout/videos.json"]
RULES = ["K=1", "K=10", "stop@5 x_t", "stop@5 clean"]


def loop_config(workdir, extra: dict | None = None) -> dict:
    files = [yaml.safe_load((workdir / name).read_text()) for name in ["config.yaml", "configs/metaworld.yaml"]]
    return cfg.validate_config(merged(*files, LOOP, extra or {}))


def run_loop(workdir, *args, extra: dict | None = None):
    config = write_config(workdir, merged(LOOP, extra or {}), "loop.yaml")
    return snakemake(workdir, *args, "--configfile", "configs/metaworld.yaml", str(config))


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """The small closed loop, run once: (workdir, result)."""
    try:
        metaworld_env.check_rendering()
    except SimError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the closed-loop tests: {error}")
        pytest.skip(str(error))
    workdir = copy_workflow(tmp_path_factory.mktemp("loop"))
    shutil.copytree(REPO / "configs", workdir / "configs")
    result = run_loop(workdir, *TARGETS)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return workdir, result


def test_the_closed_loop_writes_every_output(loop):
    workdir, result = loop
    ran = executed_rules(result)
    for rule in ["demos", "features", "train", "early_stop", "rollout", "rollout_metrics", "plot_rollout",
                 "rollout_videos"]:
        assert rule in ran, rule
    demos = json.loads((workdir / "results/demos/summary.json").read_text())
    assert demos["tasks"][TASK]["kept"] + demos["tasks"][TASK]["dropped"] == 4
    run = load_npz(workdir / "results/trained/rollout.npz", ROLLOUT_ARRAYS)
    assert run["rule"].tolist()[:4] == RULES and len(run["rule"]) in (4, 5)  # + the calibrated clean-change rule
    assert run["success"].shape == (len(run["rule"]), 4) and run["nfe"].shape == (len(run["rule"]), 4, 3)
    assert run["layout_seed"].tolist() == [1] * 4 and run["layout_index"].tolist() == [0, 1, 2, 3]
    k = {name: r for r, name in enumerate(run["rule"])}
    assert (run["nfe"][k["K=10"]][run["nfe"][k["K=10"]] >= 0] == 10).all()
    assert (run["nfe"][k["stop@5 clean"]][run["nfe"][k["stop@5 clean"]] >= 0] == 5).all()
    # an episode ends at its first success or at max_steps; its executed actions are recorded up to there
    steps = run["steps"]
    assert ((steps == 24) | run["success"]).all()
    assert (np.isfinite(run["actions"][..., 0]).sum(-1) == steps).all()
    table = (workdir / "results/trained/rollout.csv").read_text().splitlines()
    assert len(table) == 1 + len(run["rule"])
    summary = json.loads((workdir / "results/trained/rollout.json").read_text())
    assert summary["reference"] == "K=10" and summary["tasks"][TASK]["episodes"] == 4
    assert "episodes" in summary["tasks"][TASK]["decision"]
    png = (workdir / "results/trained/figures/rollout.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 960  # the report's width
    videos = json.loads((workdir / "results/trained/rollout/videos.json").read_text())
    assert videos["n_videos"] >= len(run["rule"]) and all(v["replayed_outcome_matches"] for v in videos["videos"])
    for video in videos["videos"]:
        assert (workdir / "results/trained/rollout/videos" / video["video"]).stat().st_size > 0


def test_every_episode_replays_to_its_recorded_outcome(loop):
    from mimic_redundancy.sim.rollout import replay

    run = load_npz(loop[0] / "results/trained/rollout.npz", ROLLOUT_ARRAYS)
    make_env = lambda task, seed, index: metaworld_env.MetaWorldEnv(task, seed, index, "corner", 32, 32)
    for r in range(len(run["rule"])):
        for e in range(len(run["task"])):
            success, first, _ = replay(make_env, str(run["task"][e]), int(run["layout_seed"][e]),
                                       int(run["layout_index"][e]), run["actions"][r, e])
            assert (success, first) == (bool(run["success"][r, e]), int(run["steps_to_success"][r, e])), (r, e)


def _same_rollout(a: dict, b: dict) -> None:
    for key in ROLLOUT_ARRAYS:
        if key != "seconds":  # wall times
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_same_seeds_give_the_same_rollout_in_another_process_and_unsharded(loop, tmp_path):
    """The rollout's 2 shards rerun in new processes are bit-identical; so is the whole rollout run as one job."""
    workdir = copy_run(loop[0], tmp_path / "run")
    before = load_npz(workdir / "results/trained/rollout.npz", ROLLOUT_ARRAYS)
    again = run_loop(workdir, "results/trained/rollout.npz", "--forcerun", "rollout")
    assert again.returncode == 0, again.stderr[-3000:]
    assert executed_rules(again) == ["gather_rollout", "rollout", "rollout"]
    _same_rollout(load_npz(workdir / "results/trained/rollout.npz", ROLLOUT_ARRAYS), before)
    code = ("import sys; sys.path.insert(0, 'src'); from mimic_redundancy.pipeline import sim_stages as stages; "
            "import json; s = json.load(open('settings.json')); "
            "stages.rollout(s, 'results/demos/dataset', 'results/trained/early_stop.json', sys.argv[1])")
    (workdir / "settings.json").write_text(json.dumps(cfg.rollout_settings(loop_config(workdir), "trained")))
    whole = tmp_path / "whole.npz"
    done = subprocess.run([sys.executable, "-c", code, str(whole)], cwd=workdir, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_rollout(load_npz(whole, ROLLOUT_ARRAYS), before)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


def test_a_rollout_shard_that_is_not_its_own_is_not_gathered(loop, tmp_path):
    """Shard 1's rollout copied over shard 2's: the gather names the file and the command that rebuilds it, instead
    of gathering the same episodes twice."""
    from mimic_redundancy.core.io import InputFileError
    from mimic_redundancy.pipeline.stages import gather

    parts = [loop[0] / f"results/trained/shards/{s}/rollout.npz" for s in ["1-of-2", "2-of-2"]]
    gather("rollout", parts, tmp_path / "ok.npz")
    _same_rollout(load_npz(tmp_path / "ok.npz", ROLLOUT_ARRAYS),
                  load_npz(loop[0] / "results/trained/rollout.npz", ROLLOUT_ARRAYS))
    wrong = tmp_path / "results/trained/shards/2-of-2/rollout.npz"
    wrong.parent.mkdir(parents=True)
    shutil.copy(parts[0], wrong)
    fix = "snakemake --profile profiles/local results/trained/shards/2-of-2/rollout.npz --forcerun rollout"
    with pytest.raises(InputFileError, match=r"holds the rows \[0, 2\) of shard 1-of-2, not those of shard 2-of-2.*"
                                             + re.escape(fix)):
        gather("rollout", [parts[0], wrong], tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


def _holding(pids: list[int], path: Path) -> list[int]:
    """The processes among `pids` that have `path` open (a rollout job holds its shard's log from its start)."""
    out = []
    for pid in pids:
        try:
            if any(os.path.realpath(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd")):
                out.append(pid)
        except OSError:
            continue  # gone meanwhile
    return out


def test_a_killed_rollout_shard_reruns_alone_and_gives_the_same_result(loop, tmp_path):
    """The rollout rerun from scratch as 2 shard jobs, one at a time; once one has written its part, the other is
    killed (SIGKILL) while it rolls out: the run fails and leaves no part for it. The next run redoes that shard alone
    (then the gather and what follows), and the gathered rollout equals the shared run's bit for bit."""
    workdir = copy_run(loop[0], tmp_path / "run")
    before = load_npz(workdir / "results/trained/rollout.npz", ROLLOUT_ARRAYS)
    parts = {s: workdir / f"results/trained/shards/{s}/rollout.npz" for s in ["1-of-2", "2-of-2"]}
    for path in [workdir / "results/trained/rollout.npz", *parts.values()]:
        path.unlink()
    config = write_config(workdir, merged(LOOP), "loop.yaml")
    command = [str(SNAKEMAKE), "--profile", "profiles/local", "results/trained/rollout.npz", "--configfile",
               "configs/metaworld.yaml", str(config), "--cores", "1"]
    with open(tmp_path / "first.log", "w") as sink:
        run = subprocess.Popen(command, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT, text=True)
        deadline, killed, victim = time.monotonic() + 300, [], None
        while not killed and time.monotonic() < deadline and run.poll() is None:
            done = [s for s, p in parts.items() if p.exists()]
            if done:  # one shard written; the other starts next (1 core: one job at a time)
                (victim,) = set(parts) - set(done)
                log = (workdir / f"results/trained/shards/{victim}/logs/rollout.log").resolve()
                killed = _holding(_descendants(run.pid), log)
                for pid in killed:
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        run.wait(timeout=300)
    first = (tmp_path / "first.log").read_text()
    assert killed and run.returncode != 0 and "Error in rule rollout" in first, first[-3000:]
    assert "died with <Signals.SIGKILL: 9>" in first
    assert not parts[victim].exists() and not (workdir / "results/trained/rollout.npz").exists()
    assert not list(parts[victim].parent.glob(".rollout.npz.tmp*"))  # no partial file beside it
    redo = run_loop(workdir, *TARGETS)
    assert redo.returncode == 0, redo.stderr[-3000:]
    assert executed_rules(redo) == ["gather_rollout", "plot_rollout", "rollout", "rollout_metrics", "rollout_videos"]
    assert f"Reason: Missing output files: results/trained/shards/{victim}/rollout.npz" in redo.stdout + redo.stderr
    _same_rollout(load_npz(workdir / "results/trained/rollout.npz", ROLLOUT_ARRAYS), before)


def test_the_expert_through_the_rollout_loop_reaches_its_own_success():
    """Success detection: the scripted expert, acting through run_batch one action per decision, succeeds on the
    same layouts at the same step as when it records demonstrations."""
    from mimic_redundancy.sim.policy import ExpertPolicy, Rule
    from mimic_redundancy.sim.rollout import opened, run_batch

    layouts = [(TASK, 0, i) for i in range(3)]
    make_env = lambda task, seed, index: metaworld_env.MetaWorldEnv(task, seed, index, "corner", 32, 32)
    with opened(make_env, layouts) as envs:
        results = run_batch(ExpertPolicy(TASK), Rule("fixed_k", 1), envs, layouts, 0, "press",
                            {"execute_steps": 1, "max_steps": 150, "seed": 0, "probe_steps": 1})
    for (task, seed, index), result in zip(layouts, results):
        alone = metaworld_env.run_expert(task, seed, index, max_steps=150)
        assert result["success"] and result["steps_to_success"] == alone.steps_to_success, index
        np.testing.assert_array_equal(np.stack(result["actions"]), alone.actions[:alone.steps_to_success])


def test_what_reruns(loop, tmp_path):
    workdir = copy_run(loop[0], tmp_path / "run")
    plan = lambda extra: planned_rules(workdir, *TARGETS, "--configfile", "configs/metaworld.yaml",
                                       str(write_config(workdir, merged(LOOP, extra), "loop.yaml")))
    assert plan({}) == []
    assert plan({"rollout": {"steps": [1, 2, 10]}}) == ["gather_rollout", "plot_rollout", "rollout", "rollout",
                                                        "rollout_metrics", "rollout_videos"]
    assert plan({"plot": {"dpi": 72}}) == ["plot_rollout"]
    assert plan({"rollout": {"margin": 0.1}}) == ["plot_rollout", "rollout_metrics"]


def test_bad_rollout_settings_stop_the_dag_naming_the_key(loop, tmp_path):
    workdir = copy_run(loop[0], tmp_path / "run")
    for extra, words in [({"rollout": {"steps": [0, 10]}}, "rollout.steps"),
                         ({"rollout": {"steps": [1, 11]}}, "rollout.steps': [11] exceed probe.steps (10)"),
                         ({"rollout": {"stop_steps": [12]}}, "rollout.stop_steps': [12] exceed probe.steps"),
                         ({"inputs": {"frame_window": "forward"}}, "inputs.frame_window"),
                         ({"sim": {"tasks": {"no-such-task-v3": "x"}}}, "unknown Meta-World task 'no-such-task-v3'"),
                         ({"sim": {"camera": "ceiling"}}, "unknown camera 'ceiling'")]:
        result = run_loop(workdir, *TARGETS, "-n", "--forcerun", "rollout", extra=extra)
        assert result.returncode != 0 and words in result.stdout + result.stderr, (extra, result.stderr[-2000:])


def test_a_policy_or_dataset_that_does_not_fit_the_simulator_is_refused(loop, tmp_path):
    import torch

    from mimic_redundancy.data.readers import DataError
    from mimic_redundancy.model.model import DimensionError
    from mimic_redundancy.pipeline import sim_stages as stages

    workdir = loop[0]
    settings = cfg.rollout_settings(loop_config(workdir), "trained")
    settings["model"]["checkpoint"] = str(workdir / "results/tiny-policy/train/checkpoint")
    wrong_state = {**settings, "inputs": {**settings["inputs"], "state_key": "observation.state"}}
    with pytest.raises(DimensionError, match="39-dim state, but metaworld's .* observation.state .* 9"):
        stages._policy(wrong_state, torch.device("cpu"), metaworld_env)
    dataset = workdir / "results/demos/dataset"
    with pytest.raises(DataError, match="at 80 fps, but the closed loop steps at 10 fps"):
        stages.check_dataset(dataset, {**settings, "demos": {**settings["demos"], "fps": 10}})
    # a policy fed 64 px: the env renders at the dataset's 32 px, and the policy resizes as its training did
    assert stages.check_dataset(dataset, {**settings, "inputs": {**settings["inputs"], "height": 64, "width": 64}}) \
        == (32, 32)
    with pytest.raises(DataError, match="no camera 'observation.images.topview'.*'sim.camera' is 'topview'"):
        stages.check_dataset(dataset, {**settings, "demos": {**settings["demos"], "camera": "topview"},
                                       "inputs": {**settings["inputs"], "camera": "auto"}})
    broken = tmp_path / "dataset"
    shutil.copytree(dataset, broken)
    (video,) = broken.glob("videos/*/*/*.mp4")
    video.unlink()
    from mimic_redundancy.data.lerobot import read_lerobot
    from mimic_redundancy.data.readers import episode_frames

    with pytest.raises(DataError, match=f"{video.name}.*not found"):
        for episode in read_lerobot(broken, {"camera": "observation.images.corner", "state_key":
                                             "observation.environment_state", "action_key": "action"}):
            episode_frames(episode)


def test_no_rendering_backend_names_the_package():
    """MUJOCO_GL naming a backend this machine cannot load (OSMesa without libosmesa6, or a typo): the simulator
    refuses at import, naming the apt packages, before any episode."""
    code = "from mimic_redundancy.sim import metaworld_env"
    for backend in ["bogus", "osmesa"]:
        done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "MUJOCO_GL": backend},
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        if backend == "osmesa" and done.returncode == 0:
            continue  # libosmesa6 is installed here: OSMesa renders
        assert done.returncode != 0 and "SimError" in done.stderr, done.stderr[-2000:]
        assert f"MUJOCO_GL={backend}: cannot render headless" in done.stderr
        assert "apt-get install -y libegl1" in done.stderr and "libosmesa6" in done.stderr


def test_the_closed_loop_intervals():
    """Success: exact Clopper-Pearson (scipy's own exact interval). Paired difference: Tango's score interval gives the
    published example, keeps a width where the rules never disagree (whatever the success rate), covers the true
    difference of correlated paired successes in about 95% of draws, and its one-sided lower bound declares a rule
    that is truly 5 points worse non-inferior within 5 points in at most about 5% of draws."""
    from scipy.stats import binomtest

    from mimic_redundancy.sim.answers import clopper_pearson, paired_difference

    for k, n in [(0, 20), (15, 20), (20, 20), (7, 9)]:
        exact = binomtest(k, n).proportion_ci(method="exact")
        np.testing.assert_allclose(clopper_pearson(k, n), (exact.low, exact.high), atol=1e-12)
    # Fagerland, Lydersen & Laake (2017), ch. 8, Bentur et al.: 1 pair both yes, 1 and 7 discordant, 12 both no
    rule = np.array([1, 1] + [0] * 7 + [0] * 12, bool)
    reference = np.array([1, 0] + [1] * 7 + [0] * 12, bool)
    np.testing.assert_allclose(paired_difference(rule, reference), (-0.5172, -0.0260), atol=1e-4)
    for rate in [1.0, 0.6]:  # no discordant pair: the width depends on n alone, z^2 / (n + z^2)
        same = np.arange(20) < 20 * rate
        low, high = paired_difference(same, same)
        assert low == pytest.approx(-0.16113, abs=1e-4) and high == pytest.approx(0.16113, abs=1e-4)
    rng = np.random.default_rng(0)
    for n in [20, 60]:
        covered = 0
        for _ in range(2000):  # reference succeeds w.p. 0.75; the rule agrees with it w.p. 0.9, else flips
            reference = rng.random(n) < 0.75
            rule = np.where(rng.random(n) < 0.9, reference, ~reference)
            low, high = paired_difference(rule, reference)
            covered += low <= 0.75 * 0.9 + 0.25 * 0.1 - 0.75 <= high
        assert 0.93 <= covered / 2000 <= (1.0 if n == 20 else 0.99), (n, covered)  # 20: ~2 discordant, conservative
    for n, rate in [(60, 0.6), (60, 1.0), (120, 0.8)]:  # the rule loses 5 points: fails where the reference won
        declared = 0
        for _ in range(2000):
            reference = rng.random(n) < rate
            rule = reference & (rng.random(n) >= 0.05 / rate)
            declared += paired_difference(rule, reference, z=1.6448536269514722)[0] > -0.05
        assert declared / 2000 <= 0.075, (n, rate, declared)


def _run_of(successes: dict[str, list[int]], task: str = TASK) -> dict:
    """A rollout's arrays for rollout_tables: rule name -> per-episode success (1/0); every rule decides 5 times."""
    names = list(successes)
    kinds = ["fixed_k" if n.startswith("K=") else "fixed_step_xt" for n in names]
    params = [float(n.split("=")[1]) if n.startswith("K=") else 40.0 for n in names]
    n = len(successes[names[0]])
    return {"rule": np.array(names), "rule_kind": np.array(kinds), "rule_param": np.array(params),
            "task": np.array([task] * n), "success": np.array([successes[r] for r in names], bool),
            "nfe": np.array([[[p] * 5] * n for p in params], np.int64), "steps": np.full((len(names), n), 50),
            "seconds": np.zeros((len(names), n, 4)), "costs": np.array(["sim", "render", "backbone", "head"]),
            "layout_seed": np.ones(n, np.int64), "preset": "trained", "config_digest": "x"}


def test_the_decision_names_the_cheapest_non_inferior_rule_or_what_more_episodes_could_show():
    """On 20 paired episodes: a rule that wins 6 discordant pairs is non-inferior (and named); rules that are not
    decide nothing, and the episodes needed are sized for the cheapest rule within the margin, not for a rule observed
    far below it (its discordance would inflate the count, and no number of episodes would make it non-inferior)."""
    from mimic_redundancy.sim.answers import rollout_tables

    reference = [1] * 14 + [0] * 6
    wins = [1] * 20
    rows, summary = rollout_tables(_run_of({"K=1": wins, "K=50": reference}), {}, {"margin": 0.05})
    assert summary["tasks"][TASK]["decision"].startswith("K=1: 1.0 NFE per decision, success 100%")
    close = [1] * 13 + [0] + [1] + [0] * 5  # one lost, one won: observed difference 0
    bad = [0] * 20  # stop@40 x_t: -70 points, 14 discordant pairs
    rows, summary = rollout_tables(_run_of({"K=1": close, "K=50": reference, "stop@40 x_t": bad}), {},
                                   {"margin": 0.05})
    decision = summary["tasks"][TASK]["decision"]
    assert decision.startswith("no rule is non-inferior to K=50 within 5% on 20 episodes; about ")
    assert "to show K=1 (1.0 NFE per decision, observed +0%) non-inferior (its discordance with K=50: 0.10)" in decision
    assert "about 248 episodes" in decision  # (1.645 + 0.842)^2 x 0.10 / 0.05^2
    rows, summary = rollout_tables(_run_of({"K=50": reference, "stop@40 x_t": bad}), {}, {"margin": 0.05})
    assert "every rule's observed difference is below -5%" in summary["tasks"][TASK]["decision"]
