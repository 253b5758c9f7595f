"""Training with mimic-video's own loss, and checkpoints: bit-identical round trips and clear errors."""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np

import pytest
import torch

from mimic_redundancy.data.samples import synthetic_samples
from mimic_redundancy.model.checkpoints import FORMAT_V1, FORMAT_V2
from mimic_redundancy.model.features import compute_features
from mimic_redundancy.model.model import (CheckpointError, DimensionError, build_backbone, build_head, build_model,
                                          head_parameters, load_head, net_dims, resolve_dims, save_checkpoint)
from mimic_redundancy.model.sampling import library_sample, video_hiddens
from mimic_redundancy.model.train import train_model

# a narrow model keeps these tests fast; the dims are not mimic-video's defaults on purpose
SMALL_MODEL = {"preset": "small", "dim": 64, "depth": 1, "extract_layer": 1, "backbone": "tiny-random",
               "tokenizer": "builtin", "model_seed": 0, "device": "cpu"}
BACKBONE = {"kind": "tiny-random", "model_seed": 0, "tokenizer": "builtin", "extract_layer": 1, "dtype": "float32"}
DIMS = {"chunk_len": 8, "action_dim": 7, "joint_dim": 8}
INPUTS = {"frames": 5, "height": 32, "width": 32}
PROMPTS = ["pick up the red block", "open the top drawer"]
DRAWS = 2



def pool(n):
    return synthetic_samples([(10_000 + i, PROMPTS[i % 2]) for i in range(n)], INPUTS, DIMS)


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BACKBONE, torch.device("cpu"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, backbone):
    """The head (the library's: drawn from where the backbone's construction left the RNG) trained on cached features
    (32 windows x 2 draws, 300 steps: at 60 the trained head beat the fresh one for some initial heads only), no
    backbone in sight, then saved (v2)."""
    torch.set_num_threads(2)
    rows = compute_features(backbone, pool(32), "cpu", draws=DRAWS, draw_seed=0)
    net = build_head(SMALL_MODEL, torch.device("cpu"), DIMS, rows.hidden_width, backbone.head_rng_state)
    settings = {"steps": 300, "batch_size": 8, "lr": 1e-3, "seed": 0, "draws": DRAWS}
    losses, summary = train_model(net, rows, settings, "cpu")
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(net, folder, BACKBONE, {"test": True})
    return net, losses, summary, folder


def checks(backbone, n=4):
    return compute_features(backbone, pool(n), "cpu")


def test_training_lowers_the_loss_clearly(trained):
    net, rows, summary, _ = trained
    assert len(rows) == 300 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # the flow loss is heavy-tailed (it divides by 1 - t near t = 1): compare medians of the first and last sixth
    first, last = (statistics.median(r["loss"] for r in part) for part in (rows[:10], rows[-10:]))
    assert last < 0.3 * first, (first, last)
    assert summary["fixed_loss_after"] < 0.3 * summary["fixed_loss_before"], summary
    assert summary["trained_parameters"] == sum(p.numel() for p in head_parameters(net))
    assert summary["windows"] == 32 and summary["draws"] == DRAWS


def test_the_trained_head_is_closer_to_the_ground_truth(trained, backbone):
    net = trained[0]
    fresh = build_head(SMALL_MODEL, torch.device("cpu"), DIMS, 16, backbone.head_rng_state)
    held_out = compute_features(backbone, synthetic_samples([(i, PROMPTS[0]) for i in range(8)], INPUTS, DIMS), "cpu")
    batch = held_out.batch(slice(None), "cpu")
    with torch.no_grad():
        errors = [float(((library_sample(m, batch, batch.hiddens, 20) - held_out.gt_actions) ** 2).mean())
                  for m in (fresh, net)]
    assert errors[1] < 0.8 * errors[0], errors


def test_training_builds_no_backbone_and_changes_the_head(trained, backbone):
    """Only the action head exists in training; most of its tensors change (a few get no gradient)."""
    net = trained[0]
    assert net.video_predict_wrapper is None
    fresh = build_head(SMALL_MODEL, torch.device("cpu"), DIMS, 16, backbone.head_rng_state)
    head = [n for n, _ in net.named_parameters()]
    changed = [n for n in head if not torch.equal(net.get_parameter(n), fresh.get_parameter(n))]
    assert len(changed) > 0.8 * len(head), sorted(set(head) - set(changed))


def test_checkpoint_round_trip_gives_bit_identical_actions(trained, backbone):
    net, _, _, folder = trained
    loaded = load_head(folder)
    assert net_dims(loaded) == DIMS and loaded.video_predict_wrapper is None
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    batch = checks(backbone).batch(slice(None), "cpu")
    with torch.no_grad():
        a = library_sample(net, batch, batch.hiddens, 12)
        b = library_sample(loaded, batch, batch.hiddens, 12)
    assert torch.equal(a, b)


