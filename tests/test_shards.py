"""Sharding (config `shards`): the rows each shard runs, the gathers, and a sharded run that equals the
unsharded one bit for bit (4 shards, 8 samples), through real Snakemake runs."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import SMALL, SNAKEMAKE, copy_workflow, executed_rules, run_ok, snakemake, write_config
from mimic_redundancy import config as cfg
from mimic_redundancy import io
from mimic_redundancy.io import InputFileError
from mimic_redundancy.shards import gather_features, gather_npz
from test_slurm import SUBMITTED, cluster_problem, sacct

# 4 seeds x 2 prompts = 8 samples, probe batches of 2: 4 shards take whole batches
EIGHT = {**SMALL, "seeds": [0, 1, 2, 3], "probe": {"steps": 10, "batch_size": 2}, "backbone": {"samples": 4},
         "train": {"synthetic_samples": 6}}  # training windows: 6 x 4 draws, split 2/1/2/1 over the shards
TIMINGS = {"wall_seconds", "seconds_cached", "seconds_recompute"}  # wall times differ from run to run
SHARDED = [f"{stage}.npz" for stage in ("probe", "sweep", "backbone")]


@pytest.mark.parametrize("total,shards,batch", [(8, 4, 2), (10, 3, 3), (1000, 8, 8), (7, 7, 1), (9, 2, 4)])
def test_shards_partition_the_samples_in_whole_batches(total, shards, batch):
    ranges = [cfg.shard_rows(f"{i}-of-{shards}", total, batch) for i in range(1, shards + 1)]
    assert [r.start for r in ranges] == [0] + [r.stop for r in ranges[:-1]]  # contiguous, in order
    assert ranges[-1].stop == total and all(len(r) for r in ranges)
    assert all(r.start % batch == 0 for r in ranges)  # every batch inside one shard: the same batches as unsharded
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= batch + (total % batch)


def test_a_shard_that_cannot_exist_is_refused():
    with pytest.raises(cfg.ConfigError, match="config key 'shards': 4 shards for 3 samples; allowed: 1 to 3"):
        cfg.shard_rows("1-of-4", 3)
    assert [len(cfg.shard_rows(f"{i}-of-4", 3, allow_empty=True)) for i in range(1, 5)] == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="expected 'i-of-n'"):
        cfg.shard_rows("5-of-4", 8)


def _features_file(path, rows: int, dtype=torch.bfloat16, **meta):
    torch.manual_seed(rows)
    tensors = {"hiddens.0": torch.randn(rows, 3, 4).to(dtype) if rows else torch.zeros(0, 0, 0, dtype=dtype),
               "seed": torch.arange(rows, dtype=torch.int64), "noise": torch.randn(rows, 2, 5)}
    save_file(tensors, str(path), metadata={"format": "f", "prompts_json": json.dumps(["p"] * rows),
                                            "seconds_json": json.dumps([0.5] * rows), "build_seconds": str(rows),
                                            **meta})
    return tensors


def test_feature_shards_stream_into_the_file_safetensors_would_write(tmp_path):
    parts = [_features_file(tmp_path / f"{i}.safetensors", rows) for i, rows in enumerate([3, 0, 2, 5])]
    gather_features([tmp_path / f"{i}.safetensors" for i in range(4)], tmp_path / "all.safetensors")
    with safe_open(str(tmp_path / "all.safetensors"), "pt") as f:
        for name in parts[0]:
            expected = torch.cat([p[name] for p in parts if p[name].shape[0]])
            assert f.get_tensor(name).dtype == expected.dtype and torch.equal(f.get_tensor(name), expected), name
        meta = f.metadata()
    assert json.loads(meta["prompts_json"]) == ["p"] * 10 and len(json.loads(meta["seconds_json"])) == 10
    assert json.loads(meta["build_seconds"]) == ["3", "0", "2", "5"] and meta["format"] == "f"


def test_shards_with_other_settings_are_not_gathered(tmp_path):
    _features_file(tmp_path / "a.safetensors", 2, config_digest="aaa")
    _features_file(tmp_path / "b.safetensors", 2, config_digest="bbb")
    with pytest.raises(InputFileError, match="metadata 'config_digest' differs between shards"):
        gather_features([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "all.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(InputFileError, match="c.safetensors: not a readable features shard"):
        gather_features([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "all.safetensors")
    assert not (tmp_path / "all.safetensors").exists()


def test_npz_shards_join_along_the_sample_axis_of_the_contract(tmp_path):
    def shard(path, seeds, digest="d", seconds=1.0):
        s = len(seeds)
        arrays = {"steps": np.array([1, 2]), "final": np.full((2, s, 3, 4), seeds[0], np.float32),
                  "reference": np.zeros((s, 3, 4), np.float32), "reference_steps": np.int64(20),
                  "wall_seconds": np.array([seconds, seconds]), "repeats": np.int64(1), "seed": np.array(seeds),
                  "prompt": np.array(["a" * (1 + i) for i in seeds]), "source": "synthetic",
                  "window": np.array(seeds), "episode": -np.ones(s, np.int64), "start": -np.ones(s, np.int64),
                  "preset": "tiny", "device": "cpu", "config_json": "{}", "config_digest": digest,
                  "versions_json": "{}"}
        io.save_npz(path, arrays, io.SWEEP_ARRAYS)

    shard(tmp_path / "1.npz", [0, 1])
    shard(tmp_path / "2.npz", [2, 3, 4], seconds=2.0)
    gather_npz([tmp_path / "1.npz", tmp_path / "2.npz"], tmp_path / "all.npz", io.SWEEP_ARRAYS)
    joined = io.load_npz(tmp_path / "all.npz", io.SWEEP_ARRAYS)
    assert joined["final"].shape == (2, 5, 3, 4) and joined["final"][0, :, 0, 0].tolist() == [0, 0, 2, 2, 2]
    assert joined["seed"].tolist() == [0, 1, 2, 3, 4] and joined["prompt"][-1] == "aaaaa"
    assert joined["wall_seconds"].tolist() == [3.0, 3.0]  # the wall time of all samples
    shard(tmp_path / "3.npz", [5], digest="other")
    with pytest.raises(InputFileError, match="'config_digest' differs between"):
        gather_npz([tmp_path / "1.npz", tmp_path / "3.npz"], tmp_path / "bad.npz", io.SWEEP_ARRAYS)
    assert not (tmp_path / "bad.npz").exists()


# -- real runs ---------------------------------------------------------------------------------------------------

TARGETS = [f"results/tiny/{name}" for name in SHARDED + ["features/train.safetensors", "metrics.csv"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 8-sample study unsharded and with 4 shards."""
    out = {}
    for shards in (1, 4):
        workdir = copy_workflow(tmp_path_factory.mktemp(f"shards{shards}"))
        config = write_config(workdir, {**EIGHT, "shards": shards})
        result = snakemake(workdir, *TARGETS, "--configfile", str(config), timeout=1500)  # 21 jobs for 4 shards
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        out[shards] = (workdir, result, config)
    return out


