"""Sharding (config `shards`): the rows each shard runs, the gathers, and a sharded run that equals the
unsharded one bit for bit (the session's SMALL run, 4 samples in 2 probe batches, against 2 shards), through
real Snakemake runs. On Slurm: tests/test_slurm.py."""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import SHARDS, copy_run, copy_workflow, executed_rules, run_ok, snakemake, write_config
from mimic_redundancy.core import io
from mimic_redundancy.core.io import InputFileError
from mimic_redundancy.core.shards import gather_features, gather_npz, tensor_checksums
from mimic_redundancy.pipeline import config as cfg

TIMINGS = {"wall_seconds", "seconds_cached", "seconds_recompute", "backbone_seconds"}  # differ from run to run
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


def _features_file(path, rows: int, dtype=torch.bfloat16, shard=("1-of-1", 0), **meta):
    """A features shard as the features stage writes one: its tensors' checksums and its rows (shard, first row)."""
    torch.manual_seed(rows)
    tensors = {"hiddens.0": torch.randn(rows, 3, 4).to(dtype) if rows else torch.zeros(0, 0, 0, dtype=dtype),
               "seed": torch.arange(rows, dtype=torch.int64), "noise": torch.randn(rows, 2, 5)}
    sums = {k: hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy()).hexdigest() for k, t in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "f", "prompts_json": json.dumps(["p"] * rows),
                                            "seconds_json": json.dumps([0.5] * rows), "build_seconds": str(rows),
                                            "sha256_json": json.dumps(sums), "shard_json": json.dumps(
                                                {"shard": shard[0], "rows": [shard[1], shard[1] + rows]}), **meta})
    return tensors


def test_feature_shards_stream_into_the_file_safetensors_would_write(tmp_path):
    starts = [0, 3, 3, 5]
    parts = [_features_file(tmp_path / f"{i}.safetensors", rows, shard=(f"{i + 1}-of-4", starts[i]))
             for i, rows in enumerate([3, 0, 2, 5])]
    gather_features([tmp_path / f"{i}.safetensors" for i in range(4)], tmp_path / "all.safetensors")
    with safe_open(str(tmp_path / "all.safetensors"), "pt") as f:
        for name in parts[0]:
            expected = torch.cat([p[name] for p in parts if p[name].shape[0]])
            assert f.get_tensor(name).dtype == expected.dtype and torch.equal(f.get_tensor(name), expected), name
        meta = f.metadata()
    assert json.loads(meta["prompts_json"]) == ["p"] * 10 and len(json.loads(meta["seconds_json"])) == 10
    assert json.loads(meta["build_seconds"]) == ["3", "0", "2", "5"] and meta["format"] == "f"
    assert "shard_json" not in meta  # the gathered file is the whole run's, as an unsharded run writes it
    assert json.loads(meta["sha256_json"]) == tensor_checksums(tmp_path / "all.safetensors")


