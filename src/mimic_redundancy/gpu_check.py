"""GPU check (`make gpu-check`): validate and probe the tiny preset on a CUDA device, check that every
tensor the pipeline creates is on that device, and print timings. Exit status 1 if a check fails.

`--device cpu` runs the same checks on the CPU (the test suite does, so the script stays runnable)."""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.overrides import TorchFunctionMode

from .samples import synthetic_samples
from .model import build_model, net_dims, resolve_device
from .probe import library_sample, probe_trajectory, synthetic_batch, video_hiddens
from .timing import timed
from .validation import validate_model

TINY = {"preset": "tiny", "dim": 512, "depth": 3, "extract_layer": 1, "backbone": "tiny-random",
        "tokenizer": "builtin", "model_seed": 0}
INPUTS = {"frames": 5, "height": 32, "width": 32}
PROMPTS = ["pick up the red block", "open the top drawer"]


class DeviceAudit(TorchFunctionMode):
    """Records every torch call whose tensor output lands on a device other than `device`."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.calls, self.off_device = device, 0, {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != self.device.type:
                name = getattr(func, "__name__", str(func))
                self.off_device[name] = self.off_device.get(name, 0) + 1
        return out


def check(device_name: str, steps: int) -> dict:
    device = resolve_device(device_name)
    problems, timings = [], {}
    net, timings["build_s"] = timed(lambda: build_model(TINY, device), device)
    stray = sorted({f"{n} on {t.device}" for n, t in [*net.named_parameters(), *net.named_buffers()]
                    if t.device.type != device.type})
    problems += [f"parameter/buffer {s}" for s in stray]
    for name in ["action_normalizer", "joint_normalizer"]:  # none in the tiny preset; checked when present
        for norm in getattr(net, name) or []:
            problems += [f"{name} {n} on {t.device}" for n, t in norm.named_buffers() if t.device.type != device.type]
    pairs = [(seed, PROMPTS[seed % 2]) for seed in range(8)]
    settings = {"model": {**TINY, "device": device_name}, "steps": steps, "prompts": PROMPTS, "tolerance": 1e-5}
    first = synthetic_samples(pairs[:2], INPUTS, net_dims(net))
    report, timings["validate_s"] = timed(lambda: validate_model(net, device, settings, first), device)
    problems += [f"validate: {c['name']}: {c['detail']}" for c in report["checks"] if not c["passed"]]

    batch = synthetic_batch(net, pairs, INPUTS, device)
    hiddens, timings["hiddens_8_samples_s"] = timed(lambda: video_hiddens(net, batch), device)
    with DeviceAudit(device) as audit:  # untimed: the audit itself slows every call
        trajectory, clean, times = probe_trajectory(net, batch, hiddens, steps)
    _, timings["probe_8x%d_s" % steps] = timed(lambda: probe_trajectory(net, batch, hiddens, steps), device)
    reference, timings["sample_8x%d_s" % steps] = timed(lambda: library_sample(net, batch, hiddens, steps), device)
    named = {"noise": batch.noise, "video": batch.video, "joint_state": batch.joint_state, "trajectory": trajectory,
             "clean_prediction": clean, "times": times, "sample": reference,
             **{f"hiddens[{i}]": h for i, h in enumerate(hiddens)}}
    problems += [f"{n} on {t.device}" for n, t in named.items() if t.device.type != device.type]
    problems += [f"Euler loop produced {count} tensor(s) off {device} in {name}"
                 for name, count in audit.off_device.items()]
    fidelity = float((trajectory[-1] - reference).abs().max())
    if fidelity > 1e-5:
        problems.append(f"fidelity {fidelity:.3g} > 1e-5")
    one = synthetic_batch(net, pairs[:1], INPUTS, device)
    hiddens_one = video_hiddens(net, one)
    _, t1 = timed(lambda: library_sample(net, one, hiddens_one, steps), device)
    sixteen = synthetic_batch(net, [(s, PROMPTS[s % 2]) for s in range(16)], INPUTS, device)
    hiddens_16 = video_hiddens(net, sixteen)
    _, t16 = timed(lambda: library_sample(net, sixteen, hiddens_16, steps), device)
    timings["batch16_throughput_ratio"] = (16 / t16) / (1 / t1)
    return {"device": str(device), "cuda_device_name": report["cuda_device_name"], "passed": not problems,
            "problems": problems, "fidelity_max_abs_diff": fidelity, "tensors_checked": sorted(named),
            "torch_calls_audited_in_euler_loop": audit.calls, "timings": timings, "versions": report["versions"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    result = check(args.device, args.steps)
    print(json.dumps(result, indent=2))
    print(f"all tensors on {result['device']}, fidelity {result['fidelity_max_abs_diff']:.3g}" if result["passed"]
          else "GPU CHECK FAILED:\n  " + "\n  ".join(result["problems"]))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
