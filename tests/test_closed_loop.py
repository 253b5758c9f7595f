"""The closed loop on Meta-World (configs/metaworld.yaml, made small): demonstrations -> features -> train -> rollouts
at every rule, through real Snakemake runs; replays, determinism across processes, shards, the expert through the
rollout loop, what reruns, and bad input. One small closed-loop run (`loop`) is shared by the module's tests."""
from __future__ import annotations

import csv
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

from conftest import (REPO, SNAKEMAKE, copy_run, copy_workflow, executed_rules, merged, planned_rules, snakemake,
                      write_config)

# our module first: it sets MUJOCO_GL=egl before mujoco is imported
metaworld_env = pytest.importorskip("mimic_redundancy.sim.metaworld_env", exc_type=ModuleNotFoundError)

from mimic_redundancy.core.io import (NEAREST_ARRAYS, ROLLOUT_ARRAYS, ROLLOUT_EPISODE_ARRAYS, load_npz,  # noqa: E402
                                      load_rollout)
from mimic_redundancy.pipeline import config as cfg  # noqa: E402
from mimic_redundancy.sim.metaworld_env import SimError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")]
TASK = "button-press-topdown-v3"
# configs/metaworld.yaml, small: 4 demos, 2 probed, two 30-step policies, 4 dev episodes per rule in 2 batches of 2,
# 2 shards
LOOP = {
    "shards": 2,  # every model stage and each policy's rollout in 2 jobs, gathered
    "sim": {"max_steps": 120},
    "sets": {"demos": {"layout_seeds": [0], "layouts": 4}, "dev": {"layout_seeds": [1], "layouts": 4}},
    "inputs": {"episodes": [0, 1]},
    "probe": {"steps": 10, "batch_size": 4},
    "metrics": {"probe_steps": [2, 4, 6, 8, 10]},
    "sweep": {"steps": [1, 5, 10], "reference_steps": 20},
    "early_stop": {"target_step": 2},
    "train": {"steps": 30, "seeds": [0, 1]},  # two policies: the decision's replicated units
    "rollout": {"steps": [1, 10], "stop_steps": [5], "batch_size": 2, "max_steps": 24, "execute_steps": 8,
                "nearest_demo_subsets": [2], "also_against": [1]},
}
TARGETS = ["results/trained/rollout.json", "results/trained/figures/rollout.png", "results/trained/rollout/videos.json",
           "results/trained/rollout-vs-K1.json", "results/trained/figures/pareto.png"]
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
    for rule in ["demos", "features", "train", "early_stop", "nearest_demo", "rollout", "gather_rollout",
                 "rollout_metrics", "plot_rollout", "rollout_videos"]:
        assert rule in ran, rule
    assert ran.count("train") == 2 and ran.count("rollout") == 4  # 2 policies x 2 shards
    demos = json.loads((workdir / "results/demos/summary.json").read_text())
    assert demos["tasks"][TASK]["kept"] + demos["tasks"][TASK]["dropped"] == 4
    run = load_rollout(workdir / "results/trained/rollout.npz")
    assert run["policy"].tolist() == [0, 1] and str(run["episode_set"]) == "dev"
    assert run["policy_checkpoint"].tolist() == [f"results/tiny-policy/train/seed-{s}/checkpoint" for s in (0, 1)]
    assert run["policy_digest"][0] != run["policy_digest"][1]  # two trained heads, not one twice
    assert run["rule"].tolist()[:4] == RULES and len(run["rule"]) in (4, 5)  # + the calibrated clean-change rule
    r = len(run["rule"])
    assert run["success"].shape == (2, r, 4) and run["nfe"].shape == (2, r, 4, 3)
    assert run["layout_seed"].tolist() == [1] * 4 and run["layout_index"].tolist() == [0, 1, 2, 3]
    k = {name: i for i, name in enumerate(run["rule"])}
    assert (run["nfe"][:, k["K=10"]][run["nfe"][:, k["K=10"]] >= 0] == 10).all()
    assert (run["nfe"][:, k["stop@5 clean"]][run["nfe"][:, k["stop@5 clean"]] >= 0] == 5).all()
    # an episode ends at its first success or at max_steps; its executed actions are recorded up to there
    steps = run["steps"]
    assert ((steps == 24) | run["success"]).all()
    assert (np.isfinite(run["actions"][..., 0]).sum(-1) == steps).all()
    nearest = load_npz(workdir / "results/demos/nearest-dev.npz", NEAREST_ARRAYS)
    assert nearest["task"].tolist() == run["task"].tolist() and (nearest["distance"] > 0).all()
    table = list(csv.DictReader(open(workdir / "results/trained/rollout.csv")))
    assert [row["rule"] for row in table] == run["rule"].tolist() + ["nearest demo (replay)"]
    assert {row["set"] for row in table} == {"dev"} and {row["policies"] for row in table[:-1]} == {"2"}
    for row in table[:-1]:
        assert int(row["successes"]) == int(row["successes_seed_0"]) + int(row["successes_seed_1"])
    summary = json.loads((workdir / "results/trained/rollout.json").read_text())
    assert summary["reference"] == "K=10" and summary["tasks"][TASK]["episodes"] == 4
    assert summary["episode_set"] == "dev" and summary["policies"] == [0, 1]
    assert "2 policies x 4 episodes = 8 pairs" in summary["tasks"][TASK]["decision"]
    assert set(summary["across_tasks"]["iqm"]) == set(run["rule"].tolist())
    assert len(summary["eval_info"]) == 2 * r
    pareto = summary["tasks"][TASK]["pareto"]
    assert pareto["frontier_nfe"][0] == "K=1" and 0 < pareto["backbone_share_of_model_time"] < 1
    versus = json.loads((workdir / "results/trained/rollout-vs-K1.json").read_text())  # rollout.also_against
    assert versus["reference"] == "K=1" and versus["tasks"][TASK]["reference"]["rule"] == "K=1"
    assert versus["rules"] == summary["rules"] and "to K=1" in versus["tasks"][TASK]["decision"]
    png = (workdir / "results/trained/figures/rollout.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 960  # the report's width
    videos = json.loads((workdir / "results/trained/rollout/videos.json").read_text())
    assert videos["n_videos"] >= len(run["rule"]) and all(v["replayed_outcome_matches"] for v in videos["videos"])
    for video in videos["videos"]:
        assert (workdir / "results/trained/rollout/videos" / video["video"]).stat().st_size > 0


def test_eval_info_has_lerobot_evals_fields(loop):
    """Each policy and rule's eval_info.json carries lerobot-eval's fields (lerobot/scripts/eval.py eval_policy:
    per_episode episode_ix, sum_reward, max_reward, success, seed; aggregated avg_sum_reward, avg_max_reward,
    pc_success, eval_s, eval_ep_s; video_paths) and agrees with rollout.npz."""
    workdir = loop[0]
    run = load_rollout(workdir / "results/trained/rollout.npz")
    for p, policy in enumerate(run["policy"]):
        info = json.loads((workdir / f"results/trained/eval_info/policy-{policy}/K10.json").read_text())
        assert {"per_episode", "aggregated", "video_paths"} <= set(info)
        assert {"avg_sum_reward", "avg_max_reward", "pc_success", "eval_s", "eval_ep_s"} <= set(info["aggregated"])
        r = run["rule"].tolist().index("K=10")
        assert [e["success"] for e in info["per_episode"]] == run["success"][p, r].tolist()
        for e, episode in enumerate(info["per_episode"]):
            assert {"episode_ix", "sum_reward", "max_reward", "success", "seed"} <= set(episode)
            assert (episode["episode_ix"], episode["seed"], episode["init_state"]) == \
                (e, int(run["layout_seed"][e]), int(run["layout_index"][e]))
        assert info["aggregated"]["pc_success"] == pytest.approx(100 * run["success"][p, r].mean())


def test_the_nearest_demo_of_a_demonstrated_layout_is_itself_and_replays_to_success(loop):
    """The baseline's own check: on the demos set's layouts, the nearest demonstration is the layout's own (distance
    0), and replaying its recorded actions succeeds."""
    from mimic_redundancy.sim.nearest_demo import demo_records, nearest_demo

    workdir = loop[0]
    demos = demo_records(workdir / "results/demos/dataset")
    episodes = [(d["task"], d["layout_seed"], d["layout_index"]) for d in demos]
    make_env = lambda task, seed, index: metaworld_env.MetaWorldEnv(task, seed, index, "corner", 32, 32)
    out = nearest_demo(metaworld_env, demos, episodes, 150, make_env, [1])
    assert out["distance"].tolist() == [0.0] * len(demos) and out["success"].all()
    assert out["nearest_episode"].tolist() == list(range(len(demos)))
    assert out["subset_success"][0, 0] and out["subset_distance"][0, 0] == 0.0


def test_every_episode_replays_to_its_recorded_outcome(loop):
    from mimic_redundancy.sim.rollout import replay

    run = load_rollout(loop[0] / "results/trained/rollout.npz")
    make_env = lambda task, seed, index: metaworld_env.MetaWorldEnv(task, seed, index, "corner", 32, 32)
    for p in range(len(run["policy"])):
        for r in range(len(run["rule"])):
            for e in range(len(run["task"])):
                success, first, _ = replay(make_env, str(run["task"][e]), int(run["layout_seed"][e]),
                                           int(run["layout_index"][e]), run["actions"][p, r, e])
                assert (success, first) == (bool(run["success"][p, r, e]), int(run["steps_to_success"][p, r, e]))


def _same_rollout(a: dict, b: dict, policies=slice(None)) -> None:
    """The same episodes (b's policies `policies`), wall times and the run's own metadata aside."""
    for key in (*ROLLOUT_EPISODE_ARRAYS, "policy", "policy_digest", "task", "layout_seed", "layout_index", "rule"):
        theirs = b[key][policies] if ROLLOUT_ARRAYS[key].split("[", 1)[-1].startswith("P") else b[key]
        np.testing.assert_array_equal(a[key], theirs, err_msg=key)


def test_the_same_seeds_give_the_same_rollout_in_another_process_and_unsharded(loop, tmp_path):
    """Each policy's 2 shards rerun in new processes are bit-identical; so is one policy's rollout run as one job, and
    so is a policy rolled out alone (its own rerun gives the same bits)."""
    workdir = copy_run(loop[0], tmp_path / "run")
    before = load_rollout(workdir / "results/trained/rollout.npz")
    again = run_loop(workdir, "results/trained/rollout.npz", "--forcerun", "rollout")
    assert again.returncode == 0, again.stderr[-3000:]
    assert executed_rules(again) == ["gather_rollout"] + ["rollout"] * 4
    _same_rollout(load_rollout(workdir / "results/trained/rollout.npz"), before)
    code = ("import sys; sys.path.insert(0, 'src'); from mimic_redundancy.pipeline import sim_stages as stages; "
            "import json; s = json.load(open('settings.json')); "
            "stages.rollout(s, 'results/demos/dataset', 'results/trained/early_stop.json', sys.argv[1])")
    (workdir / "settings.json").write_text(json.dumps(cfg.rollout_settings(loop_config(workdir), "trained", 1)))
    whole = tmp_path / "whole.npz"
    done = subprocess.run([sys.executable, "-c", code, str(whole)], cwd=workdir, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_rollout(load_npz(whole, ROLLOUT_ARRAYS), before, slice(1, 2))


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


def test_a_rollout_file_that_is_not_its_own_is_not_gathered(loop, tmp_path, monkeypatch):
    """Shard 1's rollout copied over shard 2's, policy 0's over policy 1's, a shard run with another rollout.seed, a
    shard edited after it was written: the gather names the file, what is wrong and the command that rebuilds it
    (with the run's --configfile), instead of gathering them."""
    from mimic_redundancy.core.io import CONFIGFILES_ENV, InputFileError
    from mimic_redundancy.core.shards import gather_rollout

    monkeypatch.setenv(CONFIGFILES_ENV, "configs/metaworld.yaml loop.yaml")
    part = lambda policy, shard: loop[0] / f"results/trained/rollout/policy-{policy}/shards/{shard}/rollout.npz"
    ok = [[part(p, s) for s in ("1-of-2", "2-of-2")] for p in (0, 1)]
    gather_rollout(ok, tmp_path / "ok.npz", [0, 1])
    _same_rollout(load_rollout(tmp_path / "ok.npz"), load_rollout(loop[0] / "results/trained/rollout.npz"))

    def copied(source, policy, shard, change=None):
        wrong = tmp_path / f"results/trained/rollout/policy-{policy}/shards/{shard}/rollout.npz"
        wrong.parent.mkdir(parents=True, exist_ok=True)
        arrays = load_npz(source, ROLLOUT_ARRAYS)
        (change or (lambda a: None))(arrays)
        np.savez(open(wrong, "wb"), **arrays)
        return wrong

    fix = ("snakemake --profile profiles/local results/trained/rollout/policy-0/shards/2-of-2/rollout.npz "
           "--configfile configs/metaworld.yaml loop.yaml --forcerun rollout")
    wrong = copied(ok[0][0], 0, "2-of-2")
    with pytest.raises(InputFileError, match=r"holds the rows \[0, 2\) of shard 1-of-2, not those of shard 2-of-2.*"
                                             + re.escape(fix)):
        gather_rollout([[ok[0][0], wrong], ok[1]], tmp_path / "bad.npz", [0, 1])
    wrong = copied(ok[0][0], 1, "1-of-2")
    with pytest.raises(InputFileError, match=r"policy-1/shards/1-of-2/rollout.npz: holds the rollouts of policy 0 "
                                             r"\(results/tiny-policy/train/seed-0/checkpoint\), but it stands for "
                                             r"policy 1"):
        gather_rollout([ok[0], [wrong, ok[1][1]]], tmp_path / "bad.npz", [0, 1])

    def reseeded(arrays):
        settings = json.loads(str(arrays["config_json"]))
        settings["rollout"]["seed"] = 7
        arrays["config_json"] = np.asarray(json.dumps(settings, sort_keys=True, separators=(",", ":")))

    wrong = copied(ok[0][1], 0, "2-of-2", reseeded)
    with pytest.raises(InputFileError, match=r"policy-0/shards/2-of-2/rollout.npz: its settings differ from those of "
                                             r".*policy-0/shards/1-of-2/rollout.npz.* at rollout.seed"):
        gather_rollout([[ok[0][0], wrong], ok[1]], tmp_path / "bad.npz", [0, 1])
    wrong = copied(ok[0][1], 0, "2-of-2", lambda a: a["success"].__setitem__((0, 0, 0), ~a["success"][0, 0, 0]))
    with pytest.raises(InputFileError, match=r"2-of-2/rollout.npz: its arrays differ from the digest"):
        gather_rollout([[ok[0][0], wrong], ok[1]], tmp_path / "bad.npz", [0, 1])
    assert not (tmp_path / "bad.npz").exists()


def test_a_rollout_file_that_contradicts_itself_is_refused_naming_the_array(loop, tmp_path):
    """Issue 34's defects 3-5: a success flipped (with and without a matching digest), success cut to [5, 3], an
    episode removed from every per-episode array: load_rollout names the file and the array, and the answers stop."""
    from mimic_redundancy.core.io import InputFileError, rollout_digest

    good = load_npz(loop[0] / "results/trained/rollout.npz", ROLLOUT_ARRAYS)

    def damaged(change, redigest=False):
        arrays = {k: v.copy() for k, v in good.items()}
        change(arrays)
        if redigest:
            arrays["arrays_digest"] = np.asarray(rollout_digest(arrays))
        path = tmp_path / "rollout.npz"
        np.savez(open(path, "wb"), **arrays)
        return path

    flip = lambda a: a["success"].__setitem__((0, 0, 0), ~a["success"][0, 0, 0])
    with pytest.raises(InputFileError, match=r"array 'success' contradicts the others at policy 0, rule K=1, episode 0"):
        load_rollout(damaged(flip, redigest=True))
    with pytest.raises(InputFileError, match="contradicts the others|differ from the digest"):
        load_rollout(damaged(flip))
    with pytest.raises(InputFileError, match=r"array 'success' has shape \(5, 3\), but 2 policies, \d rules and 4 "
                                             r"episodes need \(2, \d, 4\)"):
        load_rollout(damaged(lambda a: a.update(success=np.zeros((5, 3), bool))))

    def drop_episode(a):
        for key, spec in ROLLOUT_ARRAYS.items():
            axes = [d.strip() for d in spec.split("[", 1)[1].split("]", 1)[0].split(",")] if "[" in spec else []
            if "S" in axes:
                a[key] = np.delete(a[key], 3, axis=axes.index("S"))

    with pytest.raises(InputFileError, match=r"holds 3 episodes, but the run rolled out 4 \(total_episodes\)"):
        load_rollout(damaged(drop_episode, redigest=True))


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
    """Policy 0's rollout rerun from scratch as 2 shard jobs, one at a time; once one has written its part, the other
    is killed (SIGKILL) while it rolls out: the run fails and leaves no part for it. The next run redoes that shard
    alone (then the gather and what follows), and the gathered rollout equals the shared run's bit for bit."""
    workdir = copy_run(loop[0], tmp_path / "run")
    before = load_rollout(workdir / "results/trained/rollout.npz")
    parts = {s: workdir / f"results/trained/rollout/policy-0/shards/{s}/rollout.npz" for s in ["1-of-2", "2-of-2"]}
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
                log = (workdir / f"results/trained/rollout/policy-0/shards/{victim}/logs/rollout.log").resolve()
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
    # the killed shard alone, then what reads the gathered file (the decision against K=10 and the Pareto figure too)
    assert executed_rules(redo) == ["gather_rollout", "plot_pareto", "plot_rollout", "rollout", "rollout_metrics",
                                    "rollout_versus", "rollout_videos"]
    assert (f"Reason: Missing output files: results/trained/rollout/policy-0/shards/{victim}/rollout.npz"
            in redo.stdout + redo.stderr)
    _same_rollout(load_rollout(workdir / "results/trained/rollout.npz"), before)


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
    answers = ["plot_pareto", "plot_rollout", "rollout_metrics", "rollout_versus"]  # what reads rollout.npz's answers
    assert plan({"rollout": {"steps": [1, 2, 10]}}) == sorted(["gather_rollout", "rollout_videos", *answers]
                                                              + ["rollout"] * 4)
    assert plan({"plot": {"dpi": 72}}) == ["plot_pareto", "plot_rollout"]
    assert plan({"rollout": {"margin": 0.1}}) == answers
    assert plan({"rollout": {"alpha": 0.01}}) == answers
    # a third policy: its training and rollouts, the gather and what reads it; the first two stay
    assert plan({"train": {"steps": 30, "seeds": [0, 1, 2]}}) == sorted(["gather_rollout", "rollout_videos", "train",
                                                                        *answers] + ["rollout"] * 2)
    # the test set instead of dev: every policy's rollouts and the baseline on it; no training
    assert plan({"rollout": {"set": "test"}, "sets": {"test": {"layout_seeds": [2], "layouts": 4}}}) == \
        sorted(["gather_rollout", "nearest_demo", "rollout_videos", *answers] + ["rollout"] * 4)


def test_bad_rollout_settings_stop_the_dag_naming_the_key(loop, tmp_path):
    workdir = copy_run(loop[0], tmp_path / "run")
    for extra, words in [({"rollout": {"steps": [0, 10]}}, "rollout.steps"),
                         ({"rollout": {"steps": [1, 11]}}, "rollout.steps': [11] exceed probe.steps (10)"),
                         ({"rollout": {"stop_steps": [12]}}, "rollout.stop_steps': [12] exceed probe.steps"),
                         ({"inputs": {"frame_window": "forward"}}, "inputs.frame_window"),
                         ({"sim": {"tasks": {"no-such-task-v3": "x"}}}, "unknown Meta-World task 'no-such-task-v3'"),
                         ({"sim": {"camera": "ceiling"}}, "unknown camera 'ceiling'"),
                         ({"sets": {"dev": {"layout_seeds": [0, 1], "layouts": 4}}},
                          "config keys 'sets.demos' and 'sets.dev': the episode sets overlap at 4 layouts (seed 0 "
                          "layout 0, seed 0 layout 1"),
                         ({"sets": {"test": {"layout_seeds": [2], "first": 40, "layouts": 20}}},
                          "'sets.test': layouts 40 .. 59 asked, but MT1 has 50"),
                         ({"train": {"seeds": []}}, "config key 'train.seeds': [] should be non-empty"),
                         ({"train": {"seeds": [0, 0]}}, "config key 'train.seeds': [0, 0] has non-unique elements"),
                         ({"train": {"seeds": [0.5]}}, "config key 'train.seeds.0': 0.5 is not of type 'integer'"),
                         ({"rollout": {"margin": 1.5}}, "config key 'rollout.margin': 1.5 is greater than or equal to "
                                                        "the maximum of 1"),
                         ({"rollout": {"alpha": 0.5}}, "config key 'rollout.alpha': 0.5 is greater than or equal to "
                                                       "the maximum of 0.5"),
                         ({"rollout": {"reference": 5}}, "config key 'rollout.reference': K=5 is not rolled out"),
                         ({"rollout": {"steps": [10], "stop_steps": [], "clean_change": False}},
                          "K=10 is the reference and the only rule"),
                         ({"rollout": {"probeflow": [1.5]}},
                          "config key 'rollout.probeflow.0': 1.5 is greater than or equal to the maximum of 1"),
                         ({"rollout": {"dense_jump": [{"jump_point": 1.0, "steps": 3}]}},
                          "config key 'rollout.dense_jump.0.jump_point': 1.0 is greater than or equal to the maximum "
                          "of 1")]:
        result = run_loop(workdir, *TARGETS, "-n", "--forcerun", "rollout", extra=extra)
        assert result.returncode != 0 and words in result.stdout + result.stderr, (extra, result.stderr[-2000:])


def test_a_policy_or_dataset_that_does_not_fit_the_simulator_is_refused(loop, tmp_path):
    import torch

    from mimic_redundancy.data.readers import DataError
    from mimic_redundancy.model.model import DimensionError
    from mimic_redundancy.pipeline import sim_stages as stages

    workdir = loop[0]
    settings = cfg.rollout_settings(loop_config(workdir), "trained")
    settings["model"]["checkpoint"] = str(workdir / "results/tiny-policy/train/seed-0/checkpoint")
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


def test_the_study_configs_plan_what_they_say(tmp_path):
    """configs/metaworld-study.yaml (3 policies x 50 test layouts x 3 tasks, every rule) and its cluster version
    (5 policies x 800 layouts per task, 32 shards): planned by dry run, one train job per policy and one rollout job
    per policy and shard; the test set, and no demos overlap."""
    from mimic_redundancy.sim.policy import rules_of

    workdir = copy_workflow(tmp_path / "run")
    shutil.copytree(REPO / "configs", workdir / "configs")
    files = ["configs/metaworld.yaml", "configs/metaworld-3tasks.yaml", "configs/metaworld-study.yaml"]
    here = planned_rules(workdir, "--configfile", *files)
    assert here.count("train") == 3 and here.count("rollout") == 3 * 2 and here.count("nearest_demo") == 1
    cluster = planned_rules(workdir, "--configfile", *files, "configs/metaworld-study-cluster.yaml")
    assert cluster.count("train") == 5 and cluster.count("rollout") == 5 * 32 and cluster.count("gather_rollout") == 1
    config = cfg.validate_config(merged(*[yaml.safe_load((workdir / f).read_text()) for f in
                                          ["config.yaml", *files, "configs/metaworld-study-cluster.yaml"]]))
    settings = cfg.rollout_settings(config, "trained", 4)
    assert settings["episodes"] == {"set": "test", "layout_seeds": list(range(2, 18)), "first": 0, "layouts": 50}
    assert settings["model"]["checkpoint"] == "results/tiny-policy/train/seed-4/checkpoint"
    names = {rule.name for rule in rules_of(settings["rollout"], 0.3)}
    assert names >= {"K=10", "K=16", "K=50", "ProbeFlow cos>0.992", "dense-jump@0.5 NFE 3", "stop@40 clean"}