def test_shards_with_other_settings_are_not_gathered(tmp_path):
    _features_file(tmp_path / "a.safetensors", 2, config_digest="aaa", shard=("1-of-2", 0))
    _features_file(tmp_path / "b.safetensors", 2, config_digest="bbb", shard=("2-of-2", 2))
    with pytest.raises(InputFileError, match="metadata 'config_digest' differs between shards"):
        gather_features([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "all.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(InputFileError, match="c.safetensors: not a readable features shard"):
        gather_features([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "all.safetensors")
    assert not (tmp_path / "all.safetensors").exists()


def _sweep_shard(path, seeds, shard: str, first: int, steps=1, seconds=1.0):
    """A sweep NPZ as a shard job writes one: its settings (config_json) record its shard and rows."""
    s = len(seeds)
    text, digest = io.config_digest({"steps": steps, "shard": {"shard": shard, "rows": [first, first + s]}})
    arrays = {"steps": np.array([1, 2]), "final": np.full((2, s, 3, 4), seeds[0], np.float32),
              "reference": np.zeros((s, 3, 4), np.float32), "reference_steps": np.int64(20),
              "wall_seconds": np.array([seconds, seconds]), "repeats": np.int64(1), "seed": np.array(seeds),
              "prompt": np.array(["a" * (1 + i) for i in seeds]), "source": "synthetic",
              "window": np.array(seeds), "episode": -np.ones(s, np.int64), "start": -np.ones(s, np.int64),
              "preset": "tiny", "device": "cpu", "config_json": text, "config_digest": digest,
              "versions_json": "{}", "numerics_json": "{}"}
    io.save_npz(path, arrays, io.SWEEP_ARRAYS)


def test_npz_shards_join_along_the_sample_axis_of_the_contract(tmp_path):
    _sweep_shard(tmp_path / "1.npz", [0, 1], "1-of-2", 0)
    _sweep_shard(tmp_path / "2.npz", [2, 3, 4], "2-of-2", 2, seconds=2.0)
    gather_npz([tmp_path / "1.npz", tmp_path / "2.npz"], tmp_path / "all.npz", io.SWEEP_ARRAYS)
    joined = io.load_npz(tmp_path / "all.npz", io.SWEEP_ARRAYS)
    assert joined["final"].shape == (2, 5, 3, 4) and joined["final"][0, :, 0, 0].tolist() == [0, 0, 2, 2, 2]
    assert joined["seed"].tolist() == [0, 1, 2, 3, 4] and joined["prompt"][-1] == "aaaaa"
    assert joined["wall_seconds"].tolist() == [3.0, 3.0]  # the wall time of all samples
    # the settings an unsharded run records: without the shard's rows
    assert (str(joined["config_json"]), str(joined["config_digest"])) == io.config_digest({"steps": 1})
    _sweep_shard(tmp_path / "3.npz", [5], "2-of-2", 2, steps=2)
    with pytest.raises(InputFileError, match=r"3\.npz: its settings differ from those of .*1\.npz, another shard of "
                                             r"the same run, at steps: the shards were run with different settings"):
        gather_npz([tmp_path / "1.npz", tmp_path / "3.npz"], tmp_path / "bad.npz", io.SWEEP_ARRAYS)
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize("shards, problem", [
    ([("1-of-2", 0, [0, 1]), ("1-of-2", 0, [0, 1])], "holds the rows [0, 2) of shard 1-of-2, not those of shard 2"),
    ([("1-of-2", 0, [0, 1]), ("2-of-4", 2, [2])], "holds the rows [2, 3) of shard 2-of-4, not those of shard 2"),
    ([("1-of-2", 0, [0, 1]), ("2-of-2", 2, [2, 3, 4, 5])], None),
], ids=["a shard twice", "another run's shard", "as recorded"])
def test_a_shard_that_holds_other_rows_than_its_own_is_not_gathered(tmp_path, shards, problem):
    """A shard file copied from another shard, or from a run with other `shards` (the seeds of one shard twice,
    another's missing), is named with the command that reruns it, and nothing is gathered."""
    paths = [tmp_path / f"results/tiny/shards/{i}-of-2/sweep.npz" for i in (1, 2)]
    for path, (name, first, seeds) in zip(paths, shards):
        path.parent.mkdir(parents=True)
        _sweep_shard(path, seeds, name, first)
    if problem is None:
        gather_npz(paths, tmp_path / "sweep.npz", io.SWEEP_ARRAYS)
        assert io.load_npz(tmp_path / "sweep.npz", io.SWEEP_ARRAYS)["seed"].tolist() == [0, 1, 2, 3, 4, 5]
        return
    with pytest.raises(InputFileError) as error:
        gather_npz(paths, tmp_path / "sweep.npz", io.SWEEP_ARRAYS)
    assert str(error.value).startswith(f"{paths[1]}: {problem}"), error.value
    assert str(error.value).endswith(f"Rebuild it: snakemake --profile profiles/local "
                                     f"results/tiny/shards/2-of-2/sweep.npz --forcerun sweep"), error.value
    assert not (tmp_path / "sweep.npz").exists()


# -- real runs ---------------------------------------------------------------------------------------------------

TARGETS = [f"results/tiny/{name}" for name in SHARDED + ["features/train.safetensors", "metrics.csv", "depth.npz"]]


@pytest.fixture(scope="module")
def runs(small_run, tmp_path_factory):
    """The SMALL study unsharded (the session's shared run) and with 2 shards: {shards: (workdir, result, config)}."""
    workdir = copy_workflow(tmp_path_factory.mktemp("shards2"))
    config = write_config(workdir, SHARDS)
    result = run_ok(workdir, *TARGETS, "--configfile", str(config))
    return {1: (*small_run, None), 2: (workdir, result, config)}


@pytest.mark.slow
def test_a_sharded_run_runs_a_job_per_shard_and_gathers(runs):
    ran = executed_rules(runs[2][1])
    for stage in ("features", "probe", "sweep", "backbone", "depth_features"):
        assert ran.count(stage) == 2 and ran.count(f"gather_{stage}") == 1, ran
    assert not any(rule.startswith("gather") for rule in executed_rules(runs[1][1]))


@pytest.mark.slow
def test_sharded_and_unsharded_runs_are_bit_identical(runs):
    one, two = runs[1][0] / "results/tiny", runs[2][0] / "results/tiny"
    for name, contract in zip(SHARDED, (io.PROBE_ARRAYS, io.SWEEP_ARRAYS, io.BACKBONE_ARRAYS)):
        a, b = io.load_npz(one / name, contract), io.load_npz(two / name, contract)
        assert len(a["seed"]) == len(b["seed"]) == 4
        for key in contract:
            if key not in TIMINGS:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)
    for kind in ("inference", "train"):
        with safe_open(str(one / f"features/{kind}.safetensors"), "pt") as a, \
                safe_open(str(two / f"features/{kind}.safetensors"), "pt") as b:
            assert sorted(a.keys()) == sorted(b.keys()) and a.get_slice("seed").get_shape()[0] > 0
            for key in a.keys():
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), (kind, key)
        # the same bytes, metadata included (the wall times are in the sidecar): nothing after it reruns
        name = f"features/{kind}.safetensors"
        assert (one / name).read_bytes() == (two / name).read_bytes(), kind
    assert (one / "metrics.csv").read_text() == (two / "metrics.csv").read_text()
    # the depth features: 2 seeds x 2 prompts x depth.times [0, 1], time-major, in 2 shards of their rows
    for i, rows in ((1, [0, 4]), (2, [4, 8])):
        with safe_open(str(two / f"shards/{i}-of-2/depth/features.safetensors"), "pt") as f:
            meta = f.metadata()
        assert json.loads(meta["shard_json"]) == {"shard": f"{i}-of-2", "rows": rows}
        assert json.loads(meta["sha256_json"]) == tensor_checksums(two / f"shards/{i}-of-2/depth/features.safetensors")
    assert (one / "depth/features.safetensors").read_bytes() == (two / "depth/features.safetensors").read_bytes()
    a, b = io.load_npz(one / "depth.npz", io.DEPTH_ARRAYS), io.load_npz(two / "depth.npz", io.DEPTH_ARRAYS)
    assert a["final"].shape[:2] == (2, 4)
    for key in io.DEPTH_ARRAYS:
        if key not in TIMINGS:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), ("depth.npz", key)


