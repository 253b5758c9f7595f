"""profiles/slurm on a real Slurm controller (tools/slurm/start.sh): every model job runs as a Slurm
job, cheap jobs on the head node, nothing hangs. Skipped where no cluster answers, except under CI."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, SHARDS, SMALL, SNAKEMAKE, copy_workflow, executed_rules, planned_jobs, write_config
from mimic_redundancy.core.io import load_probe

pytestmark = pytest.mark.slow  # real Slurm jobs
MODEL_JOBS = ["backbone", "depth", "depth_features", "features", "probe", "sweep", "validate"]
# one CPU per job (profiles/slurm reads MIMIC_SLURM_CPUS): the test node's 2 CPUs and 2 fake GPUs run two jobs at once.
# The shared run (`completed`) keeps the profile's default (2 CPUs per job) and must equal the local profile's
# 1-thread jobs bit for bit: numerics.threads, not the job's CPUs, fixes the numbers.
# and a poll every 5 s at most (pipeline/slurm_compat.py): the plugin's growing interval (+10 s per poll that sees no
# job finish) waits up to 35 s for a test job of a few seconds
POLL = {"MIMIC_SLURM_MAX_POLL_S": "5"}
ENV = {**os.environ, "MIMIC_SLURM_CPUS": "1", **POLL}
DEFAULT_ENV = {**{k: v for k, v in os.environ.items() if k != "MIMIC_SLURM_CPUS"}, **POLL}
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+/rule_(\w+)/\S+)\)")


def cluster_problem() -> str | None:
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"sinfo does not answer ({error})"
    states = nodes.stdout.split()
    if nodes.returncode or not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"no usable Slurm node (sinfo: {nodes.stdout.strip() or nodes.stderr.strip()})"
    return None


@pytest.fixture(scope="module", autouse=True)
def cluster():
    problem = cluster_problem()
    if problem:
        message = f"{problem}; start one with tools/slurm/start.sh"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {message}")
        pytest.skip(message)


def slurm(workdir, overrides: dict, *args: str, timeout: int = 420, env: dict = ENV) -> subprocess.CompletedProcess:
    config = write_config(workdir, {**SMALL, **overrides})
    return subprocess.run([str(SNAKEMAKE), "--profile", "profiles/slurm", *args, "--configfile", str(config)],
                          cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)


def ok(result):
    assert result.returncode == 0, f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def submissions(result) -> dict[str, tuple[str, str]]:
    """Rule -> (Slurm job id, job log) of every job Snakemake submitted."""
    return {rule: (job, log) for job, log, rule in SUBMITTED.findall(result.stdout + result.stderr)}


def sacct(job_ids) -> dict[str, tuple[str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", "JobID,State,AllocTRES"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return {job: (state, tres) for job, state, tres in (line.split("|") for line in out.splitlines())}


@pytest.fixture(scope="module")
def completed(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm"))
    result = ok(slurm(workdir, {}, env=DEFAULT_ENV, timeout=600))
    return workdir, result


@pytest.fixture
def rerun(completed, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(completed[0], workdir, symlinks=True)
    return workdir


def test_model_jobs_run_as_slurm_jobs_and_match_the_local_profile(completed, small_run):
    workdir, result = completed
    jobs = submissions(result)
    assert sorted(jobs) == MODEL_JOBS, "exactly the model jobs are submitted; the rest run on the head node"
    assert sorted(executed_rules(result)) == sorted(MODEL_JOBS + ["backbone_metrics", "depth_metrics", "early_stop",
                                                                  "metrics", "plot", "plot_backbone", "plot_depth",
                                                                  "plot_early_stop", "plot_heatmaps", "plot_sweep",
                                                                  "prefetch", "sweep_metrics"])
    accounting = sacct([job for job, _ in jobs.values()])
    for rule, (job, log) in jobs.items():
        state, tres = accounting[job]
        assert state == "COMPLETED", (rule, state)
        # the profile's requests reached Slurm: its default 2 CPUs per job (the local profile runs 1 thread per job)
        assert "gres/gpu=1" in tres and "cpu=2," in tres, (rule, tres)
        assert log.startswith(str(workdir / "logs/slurm")) and "Finished jobid" in open(log).read(), rule
    # the same config on this machine (the session's shared local run) gives the same numbers, bit for bit: every
    # NPZ array but wall times, and every features tensor
    local = small_run[0]
    for name in ["probe.npz", "sweep.npz", "backbone.npz", "depth.npz"]:
        with np.load(workdir / "results/tiny" / name) as on_slurm, np.load(local / "results/tiny" / name) as here:
            assert sorted(on_slurm.files) == sorted(here.files), name
            for key in on_slurm.files:
                if "seconds" not in key:
                    np.testing.assert_array_equal(on_slurm[key], here[key], err_msg=f"{name}: {key}")
            assert json.loads(str(on_slurm["numerics_json"]))["threads"] == 1, name
    for name in ["features/inference.safetensors", "depth/features.safetensors"]:
        on_slurm, here = load_file(workdir / "results/tiny" / name), load_file(local / "results/tiny" / name)
        assert sorted(on_slurm) == sorted(here), name
        for key in on_slurm:
            assert torch.equal(on_slurm[key], here[key]), f"{name}: {key}"


def test_reruns_submit_only_what_changed(rerun):
    assert submissions(ok(slurm(rerun, {}))) == {}
    plot_only = ok(slurm(rerun, {"plot": {"dpi": 72}}))
    assert submissions(plot_only) == {}
    assert executed_rules(plot_only) == ["plot", "plot_backbone", "plot_depth", "plot_early_stop", "plot_heatmaps",
                                         "plot_sweep"]
    # new samples: new features, and every job that reads them (a dry run: what reruns is decided at DAG build,
    # the same for every executor; the runs above and below submit for real)
    more_seeds = ok(slurm(rerun, {"plot": {"dpi": 72}, "seeds": [0, 1, 2]}, "-n"))
    assert MODEL_JOBS == sorted(set(planned_jobs(more_seeds.stdout)) & set(MODEL_JOBS))
    assert all(planned_jobs(more_seeds.stdout)[rule] == 1 for rule in MODEL_JOBS)


def test_a_failing_job_names_the_rule_and_its_slurm_log(rerun):
    # timing only: the job fails ~7 s after submission, so the first status check at 10 s (the profile's 5 s would
    # see it at 20 s) reports it; after a failure the plugin sleeps out its next interval before Snakemake exits
    start = time.monotonic()
    result = slurm(rerun, {"device": "cuda"}, "results/tiny/validate.json",
                   "--slurm-init-seconds-before-status-checks", "10", timeout=300)
    assert result.returncode != 0 and time.monotonic() - start < 300
    output = result.stdout + result.stderr
    [(job, log)] = submissions(result).values()
    assert "Error in rule features" in output and log in output  # the first model job
    assert "asks for CUDA, but torch sees no CUDA device" in (rerun / "results/tiny/logs/features.log").read_text()
    assert not (rerun / "results/tiny/features/inference.safetensors").exists()


# -- sharding on Slurm (config `shards`; the local runs: tests/test_shards.py) -----------------------------------

ARRAY_SUBMITTED = re.compile(r"Submitted array job with Snakemake IDs [\d,]+ and SLURM job ID (\d+)")


def test_on_slurm_each_shard_is_a_job_a_cancelled_one_is_redone_alone_even_without_accounting(small_run, tmp_path):
    """features: 2 Slurm jobs; probe: one array job of 2 tasks (--slurm-array-jobs). One probe task is cancelled
    while it runs: the run fails (sacct says "CANCELLED by <uid>": the plugin alone would poll the dead task
    forever) and leaves no partial file. The next run, on a cluster without accounting (slurmdbd stopped: sacct
    fails) with the README's --slurm-status-command squeue, submits that shard alone and finishes. The gathered
    NPZ equals the local unsharded one (the session's SMALL run)."""
    workdir = copy_workflow(tmp_path / "slurm")
    config = write_config(workdir, SHARDS)
    command = [str(SNAKEMAKE), "--profile", "profiles/slurm", "results/tiny/probe.npz", "--configfile", str(config),
               "--slurm-array-jobs=probe"]
    log = workdir / "first-run.log"
    with open(log, "w") as sink:
        run = subprocess.Popen(command, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT, text=True, env=ENV)
        array, deadline = None, time.monotonic() + 400  # features and validate run first
        while array is None and time.monotonic() < deadline and run.poll() is None:
            match = ARRAY_SUBMITTED.search(log.read_text())
            array = match.group(1) if match else None
            time.sleep(0.5)
        assert array is not None, log.read_text()[-3000:]
        task, state = f"{array}_2", ""  # shard 2 of 2, cancelled while it runs (as a node fault or a user would)
        while state != "RUNNING" and time.monotonic() < deadline:
            state = subprocess.run(["squeue", "-h", "-j", task, "-o", "%T"], capture_output=True, text=True,
                                   timeout=30).stdout.strip()
            time.sleep(0.2)
        assert state == "RUNNING", state
        subprocess.run(["scancel", task], check=True, timeout=30)
        try:
            run.wait(timeout=400)
        except subprocess.TimeoutExpired:
            run.kill()
            pytest.fail("Snakemake did not notice the cancelled shard within 400 s")
    first = log.read_text()
    assert run.returncode != 0 and "Error in rule probe" in first, first[-3000:]
    assert f"SLURM-job '{task}' failed, SLURM status is: 'CANCELLED'" in first, first[-3000:]
    jobs = {}
    for job, _, rule in SUBMITTED.findall(first):
        jobs.setdefault(rule, []).append(job)
    assert len(jobs["features"]) == 2 and len(jobs["validate"]) == 1, jobs
    states = sacct(jobs["features"])
    assert all(state == "COMPLETED" and "gres/gpu=1" in tres for state, tres in states.values()), states
    # the plugin also reports the array's other task failed (docs/sharding.md), though Slurm lets it finish
    while subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True, timeout=30).stdout.strip():
        assert time.monotonic() < deadline, "the array's other task did not finish"
        time.sleep(0.5)
    tasks = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"], capture_output=True,
                           text=True, timeout=30, check=True).stdout.splitlines()
    # one array: the task not cancelled is done
    assert f"{array}_1|COMPLETED" in tasks and any(t.startswith(f"{task}|CANCELLED") for t in tasks), tasks
    assert not (workdir / "results/tiny/probe.npz").exists()
    assert {p.parent.name for p in (workdir / "results/tiny/shards").glob("*/probe.npz")} == {"1-of-2"}
    assert not list((workdir / "results/tiny/shards/2-of-2").glob(".probe.npz.tmp*"))  # killed mid-run: no part

    tools = REPO / "tools/slurm"
    subprocess.run([str(tools / "stop.sh"), "slurmdbd"], check=True, timeout=120)
    try:
        assert subprocess.run(["sacct", "-X", "-n"], capture_output=True, timeout=30).returncode != 0
        redo = subprocess.run([*command, "--slurm-status-command", "squeue"], cwd=workdir, capture_output=True,
                              text=True, timeout=420, env=ENV)
    finally:
        subprocess.run([str(tools / "start.sh")], check=True, timeout=300, stdout=sys.stderr)
    assert redo.returncode == 0, redo.stdout[-3000:] + redo.stderr[-3000:]
    text = redo.stdout + redo.stderr
    assert sorted(rule for _, _, rule in SUBMITTED.findall(text)) == ["probe"]  # gather_probe: on the head node
    assert executed_rules(redo) == ["gather_probe", "probe"]
    assert "Missing output files: results/tiny/shards/2-of-2/probe.npz" in text
    assert len(re.findall(r"Missing output files: results/tiny/shards/", text)) == 1
    on_slurm = load_probe(workdir / "results/tiny/probe.npz")
    here = load_probe(small_run[0] / "results/tiny/probe.npz")
    for key in ("trajectory", "clean_prediction", "seed", "prompt"):
        assert np.array_equal(on_slurm[key], here[key]), key
