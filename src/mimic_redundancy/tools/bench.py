"""Benchmarks of the speed goals, as ratios measured side by side in one run (`make bench`).

Writes results/bench/summary.json and summary.md. Every entry records its value, its goal,
whether the goal is met, and how it was measured (repeats, min/median/max of each side).
Both files are rewritten (atomically) as each benchmark starts and ends, and a line is printed then,
so a bench that is stopped keeps what finished; `completed` says whether every benchmark ran to its end.
The 1,000-sample sharding study (about half an hour on 2 cores) runs only with --full.
Run on an otherwise idle machine: the ratios are robust to a uniformly slower machine, not to
another process competing for the cores in the middle of a measurement.
"""
from __future__ import annotations

import argparse
import csv
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parents[3]
PROMPTS = ["pick up the red block", "open the top drawer"]


def _tiny():
    """The embedded default's whole-model settings and inputs, from config.yaml (the one place they are set)."""
    from mimic_redundancy.pipeline import config as cfg

    config = cfg.default_config()
    spec = config["presets"]["tiny"]
    return {**cfg.model_settings(config, "tiny"), **spec, "device": "cpu"}, cfg.input_settings(config)


def _stats(seconds: list[float]) -> dict:
    return {"repeats": len(seconds), "min": min(seconds), "median": statistics.median(seconds), "max": max(seconds)}


def _side_by_side(a, b, repeats: int) -> tuple[list[float], list[float]]:
    """Time `a` and `b` alternately (after one warm-up each), so drift hits both alike."""
    a(), b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times_a, times_b


def _entry(value: float, goal: str, met: bool, how: str, **measured) -> dict:
    return {"value": value, "goal": goal, "met": met, "how": how, "measured": measured}


def model_benchmarks(repeats: int, steps: int = 50) -> dict:
    import torch

    from mimic_redundancy.analysis.backbone import recompute_sample
    from mimic_redundancy.analysis.probe import probe_trajectory, synthetic_batch
    from mimic_redundancy.model.model import build_model
    from mimic_redundancy.model.sampling import library_sample, video_hiddens

    torch.set_num_threads(2)
    tiny, inputs = _tiny()
    net = build_model(tiny, torch.device("cpu"))
    pairs = [(seed, PROMPTS[seed % 2]) for seed in range(16)]
    results = {}

    batch = synthetic_batch(net, pairs[:8], inputs, "cpu")
    hiddens = video_hiddens(net, batch)
    probe_t, sample_t = _side_by_side(lambda: probe_trajectory(net, batch, hiddens, steps),
                                      lambda: library_sample(net, batch, hiddens, steps), repeats)
    # each probe run over the sample run beside it: drift between repeats (another job starting) cancels in a pair;
    # the two runs do the same maths (model.sampling.euler_steps is MimicVideo.sample's loop), so what is left is noise
    side_by_side = [p / q for p, q in zip(probe_t, sample_t)]
    ratio = statistics.median(side_by_side)
    results["probe_overhead_ratio"] = _entry(
        ratio, "<= 1.05", ratio <= 1.05,
        f"probe_trajectory (records x_t and x1_hat every step) / MimicVideo.sample, batch 8, {steps} steps, "
        "same cached hiddens; median of the ratios of runs side by side", probe_seconds=_stats(probe_t),
        sample_seconds=_stats(sample_t), pairwise_ratios=side_by_side,
        ratio_of_medians=statistics.median(probe_t) / statistics.median(sample_t))

    one = synthetic_batch(net, pairs[:1], inputs, "cpu")
    seed = one.seeds[0]
    recompute_t, cached_t = _side_by_side(
        lambda: recompute_sample(net, one, steps, seed, fixed_video_noise=False),
        lambda: library_sample(net, one, video_hiddens(net, one), steps), repeats)
    speedup = statistics.median(recompute_t) / statistics.median(cached_t)
    results["cache_speedup"] = _entry(
        speedup, ">= 1.4 (tiny, CPU)", speedup >= 1.4,
        f"MimicVideo.sample(video=...) recomputing the video hiddens every step / hiddens computed once "
        f"(included) + MimicVideo.sample(video_hiddens=...), batch 1, {steps} steps; medians",
        recompute_seconds=_stats(recompute_t), cached_seconds=_stats(cached_t),
        projection_cosmos_7b=cosmos_projection(steps))

    sixteen = synthetic_batch(net, pairs, inputs, "cpu")
    hiddens16, hiddens1 = video_hiddens(net, sixteen), video_hiddens(net, one)
    b16_t, b1_t = _side_by_side(lambda: library_sample(net, sixteen, hiddens16, steps),
                                lambda: library_sample(net, one, hiddens1, steps), repeats)
    throughput = (16 / statistics.median(b16_t)) / (1 / statistics.median(b1_t))
    results["batch16_throughput_ratio"] = _entry(
        throughput, ">= 2.0 (2-core CPU)", throughput >= 2.0,
        f"samples/s of MimicVideo.sample at batch 16 / at batch 1, cached hiddens, {steps} steps; medians",
        batch16_seconds=_stats(b16_t), batch1_seconds=_stats(b1_t))
    return results