def test_the_checkpoint_holds_the_head_alone_and_references_the_backbone(trained):
    net, _, _, folder = trained
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "mimic-redundancy/checkpoint-v2"
    assert config["mimic_video"] == {"dim": 64, "depth": 1, "action_chunk_len": 8, "dim_action": 7,
                                     "dim_joint_state": 8, "dim_video_hidden": 16}
    assert config["video_backbone"] == BACKBONE
    raw = (folder / "model.safetensors").read_bytes()
    header_size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_size])
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert all(v["dtype"] == "F32" for v in tensors.values())
    assert not any(k.startswith("video_predict_wrapper.") for k in tensors)
    head_bytes = 4 * sum(p.numel() for p in net.state_dict().values())
    assert head_bytes == len(raw) - 8 - header_size  # exactly the head's float32 weights, plus the header


def save_v1(net, folder):
    """A checkpoint as format v1 wrote it: the tiny model whole, its tokenizer, constructor arguments."""
    from safetensors.torch import save_model

    folder.mkdir(parents=True)
    save_model(net, str(folder / "model.safetensors"))
    net.video_predict_wrapper.tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({
        "format": FORMAT_V1, "provenance": {},
        "mimic_video": {"dim": 64, "depth": 1, "action_chunk_len": 8, "dim_action": 7, "dim_joint_state": 8},
        "video_backbone": {"kind": "tiny-random", "extract_layer": 1}}))


def test_format_v1_checkpoints_still_load(tmp_path):
    from mimic_redundancy.model.checkpoints import checkpoint_backbone

    whole = build_model({**SMALL_MODEL, "model_seed": 5}, torch.device("cpu"), dims=DIMS)
    save_v1(whole, tmp_path / "v1")
    head = load_head(tmp_path / "v1", 16)
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, whole.state_dict()[name]), name
    wrapper = build_backbone(checkpoint_backbone(tmp_path / "v1"), torch.device("cpu"))
    samples = pool(2)
    batch = samples.batch(slice(None), "cpu")
    assert torch.equal(compute_features(wrapper, samples, "cpu").hiddens[0], video_hiddens(whole, batch)[0])


def test_broken_checkpoints_name_the_file(trained, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(trained[3], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mimic_video": {**config["mimic_video"], "dim": 32}}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: weights do not fit the model config\.json describes"):
        load_head(folder)
    (folder / "config.json").write_text(json.dumps({**config, "format": "mimic-redundancy/checkpoint-v9"}))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown checkpoint format 'mimic-redundancy/checkpoint-v9'; "
                                              r"this pipeline reads .*checkpoint-v1.*checkpoint-v2"):
        load_head(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file .* truncated or "
                                              r"damaged"):
        load_head(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_head(folder)
    weights.unlink()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"checkpoint files \['model\.safetensors'\] not found"):
        load_head(folder)