@pytest.mark.slow
def test_a_failed_shard_is_redone_alone(runs, tmp_path):
    workdir = tmp_path / "rerun"
    shutil.copytree(runs[2][0], workdir, symlinks=True)
    before = io.load_probe(workdir / "results/tiny/probe.npz")
    # what a failed shard leaves: the other shards' files, no gathered file (and nothing after it)
    for name in ("shards/1-of-2/probe.npz", "probe.npz", "metrics.csv"):
        (workdir / "results/tiny" / name).unlink()
    redo = run_ok(workdir, *TARGETS, "--configfile", str(runs[2][2]))
    assert executed_rules(redo) == ["gather_probe", "metrics", "probe"]
    assert "results/tiny/shards/1-of-2/probe.npz" in redo.stdout + redo.stderr
    assert np.array_equal(io.load_probe(workdir / "results/tiny/probe.npz")["trajectory"], before["trajectory"])


@pytest.mark.slow
def test_a_shard_file_that_is_not_its_own_is_named_and_the_fix_gathers_the_right_rows(runs, tmp_path):
    """The sharded run's own shard files: a features shard with changed bytes, or shard 1's file copied over shard
    2's (gathered, shard 1's seeds would come twice and shard 2's not at all), is not gathered: the gather names
    the file and the command that reruns that shard, and run as given (with the run's --configfile), it redoes
    that shard alone and the gather joins the rows it joined before."""
    workdir = copy_run(runs[2][0], tmp_path / "wf")
    shards = workdir / "results/tiny/shards"
    features = [tmp_path / f"f/results/tiny/shards/{i}-of-2/features/inference.safetensors" for i in (1, 2)]
    for i, path in enumerate(features, 1):
        path.parent.mkdir(parents=True)
        shutil.copy(shards / f"{i}-of-2/features/inference.safetensors", path)
    fix = ("snakemake --profile profiles/local results/tiny/shards/2-of-2/features/inference.safetensors "
           "--forcerun features")
    data = bytearray(features[1].read_bytes())
    data[-20] ^= 0xFF  # the last tensor's bytes (safetensors: data after the header)
    features[1].write_bytes(bytes(data))
    with pytest.raises(InputFileError, match=r"2-of-2/features/inference\.safetensors: tensor '\w+' does not match "
                                             r"its checksum.*rerun it: " + re.escape(fix)):
        gather_features(features, tmp_path / "f/inference.safetensors")
    shutil.copy(features[0], features[1])
    with pytest.raises(InputFileError, match=r"2-of-2/features/inference\.safetensors: holds the rows \[0, 2\) of "
                                             r"shard 1-of-2, not those of shard 2-of-2.*rerun it: " + re.escape(fix)):
        gather_features(features, tmp_path / "f/inference.safetensors")
    assert not (tmp_path / "f/inference.safetensors").exists()

    before = io.load_probe(workdir / "results/tiny/probe.npz")
    shutil.copy(shards / "1-of-2/probe.npz", shards / "2-of-2/probe.npz")
    config = ["--configfile", runs[2][2].name]
    result = snakemake(workdir, "results/tiny/probe.npz", *config)
    output = result.stdout + result.stderr
    # the fix names the run's own config file, so it reruns this run's shard, not the embedded default's
    fix = (f"snakemake --profile profiles/local results/tiny/shards/2-of-2/probe.npz "
           f"--configfile {workdir / runs[2][2].name} --forcerun probe")
    assert result.returncode != 0 and ("results/tiny/shards/2-of-2/probe.npz: holds the rows [0, 2) of shard 1-of-2, "
                                       "not those of shard 2-of-2") in output, output[-3000:]
    assert f"Rebuild it: {fix}" in output
    assert executed_rules(run_ok(workdir, *shlex.split(fix)[3:])) == ["probe"]
    assert executed_rules(run_ok(workdir, "results/tiny/probe.npz", *config)) == ["gather_probe"]
    after = io.load_probe(workdir / "results/tiny/probe.npz")
    assert after["seed"].tolist() == before["seed"].tolist() == [0, 0, 1, 1]
    assert np.array_equal(after["trajectory"], before["trajectory"])


def test_a_shards_samples_are_those_rows_of_the_whole_run():
    from mimic_redundancy.data.samples import load_samples

    config = cfg.validate_config({**cfg.default_config(), "seeds": [0, 1, 2]})
    data, dims = cfg.data_settings(config), {"chunk_len": 4, "action_dim": 3, "joint_dim": 2}
    whole = load_samples(data, dims, None)
    for rows in (range(1, 2), range(3, 6)):  # one prompt only, then a shard starting mid-seed
        part = load_samples(data, dims, None, rows=rows)
        for field in ("seeds", "prompts", "windows", "episodes", "starts"):
            assert getattr(part, field) == getattr(whole, field)[rows.start:rows.stop], field
        for field in ("video", "joint_state", "noise", "gt_actions"):
            assert torch.equal(getattr(part, field), getattr(whole, field)[rows.start:rows.stop]), field