@pytest.mark.slow
def test_a_sharded_run_runs_a_job_per_shard_and_gathers(runs):
    ran = executed_rules(runs[4][1])
    for stage in ("features", "probe", "sweep", "backbone"):
        assert ran.count(stage) == 4 and ran.count(f"gather_{stage}") == 1, ran
    assert not any(rule.startswith("gather") for rule in executed_rules(runs[1][1]))


@pytest.mark.slow
def test_sharded_and_unsharded_runs_are_bit_identical(runs):
    one, four = runs[1][0] / "results/tiny", runs[4][0] / "results/tiny"
    for name, contract in zip(SHARDED, (io.PROBE_ARRAYS, io.SWEEP_ARRAYS, io.BACKBONE_ARRAYS)):
        a, b = io.load_npz(one / name, contract), io.load_npz(four / name, contract)
        assert len(a["seed"]) == (4 if name == "backbone.npz" else 8)
        for key in contract:
            if key not in TIMINGS:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)
    for kind in ("inference", "train"):
        with safe_open(str(one / f"features/{kind}.safetensors"), "pt") as a, \
                safe_open(str(four / f"features/{kind}.safetensors"), "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys()) and a.get_slice("seed").get_shape()[0] > 0
            for key in a.keys():
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), (kind, key)
            ma, mb = a.metadata(), b.metadata()
            for key in set(ma) - {"seconds_json", "build_seconds"}:
                assert ma[key] == mb[key], (kind, key)
    assert (one / "metrics.csv").read_text() == (four / "metrics.csv").read_text()


@pytest.mark.slow
def test_a_failed_shard_is_redone_alone(runs, tmp_path):
    workdir = tmp_path / "rerun"
    shutil.copytree(runs[4][0], workdir, symlinks=True)
    before = io.load_probe(workdir / "results/tiny/probe.npz")
    # what a failed shard leaves: the other shards' files, no gathered file (and nothing after it)
    for name in ("shards/3-of-4/probe.npz", "probe.npz", "metrics.csv"):
        (workdir / "results/tiny" / name).unlink()
    redo = run_ok(workdir, *TARGETS, "--configfile", str(runs[4][2]))
    assert executed_rules(redo) == ["gather_probe", "metrics", "probe"]
    assert "results/tiny/shards/3-of-4/probe.npz" in redo.stdout + redo.stderr
    assert np.array_equal(io.load_probe(workdir / "results/tiny/probe.npz")["trajectory"], before["trajectory"])


