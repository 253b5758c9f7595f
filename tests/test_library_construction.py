"""The tiny preset's random model is mimic-video's own construction, bit for bit:
`torch.manual_seed(model_seed); MimicVideo(512, CosmosPredictWrapper(extract_layer=1, random_weights=True, tiny=True),
depth=3)`. The head-only stages draw the head from the RNG state the backbone's construction left (build_backbone's
`head_rng_state`, carried by the features files), so their head is the library's, tensor for tensor, and the shared
run's probe ends on the very actions the library's own `MimicVideo.sample` gives."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY

# The library's way, with mimic_video + torch + transformers only (none of this project's model code): the model as
# the seed session built it, its tokenizer by the wrapper's own T5TokenizerFast.from_pretrained("google-t5/t5-small")
# from the HF cache the test lays out, the hiddens as MimicVideo's inference path computes them (once per sample, its
# video noise seeded by the sample's seed), then MimicVideo.sample from the same initial noise in the probe's batches.
LIBRARY_SCRIPT = r"""
import json, sys
import torch
from mimic_video import MimicVideo
from mimic_video.cosmos_predict import CosmosPredictWrapper

inputs = torch.load(sys.argv[1])
torch.set_num_threads(inputs["threads"])
torch.use_deterministic_algorithms(inputs["deterministic"])
torch.manual_seed(inputs["model_seed"])
model = MimicVideo(512, CosmosPredictWrapper(extract_layer=1, random_weights=True, tiny=True), depth=3)
model.eval()
video, joint, noise, prompts = inputs["video"], inputs["joint_state"], inputs["noise"], inputs["prompts"]
hiddens = []
with torch.no_grad():
    for i, seed in enumerate(inputs["seeds"]):
        torch.manual_seed(seed)
        _, inter = model.forward(actions=noise[i:i + 1], time=0.0, video=video[i:i + 1], prompts=prompts[i:i + 1],
                                 joint_state=joint[i:i + 1], predict_num_future_latents=1, return_intermediates=True)
        hiddens.append(inter.cache.video_hiddens)
    actions, size = [], inputs["batch_size"]
    for start in range(0, len(inputs["seeds"]), size):
        rows = slice(start, start + size)
        batch_hiddens = [torch.cat(layer) for layer in zip(*hiddens[rows])]
        actions.append(model.sample(steps=inputs["steps"], batch_size=len(inputs["seeds"][rows]),
                                    noise_latents=noise[rows].clone(), video_hiddens=batch_hiddens,
                                    prompts=prompts[rows], joint_state=joint[rows], disable_progress_bar=True))
torch.save({"actions": torch.cat(actions), "head": {k: v for k, v in model.state_dict().items()
                                                    if not k.startswith("video_predict_wrapper.")}}, sys.argv[2])
print(json.dumps({"tokens": len(model.video_predict_wrapper.tokenizer)}))
"""


def library_model(model_seed: int = 0):
    """MimicVideo(512, CosmosPredictWrapper(..., tiny=True), depth=3) after torch.manual_seed, in this process: the
    wrapper's hard-coded Hub tokenizer replaced by the builtin one (it decides no weight)."""
    from mimic_video import MimicVideo
    from mimic_video.cosmos_predict import CosmosPredictWrapper

    from mimic_redundancy.data.tokenizer import builtin_tokenizer
    from mimic_redundancy.model.model import _tokenizer_for_wrapper

    torch.manual_seed(model_seed)
    with _tokenizer_for_wrapper(builtin_tokenizer()):
        wrapper = CosmosPredictWrapper(extract_layer=1, random_weights=True, tiny=True)
    return MimicVideo(512, wrapper, depth=3)


def test_build_head_from_the_recorded_state_is_the_librarys_head_and_needs_the_state():
    from mimic_redundancy.model.model import (build_backbone, build_head, head_state, resolve_dims, rng_state_from_hex,
                                              rng_state_hex)
    from mimic_redundancy.model.presets import preset_backbone

    library = head_state(library_model(TINY["model_seed"]))
    torch.manual_seed(123)  # whatever came before: build_backbone seeds itself
    wrapper = build_backbone(preset_backbone(TINY, TINY["model_seed"]), torch.device("cpu"))
    torch.randn(1000)  # draws between the backbone and the head (the features stage's) change nothing
    state = rng_state_from_hex(rng_state_hex(wrapper.head_rng_state))  # as the features file carries it
    assert torch.equal(state, wrapper.head_rng_state) and state.dtype == torch.uint8
    head = head_state(build_head(TINY, torch.device("cpu"), resolve_dims(TINY, {}), wrapper.dim_latent, state))
    assert sorted(head) == sorted(library) and len(head) > 100
    assert [k for k in library if not torch.equal(head[k], library[k])] == []
    with pytest.raises(TypeError, match="rng_state"):  # no default: every caller says where the head comes from
        build_head(TINY, torch.device("cpu"), resolve_dims(TINY, {}), wrapper.dim_latent)
    # a loaded (pretrained) backbone leaves no state: the head is seeded from model_seed, so model_seed still counts
    seeded = [head_state(build_head({**TINY, "model_seed": s}, torch.device("cpu"), resolve_dims(TINY, {}),
                                    wrapper.dim_latent, None)) for s in (0, 0, 1)]
    assert all(torch.equal(seeded[0][k], seeded[1][k]) for k in seeded[0])
    assert not all(torch.equal(seeded[0][k], seeded[2][k]) for k in seeded[0])


