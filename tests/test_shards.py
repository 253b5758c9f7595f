"""Sharding (config `shards`): the rows each shard runs, the gathers, and a sharded run that equals the
unsharded one bit for bit (the session's SMALL run, 4 samples in 2 probe batches, against 2 shards), through
real Snakemake runs. On Slurm: tests/test_slurm.py."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import SHARDS, copy_workflow, executed_rules, run_ok, write_config
from mimic_redundancy import config as cfg
from mimic_redundancy import io
from mimic_redundancy.io import InputFileError
from mimic_redundancy.shards import gather_features, gather_npz

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
                  "versions_json": "{}", "numerics_json": "{}"}
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
def runs(small_run, tmp_path_factory):
    """The SMALL study unsharded (the session's shared run) and with 2 shards: {shards: (workdir, result, config)}."""
    workdir = copy_workflow(tmp_path_factory.mktemp("shards2"))
    config = write_config(workdir, SHARDS)
    result = run_ok(workdir, *TARGETS, "--configfile", str(config))
    return {1: (*small_run, None), 2: (workdir, result, config)}


@pytest.mark.slow
def test_a_sharded_run_runs_a_job_per_shard_and_gathers(runs):
    ran = executed_rules(runs[2][1])
    for stage in ("features", "probe", "sweep", "backbone"):
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
            ma, mb = a.metadata(), b.metadata()
            for key in set(ma) - {"seconds_json", "build_seconds"}:
                assert ma[key] == mb[key], (kind, key)
    assert (one / "metrics.csv").read_text() == (two / "metrics.csv").read_text()


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
