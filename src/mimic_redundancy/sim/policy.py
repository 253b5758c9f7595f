"""The trained mimic-video policy in closed loop: what it sees (the last frames, a state vector, the task's prompt),
and how it samples an action chunk under a sampling rule.

Rules (the closed-loop twins of early_stop.py's, same names and NFE convention: NFE = head evaluations):
  fixed_k           MimicVideo.sample's Euler integration with K steps; returns x_1; NFE K
  fixed_step_xt     the probe.steps schedule stopped after step s; returns x_s; NFE s
  fixed_step_clean  the probe.steps schedule stopped after step s; returns the clean prediction x1_hat_s (the
                    "dense jump"); NFE s
  clean_change      the probe.steps schedule, each sample stopped after the first step s >= 2 where
                    ||x1_hat_s - x1_hat_(s-1)|| / ||x1_hat_(s-1)|| < eps; returns x1_hat_s (never: the final action)
  probeflow         ProbeFlow (arXiv 2603.17850): the cosine between the velocity at t = 0 and at a look-ahead point
                    picks each sample's step count (param: the cosine threshold of the minimum); NFE 2, else N + 1
  dense_jump        Dense-Jump (arXiv 2509.13574): steps - 1 Euler steps up to the jump point (param), then its clean
                    prediction (the step to t = 1); NFE steps
(the last two: model/sampling.py, docs/field-rules.md)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mimic_redundancy.data.samples import Batch, history_index, window_frames
from mimic_redundancy.model.rules import DENSE_JUMP, RULE_KINDS, check_rule_params  # noqa: F401 (re-exported)
from mimic_redundancy.model.sampling import clean_head, dense_jump, euler_steps, probeflow
STATE_KEYS = {"observation.environment_state": "environment_state", "observation.state": "state"}


@dataclass(frozen=True)
class Rule:
    kind: str     # one of RULE_KINDS
    param: float  # K, s, eps, ProbeFlow's cosine threshold or Dense-Jump's jump point
    steps: int | None = None  # dense_jump: head evaluations (dense steps + the jump); None: the paper's (DENSE_JUMP)

    @property
    def name(self) -> str:
        if self.kind == "fixed_k":
            return f"K={int(self.param)}"
        if self.kind == "clean_change":
            return f"clean change<{self.param:g}"
        if self.kind == "probeflow":
            return f"ProbeFlow cos>{self.param:g}"
        if self.kind == "dense_jump":
            return f"dense-jump@{self.param:g} NFE {self.params['steps']}"
        return f"stop@{int(self.param)} {'x_t' if self.kind == 'fixed_step_xt' else 'clean'}"

    @property
    def params(self) -> dict:
        """The rule's parameters by name, as check_rule_params takes them."""
        if self.kind == "probeflow":
            return {"cos_threshold": self.param}
        if self.kind == "dense_jump":
            return {"jump_point": self.param, "steps": DENSE_JUMP["steps"] if self.steps is None else self.steps}
        return {"param": self.param}


def rules_of(settings: dict, calibrated_eps: float | None) -> list[Rule]:
    """The rules a rollout compares: K Euler steps for each rollout.steps, the early stops at rollout.stop_steps of
    the probe.steps schedule (x_s and the clean prediction), the clean-change rule at the eps early_stop.json
    calibrated (None: not calibrated, left out), and the field's rules (rollout.probeflow, rollout.dense_jump)."""
    rules = [Rule("fixed_k", float(k)) for k in sorted(settings["steps"])]
    for s in sorted(settings["stop_steps"]):
        rules += [Rule("fixed_step_xt", float(s)), Rule("fixed_step_clean", float(s))]
    if calibrated_eps is not None:
        rules.append(Rule("clean_change", float(calibrated_eps)))
    rules += [Rule("probeflow", float(tau)) for tau in sorted(settings.get("probeflow", []))]
    rules += [Rule("dense_jump", float(d["jump_point"]), int(d["steps"])) for d in settings.get("dense_jump", [])]
    return rules


@torch.no_grad()
def sample_chunk(net, batch: Batch, hiddens: list[torch.Tensor], rule: Rule, probe_steps: int):
    """(actions (b, N, D), NFE (b,) int) of one decision under `rule`, from batch.noise."""
    b = batch.noise.shape[0]
    if rule.kind in ("probeflow", "dense_jump"):
        problems = check_rule_params(rule.kind, rule.params)
        if problems:
            raise ValueError("; ".join(problems))
        head = clean_head(net, batch, hiddens)
        if rule.kind == "probeflow":
            return probeflow(head, batch.noise, net.eps, cos_threshold=rule.param)
        return dense_jump(head, batch.noise, net.eps, jump_point=rule.param, steps=rule.params["steps"])
    if rule.kind == "fixed_k":
        for x, _ in euler_steps(net, batch, hiddens, int(rule.param)):
            pass
        return x, np.full(b, int(rule.param))
    if rule.kind in ("fixed_step_xt", "fixed_step_clean"):
        stop = int(rule.param)
        for s, (x, clean) in enumerate(euler_steps(net, batch, hiddens, probe_steps), start=1):
            if s == stop:
                return (x if rule.kind == "fixed_step_xt" else clean), np.full(b, stop)
        raise ValueError(f"stop step {stop} is past probe.steps {probe_steps}")
    if rule.kind != "clean_change":
        raise ValueError(f"unknown rule kind {rule.kind!r}; known: {', '.join(RULE_KINDS)}")
    out, nfe, previous = None, np.full(b, probe_steps), None
    stopped = torch.zeros(b, dtype=torch.bool)
    for s, (x, clean) in enumerate(euler_steps(net, batch, hiddens, probe_steps), start=1):
        out = clean.clone() if out is None else torch.where(stopped[:, None, None].to(clean.device), out, clean)
        if previous is not None:  # as early_stop.clean_change: float64 norms over the whole chunk
            now, before = clean.double().flatten(1).cpu(), previous.double().flatten(1).cpu()
            change = (now - before).norm(dim=1) / before.norm(dim=1).clamp_min(1e-12)
            newly = ~stopped & (change < rule.param)
            nfe[newly.numpy()] = s
            stopped |= newly
            if bool(stopped.all()):
                break
        previous = clean
    return out, nfe


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence: independent streams for nearby keys)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def decision_noise(seed: int, task_index: int, layout_index: int, decision: int, dims: dict) -> torch.Tensor:
    """x_0 of one decision of one episode (N, D): the same for every rule (paired episodes)."""
    g = torch.Generator().manual_seed(seed_of(seed, task_index, layout_index, decision))
    return torch.randn(dims["chunk_len"], dims["action_dim"], generator=g)


