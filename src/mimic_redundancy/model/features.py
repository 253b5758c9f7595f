"""Video features: the backbone's hiddens, computed once per sample window and cached for the head-only stages.

The backbone (a 7B Cosmos transformer, its VAE and T5 encoder) is the cost of every model stage; the action
head only cross-attends to the hiddens of one (or more) of its transformer blocks. The `features` stage runs
the backbone once and writes, per sample, what the head needs: the hiddens, the joint state, the sampler's
initial noise and the ground truth, with the video-denoising time and video-noise seed of every hidden.

Two kinds of rows, each computed exactly as mimic-video 0.5.8 computes them inside `MimicVideo.forward`
(`library_video_hiddens` mirrors its video branch):
  inference  one row per probe sample: video time 0 with one predicted future latent (what `MimicVideo.sample`
             computes at every step), the future-latent noise drawn after `torch.manual_seed(sample seed)`.
  train      `draws` rows per training window: the video-denoising time from the library's own
             `logit_normal_sample(video_time_denoise_mu, video_time_denoise_sigma)` and the video noise, both
             drawn after `torch.manual_seed(row seed)` in the order the library draws them, so a row equals
             the hiddens `MimicVideo.forward(actions=..., video=...)` computes in training from that RNG state.
  depth      one row per probe sample and video-denoising time t (the `depth` analysis): the library's explicit
             `time_video_denoise=t` path (`MimicVideo.forward(video=..., time_video_denoise=t)`, no predicted future
             latent: the observed latents lerped towards noise by t), the noise drawn after `manual_seed(sample seed)`.

File format (safetensors, no pickles; FEATURE_TENSORS and FEATURE_METADATA list every entry). A head stage
computes its numbers from these rows without the video, so a wrong file would give wrong numbers silently:
load_features checks every tensor's bytes against the sha256 recorded when it was written, and the rows against
the settings they were computed for (count, seeds, prompts or windows, draws, video times, dtypes). The same
content always gives the same bytes (keys sorted; the wall times in a sidecar, shards.timing_path), so a rebuild
reruns nothing that read the file unless its content changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger(__name__)

FORMAT = "mimic-redundancy/features-v1"
# Shapes: R = rows (samples, or training windows x draws), T = hidden tokens, H = hidden width,
# L = extracted layers, N = action chunk length, D = action dimension, J = joint-state dimension.
FEATURE_TENSORS = {
    "hiddens.{l}": "[R, T, H] in the backbone's dtype: the hiddens of extracted layer l, as the head receives them "
                   "(before its float32 cast)",
    "video_time": "float32 [R, L]: the video-denoising time of each row's hiddens (0 = clean; inference rows: 0; depth rows: their time)",
    "video_noise_seed": "int64 [R, L]: torch.manual_seed value before the row's backbone pass",
    "joint_state": "float32 [R, J]",
    "noise": "float32 [R, N, D]: the action sampler's initial x_0 of the row's sample",
    "gt_actions": "float32 [R, N, D]: ground-truth action chunk; NaN where unknown",
    "seed": "int64 [R]: the sample's seed",
    "window": "int64 [R]: the input window (synthetic: the prompt index; train rows: the training window)",
    "episode": "int64 [R]: the window's episode (-1: synthetic)",
    "start": "int64 [R]: the window's first frame (-1: synthetic)",
    "draw": "int64 [R]: the draw of the row's window (inference rows: 0)",
}
FEATURE_METADATA = {
    "format": FORMAT, "kind": "inference, train or depth", "config_json": "the features settings, JSON",
    "config_digest": "sha256 of config_json: head stages refuse features whose digest differs from theirs",
    "source": "input source", "prompts_json": "prompt of every row, JSON", "backbone_json": "the backbone spec",
    "dtypes_json": "dtype of each backbone component", "backbone_parameters": "parameter count of the backbone",
    "checks_json": "the backbone checks (tokenizer, finite hiddens)",
    "versions_json": "library versions", "device": "where the backbone ran", "draws": "draws per training window",
    "numerics_json": "the numeric settings in force (threads, deterministic, device, torch)",
    "sha256_json": "sha256 of every tensor's bytes, JSON: checked whenever the file is read or gathered",
    "shard_json": "a shard's file only: its shard and rows {'shard': 'i-of-n', 'rows': [start, stop]}, for the gather",
    "head_rng_state": "random backbones only (tiny-random, full-random): hex of torch's CPU RNG state "
                      "(torch.get_rng_state bytes) right after the backbone's construction (model.build_backbone): a "
                      "random action head is drawn from it (model.build_head), as the library draws it after its "
                      "wrapper; the same in every shard",
}
# Beside the file, <name>.seconds.json (shards.timing_path): {"seconds": backbone seconds per row, "build_seconds"}.


class FeaturesError(ValueError):
    """A features file the head stages cannot use; the message names the file and how to rebuild it."""


@dataclass
class FeatureSet:
    """Rows of a features file: what the action head needs, without the video."""
    source: str
    seeds: list[int]
    prompts: list[str]
    windows: list[int]
    episodes: list[int]
    starts: list[int]
    draws: list[int]
    hiddens: list[torch.Tensor]     # per layer (R, T, H), stored dtype
    joint_state: torch.Tensor       # (R, J)
    noise: torch.Tensor             # (R, N, D)
    gt_actions: torch.Tensor        # (R, N, D)
    video_time: torch.Tensor        # (R, L)
    video_noise_seed: torch.Tensor  # (R, L)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def hidden_width(self) -> int:
        return int(self.hiddens[0].shape[-1])

    def batch(self, index, device):
        """A Batch (probe.Batch) of rows, hiddens in float32 on `device` (as MimicVideo casts them)."""
        from mimic_redundancy.data.samples import Batch

        index = list(range(len(self)))[index] if isinstance(index, slice) else list(index)
        return Batch([self.seeds[i] for i in index], [self.prompts[i] for i in index], None,
                     self.joint_state[index].to(device), self.noise[index].to(device),
                     hiddens=[h[index].to(device).float() for h in self.hiddens],
                     video_time=self.video_time[index, 0].to(device))

    def subset(self, n: int) -> "FeatureSet":
        keep = slice(0, n)
        return FeatureSet(self.source, self.seeds[keep], self.prompts[keep], self.windows[keep], self.episodes[keep],
                          self.starts[keep], self.draws[keep], [h[keep] for h in self.hiddens], self.joint_state[keep],
                          self.noise[keep], self.gt_actions[keep], self.video_time[keep], self.video_noise_seed[keep],
                          self.meta)

    def metadata(self) -> dict:
        """The per-sample arrays every run NPZ carries (io.RUN_METADATA)."""
        import numpy as np

        return {"seed": np.asarray(self.seeds, dtype=np.int64), "prompt": list(self.prompts),
                "window": np.asarray(self.windows, dtype=np.int64), "episode": np.asarray(self.episodes, dtype=np.int64),
                "start": np.asarray(self.starts, dtype=np.int64), "source": self.source}


# -- computing them --------------------------------------------------------------------------------------------

def library_video_defaults() -> tuple[float, float]:
    """mimic-video's training distribution of the video-denoising time: MimicVideo's own defaults of
    (video_time_denoise_mu, video_time_denoise_sigma), read from its signature."""
    import inspect

    from mimic_video import MimicVideo

    params = inspect.signature(MimicVideo.__init__).parameters
    return params["video_time_denoise_mu"].default, params["video_time_denoise_sigma"].default


@torch.no_grad()
def library_video_hiddens(wrapper, video, prompts, video_time, future_latents: int, device) -> list[torch.Tensor]:
    """The video branch of MimicVideo.forward (mimic-video 0.5.8, one view, no frame mask): the wrapper in
    eval mode under no_grad (`eval_no_grad`, as with no_grad_video_model_forward), then `.to(device)` and
    'b * d' packing. Returns one (b, T, H) tensor per extracted layer in the backbone's dtype."""
    from einops import rearrange

    was_training = wrapper.training
    wrapper.eval()
    try:  # a half-precision wrapper runs under autocast by itself (model.build_backbone)
        out = wrapper(video, prompts=prompts, prompt_token_ids=None, timestep=video_time,
                      predict_num_future_latents=future_latents, context_frames=0, video_frames_mask=None)
    finally:
        wrapper.train(was_training)
    layers = out if isinstance(out, list) else [out]
    return [rearrange(t.to(device), "b ... d -> b (...) d") for t in layers]


