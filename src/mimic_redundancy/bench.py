"""Benchmarks of the speed goals, as ratios measured side by side in one run (`make bench`).

Writes results/bench/summary.json and summary.md. Every entry records its value, its goal,
whether the goal is met, and how it was measured (repeats, min/median/max of each side).
Run on an otherwise idle machine: the ratios are robust to a uniformly slower machine, not to
another process competing for the cores in the middle of a measurement.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TINY = {"preset": "tiny", "dim": 512, "depth": 3, "extract_layer": 1, "backbone": "tiny-random",
        "tokenizer": "builtin", "model_seed": 0, "device": "cpu"}
INPUTS = {"frames": 5, "height": 32, "width": 32}
PROMPTS = ["pick up the red block", "open the top drawer"]


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
    net = build_model(TINY, torch.device("cpu"))
    pairs = [(seed, PROMPTS[seed % 2]) for seed in range(16)]
    results = {}

    batch = synthetic_batch(net, pairs[:8], INPUTS, "cpu")
    hiddens = video_hiddens(net, batch)
    probe_t, sample_t = _side_by_side(lambda: probe_trajectory(net, batch, hiddens, steps),
                                      lambda: library_sample(net, batch, hiddens, steps), repeats)
    ratio = statistics.median(probe_t) / statistics.median(sample_t)
    results["probe_overhead_ratio"] = _entry(
        ratio, "<= 1.05", ratio <= 1.05,
        f"probe_trajectory (records x_t and x1_hat every step) / MimicVideo.sample, batch 8, {steps} steps, "
        "same cached hiddens; medians", probe_seconds=_stats(probe_t), sample_seconds=_stats(sample_t))

    one = synthetic_batch(net, pairs[:1], INPUTS, "cpu")
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

    sixteen = synthetic_batch(net, pairs, INPUTS, "cpu")
    hiddens16, hiddens1 = video_hiddens(net, sixteen), video_hiddens(net, one)
    b16_t, b1_t = _side_by_side(lambda: library_sample(net, sixteen, hiddens16, steps),
                                lambda: library_sample(net, one, hiddens1, steps), repeats)
    throughput = (16 / statistics.median(b16_t)) / (1 / statistics.median(b1_t))
    results["batch16_throughput_ratio"] = _entry(
        throughput, ">= 2.0 (2-core CPU)", throughput >= 2.0,
        f"samples/s of MimicVideo.sample at batch 16 / at batch 1, cached hiddens, {steps} steps; medians",
        batch16_seconds=_stats(b16_t), batch1_seconds=_stats(b1_t))
    return results


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
    for name in ["Snakefile", "config.yaml", "rules", "scripts", "schemas", "src", "envs", "profiles", "report"]:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, workdir / name)
    full = _snakemake(workdir)
    (workdir / "plot-only.yaml").write_text("plot: {dpi: 100}\n")  # only a figure option changes
    plot_only = _snakemake(workdir, "--configfile", "plot-only.yaml")
    noop = [_snakemake(workdir, "--configfile", "plot-only.yaml") for _ in range(noop_repeats)]
    fraction = plot_only / full
    rss = {}
    for tsv in sorted((workdir / "results/tiny/benchmarks").glob("*.tsv")):
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rss[tsv.stem] = {"peak_rss_mb": float(row["max_rss"]) if row["max_rss"] not in ("", "NA") else None,
                         "seconds": float(row["s"])}
    return {
        "plot_only_fraction": _entry(fraction, "<= 0.05", fraction <= 0.05,
                                     "wall time of snakemake after changing only plot.dpi / a full run of the "
                                     "embedded default (fresh copy, local profile, 2 cores); one run each",
                                     full_seconds=full, plot_only_seconds=plot_only),
        "noop_seconds": _entry(statistics.median(noop), "<= 3", statistics.median(noop) <= 3,
                               "wall time of snakemake when everything is up to date (median)", **_stats(noop)),
        "peak_rss_mb": {"value": {k: v["peak_rss_mb"] for k, v in rss.items()},
                        "how": "max_rss of each job, from Snakemake's benchmark: files (results/<preset>/benchmarks)",
                        "measured": rss},
    }


def markdown(summary: dict) -> str:
    lines = ["| measure | value | goal | met | how |", "|---|---|---|---|---|"]
    for key, entry in summary["results"].items():
        if key == "peak_rss_mb":
            value = ", ".join(f"{k} {v:.0f}" for k, v in entry["value"].items() if v is not None)
            lines.append(f"| peak_rss_mb | {value} | | | {entry['how']} |")
            continue
        lines.append(f"| {key} | {entry['value']:.3g} | {entry['goal']} | {'yes' if entry['met'] else 'NO'} "
                     f"| {entry['how']} |")
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
    args = parser.parse_args(argv)
    import platform
    import os

    from .io import write_json
    from .model import library_versions

    results = model_benchmarks(args.repeats)
    if not args.skip_pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            results.update(pipeline_benchmarks(Path(tmp), noop_repeats=3))
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