@pytest.mark.parametrize("key, value, message", [
    ("mimic_video.dim", "64", r"'mimic_video\.dim' must be an integer from 8 to 65536, got '64' \(a string\); write it "
                              r"as a JSON integer, \"dim\": 64; otherwise copy the checkpoint folder again"),
    ("mimic_video.depth", 0, r"'mimic_video\.depth' must be an integer from 1 to 1024, got 0; copy the checkpoint"),
    ("mimic_video.dim_video_hidden", 16.5, r"'mimic_video\.dim_video_hidden' must be an integer from 1 to 65536, got "
                                           r"16\.5 \(a fractional number\); copy the checkpoint folder again"),
    ("mimic_video.heads", 4, r"'mimic_video' holds MimicVideo's arguments \['dim', .*\]; unknown: \['heads'\]"),
    ("video_backbone.extract_layer", True, r"'video_backbone\.extract_layer' must be an integer from 0 to 1024, got "
                                           r"True \(a boolean\)"),
    ("video_backbone.model_seed", None, r"'video_backbone\.model_seed' must be an integer from 0 to \d+, got None "
                                        r"\(null\)"),
    ("video_backbone.dtype", "fp16", r"'video_backbone\.dtype' must be one of \['float32', 'bfloat16', 'float16'\], "
                                     r"got 'fp16'"),
    ("joint_normalizer", "yes", r"'joint_normalizer' must be true or false, got 'yes'"),
])
def test_a_checkpoint_config_field_of_the_wrong_type_or_range_is_named(trained, tmp_path, key, value, message):
    """Every config.json field the loader reads is checked (type, range) before any model is built: the job that
    reads a checkpoint's dimensions first (resolve_dims) and load_head name the key, not a torch internal."""
    folder = shutil.copytree(trained[3], tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    *parents, last = key.split(".")
    target = config
    for parent in parents:
        target = target[parent]
    target[last] = value
    (folder / "config.json").write_text(json.dumps(config))
    for read in (lambda: load_head(folder), lambda: resolve_dims({"preset": "mine", "checkpoint": str(folder)}, {})):
        with pytest.raises(CheckpointError, match=r"ckpt/config\.json: " + message) as refused:
            read()
    fix = re.search(r"write it as a JSON integer, (.*?); otherwise", str(refused.value))
    if fix:  # the line the message gives, written as given, loads the checkpoint
        (folder / "config.json").write_text(json.dumps(config).replace(f'"{last}": {json.dumps(value)}', fix[1]))
        assert net_dims(load_head(folder)) == DIMS


def test_a_float16_checkpoint_is_refused_with_a_conversion_that_works(trained, tmp_path):
    """The format holds float32 weights: a file of float16 tensors is refused (not upcast silently), naming the file,
    the dtype and the fix; the conversion it gives, run as written, loads and keeps the original beside it."""
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(trained[3], tmp_path / "my ckpt")  # a space: the command quotes its paths
    weights = folder / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(weights).items()}, str(weights), metadata={"format": FORMAT_V2})
    half = weights.read_bytes()
    with pytest.raises(CheckpointError) as refused:
        load_head(folder)
    message = str(refused.value)
    assert re.match(re.escape(str(weights)) + r": (\d+) of \1 tensors in float16 \(e\.g\. '[\w.]+'\); a checkpoint's "
                    r"weights are float32 \(docs/training\.md\), and this pipeline does not upcast them silently\. "
                    r"Rerun the train rule that wrote it, or convert the file to float32", message), message
    command = re.search(r"convert the file to float32 from the project folder .*: `(.*)`$", message)[1]
    subprocess.run(command, shell=True, cwd=Path(__file__).parents[1], check=True, timeout=120)
    assert (folder / "model.safetensors.orig").read_bytes() == half  # nothing deleted
    loaded = load_head(folder)
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, trained[0].state_dict()[name].half().float())


def test_a_v1_checkpoints_broken_tokenizer_names_the_file(tmp_path):
    whole = build_model(SMALL_MODEL, torch.device("cpu"), dims=DIMS)
    save_v1(whole, tmp_path / "v1")
    (tmp_path / "v1" / "tokenizer.json").write_text("{}")
    from mimic_redundancy.model.checkpoints import checkpoint_backbone

    with pytest.raises(CheckpointError, match=r"v1/tokenizer\.json: not a tokenizers JSON file"):
        build_backbone(checkpoint_backbone(tmp_path / "v1"), torch.device("cpu"))


def test_a_checkpoints_dimensions_are_checked_against_the_data(trained):
    model = {"preset": "trained", "checkpoint": str(trained[3])}
    assert resolve_dims(model, {"action_dim": (7, "data.csv row 1")}) == DIMS
    with pytest.raises(DimensionError, match=r"joint_dim mismatch: data\.csv row 1 has 9, but checkpoint .*config\.json "
                                             r"\(dim_joint_state\) says 8; use data with matching dimensions"):
        resolve_dims(model, {"joint_dim": (9, "data.csv row 1")})


def test_train_refuses_windows_without_ground_truth(trained, backbone):
    from mimic_redundancy.data.readers import DataError

    rows = compute_features(backbone, pool(2), "cpu", draws=1)
    rows.gt_actions[1] = float("nan")
    with pytest.raises(DataError, match="train needs ground-truth actions for every window"):
        train_model(trained[0], rows, {"steps": 1, "batch_size": 1, "lr": 1e-3, "seed": 0, "draws": 1}, "cpu")


