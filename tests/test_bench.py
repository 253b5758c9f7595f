"""The benchmark and GPU-check programs run and report what they claim (timings themselves are not asserted)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # whole programs: gpu-check in a subprocess, the training comparison, the benchmarks


def test_gpu_check_runs_its_device_audit_on_the_cpu_with_a_bf16_backbone():
    result = subprocess.run([sys.executable, "-m", "mimic_redundancy.gpu_check", "--device", "cpu", "--steps", "3",
                             "--dtype", "bfloat16", "--samples", "2"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert report["passed"] and report["problems"] == [] and report["fidelity_max_abs_diff"] <= 1e-5
    assert {"noise", "hiddens[0]", "trajectory", "clean_prediction", "sample"} <= set(report["tensors_checked"])
    assert report["torch_calls_audited_in_euler_loop"] > 100
    assert report["dtypes"] == dict.fromkeys(["transformer", "vae", "text_encoder"], "bfloat16")
    timings = report["timings"]
    assert timings["backbone_s_per_sample"] > 0 and timings["head_s_per_step"] > 0
    assert timings["features_vs_recompute_speedup"] > 0
    projection = report["projection"]
    assert projection["label"].startswith("PROJECTION") and "| windows | GPUs (shards) |" in result.stdout
    row = next(r for r in projection["rows"] if r["windows"] == 1000 and r["gpus"] == 8)
    per_window = timings["backbone_s_per_sample"] + 3 * timings["head_s_per_step"] / 2
    assert row["gpu_hours"] * 3600 == pytest.approx(1000 * per_window + 8 * timings["backbone_build_s"])
    assert row["wall_hours"] == pytest.approx(row["gpu_hours"] / 8)
    assert set(report["peak_memory_mib"]) == {"backbone_build_mib", "features_stage_mib", "head_stage_mib",
                                              "recompute_mib"}  # None on the CPU: torch's CUDA allocator only


def test_training_from_features_is_compared_with_the_librarys_loop(tmp_path):
    from mimic_redundancy.bench import training_from_features

    entry = training_from_features(steps=3, draws=2, seeds=[0], out=tmp_path, score_steps=5)
    measured = entry["measured"]
    assert measured["steps"] == 3 and measured["draws"] == 2 and measured["windows"] == 64
    assert measured["score_steps"] == 5 and "(5 Euler steps)" in entry["how"]
    for mode in ("library", "features"):
        [run] = measured[mode]
        assert run["final_mse_vs_gt"] > 0 and len(run["median_loss_per_tenth"]) == 3
    assert entry["value"] == measured["features"][0]["final_mse_vs_gt"] / measured["library"][0]["final_mse_vs_gt"]
    rows = (tmp_path / "training_curves.csv").read_text().splitlines()
    assert rows[0] == "mode,seed,step,loss" and len(rows) == 1 + 2 * 3


def test_model_benchmarks_report_ratios_with_their_measurements():
    from mimic_redundancy.bench import markdown, model_benchmarks

    results = model_benchmarks(repeats=1, steps=2)
    for key in ["probe_overhead_ratio", "cache_speedup", "batch16_throughput_ratio"]:
        entry = results[key]
        assert entry["value"] > 0 and isinstance(entry["met"], bool) and entry["goal"]
        assert all(side["repeats"] == 1 for side in entry["measured"].values() if isinstance(side, dict)
                   and "repeats" in side)
    projection = results["cache_speedup"]["measured"]["projection_cosmos_7b"]
    assert projection["label"].startswith("PROJECTION")
    # a 7B video transformer call costs far more than one step of the small action head
    assert projection["backbone_gflops_per_call"] > 50 * projection["action_head_gflops_per_step"]
    assert 1 < projection["projected_speedup"] <= projection["steps"]
    assert "| probe_overhead_ratio |" in markdown({"results": results})


def test_shard_benchmark_reads_every_jobs_peak_memory_from_its_log(tmp_path):
    from mimic_redundancy.bench import markdown, shard_benchmarks

    results = shard_benchmarks(tmp_path, samples=16, steps=2, shards=(2,))  # 2 probe batches of 8
    shard = results["shard_job_peak_rss_mb"]
    assert sorted(shard["measured"]["shards"]) == ["tiny/shards/1-of-2/probe", "tiny/shards/2-of-2/probe"]
    assert 100 < shard["measured"]["eight_sample_job"] and isinstance(shard["met"], bool)
    assert shard["value"] == max(shard["measured"]["shards"].values())
    after = results["gather_metrics_plots_peak_rss_mb"]["measured"]["jobs"]
    assert sorted(after) == ["tiny/gather_probe", "tiny/metrics", "tiny/plot", "tiny/plot_heatmaps"]
    assert results["gather_seconds"]["value"] >= 0 and list(results["samples_per_second"]["value"]) == ["2"]
    assert "| shard_job_peak_rss_mb |" in markdown({"results": results})
