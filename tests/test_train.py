"""Training with mimic-video's own loss, and checkpoints: bit-identical round trips and clear errors."""
from __future__ import annotations

import json

import numpy as np

import pytest
import torch

from mimic_redundancy.samples import synthetic_samples
from mimic_redundancy.model import (CheckpointError, DimensionError, build_model, load_checkpoint, net_dims,
                                    resolve_dims, save_checkpoint)
from mimic_redundancy.probe import library_sample, video_hiddens
from mimic_redundancy.train import train_model

# a narrow model keeps these tests fast; the dims are not mimic-video's defaults on purpose
SMALL_MODEL = {"preset": "small", "dim": 64, "depth": 1, "extract_layer": 1, "backbone": "tiny-random",
               "tokenizer": "builtin", "model_seed": 0, "device": "cpu"}
DIMS = {"chunk_len": 8, "action_dim": 7, "joint_dim": 8}
INPUTS = {"frames": 5, "height": 32, "width": 32}
PROMPTS = ["pick up the red block", "open the top drawer"]


def pool(n):
    return synthetic_samples([(10_000 + i, PROMPTS[i % 2]) for i in range(n)], INPUTS, DIMS)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(2)
    net = build_model(SMALL_MODEL, torch.device("cpu"), dims=DIMS)
    settings = {"steps": 60, "batch_size": 8, "lr": 1e-3, "seed": 0}
    rows, summary = train_model(net, pool(32), settings, "cpu")
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(net, folder, {"test": True})
    return net, rows, summary, folder


def test_training_lowers_the_loss_clearly(trained):
    _, rows, summary, _ = trained
    assert len(rows) == 60 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # mean over the last tenth of the steps at most a fifth of the first tenth's
    assert summary["loss_last_tenth"] < 0.2 * summary["loss_first_tenth"], summary
    assert summary["trained_parameters"] == sum(p.numel() for n, p in trained[0].named_parameters()
                                                if not n.startswith("video_predict_wrapper."))


def test_training_leaves_the_backbone_unchanged(trained):
    """Only the action head learns (most of its tensors change; a few get no gradient in this model)."""
    net = trained[0]
    fresh = build_model(SMALL_MODEL, torch.device("cpu"), dims=DIMS)
    for (name, p), q in zip(net.video_predict_wrapper.named_parameters(), fresh.video_predict_wrapper.parameters()):
        assert torch.equal(p, q), name
    head = [n for n, _ in net.named_parameters() if not n.startswith("video_predict_wrapper.")]
    changed = [n for n in head if not torch.equal(net.get_parameter(n), fresh.get_parameter(n))]
    unchanged = sorted(set(head) - set(changed))
    assert len(changed) > 0.8 * len(head), unchanged


def test_checkpoint_round_trip_gives_bit_identical_actions(trained):
    net, _, _, folder = trained
    loaded = load_checkpoint(folder)
    assert net_dims(loaded) == DIMS
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    batch = pool(4).batch(slice(None), "cpu")
    with torch.no_grad():
        a = library_sample(net, batch, video_hiddens(net, batch), 12)
        b = library_sample(loaded, batch, video_hiddens(loaded, batch), 12)
    assert torch.equal(a, b)
    tokenizer, again = net.video_predict_wrapper.tokenizer, loaded.video_predict_wrapper.tokenizer
    assert [tokenizer(p).input_ids for p in PROMPTS] == [again(p).input_ids for p in PROMPTS]


def test_the_checkpoint_has_no_pickles(trained):
    folder = trained[3]
    config = json.loads((folder / "config.json").read_text())
    assert config["mimic_video"] == {"dim": 64, "depth": 1, "action_chunk_len": 8, "dim_action": 7, "dim_joint_state": 8}
    assert config["video_backbone"] == {"kind": "tiny-random", "extract_layer": 1}
    header_size = int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((folder / "model.safetensors").read_bytes()[8:8 + header_size])
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")


def test_a_checkpoints_dimensions_are_checked_against_the_data(trained):
    model = {"preset": "trained", "checkpoint": str(trained[3])}
    assert resolve_dims(model, {"action_dim": (7, "data.csv row 1")}) == DIMS
    with pytest.raises(DimensionError, match=r"joint_dim mismatch: data\.csv row 1 has 9, but checkpoint .*config\.json "
                                             r"\(dim_joint_state\) says 8; use data with matching dimensions"):
        resolve_dims(model, {"joint_dim": (9, "data.csv row 1")})


def test_broken_checkpoints_name_the_file(trained, tmp_path):
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(trained[3], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mimic_video": {**config["mimic_video"], "dim": 32}}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not fit the model config\.json describes"):
        load_checkpoint(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_checkpoint(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint files \['tokenizer\.json'\] not found"):
        load_checkpoint(folder)


def test_train_refuses_windows_without_ground_truth(trained):
    from mimic_redundancy.readers import DataError

    samples = pool(2)
    samples.gt_actions[1] = float("nan")
    with pytest.raises(DataError, match="train needs ground-truth actions for every window"):
        train_model(trained[0], samples, {"steps": 1, "batch_size": 1, "lr": 1e-3, "seed": 0}, "cpu")


def test_a_checkpoint_trained_elsewhere_runs_the_dag_with_its_own_dimensions(trained, tmp_path):
    """The preset `checkpoint` reads checkpoints/my-model: here the fixture's checkpoint, as a user would copy it."""
    import shutil

    from conftest import SMALL, copy_workflow, executed_rules, snakemake, write_config
    from mimic_redundancy.io import load_probe

    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir, {**SMALL, "preset": "checkpoint"})
    target = "results/checkpoint/convergence.json"
    missing = snakemake(workdir, target, "--configfile", str(config))
    assert missing.returncode != 0
    assert "checkpoints/my-model/model.safetensors" in missing.stdout + missing.stderr
    shutil.copytree(trained[3], workdir / "checkpoints/my-model")
    result = snakemake(workdir, target, "--configfile", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert executed_rules(result) == ["metrics", "prefetch", "probe", "validate"]
    probe = load_probe(workdir / "results/checkpoint/probe.npz")
    assert probe["trajectory"].shape == (11, 4, 8, 7)  # chunk 8, 7 actions: the checkpoint's, not the defaults
    assert np.isfinite(probe["gt_actions"]).all()
    report = json.loads((workdir / "results/checkpoint/validate.json").read_text())
    assert report["dimensions"] == DIMS and report["samples"] == "N=2 samples (1 seed x 2 prompts)"
    assert report["passed"] and report["parameters"]["total"] == sum(p.numel() for p in trained[0].parameters())