def _timed_rows(wrapper, samples, device, row_specs):
    """Run the backbone once per row spec (sample index, seed, training draw or None, fixed video time or None)."""
    from mimic_redundancy.core.timing import synchronize

    mu, sigma = library_video_defaults()
    hiddens, times, seconds = [], [], []
    for n, (i, seed, draw, fixed_time) in enumerate(row_specs):
        batch = samples.batch([i], device)
        synchronize(device)
        start = time.perf_counter()
        torch.manual_seed(seed)
        if fixed_time is not None:  # depth: the given video time, as MimicVideo.forward(time_video_denoise=t)
            video_time, future = torch.full((1,), float(fixed_time), device=device), 0
        elif draw is None:  # inference: video time 0, one predicted future latent
            video_time, future = torch.zeros(1, device=device), 1
        else:  # training: the library draws the time first, then the video noise (inside the wrapper)
            video_time, future = torch.sigmoid(mu + sigma * torch.randn(1, device=device)), 0
        layers = library_video_hiddens(wrapper, batch.video, batch.prompts, video_time, future, device)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        hiddens.append([h.cpu() for h in layers])
        times.append(float(video_time))
        if n == 0 or (n + 1) % max(1, len(row_specs) // 10) == 0:
            log.info("backbone row %d/%d: %.3f s", n + 1, len(row_specs), seconds[-1])
    return hiddens, times, seconds


def compute_features(wrapper, samples, device, draws: int | None = None, draw_seed: int = 0,
                     video_times: list[float] | None = None, windows: range | None = None,
                     part: range | None = None) -> FeatureSet:
    """Inference rows for every sample (draws None), `draws` training rows per window (window-major), or
    (video_times) one row per sample at each fixed video-denoising time (time-major; `part`: only those rows of them,
    a depth shard). `windows`: the training windows `samples` holds, out of all of them (a shard), so each row's
    seed is the one an unsharded run gives it."""
    n_layers = len(wrapper.extract_layers)
    if video_times is not None:
        specs = [(i, samples.seeds[i], None, t) for t in video_times for i in range(len(samples))]
        specs = specs[part.start:part.stop] if part is not None else specs
    elif draws is None:
        specs = [(i, samples.seeds[i], None, None) for i in range(len(samples))]
    else:
        windows = windows or range(len(samples))
        assert len(windows) == len(samples), (windows, len(samples))
        generator = torch.Generator().manual_seed(draw_seed)
        seeds = torch.randint(0, 2**62, (windows.stop, draws), generator=generator)[windows.start:].tolist()
        specs = [(i, seeds[i][r], r, None) for i in range(len(samples)) for r in range(draws)]
    hiddens, times, seconds = _timed_rows(wrapper, samples, device, specs) if specs else ([], [], [])
    rows = [i for i, *_ in specs]
    layers = [torch.cat([h[l] for h in hiddens]) for l in range(n_layers)] if specs else \
        [torch.zeros(0, 0, 0) for _ in range(n_layers)]
    video_time = torch.tensor(times, dtype=torch.float32).reshape(-1, 1).repeat(1, n_layers)
    noise_seed = torch.tensor([s for _, s, *_ in specs], dtype=torch.int64).reshape(-1, 1).repeat(1, n_layers)
    pick = lambda values: [values[i] for i in rows]
    return FeatureSet(samples.source, pick(samples.seeds), pick(samples.prompts), pick(samples.windows),
                      pick(samples.episodes), pick(samples.starts), [r or 0 for _, _, r, _ in specs], layers,
                      samples.joint_state[rows].float(), samples.noise[rows].float(), samples.gt_actions[rows].float(),
                      video_time, noise_seed, {"seconds": seconds})


# -- the file --------------------------------------------------------------------------------------------------

DTYPE_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def _bytes(tensor: torch.Tensor):
    """The tensor's bytes as safetensors stores them (C order, little-endian), without a copy."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


def save_features(path, features: FeatureSet, kind: str, settings: dict, extra: dict) -> None:
    """Write a features file atomically (safetensors: tensors plus string metadata, with the sha256 of every
    tensor). The same content always gives the same bytes: keys sorted, and the wall times (per-row seconds,
    extra's build_seconds) in the sidecar shards.timing_path, so a rebuild does not rerun what reads the file."""
    from mimic_redundancy.core.io import atomic_path, config_digest, write_json
    from mimic_redundancy.core.shards import CHECKSUMS, safetensors_header, timing_path

    extra = dict(extra)
    write_json(timing_path(path), {"seconds": features.meta.get("seconds", []),
                                   "build_seconds": extra.pop("build_seconds", None)})
    text, digest = config_digest(settings)
    tensors = {f"hiddens.{l}": h for l, h in enumerate(features.hiddens)}
    tensors.update(video_time=features.video_time, video_noise_seed=features.video_noise_seed,
                   joint_state=features.joint_state, noise=features.noise, gt_actions=features.gt_actions,
                   **{name: torch.tensor(values, dtype=torch.int64).reshape(-1) for name, values in
                      (("seed", features.seeds), ("window", features.windows), ("episode", features.episodes),
                       ("start", features.starts), ("draw", features.draws))})
    data = {name: _bytes(tensors[name]) for name in sorted(tensors)}
    entries, offset = {}, 0
    for name, blob in data.items():
        entries[name] = {"dtype": DTYPE_CODES[tensors[name].dtype], "shape": list(tensors[name].shape),
                         "data_offsets": [offset, offset + blob.nbytes]}
        offset += blob.nbytes
    meta = {"format": FORMAT, "kind": kind, "config_json": text, "config_digest": digest, "source": features.source,
            "prompts_json": json.dumps(features.prompts),
            CHECKSUMS: json.dumps({name: hashlib.sha256(blob).hexdigest() for name, blob in data.items()}),
            **{k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in extra.items()}}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(safetensors_header(meta, entries))
        for blob in data.values():
            f.write(blob)


def rebuild_fix(path) -> str:
    """How to rebuild a features file: its rule forced, the target first. Snakemake then reruns what reads the
    rule's files only if they change (save_features writes equal content as equal bytes) or are too large for it
    to compare (--max-checksum-file-size; profiles/local sets 64 MB)."""
    rule = "depth_features" if Path(path).parent.name == "depth" else "features"
    return (f"rebuild it with `snakemake --profile profiles/local {path} --forcerun {rule}` (the target first; "
            "what reads its files reruns after it only if they change or exceed --max-checksum-file-size)")


def expected_rows(kind: str, identity: dict, total: int) -> tuple[int | None, str, dict]:
    """What the settings a features file was computed for (its config_json) say its rows are: (row count, what
    gives that count, {field: the value of every row}). compute_features' layout: time-major (depth), then the
    samples (seed-major), then the draws of each training window. A real dataset's windows come from the data:
    their number is the one that fits `total`, their prompts, episodes and starts are left out (rows_problem
    checks them per window). (None, '', {}) for settings that do not describe rows."""
    if "untrained" in identity:
        return 0, "no preset trains this one", {}
    data = identity.get("data")
    if not isinstance(data, dict) or not ("samples" in data or "seeds" in data):
        return None, "", {}
    times = identity.get("times", [0.0]) if kind == "depth" else [0.0]
    draws = identity.get("draws", 1) if kind == "train" else 1
    if "samples" in data:  # synthetic: the seed x prompt pairs; a sample's window is the index of its prompt
        pairs = data["samples"]
        order = list(dict.fromkeys(p for _, p in pairs))
        sample = {"seed": [s for s, _ in pairs], "prompt": [p for _, p in pairs],
                  "window": [order.index(p) for _, p in pairs], "episode": [-1] * len(pairs),
                  "start": [-1] * len(pairs)}
        what = f"its {len(pairs)} {'training windows' if kind == 'train' else 'samples'} (inputs, seeds, prompts)"
    else:
        seeds, per = data["seeds"], len(data["seeds"]) * len(times) * draws
        windows = total // per if per else 0
        sample = {"seed": [s for s in seeds for _ in range(windows)],
                  "window": [w for _ in seeds for w in range(windows)]}
        what = f"its {len(seeds)} seed(s) x {windows} window(s) of the data"
    n = len(sample["seed"])
    index = [(t, j, r) for t in range(len(times)) for j in range(n) for r in range(draws)]
    expect = {name: [values[j] for _, j, _ in index] for name, values in sample.items()}
    expect["draw"] = [r for _, _, r in index]
    if kind == "train":  # compute_features' row seeds: one table for all windows, drawn from train.seed
        table = torch.randint(0, 2**62, (n, draws), generator=torch.Generator().manual_seed(identity["seed"])).tolist()
        expect["video_noise_seed"] = [table[j][r] for _, j, r in index]
        what += f" x {draws} draws"
    else:
        expect["video_noise_seed"] = expect["seed"]
        stored = torch.tensor([float(t) for t in times], dtype=torch.float32).tolist()
        expect["video_time"] = [stored[t] for t, _, _ in index]
        what += f" x {len(times)} video times" if kind == "depth" else ""
    return len(index), what, expect


def rows_problem(kind: str, identity: dict, total: int, rows: range, values: dict) -> str | None:
    """The first way rows `rows` (of `total`) differ from what the settings say they are (expected_rows)."""
    count, what, expect = expected_rows(kind, identity, total)
    if count is None:
        return None
    if count != total:
        return f"holds {total} rows, but {what} give {count}"
    for name, actual in values.items():
        wanted = expect.get(name, [None] * total)[rows.start:rows.stop]
        first = {}  # a real dataset's window: the same prompt, episode and start under every seed
        for i, (value, expected) in enumerate(zip(actual, wanted), rows.start):
            if expected is None and name in ("prompt", "episode", "start"):
                row, expected = first.setdefault(values["window"][i - rows.start], (i, value))
                if value != expected:
                    return (f"row {i} has {name} {value!r}, but row {row}, of the same window, has {expected!r} "
                            "(rows mislabelled or from another run)")
            elif expected is not None and value != expected:
                return (f"row {i} has {name} {value!r}, but {what} give {expected!r} (rows out of order, "
                        "mislabelled or from another run)")
    return None


def load_features(path, expected_digest: str | None = None, kind: str | None = None,
                  rows: range | None = None) -> FeatureSet:
    """Read a features file (`rows`: only those, read from disk alone, for a shard). A missing, damaged or
    foreign file raises FeaturesError naming the file and the command that rebuilds it: digest mismatch (other
    settings), a tensor missing or whose bytes differ from its recorded sha256, tensors of other dtypes or row
    counts, or rows other than its settings give (count, seeds, prompts or windows, draws, times)."""
    from safetensors import safe_open

    from mimic_redundancy.core.shards import CHECKSUMS, timing_path, tensor_checksums

    path = Path(path)
    preset = path.parent.parent.name
    fix = rebuild_fix(path)
    if not path.is_file():
        raise FeaturesError(f"{path}: features file not found; {fix}, or run the whole workflow")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
            tensors = {k: f.get_tensor(k) if rows is None else f.get_slice(k)[rows.start:rows.stop] for k in f.keys()}
        sums = tensor_checksums(path)
    except Exception as error:
        raise FeaturesError(f"{path}: not a readable features file ({type(error).__name__}: {str(error)[:200]}); "
                            f"{fix}") from None
    if meta.get("format") != FORMAT:
        raise FeaturesError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}; {fix}")
    if kind and meta.get("kind") != kind:
        raise FeaturesError(f"{path}: holds {meta.get('kind')!r} features, expected {kind!r}; {fix}")
    if expected_digest and meta.get("config_digest") != expected_digest:
        raise FeaturesError(f"{path}: computed for other settings (digest {meta.get('config_digest', '?')[:12]}, "
                            f"this stage expects {expected_digest[:12]}: another backbone, dtype or sample set of "
                            f"preset {preset}); {fix}")
    layers = sorted((k for k in tensors if k.startswith("hiddens.")), key=lambda k: int(k.split(".")[1]))
    missing = sorted({k for k in FEATURE_TENSORS if "{" not in k} - set(tensors)) + ([] if layers else ["hiddens.0"])
    if missing or "prompts_json" not in meta or "source" not in meta:
        what = missing + [k for k in ("prompts_json", "source") if k not in meta]
        raise FeaturesError(f"{path}: has no {what} (a features file holds the tensors and metadata of "
                            f"features.FEATURE_TENSORS and FEATURE_METADATA; written by other code?); {fix}")
    try:
        recorded = json.loads(meta[CHECKSUMS])
        authentic = hashlib.sha256(meta["config_json"].encode()).hexdigest() == meta.get("config_digest")
    except (KeyError, ValueError):
        recorded, authentic = None, False
    if not isinstance(recorded, dict) or not authentic:
        raise FeaturesError(f"{path}: records no checksums of its tensors, or its settings do not match their "
                            f"digest (metadata '{CHECKSUMS}', 'config_json'): written by other code or edited; {fix}")
    changed = sorted(k for k in set(recorded) | set(sums) if recorded.get(k) != sums.get(k))
    if changed:
        raise FeaturesError(f"{path}: the bytes of tensors {changed} differ from the sha256 recorded when it was "
                            f"written (a damaged disk, an interrupted copy or an edit); {fix}")
    counts = {k: shape[0] if shape else None for k, shape in shapes.items()}
    total = max(set(counts.values()), key=list(counts.values()).count)  # what most tensors hold
    identity = json.loads(meta["config_json"])
    backbone = identity.get("backbone") if isinstance(identity.get("backbone"), dict) else {}
    dims = identity.get("dims") if isinstance(identity.get("dims"), dict) else {}
    problems = [f"tensor '{k}' holds {counts[k]} rows, the others {total}"
                for k in sorted(counts) if counts[k] != total]
    wanted = {k: getattr(torch, spec.split()[0]) for k, spec in FEATURE_TENSORS.items() if "{" not in k}
    if backbone and total:  # the hiddens of the backbone's dtype, as the head receives them
        wanted.update(dict.fromkeys(layers, getattr(torch, backbone.get("dtype", "float32"))))
    problems += [f"tensor '{k}' is {str(tensors[k].dtype).removeprefix('torch.')}, not "
                 f"{str(dtype).removeprefix('torch.')}" for k, dtype in wanted.items() if tensors[k].dtype != dtype]
    trailing = {"video_time": [len(layers)], "video_noise_seed": [len(layers)],
                "joint_state": [dims.get("joint_dim")], "noise": [dims.get("chunk_len"), dims.get("action_dim")],
                "gt_actions": [dims.get("chunk_len"), dims.get("action_dim")]}
    problems += [f"tensor '{k}' has shape {shapes[k]}, not [R, {', '.join(map(str, want))}]"
                 for k, want in trailing.items() if len(shapes[k]) != len(want) + 1 or
                 any(isinstance(w, int) and w != s for w, s in zip(want, shapes[k][1:]))]
    prompts = json.loads(meta["prompts_json"])
    if len(prompts) != total:
        problems.append(f"metadata 'prompts_json' names {len(prompts)} prompts for {total} rows")
    if problems:
        raise FeaturesError(f"{path}: " + "; ".join(problems) + f"; {fix}")
    rows = rows if rows is not None else range(total)
    prompts = prompts[rows.start:rows.stop]
    ints = lambda k: tensors[k].tolist()
    values = {k: ints(k) for k in ("seed", "window", "episode", "start", "draw")}
    values.update(prompt=prompts, video_time=tensors["video_time"][:, 0].tolist(),
                  video_noise_seed=tensors["video_noise_seed"][:, 0].tolist())
    problem = rows_problem(meta["kind"], identity, total, rows, values)
    if problem:
        raise FeaturesError(f"{path}: {problem}; {fix}")
    try:  # the wall times (depth.npz's backbone_seconds), informative only: none without a good sidecar
        seconds = json.loads(timing_path(path).read_text())["seconds"]
    except (OSError, ValueError, KeyError, TypeError):
        seconds = None
    meta = {**meta, "seconds_json": json.dumps(seconds[rows.start:rows.stop] if isinstance(seconds, list) and
                                               len(seconds) == total else [])}
    return FeatureSet(meta["source"], values["seed"], prompts, values["window"], values["episode"],
                      values["start"], values["draw"], [tensors[k] for k in layers], tensors["joint_state"],
                      tensors["noise"], tensors["gt_actions"], tensors["video_time"], tensors["video_noise_seed"],
                      meta)


def feature_rows(path) -> int:
    """How many rows a features file holds, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return int(f.get_slice("seed").get_shape()[0])
    except Exception as error:
        raise FeaturesError(f"{path}: not a readable features file ({type(error).__name__}: {str(error)[:200]}); "
                            f"{rebuild_fix(path)}") from None
