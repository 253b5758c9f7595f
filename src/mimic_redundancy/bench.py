"""Benchmarks of the speed goals, as ratios measured side by side in one run (`make bench`).

Writes results/bench/summary.json and summary.md. Every entry records its value, its goal,
whether the goal is met, and how it was measured (repeats, min/median/max of each side).
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["pick up the red block", "open the top drawer"]


def _tiny():
    """The embedded default's whole-model settings and inputs, from config.yaml (the one place they are set)."""
    from . import config as cfg

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

    from .backbone import recompute_sample
    from .model import build_model
    from .probe import library_sample, probe_trajectory, synthetic_batch, video_hiddens

    torch.set_num_threads(2)
    tiny, inputs = _tiny()
    net = build_model(tiny, torch.device("cpu"))
    pairs = [(seed, PROMPTS[seed % 2]) for seed in range(16)]
    results = {}

    batch = synthetic_batch(net, pairs[:8], inputs, "cpu")
    hiddens = video_hiddens(net, batch)
    probe_t, sample_t = _side_by_side(lambda: probe_trajectory(net, batch, hiddens, steps),
                                      lambda: library_sample(net, batch, hiddens, steps), repeats)
    ratio = statistics.median(probe_t) / statistics.median(sample_t)
    results["probe_overhead_ratio"] = _entry(
        ratio, "<= 1.05", ratio <= 1.05,
        f"probe_trajectory (records x_t and x1_hat every step) / MimicVideo.sample, batch 8, {steps} steps, "
        "same cached hiddens; medians", probe_seconds=_stats(probe_t), sample_seconds=_stats(sample_t))

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


def training_from_features(steps: int, draws: int, seeds: list[int], out: Path | None = None,
                           score_steps: int | None = None) -> dict:
    """The head trained from cached features (`draws` per window) against mimic-video's own loop
    (MimicVideo.forward(video=...), the backbone run every step), from the same initial head, at equal steps, on
    the default's synthetic training pool; scored by the final actions' MSE vs ground truth on the probe samples,
    sampled with `score_steps` Euler steps (default: the default config's probe.steps)."""
    import torch

    from . import config as cfg
    from .samples import synthetic_samples
    from .features import compute_features
    from .metrics import write_csv
    from .model import attach_backbone, build_backbone, build_head
    from .probe import library_sample
    from .train import train_library, train_model

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
        whole = attach_backbone(build_head(head_settings, torch.device("cpu"), dims, wrapper.dim_latent), wrapper)
        start = time.perf_counter()
        rows_l, _ = train_library(whole, pool, settings, "cpu")
        library_s = time.perf_counter() - start
        whole.video_predict_wrapper = None
        start = time.perf_counter()
        rows = compute_features(wrapper, pool, "cpu", draws=draws, draw_seed=seed)
        head = build_head(head_settings, torch.device("cpu"), dims, wrapper.dim_latent)
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
    untrained = score(build_head(head_settings, torch.device("cpu"), dims, wrapper.dim_latent))
    return {"value": mean("features") / mean("library"), "goal": "close to 1 (lower is better)",
            "met": mean("features") <= 1.25 * mean("library"),
            "how": f"final-action MSE vs ground truth on the {len(held_out)} probe samples ({score_steps} Euler steps) "
                   f"after {steps} training steps, head "
                   f"trained from cached features ({draws} draws per window) / by MimicVideo.forward(video=...), same "
                   f"initial head and settings, mean over train seeds {seeds}; untrained head: {untrained:.4f}; "
                   "curves in training_curves.csv",
            "measured": {**runs, "untrained_final_mse_vs_gt": untrained, "draws": draws, "steps": steps,
                         "windows": len(pool), "score_steps": score_steps}}


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


def _snakemake(workdir: Path, *args: str) -> float:
    start = time.perf_counter()
    run = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "--profile", "profiles/local", *args],
                         cwd=workdir, capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {workdir}:\n{run.stderr[-3000:]}")
    return time.perf_counter() - start


def pipeline_benchmarks(workdir: Path, noop_repeats: int) -> dict:
    """A full run of the embedded default in a fresh copy, then a plot-only change, then no-op runs."""
    _copy_workflow(workdir)
    full = _snakemake(workdir)
    (workdir / "plot-only.yaml").write_text("plot: {dpi: 100}\n")  # only a figure option changes
    plot_only = _snakemake(workdir, "--configfile", "plot-only.yaml")
    noop = [_snakemake(workdir, "--configfile", "plot-only.yaml") for _ in range(noop_repeats)]
    fraction = plot_only / full
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
                                     "embedded default (fresh copy, local profile, 2 cores); one run each",
                                     full_seconds=full, plot_only_seconds=plot_only),
        "noop_seconds": _entry(statistics.median(noop), "<= 1.5", statistics.median(noop) <= 1.5,
                               "wall time of snakemake when everything is up to date (median)", **_stats(noop)),
        "peak_rss_mb": {"value": {k: v["peak_rss_mb"] for k, v in rss.items()},
                        "how": "max_rss of each job, from Snakemake's benchmark: files (results/<preset>/benchmarks)",
                        "measured": rss},
    }


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
    runs = {}
    for label, seeds, count in [("8 samples", 4, 1)] + [(f"{samples} samples, {n} shards", samples // 2, n)
                                                        for n in shards]:
        run = _copy_workflow(workdir / f"run-{len(runs)}")
        (run / "bench.yaml").write_text(json.dumps({**base, "seeds": list(range(seeds)), "shards": count}))
        start = time.perf_counter()
        _snakemake(run, *targets, "--configfile", "bench.yaml")
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
    lines = ["| measure | value | goal | met | how |", "|---|---|---|---|---|"]
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
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "results/bench"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-pipeline", action="store_true", help="only the in-process model benchmarks")
    parser.add_argument("--train-steps", type=int, default=150, help="steps of each training comparison run")
    parser.add_argument("--shard-samples", type=int, default=1000, help="samples of the sharded-probe benchmark "
                        "(0: skip it; it takes about ten minutes on 2 cores)")
    args = parser.parse_args(argv)
    import platform
    import os

    from .io import write_json
    from .model import library_versions

    results = model_benchmarks(args.repeats)
    results["training_from_features_vs_library"] = training_from_features(
        args.train_steps, draws=4, seeds=[0, 1, 2], out=Path(args.out))
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            results.update(pipeline_benchmarks(Path(tmp), noop_repeats=3))
    if args.shard_samples:
        with tempfile.TemporaryDirectory() as tmp:
            results.update(shard_benchmarks(Path(tmp), samples=args.shard_samples))
    summary = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "versions": library_versions(),
               "results": results}
    out = Path(args.out)
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    missed = [k for k, v in results.items() if v.get("met") is False]
    print(f"goals missed: {missed}" if missed else "all goals met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