@pytest.mark.slow
def test_a_checkpoint_trained_elsewhere_runs_the_dag_with_its_own_dimensions(trained, backbone, tmp_path):
    """The preset `checkpoint` reads checkpoints/my-model: here the fixture's checkpoint, as a user would copy it."""
    from conftest import SMALL, copy_workflow, executed_rules, snakemake, write_config
    from mimic_redundancy.core.io import load_probe

    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir, {**SMALL, "preset": "checkpoint"})
    target = "results/checkpoint/convergence.json"
    missing = snakemake(workdir, target, "--configfile", str(config))
    assert missing.returncode != 0
    assert "checkpoints/my-model/model.safetensors" in missing.stdout + missing.stderr
    shutil.copytree(trained[3], workdir / "checkpoints/my-model")
    result = snakemake(workdir, target, "--configfile", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert executed_rules(result) == ["features", "metrics", "prefetch", "probe", "validate"]
    probe = load_probe(workdir / "results/checkpoint/probe.npz")
    assert probe["trajectory"].shape == (11, 4, 8, 7)  # chunk 8, 7 actions: the checkpoint's, not the defaults
    assert np.isfinite(probe["gt_actions"]).all()
    report = json.loads((workdir / "results/checkpoint/validate.json").read_text())
    assert report["dimensions"] == DIMS and report["samples"] == "N=2 samples (1 seed x 2 prompts)"
    wrapper = sum(p.numel() for p in backbone.parameters())
    assert report["passed"] and report["parameters"] == {
        "action_head": sum(p.numel() for p in trained[0].parameters()), "video_wrapper": wrapper,
        "total": sum(p.numel() for p in trained[0].parameters()) + wrapper}
    assert report["backbone"] == BACKBONE  # the checkpoint's reference, rebuilt by the features stage
    # a damaged checkpoint, through the DAG: the head job names the file and what to do
    weights = workdir / "checkpoints/my-model/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    damaged = snakemake(workdir, "results/checkpoint/validate.json", "--forcerun", "validate", "--configfile", str(config))
    assert damaged.returncode != 0
    log = (workdir / "results/checkpoint/logs/validate.log").read_text()
    assert "checkpoints/my-model/model.safetensors: not a readable safetensors file" in log
    assert "copy the checkpoint folder again" in log
    assert not (workdir / "results/checkpoint/validate.json").exists()


def test_noisy_flow_times_and_the_cosine_schedule_change_training_only(backbone):
    """train.flow_times noisy draws the loss's flow times mostly near the noise (mean s/3 against the library's
    2s/3), only while training; train.lr_schedule cosine ends at lr 0. Both change the trained weights."""
    from mimic_redundancy.model.train import noisy_flow_times

    rows = compute_features(backbone, pool(8), "cpu", draws=1, draw_seed=0)
    net = build_head(SMALL_MODEL, torch.device("cpu"), DIMS, rows.hidden_width, backbone.head_rng_state)
    library = net.sample_time_fn
    from mimic_video.mimic_video import sample_flow_times

    torch.manual_seed(0)
    draws = sample_flow_times(100_000, s=net.sample_time_s)  # the library's uniform draw, as its training makes it
    noisy, own = noisy_flow_times(net)(draws), library(draws)
    s = net.sample_time_s
    assert abs(float(noisy.mean()) - s / 3) < 0.01 and abs(float(own.mean()) - 2 * s / 3) < 0.01
    assert 0 <= float(noisy.min()) and float(noisy.max()) <= s
    weights = {}
    for extra in [{}, {"flow_times": "noisy"}, {"lr_schedule": "cosine"}]:
        head = build_head(SMALL_MODEL, torch.device("cpu"), DIMS, rows.hidden_width, backbone.head_rng_state)
        settings = {"steps": 4, "batch_size": 4, "lr": 1e-3, "seed": 0, "draws": 1, **extra}
        _, summary = train_model(head, rows, settings, "cpu")
        assert head.sample_time_fn is not None and summary.get("flow_times", "library") == extra.get("flow_times",
                                                                                                     "library")
        weights[str(extra)] = torch.cat([p.detach().flatten() for p in head_parameters(head)])
        assert abs(head.sample_time_fn(torch.tensor([0.5])) - library(torch.tensor([0.5]))) < 1e-7  # restored
    values = list(weights.values())
    assert not torch.equal(values[0], values[1]) and not torch.equal(values[0], values[2])


def test_a_normalized_state_is_trained_saved_and_reloaded(backbone, tmp_path):
    """train.normalize_state: the head z-scores its state with the training rows' statistics, the checkpoint keeps
    them (config.json says so; the weights hold them), and the reloaded head samples bit for bit."""
    rows = compute_features(backbone, pool(8), "cpu", draws=1, draw_seed=0)
    net = build_head(SMALL_MODEL, torch.device("cpu"), DIMS, rows.hidden_width, backbone.head_rng_state)
    _, summary = train_model(net, rows, {"steps": 3, "batch_size": 4, "lr": 1e-3, "seed": 0, "draws": 1,
                                         "normalize_state": True}, "cpu")
    np.testing.assert_allclose(summary["joint_normalizer"]["mean"], rows.joint_state.mean(0).numpy(), rtol=1e-6)
    save_checkpoint(net, tmp_path / "ckpt", BACKBONE, {"test": True})
    assert json.loads((tmp_path / "ckpt/config.json").read_text())["joint_normalizer"] is True
    loaded = load_head(tmp_path / "ckpt")
    assert torch.equal(loaded.joint_normalizer[0].std, net.joint_normalizer[0].std)
    batch = checks(backbone).batch(slice(None), "cpu")
    with torch.no_grad():
        assert torch.equal(library_sample(net, batch, batch.hiddens, 4), library_sample(loaded, batch, batch.hiddens, 4))