def rule_overheads(repeats: int, batch: int = 8) -> dict:
    """What a sampling rule costs beyond its head evaluations (issue 32: at most 5% of the head's time per decision):
    per rule, its wall time per decision over (its mean NFE x one Euler evaluation's time), beside a 10-step Euler
    decision of the same batch, side by side (the tiny default model, cached hiddens, batch 8)."""
    import numpy as np
    import torch

    from mimic_redundancy.analysis.probe import synthetic_batch
    from mimic_redundancy.model.model import build_model
    from mimic_redundancy.model.sampling import video_hiddens
    from mimic_redundancy.sim.policy import Rule, sample_chunk

    torch.set_num_threads(2)
    tiny, inputs = _tiny()
    net = build_model(tiny, torch.device("cpu"))
    samples = synthetic_batch(net, [(seed, PROMPTS[seed % 2]) for seed in range(batch)], inputs, "cpu")
    hiddens = video_hiddens(net, samples)
    euler = Rule("fixed_k", 10.0)
    out = {}
    for rule in [Rule("probeflow", 0.992), Rule("dense_jump", 0.5, 3), Rule("clean_change", 0.05),
                 Rule("fixed_step_clean", 10.0)]:
        nfe = float(np.mean(sample_chunk(net, samples, hiddens, rule, 50)[1]))
        rule_t, euler_t = _side_by_side(lambda: sample_chunk(net, samples, hiddens, rule, 50),
                                        lambda: sample_chunk(net, samples, hiddens, euler, 50), repeats)
        ratios = [r / (nfe * e / 10) for r, e in zip(rule_t, euler_t)]
        out[rule.name] = {"mean_nfe": nfe, "ratio": statistics.median(ratios), "pairwise_ratios": ratios,
                          "rule_seconds": _stats(rule_t), "euler10_seconds": _stats(euler_t)}
    worst = max(v["ratio"] for v in out.values())
    return {"rule_overhead_ratio": _entry(
        worst, "<= 1.05", worst <= 1.05,
        "per rule: wall seconds of a decision / (its mean NFE x a 10-step Euler decision's seconds / 10), side by side, "
        f"tiny default model, batch {batch}, cached hiddens; the largest over the rules (each in `rules`)", rules=out)}


