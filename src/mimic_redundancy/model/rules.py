"""The sampling rules' names and parameters, torch-free: what the config checks before any job (pipeline/config.py)
and what sim/policy.py and model/sampling.py run (docs/field-rules.md)."""
from __future__ import annotations

from numbers import Integral, Real

RULE_KINDS = ("fixed_k", "fixed_step_xt", "fixed_step_clean", "clean_change", "probeflow", "dense_jump")
GRIDS = ("uniform", "mimic_video")
MIMIC_VIDEO_GRID_MISSING = (
    "time grid 'mimic_video' is not available: the authors' world-to-action pipeline "
    "(model/cosmos_predict2/pipelines/world2action.py) steps with "
    "cosmos_predict2.schedulers.beta_scheduler.BetaScheduler(alpha, beta, num_denoising_steps), and that file is in "
    "none of the public mirrors searched, so its time values are not derived (docs/field-rules.md); allowed now: "
    "'uniform'")
# ProbeFlow (arXiv 2603.17850) as its authors' code runs it: probe at t = 0.5; N = clip(2 + 2 floor((1 - cos) / eps),
# 2, 20) with eps = 0.008, i.e. cosine threshold 1 - eps = 0.992 for the minimum
PROBEFLOW = {"cos_threshold": 0.992, "probe_time": 0.5, "min_steps": 2, "max_steps": 20}
# Dense-Jump (arXiv 2509.13574) as its authors' README runs it: times [0, 0.5] then the jump to 1 (2 evaluations)
DENSE_JUMP = {"jump_point": 0.5, "steps": 2}


def check_rule_params(kind: str, params: dict, where: str = "rule") -> list[str]:
    """What is wrong with a rule's parameters, one message per problem naming `where`.<key> and the allowed range
    ([] when all is well). params: probeflow {cos_threshold}, dense_jump {jump_point, steps}, any kind {grid}."""
    if kind not in RULE_KINDS:
        return [f"{where}.kind: unknown rule kind {kind!r}; allowed: {', '.join(RULE_KINDS)}"]
    problems = []
    grid = params.get("grid", "uniform")
    if grid not in GRIDS:
        problems.append(f"{where}.grid: unknown time grid {grid!r}; allowed: {', '.join(GRIDS)}")
    elif grid == "mimic_video":
        problems.append(f"{where}.grid: {MIMIC_VIDEO_GRID_MISSING}")
    if kind == "probeflow":
        tau = params.get("cos_threshold")
        if isinstance(tau, bool) or not isinstance(tau, Real) or not -1.0 <= tau < 1.0:
            problems.append(f"{where}.cos_threshold: {tau!r} is outside [-1, 1) (a cosine; 1 would leave no room for "
                            "a step quantum 1 - threshold); ProbeFlow's default is 0.992")
    if kind == "dense_jump":
        jump, steps = params.get("jump_point"), params.get("steps", DENSE_JUMP["steps"])
        if isinstance(jump, bool) or not isinstance(jump, Real) or not 0.0 < jump < 1.0:
            problems.append(f"{where}.jump_point: {jump!r} is outside (0, 1); Dense-Jump's default is 0.5")
        if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 2:
            problems.append(f"{where}.steps: {steps!r} must be an integer >= 2 (at least one dense step before the "
                            "jump); Dense-Jump's default is 2")
    return problems
