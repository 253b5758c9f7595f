"""The probe against mimic-video itself, on the real tiny model (random weights, CPU)."""
from __future__ import annotations

import pytest
import torch


from mimic_redundancy.analysis.probe import probe_trajectory, run_probe, synthetic_batch
from mimic_redundancy.data.samples import synthetic_samples
from mimic_redundancy.data.tokenizer import builtin_tokenizer, tokenizer_problems
from mimic_redundancy.model.features import compute_features
from mimic_redundancy.model.model import build_model, net_dims
from mimic_redundancy.model.sampling import library_sample, video_hiddens

from conftest import TINY, TINY_INPUTS as INPUTS
PAIRS = [(0, "pick up the red block"), (1, "open the top drawer"), (2, "pick up the red block")]


@pytest.fixture(scope="module")
def net():
    return build_model(TINY, torch.device("cpu"))


def inputs(net, pairs=PAIRS):
    """The samples with their videos (what the backbone stages read)."""
    return synthetic_samples(pairs, INPUTS, net_dims(net))


def samples(net, pairs=PAIRS):
    """The samples' features (what the head-only stages read): the backbone run once per sample."""
    return compute_features(net.video_predict_wrapper, inputs(net, pairs), "cpu")


def test_probe_final_actions_equal_mimic_video_sample(net):
    batch = synthetic_batch(net, PAIRS, INPUTS, "cpu")
    hiddens = video_hiddens(net, batch)
    trajectory, clean, times = probe_trajectory(net, batch, hiddens, steps=50)
    reference = library_sample(net, batch, hiddens, steps=50)
    assert trajectory.shape == (51, 3, 32, 20) and clean.shape == (50, 3, 32, 20)
    assert (trajectory[-1] - reference).abs().max().item() <= 1e-5
    assert torch.equal(trajectory[0], batch.noise)
    assert times[0] == 0 and times[-1] == 1
    # the library's Euler step: x_{k+1} = x_k + (x1_hat_k - x_k) / (1 - t_k) / K
    k = 17
    step = trajectory[k] + (clean[k] - trajectory[k]) / (1 - times[k]) / 50
    torch.testing.assert_close(trajectory[k + 1], step)


def test_weights_are_seeded(net):
    again = build_model(TINY, torch.device("cpu"))
    other = build_model({**TINY, "model_seed": 1}, torch.device("cpu"))
    first = next(net.parameters())
    assert torch.equal(first, next(again.parameters()))
    assert not torch.equal(first, next(other.parameters()))


def test_hiddens_are_computed_in_eval_mode_and_reproducible_per_sample(net):
    batch = synthetic_batch(net, PAIRS, INPUTS, "cpu")
    single = synthetic_batch(net, PAIRS[1:2], INPUTS, "cpu")
    together, alone = video_hiddens(net, batch), video_hiddens(net, single)
    assert len(together) == 1 and together[0].shape == (3, 48, 16)
    assert torch.equal(together[0][1:2], alone[0])  # a sample's hiddens do not depend on its batch
    net.train()
    try:
        with pytest.raises(AssertionError, match="eval mode"):
            video_hiddens(net, single)
    finally:
        net.eval()


def test_results_do_not_depend_on_batch_size(net):
    batched = run_probe(net, samples(net), steps=8, batch_size=3, device="cpu")
    one_by_one = run_probe(net, samples(net), steps=8, batch_size=1, device="cpu")
    assert (batched["gt_actions"] == one_by_one["gt_actions"]).all()
    # equal up to float rounding of batched matrix products
    assert abs(batched["trajectory"] - one_by_one["trajectory"]).max() < 1e-4


def test_builtin_tokenizer_tells_prompts_apart():
    tokenizer = builtin_tokenizer()
    prompts = ["peel the orange", "pick the apple", "open the drawer!"]
    assert tokenizer_problems(tokenizer, prompts) == []
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)


def test_a_degenerate_tokenizer_is_refused(net):
    """A tokenizer that knows no word (like transformers' offline fallback) is caught by tokenizer_problems,
    which the features stage runs before any backbone pass (tests/test_features.py runs it through the DAG)."""
    from transformers import T5TokenizerFast

    degenerate = T5TokenizerFast(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)])
    prompts = ["peel the orange", "pick the apple"]  # same word count: identical ids when every word is <unk>
    problems = tokenizer_problems(degenerate, prompts)
    assert any("identical token ids" in p for p in problems)
    assert any("3 of 3 words map to the unknown token" in p for p in problems)


def test_validation_refuses_transformers_silent_offline_tokenizer(tmp_path):
    """Provoke the real trap: offline, with no cached copy, from_pretrained returns a degenerate tokenizer."""
    import os
    import subprocess
    import sys

    code = ("from transformers import T5TokenizerFast\n"
            "from mimic_redundancy.data.tokenizer import tokenizer_problems\n"
            "t = T5TokenizerFast.from_pretrained('google-t5/t5-small')\n"
            "print(len(t)); print('\\n'.join(tokenizer_problems(t, ['peel the orange', 'pick the apple'])))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "104"  # the silent fallback, no error raised
    assert any("identical token ids" in line for line in lines[1:])
    assert any("words map to the unknown token" in line for line in lines[1:])


def test_video_modes_agree_when_the_video_noise_is_fixed(net):
    """Library-faithful per-step recompute with the same video noise each step == hiddens cached once."""
    from mimic_redundancy.analysis.backbone import run_backbone

    fixed = run_backbone(net, inputs(net, PAIRS[:2]), steps=6, fixed_video_noise=True, device=torch.device("cpu"))
    assert (fixed["final_recompute"] == fixed["final_cached"]).all()
    assert (fixed["hidden_rel_diff"] == 0).all()
    fresh = run_backbone(net, inputs(net, PAIRS[:1]), steps=6, fixed_video_noise=False, device=torch.device("cpu"))
    assert abs(fresh["final_recompute"] - fresh["final_cached"]).max() > 1e-3
    assert fresh["hidden_rel_diff"][0, 0] == 0 and (fresh["hidden_rel_diff"][1:] > 0.1).all()


def test_sweep_entry_with_the_main_steps_equals_the_probe(net):
    from mimic_redundancy.analysis.sweep import run_sweep

    probe = run_probe(net, samples(net), steps=7, batch_size=3, device="cpu")
    sweep = run_sweep(net, samples(net), [1, 7], reference_steps=14, batch_size=3, repeats=1,
                      device=torch.device("cpu"))
    assert sweep["final"].shape == (2, 3, 32, 20) and sweep["reference"].shape == (3, 32, 20)
    assert abs(sweep["final"][1] - probe["trajectory"][-1]).max() <= 1e-5
    assert abs(sweep["final"][0] - probe["trajectory"][-1]).max() > 1e-3