class ExpertPolicy:
    """Meta-World's scripted expert behind the policy's interface (a chunk of one action, from the observation
    vector): run through the rollout loop with execute_steps 1, it must reach the success it reaches alone."""

    def __init__(self, task: str):
        from mimic_redundancy.sim.metaworld_env import expert

        self.expert, self.dims = expert(task), {"chunk_len": 1, "action_dim": 4}

    def needs_frame(self, t: int, execute_steps: int) -> bool:
        return False

    def act(self, rule, observations, histories, t, prompt, keys, settings):
        chunk = np.stack([self.expert(o.environment_state)[None] for o in observations])
        return chunk, np.zeros(len(observations), dtype=int), 0.0, 0.0


class Policy:
    """The action head (a trained checkpoint) and the video backbone, fed as the training windows were: the
    `frames` frames up to now, `frame_skip` apart (inputs.frame_window history), the state named by
    inputs.state_key, and the task's prompt."""

    def __init__(self, net, wrapper, device, inputs: dict):
        from mimic_redundancy.model.model import net_dims

        if inputs["state_key"] not in STATE_KEYS:
            raise ValueError(f"config key 'inputs.state_key': {inputs['state_key']!r} is no state the simulator "
                             f"gives; allowed: {', '.join(STATE_KEYS)}")
        self.net, self.wrapper, self.device, self.inputs = net, wrapper, device, inputs
        self.dims = net_dims(net)

    def needs_frame(self, t: int, execute_steps: int) -> bool:
        """Whether step t's frame is in some decision's history (decisions at t = 0, execute_steps, ...)."""
        return any((t + i * self.inputs["frame_skip"]) % execute_steps == 0 for i in range(self.inputs["frames"]))

    def video(self, histories: list[dict[int, np.ndarray]], t: int) -> torch.Tensor:
        """(b, frames, 3, H, W) in [0, 1]: each episode's frames up to step t, as samples.window_frames(history),
        resized to inputs.height x inputs.width as training resized the dataset's frames (the env renders at the
        dataset's size, e.g. LIBERO's 256 x 256)."""
        index = history_index(t, self.inputs["frames"], self.inputs["frame_skip"])
        clips = [np.stack([h[i] for i in index]) for h in histories]  # (frames, H, W, 3) uint8
        video = (torch.from_numpy(np.stack(clips)).float() / 255.0).permute(0, 1, 4, 2, 3)
        size = (self.inputs["height"], self.inputs["width"])
        if tuple(video.shape[-2:]) != size:
            video = torch.stack([window_frames(clip, 0, len(index), 1, size) for clip in video])
        return video.to(self.device)

    def state(self, observations) -> torch.Tensor:
        name = STATE_KEYS[self.inputs["state_key"]]
        return torch.from_numpy(np.stack([getattr(o, name) for o in observations])).float().to(self.device)

    def act(self, rule: Rule, observations, histories, t: int, prompt: str, keys: list[tuple[int, int, int]],
            settings: dict):
        """One decision for a batch of episodes at step t: (chunk (b, N, D) numpy, NFE (b,), backbone seconds, head
        seconds). keys: (task index, layout index, decision) per episode: they fix x_0, the same for every rule, and
        (the first one) the backbone's noise."""
        import time

        start = time.perf_counter()
        video = self.video(histories, t)
        hiddens = self.hiddens(video, [prompt] * len(keys), seed_of(settings["seed"], *keys[0], 1))
        backbone = time.perf_counter() - start
        noise = torch.stack([decision_noise(settings["seed"], *key, self.dims) for key in keys]).to(self.device)
        batch = Batch([0] * len(keys), [prompt] * len(keys), None, self.state(observations), noise)
        start = time.perf_counter()
        chunk, nfe = sample_chunk(self.net, batch, hiddens, rule, settings["probe_steps"])
        return chunk.float().cpu().numpy(), nfe, backbone, time.perf_counter() - start

    @torch.no_grad()
    def hiddens(self, video: torch.Tensor, prompts: list[str], seed: int) -> list[torch.Tensor]:
        """The backbone's hiddens as the inference features computes them (video time 0, one predicted future
        latent), its future-latent noise drawn after torch.manual_seed(seed); float32 for the head."""
        from mimic_redundancy.model.features import library_video_hiddens

        torch.manual_seed(seed)
        zero = torch.zeros(video.shape[0], device=self.device)
        return [h.float() for h in library_video_hiddens(self.wrapper, video, prompts, zero, 1, self.device)]
