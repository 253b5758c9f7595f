"""GPU check (`make gpu-check`): run the pipeline's two halves on a CUDA device the way the stages run them,
check that every tensor lands on that device, and print timings and peak memory per stage. Exit status 1 if
a check fails.

  --backbone tiny   the embedded default's tiny random backbone (config.yaml preset `tiny`)
  --backbone full   mimic-video's full-size random-weight Cosmos backbone (the 7B shape:
                    `CosmosPredictWrapper(random_weights=True)`), created on the device in --dtype
Per stage: the features stage (backbone seconds per sample), the head-only probe (head seconds per step),
and the library's per-step recompute against features computed once (the speedup).
`--device cpu` runs the same checks on the CPU (the test suite does, so the script stays runnable)."""
from __future__ import annotations

import argparse
import json
import sys

import torch
from torch.overrides import TorchFunctionMode

from mimic_redundancy.analysis.backbone import recompute_sample
from mimic_redundancy.model.features import compute_features
from mimic_redundancy.model.model import (attach_backbone, backbone_dtypes, build_backbone, build_head, net_dims,
                                          resolve_device)
from mimic_redundancy.analysis.probe import probe_trajectory
from mimic_redundancy.core.timing import timed
from mimic_redundancy.data.samples import synthetic_samples
from mimic_redundancy.model.sampling import library_sample

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


def tiny_preset() -> tuple[dict, dict, dict]:
    """(head settings, backbone spec, inputs) of config.yaml's embedded default, the one place they are set."""
    from mimic_redundancy.pipeline import config as cfg

    config = cfg.default_config()
    return cfg.model_settings(config, "tiny"), cfg.backbone_spec(config, "tiny"), cfg.input_settings(config)


class PeakMemory:
    """Peak device memory (MiB) of the block, from torch's CUDA allocator; None on the CPU."""

    def __init__(self, device):
        self.device, self.mib = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20


def check(device_name: str, steps: int, backbone: str = "tiny", dtype: str = "float32", samples: int = 8) -> dict:
    device = resolve_device(device_name)
    model, spec, inputs = tiny_preset()
    spec = {**spec, "dtype": dtype}
    if backbone == "full":
        spec = {"kind": "full-random", "model_seed": 0, "extract_layer": 19, "dtype": dtype}
    problems, timings, memory = [], {}, {}
    with PeakMemory(device) as peak:
        wrapper, timings["backbone_build_s"] = timed(lambda: build_backbone(spec, device), device)
    memory["backbone_build_mib"] = peak.mib
    dims = {"chunk_len": 32, "action_dim": 20, "joint_dim": 32}
    head = build_head(model, device, dims, wrapper.dim_latent, wrapper.head_rng_state)
    pairs = [(seed, ["pick up the red block", "open the top drawer"][seed % 2]) for seed in range(samples)]
    data = synthetic_samples(pairs, inputs, net_dims(head))

    with PeakMemory(device) as peak:  # the features stage: the backbone once per sample
        rows, features_s = timed(lambda: compute_features(wrapper, data, device), device)
    memory["features_stage_mib"] = peak.mib
    timings["backbone_s_per_sample"] = features_s / samples
    batch = rows.batch(slice(None), device)
    with DeviceAudit(device) as audit:  # untimed: the audit itself slows every call
        trajectory, clean, times = probe_trajectory(head, batch, batch.hiddens, steps)
    with PeakMemory(device) as peak:  # a head-only stage
        _, probe_s = timed(lambda: probe_trajectory(head, batch, batch.hiddens, steps), device)
    memory["head_stage_mib"] = peak.mib
    timings["head_s_per_step"] = probe_s / steps
    timings[f"probe_{samples}x{steps}_s"] = probe_s
    reference = library_sample(head, batch, batch.hiddens, steps)
    named = {"noise": batch.noise, "joint_state": batch.joint_state, "trajectory": trajectory,
             "clean_prediction": clean, "times": times, "sample": reference,
             **{f"hiddens[{i}]": h for i, h in enumerate(batch.hiddens)}}
    problems += [f"{n} on {t.device}" for n, t in named.items() if t.device.type != device.type]
    problems += [f"Euler loop produced {count} tensor(s) off {device} in {name}"
                 for name, count in audit.off_device.items()]
    stray = sorted({f"{n} on {t.device}" for n, t in [*head.named_parameters(), *wrapper.named_parameters()]
                    if t.device.type != device.type})
    problems += [f"parameter {s}" for s in stray]
    fidelity = float((trajectory[-1] - reference).abs().max())
    if fidelity > 1e-5:
        problems.append(f"fidelity {fidelity:.3g} > 1e-5")
    if not all(bool(h.isfinite().all()) for h in batch.hiddens):
        problems.append("non-finite hiddens")

    net = attach_backbone(head, wrapper)  # the library's own per-step recompute, one sample
    one = data.batch([0], device)
    with PeakMemory(device) as peak:
        _, recompute_s = timed(lambda: recompute_sample(net, one, steps, one.seeds[0], False), device)
    memory["recompute_mib"] = peak.mib
    cached_s = timings["backbone_s_per_sample"] + probe_s / samples
    timings["recompute_1x%d_s" % steps] = recompute_s
    timings["features_vs_recompute_speedup"] = recompute_s / cached_s
    return {"device": str(device), "cuda_device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else None, "backbone": spec, "dtypes": backbone_dtypes(wrapper), "passed": not problems,
            "problems": problems, "fidelity_max_abs_diff": fidelity, "tensors_checked": sorted(named),
            "torch_calls_audited_in_euler_loop": audit.calls, "timings": timings, "peak_memory_mib": memory,
            "samples": samples, "steps": steps, "projection": projection(timings, samples, steps)}


