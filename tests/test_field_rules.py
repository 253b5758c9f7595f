"""The field's step rules (ProbeFlow, Dense-Jump) and the time grids, on planted clean-prediction fields with known
answers, and on the tiny real model: the uniform grid is euler_steps bit for bit, the rules run through sample_chunk,
NFE is counted exactly, bad parameters give messages naming the key and the allowed range."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mimic_redundancy.analysis.probe import synthetic_batch
from mimic_redundancy.model.model import build_model
from mimic_redundancy.model.sampling import (GRIDS, PROBEFLOW, clean_flow, clean_head, dense_jump, euler_steps,
                                             integrate, probeflow, probeflow_steps, time_grid, video_hiddens)
from mimic_redundancy.model.train import u_shaped_flow_times
from mimic_redundancy.sim.policy import RULE_KINDS, Rule, check_rule_params, sample_chunk

from conftest import TINY, TINY_INPUTS

EPS = 1e-5  # the library's eps
B, N, D = 3, 4, 2


class Counted:
    """A planted clean-prediction field x1_hat(x, t, row) that counts its evaluations per row."""

    def __init__(self, field, rows: int):
        self.field, self.calls = field, np.zeros(rows, dtype=int)

    def __call__(self, x, t, rows=None):
        rows = torch.arange(x.shape[0]) if rows is None else rows
        self.calls[rows.numpy()] += 1
        return self.field(x, t, rows)


def straight(targets):
    """x1_hat = the row's target, whatever x and t: every path is a straight line from x0 to it."""
    return lambda x, t, rows: targets[rows].clone()


def curving(targets, others, bend):
    """A clean prediction that turns from `targets` toward `others` as t grows, by the angle bend * t^2 (late)."""
    def field(x, t, rows):
        angle = bend * float(t) ** 2
        return math.cos(angle) * targets[rows] + math.sin(angle) * others[rows]
    return field


@pytest.fixture
def planted():
    g = torch.Generator().manual_seed(0)
    x0, targets, others = (torch.randn(B, N, D, generator=g) for _ in range(3))
    return x0, targets, others


def euler_by_hand(field, x0, times, delta, rows=None):
    """Euler on the clean head's flow for the batch rows `rows` (default: all of x0's), written out independently of
    sampling.integrate."""
    x, rows = x0.clone(), torch.arange(x0.shape[0]) if rows is None else rows
    for t in times:
        x1_hat = field(x, torch.tensor(float(t)), rows)
        x = x + delta * (x1_hat - x) / max(1.0 - float(t), EPS)
    return x


# -- the time grids ------------------------------------------------------------------------------------------------
def test_uniform_grid_is_the_library_linspace():
    times, deltas = time_grid("uniform", 10)
    assert torch.equal(times, torch.linspace(0.0, 1.0, 11)[:-1])
    assert deltas == [0.1] * 10 and math.isclose(sum(deltas), 1.0)


def test_the_mimic_video_grid_refuses_rather_than_guess():
    """The authors' BetaScheduler source was not found (docs/field-rules.md): no invented values."""
    assert "mimic_video" in GRIDS
    with pytest.raises(NotImplementedError, match="beta_scheduler.*not derived"):
        time_grid("mimic_video", 10)
    with pytest.raises(ValueError, match="unknown time grid 'cosine'; allowed: uniform, mimic_video"):
        time_grid("cosine", 10)


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_euler_is_exact_on_a_straight_flow_at_any_step_count(planted, steps):
    x0, targets, _ = planted
    field = Counted(straight(targets), B)
    x, last = integrate(field, x0, *time_grid("uniform", steps), EPS)
    torch.testing.assert_close(x, targets, rtol=0, atol=1e-5)
    assert torch.equal(last, targets) and (field.calls == steps).all()


# -- ProbeFlow -----------------------------------------------------------------------------------------------------
def test_probeflow_takes_its_minimum_on_a_straight_flow(planted):
    x0, targets, _ = planted
    field = Counted(straight(targets), B)
    actions, nfe = probeflow(field, x0, EPS)
    assert nfe.tolist() == [2, 2, 2] and field.calls.tolist() == [2, 2, 2]
    torch.testing.assert_close(actions, targets, rtol=0, atol=1e-5)