def training_from_features(steps: int, draws: int, seeds: list[int], out: Path | None = None,
                           score_steps: int | None = None) -> dict:
    """The head trained from cached features (`draws` per window) against mimic-video's own loop
    (MimicVideo.forward(video=...), the backbone run every step), from the same initial head, at equal steps, on
    the default's synthetic training pool; scored by the final actions' MSE vs ground truth on the probe samples,
    sampled with `score_steps` Euler steps (default: the default config's probe.steps)."""
    import torch

    from mimic_redundancy.analysis.metrics import write_csv
    from mimic_redundancy.data.samples import synthetic_samples
    from mimic_redundancy.model.features import compute_features
    from mimic_redundancy.model.model import attach_backbone, build_backbone, build_head
    from mimic_redundancy.model.sampling import library_sample
    from mimic_redundancy.model.train import train_library, train_model
    from mimic_redundancy.pipeline import config as cfg

    torch.set_num_threads(2)
    config = cfg.default_config()
    head_settings, inputs = cfg.model_settings(config, "tiny"), cfg.input_settings(config)
    dims = {"chunk_len": 32, "action_dim": 20, "joint_dim": 32}
    wrapper = build_backbone(cfg.backbone_spec(config, "tiny"), torch.device("cpu"))
    pool = synthetic_samples([tuple(p) for p in cfg.train_data_settings(config)["samples"]], inputs, dims)
    held_out = compute_features(wrapper, synthetic_samples(cfg.samples(config), inputs, dims), "cpu")
    batch = held_out.batch(slice(None), "cpu")
    score_steps = score_steps or config["probe"]["steps"]

    def score(head) -> float:
        with torch.no_grad():
            actions = library_sample(head, batch, batch.hiddens, score_steps)
        return float(((actions - held_out.gt_actions) ** 2).mean())

    runs, curves = {"library": [], "features": []}, []
    for seed in seeds:
        settings = {**{k: config["train"][k] for k in ("batch_size", "lr")}, "steps": steps, "seed": seed}
        whole = attach_backbone(build_head(head_settings, torch.device("cpu"), dims, wrapper.dim_latent,
                                           wrapper.head_rng_state), wrapper)
        start = time.perf_counter()
        rows_l, _ = train_library(whole, pool, settings, "cpu")
        library_s = time.perf_counter() - start
        whole.video_predict_wrapper = None
        start = time.perf_counter()
        rows = compute_features(wrapper, pool, "cpu", draws=draws, draw_seed=seed)
        head = build_head(head_settings, torch.device("cpu"), dims, wrapper.dim_latent, wrapper.head_rng_state)
        rows_f, _ = train_model(head, rows, {**settings, "draws": draws}, "cpu")
        features_s = time.perf_counter() - start
        for name, losses, net, seconds in (("library", rows_l, whole, library_s), ("features", rows_f, head, features_s)):
            tenth = max(1, steps // 10)
            medians = [statistics.median(r["loss"] for r in losses[i:i + tenth]) for i in range(0, steps, tenth)]
            runs[name].append({"seed": seed, "final_mse_vs_gt": score(net), "seconds": seconds,
                               "median_loss_per_tenth": medians})
            curves += [{"mode": name, "seed": seed, "step": r["step"], "loss": r["loss"]} for r in losses]
    if out is not None:
        write_csv(out / "training_curves.csv", curves)
    mean = lambda name: statistics.mean(r["final_mse_vs_gt"] for r in runs[name])
    untrained = score(build_head(head_settings, torch.device("cpu"), dims, wrapper.dim_latent, wrapper.head_rng_state))
    return {"value": mean("features") / mean("library"), "goal": "close to 1 (lower is better)",
            "met": mean("features") <= 1.25 * mean("library"),
            "how": f"final-action MSE vs ground truth on the {len(held_out)} probe samples ({score_steps} Euler steps) "
                   f"after {steps} training steps, head "
                   f"trained from cached features ({draws} draws per window) / by MimicVideo.forward(video=...), same "
                   f"initial head and settings, mean over train seeds {seeds}; untrained head: {untrained:.4f}; "
                   "curves in training_curves.csv",
            "measured": {**runs, "untrained_final_mse_vs_gt": untrained, "draws": draws, "steps": steps,
                         "windows": len(pool), "score_steps": score_steps}}


SIM_FIX = "pip install -e '.[sim]'"


def simulator_missing(backend: str = "metaworld") -> str | None:
    """Why the closed-loop benchmark cannot run here (the simulator does not import or cannot render), or None."""
    try:
        from mimic_redundancy.sim.backends import simulator

        simulator(backend)  # (first: it sets MUJOCO_GL before mujoco loads)
    except ModuleNotFoundError as error:
        return f"the simulator does not import ({error.name or error}): {SIM_FIX}"
    except (ImportError, ValueError) as error:  # SimError: no headless rendering
        return f"{str(error).splitlines()[0]} ({SIM_FIX} installs the simulator)"
    return None


def rollout_throughput(repeats: int, episodes: int | None = None, max_steps: int = 24,
                       ks: tuple[int, ...] | None = None, backend: str = "metaworld") -> dict:
    """Env steps per second of a rollout job (sim.rollout.run_rollouts: every rule on the job's episodes, envs built
    once per episode and reset for each rule) with the policy batched over the job's `episodes` episodes (one batch)
    against one episode at a time (batches of one), on the first task of configs/<backend>.yaml, the first `episodes`
    layouts of its rollout set (sets.<rollout.set>, over config.yaml's sets) (default: a job's batch, the config's
    rollout.batch_size), the rules K in `ks` (default: its rollout.steps), the config's policy shape (preset
    tiny-policy, its inputs and rollout.execute_steps) with a random head and the tiny random backbone, one torch
    thread. Timed alternately (after a short warm-up), `repeats` times each side;
    every side's wall time is split into the rollout's own costs (its seconds: sim, render, backbone, head, summed
    over episodes and rules), building and closing the envs (env_setup), the envs' resets (reset: physics and the
    first frame; the first render of an env creates its GL context), and the rest (other: the loop, the policy's
    inputs)."""
    import yaml

    from mimic_redundancy.sim.backends import simulator

    sim = simulator(backend)  # first: it sets MUJOCO_GL before anything imports mujoco
    import torch

    from mimic_redundancy.model.model import build_backbone, build_head
    from mimic_redundancy.sim.common import set_layouts
    from mimic_redundancy.sim.policy import Policy, Rule
    from mimic_redundancy.sim.rollout import COSTS, run_rollouts

    config = yaml.safe_load((REPO / f"configs/{backend}.yaml").read_text())
    task = next(iter(config["sim"]["tasks"]))
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    episode_set = {**base.get("sets", {}), **config.get("sets", {})}[config["rollout"].get("set", "dev")]
    preset, inputs = config["presets"][config["preset"]], config["inputs"]
    ks = tuple(ks or config["rollout"]["steps"])
    episodes = episodes or config["rollout"]["batch_size"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pipeline's numerics default (config.yaml numerics.threads)
    try:
        device = torch.device("cpu")
        wrapper = build_backbone({"kind": preset["backbone"], "model_seed": 0, "tokenizer": preset["tokenizer"],
                                  "extract_layer": preset["extract_layer"], "dtype": "float32"}, device)
        state = {"observation.state": sim.STATE_DIM, "observation.environment_state": getattr(sim, "ENV_STATE_DIM", 0)}
        dims = {"chunk_len": preset["chunk_len"], "action_dim": sim.ACTION_DIM, "joint_dim": state[inputs["state_key"]]}
        head = build_head({"preset": config["preset"], "dim": preset["dim"], "depth": preset["depth"], "model_seed": 0,
                           "device": "cpu", "chunk_len": preset["chunk_len"]}, device, dims, wrapper.dim_latent,
                          wrapper.head_rng_state)
        policy = Policy(head, wrapper, device, inputs)
        rules = [Rule("fixed_k", float(k)) for k in ks]
        settings = {"execute_steps": config["rollout"]["execute_steps"], "max_steps": max_steps, "seed": 0,
                    "probe_steps": max(ks)}
        layouts = [(task, seed, index) for seed, index in set_layouts(episode_set)][:episodes]
        camera, prompts = config["sim"]["camera"], {task: config["sim"]["tasks"][task]}
        setup = [0.0, 0.0]  # seconds building and closing envs; their sim + render seconds, resets included

        def make_env(task, seed, index):  # times building and closing each env (not among the rollout's costs)
            start = time.perf_counter()
            env = sim.Env(task, seed, index, camera, inputs["height"], inputs["width"])
            setup[0] += time.perf_counter() - start
            close = env.close

            def timed_close():
                setup[1] += env.sim_seconds + env.render_seconds
                begin = time.perf_counter()
                close()
                setup[0] += time.perf_counter() - begin
            env.close = timed_close
            return env

        def side(batches, job_rules=rules, job_settings=settings):
            setup[:] = [0.0, 0.0]
            start = time.perf_counter()
            arrays = run_rollouts(policy, job_rules, layouts, batches, prompts, [task], job_settings, make_env)
            wall = time.perf_counter() - start
            costs = {name: float(arrays["seconds"][..., c].sum()) for c, name in enumerate(COSTS)}
            reset = setup[1] - costs["sim"] - costs["render"]  # the envs' own clocks, less the rollout's steps
            return {"seconds": wall, "steps": int(arrays["steps"].sum()), "successes": int(arrays["success"].sum()),
                    "split": {**costs, "env_setup": setup[0], "reset": reset,
                              "other": wall - sum(costs.values()) - setup[0] - reset}}

        side([[0]], rules[:1], {**settings, "max_steps": 1})  # warm-up
        runs = {"batched": [], "one_at_a_time": []}
        for _ in range(repeats):
            if episodes == 1:  # a batch of one episode is one episode at a time: the same job, run once
                runs["one_at_a_time"].append(side([[0]]))
                runs["batched"].append(runs["one_at_a_time"][-1])
                continue
            runs["batched"].append(side([list(range(episodes))]))
            runs["one_at_a_time"].append(side([[i] for i in range(episodes)]))
    finally:
        torch.set_num_threads(threads)

    def summary(name):
        done = runs[name]
        rates = [r["steps"] / r["seconds"] for r in done]
        split = {key: statistics.mean(r["split"][key] for r in done) for key in done[0]["split"]}
        return {**_stats([r["seconds"] for r in done]), "steps": done[0]["steps"],
                "successes": [r["successes"] for r in done], "steps_per_second": statistics.median(rates),
                "split_seconds": split, "split_fraction": {key: v / sum(split.values()) for key, v in split.items()}}

    batched, single = summary("batched"), summary("one_at_a_time")
    ratio = batched["steps_per_second"] / single["steps_per_second"]
    policy_s = lambda s: s["split_seconds"]["backbone"] + s["split_seconds"]["head"]
    seeds, indices = sorted({e[1] for e in layouts}), [e[2] for e in layouts]
    where = (f"layouts {min(indices)}-{max(indices)} of MT1('{task}', seed={seeds})" if backend == "metaworld" else
             f"{backend} {task} from init states {min(indices)}-{max(indices)} (layout seeds {seeds})")
    name = "rollout_batch_throughput_ratio" if backend == "metaworld" else f"{backend}_rollout_batch_throughput_ratio"
    goal = 4 if backend == "metaworld" else 2
    return {name: _entry(
        ratio, f">= {goal}", ratio >= goal,
        f"env steps/s of a rollout job (sim.rollout.run_rollouts) over {episodes} episodes in one batch / in "
        f"batches of one, rules K = {', '.join(map(str, ks))}, {where}, {max_steps} steps, execute_steps {settings['execute_steps']}, preset {config['preset']} (random "
        f"head: it never succeeds, so every episode runs all {max_steps} steps) on the tiny random backbone, 1 torch "
        f"thread, CPU; medians of {repeats}; wall split (the rollout's sim, render, backbone, head; env setup, "
        "resets, other) in "
        "measured",
        batched=batched, one_at_a_time=single, episodes=episodes, max_steps=max_steps, ks=list(ks),
        policy_only_ratio=policy_s(single) / policy_s(batched))}


def libero_episode_cost(k: int = 10) -> dict:
    """What one LIBERO episode at its suite's step limit costs a rollout job, to size `shards`: the first task of
    configs/libero.yaml from init state 0, the config's policy (random head: it never succeeds, so the episode runs
    every step of the limit) under K = `k`, rendering at the config's size; the env's build (once per episode and
    job), its reset (set_init_state and the no-op steps) and the episode's steps, with their split."""
    import yaml

    from mimic_redundancy.sim import libero_env

    config = yaml.safe_load((REPO / "configs/libero.yaml").read_text())
    task = next(iter(config["sim"]["tasks"]))
    limit = libero_env.step_limit(task)
    start = time.perf_counter()
    built = rollout_throughput(1, episodes=1, max_steps=limit, ks=(k,), backend="libero")
    whole = time.perf_counter() - start
    side = built["libero_rollout_batch_throughput_ratio"]["measured"]["one_at_a_time"]
    seconds = side["split_seconds"]
    return {"libero_episode_seconds": _entry(
        side["median"], "report", True,
        f"one episode of {task} at its suite's limit ({limit} steps), K={k}, execute_steps "
        f"{config['rollout']['execute_steps']}, {config['inputs']['height']} px, 1 torch thread, CPU: the rollout "
        "job's wall time for it, env build and reset included (a job of E episodes and R rules pays the build E times "
        "and about R x E x this less the build)",
        steps=side["steps"], split_seconds=seconds, benchmark_wall_s=whole)}


def cosmos_projection(steps: int) -> dict:
    """PROJECTION, not a measurement: the cache speedup for the Cosmos 7B backbone from FLOPs counted
    (torch FlopCounterMode on the meta device) for one backbone transformer call and one action-head
    step on the pipeline's default input (5 frames of 32x32; the VAE and T5 encoder are left out)."""
    import torch
    from diffusers.models.transformers.transformer_cosmos import CosmosTransformer3DModel
    from mimic_video import MimicVideo
    from mimic_video.cosmos_predict import REAL_TRANSFORMER_CONFIG
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        backbone = CosmosTransformer3DModel(num_layers=28, **REAL_TRANSFORMER_CONFIG)
        head = MimicVideo(512, None, dim_video_hidden=4096, depth=3).eval()
        # 5 frames at 8x temporal / spatial compression: 1 latent frame + 1 predicted, 4 x 4, patches 1x2x2
        latents, text = torch.zeros(1, 16, 2, 4, 4), torch.zeros(1, 8, 1024)
        hiddens = torch.zeros(1, 2 * 2 * 2, 4096)
        with FlopCounterMode(display=False) as backbone_flops:
            backbone(hidden_states=latents, encoder_hidden_states=text, timestep=torch.zeros(1, 1, 2, 1, 1),
                     return_dict=False)
        with FlopCounterMode(display=False) as head_flops:
            head(actions=torch.zeros(1, 32, 20), time=torch.zeros(1), video_hiddens=hiddens,
                 joint_state=torch.zeros(1, 32))
    b, a = backbone_flops.get_total_flops(), head_flops.get_total_flops()
    return {"label": "PROJECTION from counted FLOPs, not a measurement",
            "backbone_gflops_per_call": b / 1e9, "action_head_gflops_per_step": a / 1e9, "steps": steps,
            "projected_speedup": steps * (b + a) / (b + steps * a)}


def _snakemake(workdir: Path, *args: str, env: dict | None = None) -> tuple[float, str]:
    """Seconds of `snakemake --profile profiles/local *args` in `workdir`, and what it printed."""
    start = time.perf_counter()
    run = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--profile", "profiles/local", *args],
                         cwd=workdir, capture_output=True, text=True, env=env)
    if run.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {workdir}:\n{run.stderr[-3000:]}")
    return time.perf_counter() - start, run.stdout + run.stderr


NOTHING_TO_DO = "Nothing to be done"  # what Snakemake prints when every requested file is up to date


def slurm_probe(timeout: float = 30.0) -> dict:
    """What every `snakemake` command pays before it reads the workflow where the Slurm client is installed:
    snakemake-executor-plugin-slurm runs `scontrol show config` while it is imported (10 s timeout), whatever the
    profile. Seconds of that command here, and whether a controller answered (no scontrol: nothing to pay)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        return {"scontrol": None, "answered": None, "seconds": 0.0}
    start = time.perf_counter()
    try:
        answered = subprocess.run([scontrol, "show", "config"], capture_output=True, timeout=timeout).returncode == 0
    except subprocess.TimeoutExpired:
        answered = False
    return {"scontrol": scontrol, "answered": answered, "seconds": time.perf_counter() - start}


def workflow_env(probe: dict, stub_dir: Path) -> tuple[dict | None, str]:
    """The environment of the bench's Snakemake runs: this one, unless the Slurm client is installed and no controller
    answers (a machine where slurmctld is not running, e.g. just booted): then every snakemake command would wait ~9 s
    for scontrol before reading the workflow, a cost of this machine's Slurm setup, not of the workflow
    (docs/troubleshooting.md), so the runs see an `scontrol` that fails at once (stub_dir first on PATH: the plugin then
    skips its probe, as where Slurm is not installed). The local profile submits nothing to Slurm."""
    import os

    if probe["answered"] is not False and probe["seconds"] < 1.0:
        return None, "as is"
    stub_dir.mkdir(parents=True, exist_ok=True)
    stub = stub_dir / "scontrol"
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    return ({**os.environ, "PATH": f"{stub_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
            f"scontrol stubbed: `scontrol show config` took {probe['seconds']:.1f} s here "
            f"({'a slow controller' if probe['answered'] else 'no controller answered'})")


def pipeline_benchmarks(workdir: Path, noop_repeats: int) -> dict:
    """A full run of the embedded default in a fresh copy, then a plot-only change, then no-op runs (each checked to
    be one: Snakemake says there is nothing to be done)."""
    _copy_workflow(workdir)
    probe = slurm_probe()
    env, slurm = workflow_env(probe, workdir / ".bench-bin")
    full, _ = _snakemake(workdir, env=env)
    (workdir / "plot-only.yaml").write_text("plot: {dpi: 100}\n")  # only a figure option changes
    plot_only, printed = _snakemake(workdir, "--configfile", "plot-only.yaml", env=env)
    plot_jobs = sorted(set(re.findall(r"\(Rule: (\w+)\)", printed)))
    noop = []
    for _ in range(noop_repeats):
        seconds, printed = _snakemake(workdir, "--configfile", "plot-only.yaml", env=env)
        if NOTHING_TO_DO not in printed:
            raise RuntimeError(f"a no-op run of the up-to-date default did something:\n{printed[-3000:]}")
        noop.append(seconds)
    start, _ = _snakemake(workdir, "--version", env=env)
    fraction = plot_only / full
    bootstrap = bootstrap_cost(workdir)
    rss = {}
    for tsv in sorted((workdir / "results").glob("*/benchmarks/*.tsv")):
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rss[f"{tsv.parent.parent.name}/{tsv.stem}"] = {
            "peak_rss_mb": float(row["max_rss"]) if row["max_rss"] not in ("", "NA") else None, "seconds": float(row["s"])}
    # a job that builds the backbone logs it ("built the <kind> backbone"); the head-only jobs log "(no backbone)"
    builds = {p.name: sorted(log.stem for log in (p / "logs").glob("*.log") if " backbone on " in log.read_text())
              for p in sorted((workdir / "results").iterdir()) if (p / "logs").is_dir()}
    head_jobs = ("validate", "probe", "sweep", "train")
    return {
        "backbone_builds_per_study": _entry(
            len(builds.get("tiny", [])), "<= 3, the backbone stages only",
            set(builds.get("tiny", [])) <= {"features", "depth_features", "backbone"},
            "jobs of the default DAG's preset tiny whose log says they built the video backbone: at most features, "
            "depth_features (hiddens at other video times) and backbone (the per-step recompute), never a head "
            "stage (was 5: validate, probe, sweep, backbone, train)", jobs=builds),
        "head_job_peak_rss_mb": {"value": {k: v["peak_rss_mb"] for k, v in rss.items() if k.split("/")[1] in head_jobs},
                                 "how": "max_rss of each head-only job (no backbone built), from Snakemake's "
                                        "benchmark: files"},
        "default_run_seconds": _entry(full, "<= 300 (2 cores)", full <= 300,
                                      "wall time of the embedded default's whole DAG (make run, fresh copy, local "
                                      "profile); stages: seconds of each job (Snakemake's benchmark: files)",
                                      stages={k: v["seconds"] for k, v in rss.items()}),
        "plot_only_fraction": _entry(fraction, "<= 0.05", fraction <= 0.05,
                                     "wall time of snakemake after changing only plot.dpi / a full run of the "
                                     f"embedded default (fresh copy, local profile, 2 cores); one run each; Slurm: "
                                     f"{slurm}", full_seconds=full, plot_only_seconds=plot_only, jobs=plot_jobs),
        "bootstrap_seconds_per_preset": bootstrap,
        "noop_seconds": _entry(statistics.median(noop), "<= 1.5", statistics.median(noop) <= 1.5,
                               "wall time of snakemake when everything is up to date (each run checked: 'Nothing to "
                               f"be done'; median); Slurm: {slurm}", **_stats(noop), snakemake_version_seconds=start,
                               slurm_probe=probe),
        "peak_rss_mb": {"value": {k: v["peak_rss_mb"] for k, v in rss.items()},
                        "how": "max_rss of each job, from Snakemake's benchmark: files (results/<preset>/benchmarks)",
                        "measured": rss},
    }


def interval_tables(workdir: Path, config: dict, resamples: int, out: Path) -> float:
    """Seconds (in process, imports done) to write every table with intervals (metrics, sweep, backbone, early stop,
    depth) of every preset of a finished run in `workdir` (its validated `config`), with `resamples` bootstrap
    resamples, into `out`."""
    from mimic_redundancy.analysis import depth, early_stop, metrics
    from mimic_redundancy.pipeline import config as cfg

    start = time.perf_counter()
    for results in sorted(p for p in (workdir / "results").iterdir() if (p / "probe.npz").is_file()):
        to = out / results.name
        to.mkdir(parents=True, exist_ok=True)
        names = ["table", "early_exit", "thresholds", "parts", "part_errors", "summary"]
        metrics.write_metrics(results / "probe.npz", {**cfg.metrics_settings(config), "bootstrap": resamples},
                              {name: to / f"{name}.out" for name in names})
        metrics.write_sweep_metrics(results / "sweep.npz", results / "probe.npz", to / "sweep.csv", resamples)
        metrics.write_backbone_metrics(results / "backbone.npz", to / "backbone.csv", to / "backbone.json", resamples)
        early_stop.write_early_stop(results / "probe.npz", results / "sweep.npz",
                                    {**cfg.early_stop_settings(config), "bootstrap": resamples},
                                    to / "early_stop.csv", to / "early_stop.json")
        depth.write_depth_metrics(results / "depth.npz", to / "depth.csv", to / "depth.json", resamples)
    return time.perf_counter() - start


def bootstrap_cost(workdir: Path, overrides: dict | None = None, repeats: int = 3) -> dict:
    """What the intervals' bootstrap adds to the table stages of a finished run (the default, or its config.yaml with
    `overrides`), per preset: the tables with metrics.bootstrap resamples minus the same tables with 1 resample
    (median of `repeats`, the two in turn)."""
    import yaml

    from mimic_redundancy.pipeline import config as cfg

    config = cfg.validate_config({**yaml.safe_load((workdir / "config.yaml").read_text()), **(overrides or {})})
    resamples = config["metrics"]["bootstrap"]
    presets = sum(1 for p in (workdir / "results").iterdir() if (p / "probe.npz").is_file())
    with tempfile.TemporaryDirectory() as tmp:
        full, one = _side_by_side(lambda: interval_tables(workdir, config, resamples, Path(tmp) / "full"),
                                  lambda: interval_tables(workdir, config, 1, Path(tmp) / "one"), repeats)
    per_preset = (statistics.median(full) - statistics.median(one)) / presets
    return _entry(per_preset, "<= 2 s per preset", per_preset <= 2.0,
                  f"the default run's tables with intervals (metrics, sweep, backbone, early stop, depth), written in "
                  f"process from its NPZ files with metrics.bootstrap = {resamples} resamples minus with 1, per "
                  f"preset ({presets}); median of {repeats}, the two in turn",
                  tables_seconds=_stats(full), one_resample_seconds=_stats(one),
                  ratio=statistics.median(full) / statistics.median(one))


def _copy_workflow(workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ["Snakefile", "config.yaml", "rules", "scripts", "schemas", "src", "envs", "profiles", "report"]:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, workdir / name)
    return workdir


def _job_peaks(results: Path) -> dict[str, float]:
    """Peak RSS (MB) of every job, from the last line each stage writes to its log (log.PEAK_RSS)."""
    import re

    peaks = {}
    for log in sorted(results.rglob("logs/*.log")):
        found = re.findall(r"peak RSS of this job: ([\d.]+) MB", log.read_text())
        if found:
            peaks[str(log.relative_to(results).with_suffix("")).replace("/logs/", "/")] = float(found[-1])
    return peaks


def shard_benchmarks(workdir: Path, samples: int = 1000, steps: int = 50, shards: tuple[int, ...] = (1, 8)) -> dict:
    """A probe of `samples` synthetic samples x `steps` steps on the tiny model with each shard count, and the
    8-sample job it is judged against: each shard job's peak RSS, the gather's, the metrics' and plots'."""
    import json

    targets = ["results/tiny/probe.npz", "results/tiny/metrics.csv", "results/tiny/figures/convergence.png",
               "results/tiny/figures/heatmaps.png"]
    base = {"compare": [], "probe": {"steps": steps, "batch_size": 8}, "early_stop": {"target_step": min(5, steps)},
            "metrics": {"probe_steps": sorted({max(1, steps * i // 10) for i in range(1, 11)})},
            "presets": {"trained": {"checkpoint": "checkpoints/untrained"}}}  # no training draws in the features
    env, _ = workflow_env(slurm_probe(), workdir / "bin")
    runs = {}
    for label, seeds, count in [("8 samples", 4, 1)] + [(f"{samples} samples, {n} shards", samples // 2, n)
                                                        for n in shards]:
        run = _copy_workflow(workdir / f"run-{len(runs)}")
        (run / "bench.yaml").write_text(json.dumps({**base, "seeds": list(range(seeds)), "shards": count}))
        start = time.perf_counter()
        _snakemake(run, *targets, "--configfile", "bench.yaml", env=env)
        wall = time.perf_counter() - start
        peaks = _job_peaks(run / "results")
        probe_seconds = [float(next(csv.DictReader(open(t), delimiter="\t"))["s"])
                         for t in (run / "results/tiny").rglob("benchmarks/probe.tsv")]
        gather = (run / "results/tiny/logs/gather_probe.log")
        runs[label] = {"wall_seconds": wall, "shards": count, "samples": 2 * seeds, "peak_rss_mb": peaks,
                       "probe_job_seconds": probe_seconds,
                       "samples_per_second": 2 * seeds / wall,
                       "gather_seconds": float(re.search(r"in ([\d.]+) s", gather.read_text()).group(1))
                       if gather.exists() else None}
    one = runs["8 samples"]["peak_rss_mb"]["tiny/probe"]
    wide = runs[f"{samples} samples, {max(shards)} shards"]["peak_rss_mb"]
    shard_peaks = {k: v for k, v in wide.items() if k.startswith("tiny/shards/") and k.endswith("/probe")}
    after = {k: v for k, v in wide.items() if k.split("/")[-1] in ("gather_probe", "metrics", "plot", "plot_heatmaps")}
    worst = max(shard_peaks.values()) / one
    return {
        "shard_job_peak_rss_mb": _entry(
            max(shard_peaks.values()), f"<= 1.5 x {one:.0f} (the 8-sample probe job)", worst <= 1.5,
            f"peak RSS (ru_maxrss, in each job's log) of the probe shard jobs of {samples} samples x {steps} steps "
            f"in {max(shards)} shards, vs the probe job of 8 samples", ratio=worst, eight_sample_job=one,
            shards=shard_peaks),
        "gather_metrics_plots_peak_rss_mb": _entry(
            max(after.values()), f"<= {one:.0f} (one 8-sample probe job)", max(after.values()) <= one,
            f"peak RSS of the jobs after the shards ({samples} samples): gather, metrics, plots", jobs=after),
        "gather_seconds": {"value": runs[f"{samples} samples, {max(shards)} shards"]["gather_seconds"],
                           "how": f"the gather_probe job's own time for {samples} samples (its log)"},
        "samples_per_second": {"value": {str(r["shards"]): r["samples_per_second"] for k, r in runs.items()
                                         if k != "8 samples"},
                               "how": f"{samples} samples / wall time of features + validate + probe (+ gather) "
                                      "+ metrics + plots, per shard count, local profile on this machine's cores "
                                      "(shards share the cores here; on a cluster each has its own GPU)",
                               "measured": runs},
    }


def markdown(summary: dict) -> str:
    lines = []
    if "completed" in summary:
        entries = summary.get("entries", {})
        if summary["completed"]:
            lines.append("Completed: every benchmark ran to its end.\n")
        else:
            running = f" (stopped or still running in `{summary['running']}`)" if summary.get("running") else ""
            failed = [k for k, v in entries.items() if v["status"] != "done"]
            lines.append(f"**Incomplete**{running}: finished {[k for k in entries if k not in failed]}"
                         + (f", failed {failed}" if failed else "") + ".\n")
        if entries:
            done = [f"{k} {v['seconds']:.1f}" + ("" if v["status"] == "done" else f" ({v['status']})")
                    for k, v in entries.items()]
            lines.append("Benchmarks (seconds): " + ", ".join(done) + ".\n")
        for key, why in summary.get("skipped", {}).items():
            lines.append(f"Skipped: {key}: {why}\n")
    lines += ["| measure | value | goal | met | how |", "|---|---|---|---|---|"]
    for key, entry in summary["results"].items():
        if key == "samples_per_second":
            value = ", ".join(f"{k} shard(s) {v:.2f}" for k, v in entry["value"].items())
            lines.append(f"| {key} | {value} | | | {entry['how']} |")
            continue
        if key in ("peak_rss_mb", "head_job_peak_rss_mb"):
            value = ", ".join(f"{k} {v:.0f}" for k, v in entry["value"].items() if v is not None)
            lines.append(f"| {key} | {value} | | | {entry['how']} |")
            continue
        if "goal" not in entry:
            lines.append(f"| {key} | {entry['value']:.3g} | | | {entry['how']} |")
            continue
        lines.append(f"| {key} | {entry['value']:.3g} | {entry['goal']} | {'yes' if entry['met'] else 'NO'} "
                     f"| {entry['how']} |")
    stages = summary["results"].get("default_run_seconds", {}).get("measured", {}).get("stages")
    if stages:
        lines.append("\nStages of the default run (seconds): " + ", ".join(
            f"{k} {v:.1f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])) + ".")
    projection = summary["results"].get("cache_speedup", {}).get("measured", {}).get("projection_cosmos_7b")
    if projection:
        lines.append(f"\nProjection (counted FLOPs, not measured): cache speedup for Cosmos 7B at {projection['steps']} "
                     f"steps = {projection['projected_speedup']:.1f}x (backbone {projection['backbone_gflops_per_call']:.0f} "
                     f"GFLOP per call, action head {projection['action_head_gflops_per_step']:.2f} GFLOP per step).")
    for name, title in [("rollout_batch_throughput_ratio", "Closed-loop rollout"),
                        ("libero_rollout_batch_throughput_ratio", "LIBERO closed-loop rollout")]:
        rollout = summary["results"].get(name, {}).get("measured")
        if not rollout:
            continue
        split = lambda side: ", ".join(f"{k} {v:.2f}" for k, v in rollout[side]["split_seconds"].items())
        lines.append(f"\n{title} ({rollout['episodes']} episodes x {rollout['max_steps']} steps, "
                     f"rules K = {', '.join(map(str, rollout['ks']))}): batched "
                     f"{rollout['batched']['steps_per_second']:.1f} env steps/s, one episode at a time "
                     f"{rollout['one_at_a_time']['steps_per_second']:.1f} (policy alone "
                     f"{rollout['policy_only_ratio']:.1f}x faster batched). Wall seconds per run, batched: "
                     f"{split('batched')}; one at a time: {split('one_at_a_time')}.")
    episode = summary["results"].get("libero_episode_seconds")
    if episode:
        lines.append(f"\nOne LIBERO episode at its suite's limit ({episode['measured']['steps']} steps): "
                     f"{episode['value']:.1f} s (" + ", ".join(f"{k} {v:.1f}" for k, v in
                                                       episode["measured"]["split_seconds"].items()) + ").")
    return "\n".join(lines) + "\n"


def run_entries(entries: Iterable[tuple[str, Callable[[], dict]]], out: Path, header: dict | None = None,
                skipped: dict | None = None) -> dict:
    """Run the benchmarks `entries` ((name, fn): fn() returns a dict of results) one after the other.

    Prints `bench: <name> ... started` and `bench: <name> done in <s> s` (flushed) around each, and rewrites
    out/summary.json and out/summary.md (atomically: a temporary file renamed over the old one) as each starts
    and ends, so a bench that is killed keeps every benchmark that finished. A benchmark that raises is
    recorded as failed (its error and traceback on stderr) and the next one runs. `completed` is true only
    once every benchmark has run to its end; `running` names the one in progress."""
    from mimic_redundancy.core.io import atomic_path, write_json

    out = Path(out)
    summary = {**(header or {}), "results": {}, "entries": {}, "skipped": dict(skipped or {}), "running": None,
               "completed": False}

    def save():
        write_json(out / "summary.json", summary)
        with atomic_path(out / "summary.md") as tmp:
            tmp.write_text(markdown(summary))

    for name, fn in entries:
        print(f"bench: {name} ... started", flush=True)
        summary["running"] = name
        save()
        start = time.perf_counter()
        try:
            results = fn()
        except Exception as error:  # a KeyboardInterrupt stops the bench; the summary says what finished
            seconds = time.perf_counter() - start
            traceback.print_exc()
            sys.stderr.flush()
            message = f"{type(error).__name__}: {error}"
            summary["entries"][name] = {"status": "failed", "seconds": seconds, "error": message[-3000:]}
            print(f"bench: {name} FAILED after {seconds:.1f} s: {message.splitlines()[0] if message else ''}",
                  flush=True)
        else:
            seconds = time.perf_counter() - start
            summary["results"].update(results)
            summary["entries"][name] = {"status": "done", "seconds": seconds, "results": list(results)}
            print(f"bench: {name} done in {seconds:.1f} s", flush=True)
        summary["running"] = None
        save()
    summary["completed"] = all(e["status"] == "done" for e in summary["entries"].values())
    save()
    return summary


# what --full adds to the default (about 10 minutes on 2 idle cores): the sharding study, more repeats of the
# side-by-side ratios, more training seeds (the default's settings first, then --full's)
FULL_SHARD_SAMPLES = 1000
REPEATS = (3, 5)
TRAIN_SEEDS = (1, 3)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "results/bench"))
    parser.add_argument("--full", action="store_true",
                        help=f"the whole study: also {FULL_SHARD_SAMPLES} samples in 1 and in 8 shards, "
                             f"{REPEATS[1]} repeats, {TRAIN_SEEDS[1]} training seeds (about 50 minutes on 2 cores, "
                             "against about 10 without)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"repeats of each side of the ratios (default {REPEATS[0]}, {REPEATS[1]} with --full)")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the in-process model benchmarks")
    parser.add_argument("--train-steps", type=int, default=150, help="steps of each training comparison run")
    parser.add_argument("--train-seeds", type=int, default=None,
                        help=f"training seeds of the comparison (default {TRAIN_SEEDS[0]}, {TRAIN_SEEDS[1]} with --full)")
    parser.add_argument("--shard-samples", type=int, default=None,
                        help=f"samples of the sharded-probe benchmark (default: {FULL_SHARD_SAMPLES} with --full, "
                             "else 0; 0 skips it)")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> dict:
    """What this run measures: the default's settings, or --full's, unless given on the command line."""
    pick = lambda given, pair: given if given is not None else pair[args.full]
    return {"mode": "full" if args.full else "default", "repeats": pick(args.repeats, REPEATS),
            "train_steps": args.train_steps, "train_seeds": list(range(pick(args.train_seeds, TRAIN_SEEDS))),
            "pipeline": not args.skip_pipeline,
            "shard_samples": pick(args.shard_samples, (0, FULL_SHARD_SAMPLES))}


def plan(run: dict, out: Path) -> tuple[list[tuple[str, Callable[[], dict]]], dict[str, str]]:
    """The benchmarks of `run` (settings()) in order, as (name, fn), and those skipped, with why."""
    entries = [("model_ratios", lambda: model_benchmarks(run["repeats"])),
               ("rule_overheads", lambda: rule_overheads(run["repeats"])),
               ("training_from_features", lambda: {"training_from_features_vs_library": training_from_features(
                   run["train_steps"], draws=4, seeds=run["train_seeds"], out=Path(out))})]
    skipped = {}
    missing = simulator_missing()
    if missing:
        skipped["rollout_throughput"] = missing
    else:
        # one repeat by default (~2 min: each side runs 7 rules on 20 episodes); --full: as many as the others
        entries.append(("rollout_throughput", lambda: rollout_throughput(run["repeats"] if run["mode"] == "full"
                                                                         else 1)))
    missing = simulator_missing("libero")
    if missing:
        skipped["libero"] = missing
    else:  # 4 episodes of 24 steps per side (~1 min), and one episode at libero_object's 280 steps (~1 min)
        entries.append(("libero_rollout_throughput", lambda: rollout_throughput(
            run["repeats"] if run["mode"] == "full" else 1, episodes=4, ks=(1, 10), backend="libero")))
        entries.append(("libero_episode_cost", libero_episode_cost))
    if run["pipeline"]:
        entries.append(("default_run", lambda: _in_tmp(lambda tmp: pipeline_benchmarks(tmp, noop_repeats=3))))
    else:
        skipped["default_run"] = "--skip-pipeline: no Snakemake runs (default run, plot-only change, no-op)"
    if run["shard_samples"]:
        entries.append((f"shards_{run['shard_samples']}_samples",
                        lambda: _in_tmp(lambda tmp: shard_benchmarks(tmp, samples=run["shard_samples"]))))
    else:
        skipped["shards"] = (f"the sharding study ({FULL_SHARD_SAMPLES} samples in 1 and in 8 shards, about half an "
                             "hour on 2 cores) runs with --full (make bench BENCH=\"--full\") or --shard-samples N")
    return entries, skipped


def main(argv=None) -> int:
    import platform
    import os

    from mimic_redundancy.model.model import library_versions

    args = parse_args(argv)
    run = settings(args)
    entries, skipped = plan(run, Path(args.out))
    for key, why in skipped.items():
        print(f"bench: {key} skipped: {why}", flush=True)
    header = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "versions": library_versions(),
              "mode": run["mode"], "settings": run, "argv": list(sys.argv[1:] if argv is None else argv)}
    start = time.perf_counter()
    summary = run_entries(entries, Path(args.out), header, skipped)
    print(markdown(summary))
    missed = [k for k, v in summary["results"].items() if v.get("met") is False]
    print(f"goals missed: {missed}" if missed else "all goals met")
    failed = [k for k, v in summary["entries"].items() if v["status"] != "done"]
    print(f"bench: {'completed' if summary['completed'] else f'INCOMPLETE, failed: {failed}'} in "
          f"{time.perf_counter() - start:.1f} s; {Path(args.out) / 'summary.json'}", flush=True)
    return 0 if summary["completed"] else 1


def _in_tmp(fn: Callable[[Path], dict]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return fn(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