# -- on Slurm ----------------------------------------------------------------------------------------------------

ARRAY_SUBMITTED = re.compile(r"Submitted array job with Snakemake IDs [\d,]+ and SLURM job ID (\d+)")


@pytest.mark.slow
def test_on_slurm_each_shard_is_a_job_a_cancelled_shard_is_redone_alone(runs, tmp_path):
    """features: 4 Slurm jobs; probe: one array job of 4 tasks (--slurm-array-jobs). One probe task is
    cancelled: the run fails, and the next run submits that shard alone. The gathered NPZ equals the local one."""
    problem = cluster_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {problem}")
        pytest.skip(f"{problem}; start one with tools/slurm/start.sh")
    workdir = copy_workflow(tmp_path / "slurm")
    config = write_config(workdir, {**EIGHT, "shards": 4})
    command = [str(SNAKEMAKE), "--profile", "profiles/slurm", "results/tiny/probe.npz", "--configfile", str(config),
               "--slurm-array-jobs=probe"]
    log = workdir / "first-run.log"
    with open(log, "w") as sink:
        run = subprocess.Popen(command, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT, text=True)
        array, deadline = None, time.monotonic() + 400  # features and validate run first
        while array is None and time.monotonic() < deadline and run.poll() is None:
            match = ARRAY_SUBMITTED.search(log.read_text())
            array = match.group(1) if match else None
            time.sleep(0.5)
        assert array is not None, log.read_text()[-3000:]
        subprocess.run(["scancel", f"{array}_4"], check=True, timeout=30)  # one task: shard 4 of 4
        try:
            run.wait(timeout=400)
        except subprocess.TimeoutExpired:
            run.kill()
            pytest.fail("Snakemake did not notice the cancelled shard within 400 s")
    first = log.read_text()
    # a task cancelled while pending leaves no sacct record of its own, so the plugin reads the array's state
    # (COMPLETED) and Snakemake reports the shard's output missing: the run fails, naming rule and file
    assert run.returncode != 0 and re.search(r"(Error|MissingOutputException) in rule probe", first), first[-3000:]
    jobs = {}
    for job, _, rule in SUBMITTED.findall(first):
        jobs.setdefault(rule, []).append(job)
    assert len(jobs["features"]) == 4 and len(jobs["validate"]) == 1, jobs
    states = sacct(jobs["features"])
    assert all(state == "COMPLETED" and "gres/gpu=1" in tres for state, tres in states.values()), states
    tasks = subprocess.run(["sacct", "-n", "-X", "-P", "-j", array, "-o", "JobID,State"], capture_output=True,
                           text=True, timeout=30, check=True).stdout.split()
    assert sorted(tasks) == [f"{array}_{i}|COMPLETED" for i in (1, 2, 3)], tasks  # one array, 3 tasks done
    assert not (workdir / "results/tiny/probe.npz").exists()
    done = {p.parent.name for p in (workdir / "results/tiny/shards").glob("*/probe.npz")}
    [lost] = {f"{i}-of-4" for i in range(1, 5)} - done

    redo = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=420)
    assert redo.returncode == 0, redo.stdout[-3000:] + redo.stderr[-3000:]
    text = redo.stdout + redo.stderr
    assert sorted(rule for _, _, rule in SUBMITTED.findall(text)) == ["gather_probe", "probe"]
    assert f"Missing output files: results/tiny/shards/{lost}/probe.npz" in text
    assert len(re.findall(r"Missing output files: results/tiny/shards/", text)) == 1
    on_slurm, here = io.load_probe(workdir / "results/tiny/probe.npz"), io.load_probe(runs[1][0] / "results/tiny/probe.npz")
    for key in ("trajectory", "clean_prediction", "seed", "prompt"):
        assert np.array_equal(on_slurm[key], here[key]), key


def test_a_shards_samples_are_those_rows_of_the_whole_run():
    from mimic_redundancy.samples import load_samples

    config = cfg.validate_config({**cfg.default_config(), "seeds": [0, 1, 2]})
    data, dims = cfg.data_settings(config), {"chunk_len": 4, "action_dim": 3, "joint_dim": 2}
    whole = load_samples(data, dims, None)
    for rows in (range(1, 2), range(3, 6)):  # one prompt only, then a shard starting mid-seed
        part = load_samples(data, dims, None, rows=rows)
        for field in ("seeds", "prompts", "windows", "episodes", "starts"):
            assert getattr(part, field) == getattr(whole, field)[rows.start:rows.stop], field
        for field in ("video", "joint_state", "noise", "gt_actions"):
            assert torch.equal(getattr(part, field), getattr(whole, field)[rows.start:rows.stop]), field