def test_probeflow_takes_more_steps_where_the_flow_curves_late(planted):
    x0, targets, others = planted
    field = Counted(curving(targets, others, bend=1.2), B)
    actions, nfe = probeflow(field, x0, EPS)
    # its step count, from the cosine between the velocities at t = 0 and at the look-ahead point
    v0 = clean_flow(x0, field.field(x0, torch.tensor(0.0), torch.arange(B)), torch.tensor(0.0), EPS)
    xp = x0 + 0.5 * v0
    vp = clean_flow(xp, field.field(xp, torch.tensor(0.5), torch.arange(B)), torch.tensor(0.5), EPS)
    cosine = torch.nn.functional.cosine_similarity(v0.flatten(1), vp.flatten(1), dim=1)
    steps = [min(max(2 + 2 * math.floor((1 - float(c)) / 0.008), 2), 20) for c in cosine]
    assert all(s > 2 for s in steps), steps  # the planted bend is one ProbeFlow must see
    assert nfe.tolist() == [s + 1 for s in steps] and field.calls.tolist() == nfe.tolist()
    # a larger N is uniform N-step Euler from x0 (its first step reuses the probe's evaluation at t = 0)
    for row, s in enumerate(steps):
        expected = euler_by_hand(field.field, x0[row:row + 1], np.linspace(0, 1, s + 1)[:-1], 1.0 / s,
                                 torch.tensor([row]))
        torch.testing.assert_close(actions[row:row + 1], expected, rtol=1e-5, atol=1e-5)


def test_probeflow_decides_per_sample_and_leaves_the_other_rows_alone(planted):
    x0, targets, others = planted
    bends = torch.tensor([0.0, 1.2, 0.0])  # rows 0 and 2 straight, row 1 curving

    def per_row(x, t, rows):
        angle = (bends[rows] * float(t) ** 2)[:, None, None]
        return torch.cos(angle) * targets[rows] + torch.sin(angle) * others[rows]

    field = Counted(per_row, B)
    actions, nfe = probeflow(field, x0, EPS)
    assert nfe[0] == nfe[2] == 2 and nfe[1] > 3 and field.calls.tolist() == nfe.tolist()
    for row in range(B):  # each row's actions are those it gets alone
        alone, alone_nfe = probeflow(lambda x, t, rows: field.field(x, t, torch.tensor([row])), x0[row:row + 1], EPS)
        assert torch.equal(actions[row:row + 1], alone) and alone_nfe[0] == nfe[row]


def test_probeflow_step_formula_at_its_edges():
    cosine = torch.tensor([1.0, 0.9921, 0.9919, 0.984 - 1e-6, 0.0, -1.0])
    assert probeflow_steps(cosine, 0.992, 2, 20).tolist() == [2, 2, 4, 6, 20, 20]
    assert PROBEFLOW == {"cos_threshold": 0.992, "probe_time": 0.5, "min_steps": 2, "max_steps": 20}


# -- Dense-Jump ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("jump_point,steps", [(0.5, 2), (0.8, 3)])
def test_dense_jump_is_dense_euler_then_the_clean_prediction(planted, jump_point, steps):
    x0, targets, others = planted
    field = Counted(curving(targets, others, bend=1.2), B)
    actions, nfe = dense_jump(field, x0, EPS, jump_point=jump_point, steps=steps)
    assert nfe.tolist() == [steps] * B and field.calls.tolist() == [steps] * B
    dense = euler_by_hand(field.field, x0, np.linspace(0, jump_point, steps)[:-1], jump_point / (steps - 1))
    clean = field.field(dense, torch.tensor(jump_point), torch.arange(B))
    torch.testing.assert_close(actions, clean, rtol=1e-5, atol=1e-5)
    # the Euler step from the jump point to t = 1 lands on that clean prediction
    jump = dense + (1 - jump_point) * clean_flow(dense, clean, torch.tensor(jump_point), EPS)
    torch.testing.assert_close(jump, actions, rtol=1e-5, atol=1e-5)
    # at the jump point (steps - 1) / steps it is uniform Euler with `steps` steps; elsewhere it is not
    uniform = euler_by_hand(field.field, x0, np.linspace(0, 1, steps + 1)[:-1], 1 / steps)
    assert torch.allclose(actions, uniform, atol=1e-5) == math.isclose(jump_point, (steps - 1) / steps)


# -- the rules' parameters -----------------------------------------------------------------------------------------
def test_bad_parameters_name_the_key_and_the_allowed_range():
    assert check_rule_params("probeflow", {"cos_threshold": 0.992}) == []
    assert check_rule_params("dense_jump", {"jump_point": 0.5, "steps": 2, "grid": "uniform"}) == []
    assert check_rule_params("probeflow", {"cos_threshold": 1.5}, "rollout.probeflow") == [
        "rollout.probeflow.cos_threshold: 1.5 is outside [-1, 1) (a cosine; 1 would leave no room for a step quantum "
        "1 - threshold); ProbeFlow's default is 0.992"]
    assert check_rule_params("probeflow", {"cos_threshold": float("nan")})[0].startswith("rule.cos_threshold: nan")
    problems = check_rule_params("dense_jump", {"jump_point": 1.0, "steps": 1, "grid": "cosine"})
    assert problems == ["rule.grid: unknown time grid 'cosine'; allowed: uniform, mimic_video",
                        "rule.jump_point: 1.0 is outside (0, 1); Dense-Jump's default is 0.5",
                        "rule.steps: 1 must be an integer >= 2 (at least one dense step before the jump); "
                        "Dense-Jump's default is 2"]
    assert "is not available" in check_rule_params("fixed_k", {"grid": "mimic_video"})[0]
    assert check_rule_params("adaptive", {}) == [f"rule.kind: unknown rule kind 'adaptive'; allowed: "
                                                 f"{', '.join(RULE_KINDS)}"]