def test_a_features_file_without_the_head_rng_state_is_refused_with_the_rebuild_command(tmp_path):
    """A features file written before the head's RNG state was recorded: a head built from settings refuses it,
    naming the command that rebuilds it."""
    from mimic_redundancy.core.io import config_digest
    from mimic_redundancy.data.samples import synthetic_samples
    from mimic_redundancy.model.features import FeaturesError, compute_features, save_features
    from mimic_redundancy.model.model import build_backbone, resolve_dims
    from mimic_redundancy.model.presets import preset_backbone
    from mimic_redundancy.pipeline.stages import _head

    wrapper = build_backbone(preset_backbone(TINY, 0), torch.device("cpu"))
    rows = compute_features(wrapper, synthetic_samples([(0, "pick up the red block")],
                                                        {"frames": 5, "height": 32, "width": 32},
                                                        resolve_dims(TINY, {})), "cpu")
    path = tmp_path / "results/tiny/features/inference.safetensors"
    identity = {"backbone": preset_backbone(TINY, 0), "data": [0]}
    save_features(path, rows, "inference", identity, {})
    settings = {"model": {**TINY, "numerics": {"threads": 1, "deterministic": True}},
                "features_digest": config_digest(identity)[1]}
    threads = torch.get_num_threads()
    try:
        with pytest.raises(FeaturesError, match=r"inference\.safetensors: has no metadata 'head_rng_state' .*rebuild "
                                                 r"it with `snakemake --profile profiles/local .* --forcerun features`"):
            _head(settings, path, 1)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)


def test_the_gather_keeps_the_head_rng_state_its_shards_share(tmp_path):
    """Every features shard builds the same backbone, so records the same state: the gathered file keeps it, and
    shards that disagree are not gathered."""
    from safetensors import safe_open

    from mimic_redundancy.core.io import InputFileError
    from mimic_redundancy.core.shards import gather_features
    from mimic_redundancy.model.model import build_backbone, rng_state_hex
    from mimic_redundancy.model.presets import preset_backbone
    from test_shards import _features_file

    state = rng_state_hex(build_backbone(preset_backbone(TINY, 0), torch.device("cpu")).head_rng_state)
    _features_file(tmp_path / "a.safetensors", 2, shard=("1-of-2", 0), head_rng_state=state)
    _features_file(tmp_path / "b.safetensors", 3, shard=("2-of-2", 2), head_rng_state=state)
    gather_features([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "all.safetensors")
    with safe_open(str(tmp_path / "all.safetensors"), "pt") as f:
        assert f.metadata()["head_rng_state"] == state
    _features_file(tmp_path / "c.safetensors", 3, shard=("2-of-2", 2), head_rng_state=rng_state_hex(torch.Generator().get_state()))
    with pytest.raises(InputFileError, match="metadata 'head_rng_state' differs between shards"):
        gather_features([tmp_path / "a.safetensors", tmp_path / "c.safetensors"], tmp_path / "other.safetensors")


def _tokenizer_cache(root):
    """An HF cache holding the builtin tokenizer as google-t5/t5-small (FACTS route (c)): what the wrapper's own
    T5TokenizerFast.from_pretrained("google-t5/t5-small") loads offline."""
    from mimic_redundancy.data.tokenizer import builtin_tokenizer

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / "hub" / "models--google-t5--t5-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    tokenizer = builtin_tokenizer()
    tokenizer.save_pretrained(str(repo / "snapshots" / commit))
    return len(tokenizer)


@pytest.mark.slow
def test_the_shared_runs_probe_ends_on_the_librarys_own_sample_bit_for_bit(completed, tmp_path):
    """results/tiny/probe.npz of the shared run (conftest.SMALL): its final actions are MimicVideo.sample's, from a
    model built the library's way in a process that imports none of this project's model code."""
    import yaml

    from mimic_redundancy.core.io import load_probe
    from mimic_redundancy.data.samples import synthetic_samples
    from mimic_redundancy.pipeline import config as cfg

    workdir, _ = completed
    probe = load_probe(workdir / "results/tiny/probe.npz")
    full = cfg.validate_config(yaml.safe_load((workdir / "config.yaml").read_text()))
    assert full["preset"] == "tiny" and full["presets"]["tiny"] == {k: v for k, v in TINY.items()
                                                                    if k not in ("preset", "model_seed", "device")}
    samples = synthetic_samples(cfg.samples(full), full["inputs"], {"chunk_len": 32, "action_dim": 20, "joint_dim": 32})
    assert probe["seed"].tolist() == samples.seeds and list(probe["prompt"]) == samples.prompts
    inputs = {"video": samples.video, "joint_state": samples.joint_state.float(), "noise": samples.noise.float(),
              "prompts": list(samples.prompts), "seeds": list(samples.seeds), "model_seed": full["model_seed"],
              "steps": full["probe"]["steps"], "batch_size": full["probe"]["batch_size"],
              "threads": full["numerics"]["threads"], "deterministic": full["numerics"]["deterministic"]}
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "library.py").write_text(LIBRARY_SCRIPT)
    tokens = _tokenizer_cache(tmp_path / "hf")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    result = subprocess.run([sys.executable, str(tmp_path / "library.py"), str(tmp_path / "inputs.pt"),
                             str(tmp_path / "library.pt")], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the wrapper loaded the cached tokenizer for real (offline, a missing one is a silent 104-token <unk> tokenizer)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"tokens": tokens}
    library = torch.load(tmp_path / "library.pt")
    np.testing.assert_array_equal(probe["trajectory"][-1], library["actions"].numpy())
