"""Video features: computed exactly as mimic-video computes its hiddens (inference and training), loaded in the
configured dtype, and refused with a clear message when missing, damaged or computed for other settings."""
from __future__ import annotations

import pytest
import torch

from mimic_redundancy.data.samples import synthetic_samples
from mimic_redundancy.model.features import (FeaturesError, compute_features, library_video_defaults, load_features,
                                             save_features)
from mimic_redundancy.model.model import build_backbone, build_model, net_dims
from mimic_redundancy.model.sampling import video_hiddens

from conftest import TINY as DEFAULT_TINY, TINY_INPUTS as INPUTS

TINY = {**DEFAULT_TINY, "dim": 64, "depth": 1}  # config.yaml's tiny model with a narrow head: fast, same backbone
PAIRS = [(0, "pick up the red block"), (1, "open the top drawer"), (7, "pick up the red block")]


@pytest.fixture(scope="module")
def net():
    torch.set_num_threads(2)
    return build_model(TINY, torch.device("cpu"))


def samples(net, pairs=PAIRS):
    return synthetic_samples(pairs, INPUTS, net_dims(net))


def test_inference_rows_equal_the_hiddens_of_mimic_videos_inference_path(net):
    rows = compute_features(net.video_predict_wrapper, samples(net), "cpu")
    batch = samples(net).batch(slice(None), "cpu")
    direct = video_hiddens(net, batch)  # MimicVideo.forward(time=0, video=...), intermediates' hiddens
    assert torch.equal(rows.hiddens[0], direct[0])
    assert rows.video_time.tolist() == [[0.0]] * 3 and rows.video_noise_seed[:, 0].tolist() == [0, 1, 7]
    assert rows.draws == [0, 0, 0] and rows.seeds == [0, 1, 7]
    assert torch.equal(rows.noise, batch.noise.float()) and torch.equal(rows.joint_state, batch.joint_state)


def test_training_rows_equal_what_mimic_video_computes_inside_its_own_training_step(net):
    """Each training row: the hiddens and video time MimicVideo.forward(actions, video=...) computes in training,
    from the RNG state the row's seed gives (the library draws the time first, then the video noise)."""
    data = samples(net, PAIRS[:2])
    rows = compute_features(net.video_predict_wrapper, data, "cpu", draws=3, draw_seed=11)
    assert len(rows) == 6 and rows.windows == [0, 0, 0, 1, 1, 1] and rows.draws == [0, 1, 2, 0, 1, 2]
    assert len(set(rows.video_time[:, 0].tolist())) == 6 and (0 < rows.video_time).all() and (rows.video_time < 1).all()
    wrapper = net.video_predict_wrapper
    for r in (0, 4):
        captured = {}
        hooks = [wrapper.register_forward_pre_hook(lambda m, a, kw: captured.update(time=kw["timestep"]),
                                                   with_kwargs=True),
                 wrapper.register_forward_hook(lambda m, a, out: captured.update(hiddens=out))]
        window = rows.windows[r]
        batch = data.batch([window], "cpu")
        try:
            net.train()
            torch.manual_seed(int(rows.video_noise_seed[r, 0]))
            net(actions=data.gt_actions[[window]], joint_state=batch.joint_state, video=batch.video,
                prompts=batch.prompts, no_grad_video_model_forward=True)
        finally:
            net.eval()
            for hook in hooks:
                hook.remove()
        assert torch.equal(captured["time"], rows.video_time[r:r + 1, 0])
        assert torch.equal(captured["hiddens"].flatten(1, -2), rows.hiddens[0][r:r + 1])
    assert library_video_defaults() == (0.0, 1.0)  # MimicVideo's video_time_denoise_mu and _sigma