def projection(timings: dict, samples: int, steps: int, windows=(200, 1000, 2000, 10000), gpus=(1, 4, 8, 32)) -> dict:
    """PROJECTION, not a measurement: GPU-hours and wall hours of the features + probe stages for N windows
    sharded over M GPUs, from this check's measured seconds. Per window: one backbone pass plus `steps` head
    steps (in batches of `samples`); per shard: one backbone build. Queue waits, job start-up and the other
    analyses (sweep, the per-step recompute) are left out."""
    per_window = timings["backbone_s_per_sample"] + steps * timings["head_s_per_step"] / samples
    rows = []
    for n in windows:
        for m in gpus:
            if m > n:
                continue
            gpu_s = n * per_window + m * timings["backbone_build_s"]
            rows.append({"windows": n, "gpus": m, "gpu_hours": gpu_s / 3600, "wall_hours": gpu_s / m / 3600})
    return {"label": "PROJECTION from this check's measured seconds, not a measurement",
            "seconds_per_window": per_window, "build_seconds_per_shard": timings["backbone_build_s"], "rows": rows}


def projection_table(proj: dict) -> str:
    lines = [f"{proj['label']}: {proj['seconds_per_window']:.3g} s per window (backbone pass + probe), "
             f"{proj['build_seconds_per_shard']:.3g} s backbone build per shard",
             "| windows | GPUs (shards) | GPU-hours | wall hours |", "|---|---|---|---|"]
    lines += [f"| {r['windows']} | {r['gpus']} | {r['gpu_hours']:.3g} | {r['wall_hours']:.3g} |" for r in proj["rows"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--backbone", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args(argv)
    result = check(args.device, args.steps, args.backbone, args.dtype, args.samples)
    print(json.dumps(result, indent=2))
    print(projection_table(result["projection"]))
    print(f"all tensors on {result['device']}, fidelity {result['fidelity_max_abs_diff']:.3g}" if result["passed"]
          else "GPU CHECK FAILED:\n  " + "\n  ".join(result["problems"]))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