def test_rule_names_and_the_old_rules_unchanged():
    assert Rule("probeflow", 0.992).name == "ProbeFlow cos>0.992"
    assert Rule("dense_jump", 0.5).name == "dense-jump@0.5 NFE 2" and Rule("dense_jump", 0.8, 5).name == \
        "dense-jump@0.8 NFE 5"
    assert [Rule(k, 4.0).name for k in RULE_KINDS[:3]] == ["K=4", "stop@4 x_t", "stop@4 clean"]
    assert Rule("clean_change", 0.01).name == "clean change<0.01" and Rule("fixed_k", 4.0) == Rule("fixed_k", 4.0, None)


# -- the U-shaped training times -----------------------------------------------------------------------------------
def test_u_shaped_flow_times_weigh_both_ends():
    class Net:
        sample_time_s = 0.999

    torch.manual_seed(0)
    t = u_shaped_flow_times(Net())(torch.rand(20000))
    assert t.shape == (20000,) and float(t.min()) >= 0.0 and float(t.max()) <= 0.999
    ends, middle = ((t < 0.1) | (t > 0.899)).float().mean(), ((t > 0.45) & (t < 0.55)).float().mean()
    # Beta(0.2, 0.2): P(t/s < 0.1) = P(t/s > 0.9) ~ 0.32 each; the middle tenth ~ 0.04
    assert float(ends) > 0.55 and float(middle) < 0.07
    torch.manual_seed(0)
    assert torch.equal(u_shaped_flow_times(Net())(torch.rand(20000)), t)  # seeded by torch's RNG


def test_train_flow_times_u_shaped_is_used_while_training_only():
    from mimic_redundancy.model.train import _optimize

    class Head(torch.nn.Module):  # what _optimize touches of a MimicVideo: a parameter and the flow-time draw
        sample_time_s, video_predict_wrapper = 0.999, None

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.sample_time_fn = lambda u: torch.sqrt(0.999 - u)  # the library's

    net, seen = Head(), []

    def loss_of(windows, generator):
        seen.append(net.sample_time_fn(torch.rand(20000)))
        return (net.w ** 2).sum()

    settings = {"steps": 2, "batch_size": 2, "lr": 1e-3, "seed": 0, "flow_times": "u_shaped"}
    _, summary = _optimize(net, 4, settings, "cpu", loss_of)
    assert summary["flow_times"] == "u_shaped" and len(seen) == 2
    for t in seen:  # U-shaped: both ends heavy (the library's density 2t puts 1% below 0.1)
        assert float((t < 0.1).float().mean()) > 0.25 and float((t > 0.899).float().mean()) > 0.25
    assert float(net.sample_time_fn(torch.tensor(0.0))) == pytest.approx(0.999 ** 0.5)  # the library's, restored


# -- the tiny real model -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    net = build_model(TINY, torch.device("cpu"))
    batch = synthetic_batch(net, [(0, "pick up the red block"), (1, "open the top drawer")], TINY_INPUTS, "cpu")
    return net, batch, video_hiddens(net, batch)


def test_on_the_model_the_uniform_grid_and_the_rules_are_euler_steps_bit_for_bit(tiny):
    net, batch, hiddens = tiny
    (x1, clean1), (x2, clean2) = [(x.clone(), c.clone()) for x, c in euler_steps(net, batch, hiddens, 2)]
    ours, last = integrate(clean_head(net, batch, hiddens), batch.noise, *time_grid("uniform", 2), net.eps)
    assert torch.equal(ours, x2) and torch.equal(last, clean2)
    # Dense-Jump at 0.5 with 2 evaluations: one Euler step, then the clean prediction at t = 0.5
    actions, nfe = sample_chunk(net, batch, hiddens, Rule("dense_jump", 0.5), probe_steps=2)
    assert torch.equal(actions, clean2) and nfe.tolist() == [2, 2]
    # ProbeFlow at its minimum (threshold -1: every cosine but -1 gives 2 steps) reuses its probe: 2-step Euler
    actions, nfe = sample_chunk(net, batch, hiddens, Rule("probeflow", -1.0), probe_steps=2)
    assert torch.equal(actions, x2) and nfe.tolist() == [2, 2]
    with pytest.raises(ValueError, match="rule.jump_point: 1.5 is outside"):
        sample_chunk(net, batch, hiddens, Rule("dense_jump", 1.5), probe_steps=2)


def test_the_head_on_a_subset_of_rows_is_those_rows_of_the_batch(tiny):
    net, batch, hiddens = tiny
    head, t = clean_head(net, batch, hiddens), torch.tensor(0.25)
    whole, second = head(batch.noise, t), head(batch.noise[1:], t, torch.tensor([1]))
    torch.testing.assert_close(second, whole[1:], rtol=1e-4, atol=1e-5)  # up to the batched products' rounding
