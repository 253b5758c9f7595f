"""The benchmark and GPU-check programs run and report what they claim (timings themselves are not asserted)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

# the tests marked slow run whole programs: gpu-check in a subprocess, the training comparison, the benchmarks;
# the bench's runner (progress lines, a summary after every benchmark) is checked with small stand-in benchmarks


@pytest.mark.slow
def test_gpu_check_runs_its_device_audit_on_the_cpu_with_a_bf16_backbone():
    result = subprocess.run([sys.executable, "-m", "mimic_redundancy.tools.gpu_check", "--device", "cpu", "--steps", "3",
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


@pytest.mark.slow
def test_training_from_features_is_compared_with_the_librarys_loop(tmp_path):
    from mimic_redundancy.tools.bench import training_from_features

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


@pytest.mark.slow
def test_model_benchmarks_report_ratios_with_their_measurements():
    from mimic_redundancy.tools.bench import markdown, model_benchmarks

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


@pytest.mark.slow
def test_shard_benchmark_reads_every_jobs_peak_memory_from_its_log(tmp_path):
    from mimic_redundancy.tools.bench import markdown, shard_benchmarks

    results = shard_benchmarks(tmp_path, samples=16, steps=2, shards=(2,))  # 2 probe batches of 8
    shard = results["shard_job_peak_rss_mb"]
    assert sorted(shard["measured"]["shards"]) == ["tiny/shards/1-of-2/probe", "tiny/shards/2-of-2/probe"]
    assert 100 < shard["measured"]["eight_sample_job"] and isinstance(shard["met"], bool)
    assert shard["value"] == max(shard["measured"]["shards"].values())
    after = results["gather_metrics_plots_peak_rss_mb"]["measured"]["jobs"]
    assert sorted(after) == ["tiny/gather_probe", "tiny/metrics", "tiny/plot", "tiny/plot_heatmaps"]
    assert results["gather_seconds"]["value"] >= 0 and list(results["samples_per_second"]["value"]) == ["2"]
    assert "| shard_job_peak_rss_mb |" in markdown({"results": results})


@pytest.mark.slow
def test_rollout_throughput_counts_every_step_of_both_sides():
    # the closed loop (pip install -e '.[sim]'); our module first: it sets MUJOCO_GL=egl before mujoco is imported
    pytest.importorskip("mimic_redundancy.sim.metaworld_env", exc_type=ModuleNotFoundError)
    from mimic_redundancy.tools.bench import markdown, rollout_throughput

    results = rollout_throughput(repeats=1, episodes=2, max_steps=8, ks=(1, 2))
    entry = results["rollout_batch_throughput_ratio"]
    assert entry["value"] > 0 and isinstance(entry["met"], bool) and entry["goal"] == ">= 4"
    measured = entry["measured"]
    for side in ("batched", "one_at_a_time"):
        run = measured[side]
        # 2 rules x 2 episodes x 8 steps; a random head never succeeds
        assert run["steps"] == 2 * 2 * 8 and run["successes"] == [0] and run["repeats"] == 1
        assert set(run["split_seconds"]) == {"sim", "render", "backbone", "head", "env_setup", "reset", "other"}
        assert all(run["split_seconds"][k] > 0 for k in ("sim", "render", "backbone", "head", "env_setup", "reset"))
        assert sum(run["split_seconds"].values()) == pytest.approx(run["median"])
        assert run["steps_per_second"] == pytest.approx(32 / run["median"])
    assert entry["value"] == pytest.approx(measured["batched"]["steps_per_second"]
                                           / measured["one_at_a_time"]["steps_per_second"])
    assert measured["policy_only_ratio"] > 0
    text = markdown({"results": results})
    assert "| rollout_batch_throughput_ratio |" in text and "Closed-loop rollout (2 episodes x 8 steps, rules K = 1, 2)" in text


def test_without_the_simulator_the_rollout_entry_is_skipped_saying_what_to_install(tmp_path, monkeypatch):
    from mimic_redundancy.tools.bench import parse_args, plan, settings

    monkeypatch.setitem(sys.modules, "mimic_redundancy.sim.metaworld_env", None)  # its import now fails
    entries, skipped = plan(settings(parse_args([])), tmp_path)
    assert "rollout_throughput" not in [name for name, _ in entries]
    assert "pip install -e '.[sim]'" in skipped["rollout_throughput"]


def test_the_bench_times_snakemake_without_waiting_for_a_slurm_controller_that_does_not_answer(tmp_path, monkeypatch):
    """Every snakemake command imports the Slurm executor plugin, which runs `scontrol show config` (10 s timeout):
    where the Slurm client is installed but no controller answers, a no-op took ~10.5 s instead of ~1.5 s. The bench
    sees that (slurm_probe) and runs its Snakemake commands with an scontrol that fails at once; where a controller
    answers (or there is no scontrol), with the environment as it is."""
    import os
    import shutil

    from mimic_redundancy.tools.bench import slurm_probe, workflow_env

    hanging = tmp_path / "hanging"
    hanging.mkdir()
    (hanging / "scontrol").write_text("#!/bin/sh\nexec sleep 30\n")  # exec: the timeout kills the sleep
    (hanging / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{hanging}{os.pathsep}{os.environ['PATH']}")
    probe = slurm_probe(timeout=0.5)
    assert probe["scontrol"] == str(hanging / "scontrol") and probe["answered"] is False
    env, how = workflow_env(probe, tmp_path / "bin")
    assert "scontrol stubbed" in how and shutil.which("scontrol", path=env["PATH"]) == str(tmp_path / "bin/scontrol")
    assert subprocess.run(["scontrol", "show", "config"], env=env, timeout=10).returncode == 1
    assert workflow_env({"scontrol": "/usr/bin/scontrol", "answered": True, "seconds": 0.01}, tmp_path / "x") == \
        (None, "as is") and not (tmp_path / "x").exists()
    assert workflow_env({"scontrol": None, "answered": None, "seconds": 0.0}, tmp_path / "x") == (None, "as is")


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_the_bench_prints_each_benchmark_and_writes_the_summary_after_each(tmp_path, capsys):
    from mimic_redundancy.tools.bench import run_entries

    seen = {}

    def second():  # what a reader finds on disk while the second benchmark runs; then it fails
        seen["summary"], seen["md"] = _summary(tmp_path), (tmp_path / "summary.md").read_text()
        raise RuntimeError("snakemake failed")

    entries = [("first", lambda: {"first_ratio": {"value": 1.5, "goal": "<= 2", "met": True, "how": "stand-in"}}),
               ("second", second),
               ("third", lambda: {"third_seconds": {"value": 0.25, "how": "stand-in"}})]
    summary = run_entries(entries, tmp_path, {"mode": "default"}, {"shards": "runs with --full"})

    during = seen["summary"]
    assert during["results"] == {"first_ratio": {"value": 1.5, "goal": "<= 2", "met": True, "how": "stand-in"}}
    assert during["running"] == "second" and during["completed"] is False and list(during["entries"]) == ["first"]
    assert "| first_ratio | 1.5 | <= 2 | yes | stand-in |" in seen["md"] and "**Incomplete**" in seen["md"]

    lines = capsys.readouterr().out.splitlines()
    assert [re.sub(r"\d[\d.]* s", "N s", line) for line in lines] == [
        "bench: first ... started", "bench: first done in N s",
        "bench: second ... started", "bench: second FAILED after N s: RuntimeError: snakemake failed",
        "bench: third ... started", "bench: third done in N s"]
    assert summary == _summary(tmp_path) and summary["mode"] == "default"
    assert summary["completed"] is False and summary["running"] is None
    assert set(summary["results"]) == {"first_ratio", "third_seconds"}
    assert summary["entries"]["second"]["status"] == "failed"
    assert summary["entries"]["second"]["error"] == "RuntimeError: snakemake failed"
    assert summary["skipped"] == {"shards": "runs with --full"}
    assert "Skipped: shards: runs with --full" in (tmp_path / "summary.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "summary.md"]  # no temporary files left


def test_a_killed_bench_keeps_the_benchmarks_that_finished(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from mimic_redundancy.tools.bench import run_entries
        run_entries([("first", lambda: {{"first_ratio": {{"value": 1.0, "how": "stand-in"}}}}),
                     ("second", lambda: os.kill(os.getpid(), signal.SIGKILL))], {str(tmp_path)!r})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == -9, run.stderr[-2000:]
    assert re.fullmatch(r"bench: first \.\.\. started\nbench: first done in [\d.]+ s\nbench: second \.\.\. started\n",
                        run.stdout)
    summary = _summary(tmp_path)
    assert summary["results"] == {"first_ratio": {"value": 1.0, "how": "stand-in"}}
    assert summary["completed"] is False and summary["running"] == "second"
    assert summary["entries"]["first"]["status"] == "done"
    assert "running in `second`" in (tmp_path / "summary.md").read_text()


def test_a_bench_that_runs_to_its_end_says_so(tmp_path):
    from mimic_redundancy.tools.bench import run_entries

    summary = run_entries([("only", lambda: {"x": {"value": 2.0, "how": "stand-in"}})], tmp_path)
    assert _summary(tmp_path)["completed"] is True and summary["entries"]["only"]["seconds"] >= 0
    assert "Completed: every benchmark ran to its end." in (tmp_path / "summary.md").read_text()


def test_the_default_bench_leaves_the_1000_sample_sharding_study_to_full(tmp_path):
    from mimic_redundancy.tools.bench import parse_args, plan, settings, simulator_missing

    run = lambda *argv: settings(parse_args(list(argv)))
    names = lambda *argv: [name for name, _ in plan(run(*argv), tmp_path)[0]
                           if name not in ("rollout_throughput", "libero_rollout_throughput", "libero_episode_cost")]
    sim = simulator_missing() is None  # the closed-loop rollout entry runs where the simulator imports
    assert ("rollout_throughput" in [name for name, _ in plan(run(), tmp_path)[0]]) == sim
    assert ("rollout_throughput" in plan(run(), tmp_path)[1]) == (not sim)
    assert run() == {"mode": "default", "repeats": 3, "train_steps": 150, "train_seeds": [0], "pipeline": True,
                     "shard_samples": 0}
    assert names() == ["model_ratios", "rule_overheads", "training_from_features", "default_run"]
    assert "--full" in plan(run(), tmp_path)[1]["shards"]
    assert run("--full") == {"mode": "full", "repeats": 5, "train_steps": 150, "train_seeds": [0, 1, 2],
                             "pipeline": True, "shard_samples": 1000}
    assert names("--full") == ["model_ratios", "rule_overheads", "training_from_features", "default_run",
                               "shards_1000_samples"]
    assert names("--shard-samples", "16")[-1] == "shards_16_samples"
    assert names("--full", "--shard-samples", "0", "--skip-pipeline") == ["model_ratios", "rule_overheads",
                                                                           "training_from_features"]
    assert run("--full", "--repeats", "2", "--train-seeds", "1")["repeats"] == 2


@pytest.mark.slow
def test_bootstrap_cost_times_every_table_with_intervals_from_a_finished_run(completed, tmp_path):
    """The 'bootstrap <= 2 s per preset' entry, on the session's shared run: it rewrites the run's five tables with
    intervals (elsewhere, in turn with 1 resample) and reports the difference per preset."""
    import yaml

    from conftest import SMALL
    from mimic_redundancy.tools.bench import bootstrap_cost, interval_tables

    entry = bootstrap_cost(completed[0], SMALL, repeats=1)
    assert entry["goal"] == "<= 2 s per preset" and entry["met"] == (entry["value"] <= 2.0)
    assert entry["measured"]["tables_seconds"]["repeats"] == 1 and "2000 resamples" in entry["how"]
    from mimic_redundancy.pipeline import config as cfg

    config = cfg.validate_config({**yaml.safe_load((completed[0] / "config.yaml").read_text()), **SMALL})
    interval_tables(completed[0], config, 2000, tmp_path)
    # the tables it times are the run's own, byte for byte (the same code and settings as the rules)
    for name in ("sweep.csv", "early_stop.csv", "depth.csv", "backbone.csv"):
        assert (tmp_path / "tiny" / name).read_bytes() == (completed[0] / "results/tiny" / name).read_bytes(), name