def test_bf16_backbone_is_loaded_in_bf16_and_close_to_float32(tmp_path):
    """The pretrained path (the tiny diffusers pipeline the Hub tests serve) loaded in bfloat16: every weight is
    stored in bf16, the hiddens are finite and within 5% (relative L2) of float32's."""
    from hub_server import save_tiny_cosmos_pipeline

    snapshot = save_tiny_cosmos_pipeline(tmp_path / "tiny-cosmos")
    spec = {"kind": "pretrained", "repo": "test-org/tiny-cosmos", "revision": "main", "extract_layer": 1}
    wrappers = {dtype: build_backbone({**spec, "dtype": dtype}, torch.device("cpu"), {"backbone": snapshot})
                for dtype in ("float32", "bfloat16")}
    for part in ("transformer", "vae", "text_encoder"):
        assert {p.dtype for p in getattr(wrappers["bfloat16"], part).parameters()} == {torch.bfloat16}, part
        assert {p.dtype for p in getattr(wrappers["float32"], part).parameters()} == {torch.float32}, part
    data = synthetic_samples(PAIRS, INPUTS, {"chunk_len": 32, "action_dim": 20, "joint_dim": 32})
    rows = {dtype: compute_features(w, data, "cpu") for dtype, w in wrappers.items()}
    half, full = rows["bfloat16"].hiddens[0], rows["float32"].hiddens[0]
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32 and half.isfinite().all()
    relative = float((half.float() - full).norm() / full.norm())
    assert relative < 0.05, relative


def test_a_features_file_round_trips_and_is_refused_when_missing_damaged_or_foreign(net, tmp_path):
    rows = compute_features(net.video_predict_wrapper, samples(net), "cpu")
    path = tmp_path / "results/tiny/features/inference.safetensors"
    settings = {"backbone": {"kind": "tiny-random"}, "data": [1, 2]}
    save_features(path, rows, "inference", settings, {"dtypes_json": {"vae": "float32"}})
    from mimic_redundancy.core.io import config_digest

    digest = config_digest(settings)[1]
    again = load_features(path, digest, "inference")
    assert torch.equal(again.hiddens[0], rows.hiddens[0]) and again.prompts == rows.prompts
    assert again.seeds == rows.seeds and torch.equal(again.gt_actions, rows.gt_actions)
    fix = r"`snakemake --profile profiles/local .*inference\.safetensors --forcerun features`"
    with pytest.raises(FeaturesError, match=r"computed for other settings .* preset tiny\); rebuild it with " + fix):
        load_features(path, config_digest({**settings, "data": [1]})[1], "inference")
    with pytest.raises(FeaturesError, match=r"holds 'inference' features, expected 'train'"):
        load_features(path, digest, "train")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(FeaturesError, match=r"inference\.safetensors: not a readable features file .*" + fix):
        load_features(path, digest, "inference")
    path.unlink()
    with pytest.raises(FeaturesError, match=r"inference\.safetensors: features file not found; rebuild it with " + fix):
        load_features(path, digest, "inference")


def test_the_same_rows_give_the_same_bytes_whatever_their_wall_times(net, tmp_path):
    """Snakemake reruns what reads a rebuilt input unless its checksum is unchanged: equal content must give equal
    bytes, so the wall times live in a sidecar (and reach the depth stage from there), and every key is sorted
    (safetensors' own writer orders the metadata at random)."""
    import json

    from mimic_redundancy.core.io import config_digest
    from mimic_redundancy.core.shards import tensor_checksums, timing_path

    rows = compute_features(net.video_predict_wrapper, samples(net), "cpu")
    settings = {"backbone": {"kind": "tiny-random"}, "data": [1, 2]}
    files = []
    for i, seconds in enumerate([[0.1, 0.2, 0.3], [9.0, 8.0, 7.0]]):
        rows.meta["seconds"] = seconds
        path = tmp_path / f"run{i}/features/inference.safetensors"
        extra = {"build_seconds": f"{i}.5", **{k: "v" for k in "qwertyuiop"}}
        save_features(path, rows, "inference", settings, extra)
        files.append(path.read_bytes())
        assert json.loads(timing_path(path).read_text()) == {"seconds": seconds, "build_seconds": f"{i}.5"}
        loaded = load_features(path, config_digest(settings)[1], "inference")
        assert json.loads(loaded.meta["seconds_json"]) == seconds and "build_seconds" not in loaded.meta
        assert json.loads(loaded.meta["sha256_json"]) == tensor_checksums(path)
    assert files[0] == files[1]
