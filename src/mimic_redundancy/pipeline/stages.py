"""One entry point per pipeline stage: what scripts/<stage>.py calls with Snakemake's values.

Heavy imports (torch, mimic-video) happen inside the stages that need them, so the cheap
stages (prefetch, metrics, plots) start fast.
"""
from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("mimic_redundancy")


class ValidationFailed(RuntimeError):
    pass


def _threads_and_device(settings: dict, threads: int):
    """The device of a model job, with its numerics (threads, determinism) set from `settings['numerics']`, not from
    the `threads` the executor gave the job (numerics.py)."""
    from mimic_redundancy.core import numerics
    from mimic_redundancy.model.model import resolve_device

    device = resolve_device(settings["device"])
    numerics.apply(settings["numerics"], device, job_cpus=threads)
    return device


def _read_data(model: dict, data: dict, snapshots: dict, limit: int | None = None, shard: str | None = None,
               allow_empty: bool = False):
    """(samples with their videos, dims, their rows out of all): the data read offline (a shard: only its rows),
    the dimensions from the model config and the data (a mismatch stops here, naming both)."""
    from mimic_redundancy.data.readers import data_dims
    from mimic_redundancy.data.samples import count_samples, load_samples
    from mimic_redundancy.data.sources import read_episodes
    from mimic_redundancy.model.model import resolve_dims
    from mimic_redundancy.pipeline.config import shard_rows

    episodes = None if data["inputs"]["source"] == "synthetic" else read_episodes(data["inputs"], snapshots)
    dims = resolve_dims(model, data_dims(episodes) if episodes is not None else {})
    rows = None
    if shard:  # how many samples there are needs only the window list, not the frames
        total = count_samples(data, dims, episodes, limit)
        rows = shard_rows(shard, total, allow_empty=allow_empty)
    samples = load_samples(data, dims, episodes, limit, rows)
    log.info("%d samples from %s%s", len(samples), data["inputs"]["source"],
             f" (shard {shard}: rows {rows.start} to {rows.stop} of {total})" if shard else "")
    return samples, dims, rows if rows is not None else range(len(samples))  # an empty shard keeps its place


def _head(settings: dict, features_path, threads: int, kind: str = "inference", limit: int | None = None,
          shard: str | None = None):
    """(action head, device, features) of a head-only stage: the features checked against the settings this
    stage expects (digest; a shard reads only its rows, whole probe batches), the head built alone (no
    transformer, VAE or T5 encoder)."""
    from mimic_redundancy.model.features import FeaturesError, feature_rows, load_features, rebuild_fix
    from mimic_redundancy.model.model import RANDOM_BACKBONES, build_head, net_dims, resolve_dims, rng_state_from_hex
    from mimic_redundancy.pipeline.config import shard_rows

    model = settings["model"]
    device = _threads_and_device(model, threads)
    rows = None
    if shard:
        total = feature_rows(features_path) if limit is None else min(limit, feature_rows(features_path))
        rows = shard_rows(shard, total, settings.get("batch_size", 1))
        log.info("shard %s: rows %d..%d of %d", shard, rows.start, rows.stop - 1, total)
    features = load_features(features_path, settings["features_digest"], kind, rows)
    if shard:  # recorded in the shard's NPZ, for the gather (shards.shard_row_problems)
        features.meta["shard"] = {"shard": shard, "rows": [rows.start, rows.stop]}
    if limit:
        features = features.subset(limit)
    data = {"chunk_len": (features.noise.shape[1], str(features_path)),
            "action_dim": (features.noise.shape[2], str(features_path)),
            "joint_dim": (features.joint_state.shape[1], str(features_path))}
    dims = resolve_dims(model, data)
    state = features.meta.get("head_rng_state")  # where a random backbone's construction left torch's RNG
    backbone = json.loads(features.meta["config_json"]).get("backbone")  # the settings they were computed for
    kind = backbone.get("kind") if isinstance(backbone, dict) else None
    if state is None and kind in RANDOM_BACKBONES and "checkpoint" not in model:
        raise FeaturesError(f"{features_path}: has no metadata 'head_rng_state' (the RNG state the random action head "
                            f"is drawn from; written by older code); {rebuild_fix(features_path)}")
    start = time.perf_counter()
    net = build_head(model, device, dims, features.hidden_width, rng_state_from_hex(state) if state else None)
    assert net_dims(net) == dims, (net_dims(net), dims)
    log.info("built the action head of preset '%s' on %s in %.1f s (no backbone); %d rows of %s features",
             model["preset"], device, time.perf_counter() - start, len(features), kind)
    return net, device, features


def head_rng_metadata(wrapper) -> dict:
    """A features file's `head_rng_state` metadata: where the random backbone's construction left torch's RNG
    (none for a loaded backbone, whose random heads are seeded from model_seed)."""
    from mimic_redundancy.model.model import rng_state_hex

    state = wrapper.head_rng_state
    return {} if state is None else {"head_rng_state": rng_state_hex(state)}


def _save_run(npz_path, arrays: dict, contract: dict, settings: dict, device, samples,
              shard: dict | None = None) -> None:
    """Add the run metadata every run NPZ carries (io.RUN_METADATA), then write the NPZ. A shard's settings
    include its rows ({'shard': 'i-of-n', 'rows': [start, stop]}): its gather checks them, then leaves them out."""
    import json

    from mimic_redundancy.core import numerics
    from mimic_redundancy.core.io import config_digest, save_npz
    from mimic_redundancy.model.model import library_versions

    text, digest = config_digest({**settings, "shard": shard} if shard else settings)
    arrays.update(samples.metadata(), preset=settings["model"]["preset"], device=str(device), config_json=text,
                  config_digest=digest, versions_json=json.dumps(library_versions(), sort_keys=True),
                  numerics_json=json.dumps(numerics.record(device), sort_keys=True))
    save_npz(npz_path, arrays, contract)


def prefetch(preset: str, settings: dict, timeout_s: float, manifest_path) -> None:
    """Fetch the preset's Hub repos (online: the only stage that is) and write the manifest last."""
    import os

    from mimic_redundancy.core import hub
    from mimic_redundancy.core.io import write_json

    hub.go_online()
    repos = settings["repos"]
    if repos:
        from mimic_redundancy.data.lerobot import fetch  # hub.fetch, a dataset's metadata checked first (layout, episodes, keys)

        entries = fetch(repos, timeout_s)
        backbone = [e for e in entries if e["role"] == "backbone"]
        if backbone and hub.needs_guardrail(backbone[0]["snapshot"]):
            log.info("%s has no safety_checker of its own: diffusers builds NVIDIA's CosmosSafetyChecker, so its "
                     "repos are fetched too", backbone[0]["repo"])
            entries += hub.fetch(hub.guardrail_repos(), timeout_s)
        note = f"fetched {len(entries)} repo(s) into {os.environ.get('HF_HUB_CACHE')}"
    else:
        entries, note = [], f"preset '{preset}' needs nothing from the Hugging Face Hub: nothing to download"
    log.info(note)
    write_json(manifest_path, {"preset": preset, "repos": entries, "note": note,
                               "endpoint": os.environ.get("HF_ENDPOINT", "https://huggingface.co") if repos else None})


def features(settings: dict, manifest_path, inference_path, train_path, threads: int = 1,
             shard: str | None = None) -> None:
    """Run the video backbone once per probe sample (and `draws` times per training window when the preset is
    trained) and write the features files; the only model stage that builds the backbone, besides the
    per-step recompute analysis. A shard ('i-of-n') does its contiguous share of the samples and windows."""
    from mimic_redundancy.core.hub import local_snapshots
    from mimic_redundancy.core.io import read_json
    from mimic_redundancy.data.tokenizer import tokenizer_problems
    from mimic_redundancy.model import features as feats
    from mimic_redundancy.model.model import backbone_dtypes, build_backbone, library_versions

    from mimic_redundancy.core import numerics

    model, backbone = settings["model"], settings["inference"]["backbone"]
    device = _threads_and_device(settings, threads)  # settings['device']
    snapshots = local_snapshots(read_json(manifest_path))  # offline; fails at once if not prefetched
    samples, _, which = _read_data(model, settings["inference"]["data"], snapshots, shard=shard)
    start = time.perf_counter()
    wrapper = build_backbone(backbone, device, snapshots)  # the guardrail is checked before anything loads
    built = time.perf_counter() - start

    checks = []
    prompts = settings["prompts"] or list(dict.fromkeys(samples.prompts))
    problems = tokenizer_problems(wrapper.tokenizer, prompts)
    checks.append({"name": "tokenizer", "passed": not problems, "detail": f"{type(wrapper.tokenizer).__name__} with "
                   f"{len(wrapper.tokenizer)} tokens: " + ("; ".join(problems) or
                                                           f"{len(prompts)} prompts tokenize to distinct, known ids")})
    if problems:  # fail at once: every hidden would be computed from a degenerate prompt encoding
        raise ValidationFailed("backbone check failed: tokenizer: " + "; ".join(problems))
    extra = {"backbone_json": backbone, "dtypes_json": backbone_dtypes(wrapper), "device": str(device),
             "backbone_parameters": str(sum(p.numel() for p in wrapper.parameters())),
             "versions_json": library_versions(), "build_seconds": f"{built:.3f}",
             "numerics_json": numerics.record(device), **head_rng_metadata(wrapper)}
    own = {"shard_json": {"shard": shard, "rows": [which.start, which.stop]}} if shard else {}  # for the gather
    rows = feats.compute_features(wrapper, samples, device)
    finite = all(bool(h.float().isfinite().all()) for h in rows.hiddens)
    checks.append({"name": "finite hiddens", "passed": finite, "detail": f"every row's hiddens "  # equal in every shard
                   f"{[tuple(h.shape[1:]) for h in rows.hiddens]} in {[str(h.dtype) for h in rows.hiddens]} are finite"})
    if not finite:
        raise ValidationFailed(f"backbone check failed: non-finite hiddens in {inference_path}")
    seconds = rows.meta["seconds"]
    log.info("inference features: %d rows, %.3f s per row (median)", len(rows), sorted(seconds)[len(seconds) // 2])
    feats.save_features(inference_path, rows, "inference", settings["inference"],
                        {**extra, "checks_json": checks, "draws": "0", **own})

    train = settings["train"]
    if train is None:
        log.info("no checkpoint preset trains preset '%s': no training draws", model["preset"])
        empty = samples.subset(0)
        rows = feats.compute_features(wrapper, empty, device, draws=0)
        identity, which = {"untrained": model["preset"]}, range(0)
    else:
        data = train["data"]
        windows, _, which = _read_data(model, data, snapshots, shard=shard, allow_empty=True)
        log.info("training draws: %d windows x %d draws", len(windows), train["draws"])
        rows = feats.compute_features(wrapper, windows, device, draws=train["draws"], draw_seed=train["seed"],
                                      windows=which)
        identity = train
    draws = train["draws"] if train else 0
    own = {"shard_json": {"shard": shard, "rows": [which.start * draws, which.stop * draws]}} if shard else {}
    feats.save_features(train_path, rows, "train", identity,
                        {**extra, "checks_json": checks, "draws": str(draws), **own})


def depth_features(settings: dict, manifest_path, features_path, threads: int = 1, shard: str | None = None) -> None:
    """The backbone's hiddens of every probe sample at every video-denoising time of `depth.times` (one backbone
    build for all times; the `depth` analysis). A shard ('i-of-n') computes a contiguous range of the time-major
    rows: each row is its own backbone pass (batch 1, seeded by its sample), so it is the same in any shard. Its
    rows may span every sample (a range across a time), so it reads them all, as an unsharded run does."""
    import torch

    from mimic_redundancy.core.hub import local_snapshots
    from mimic_redundancy.core.io import read_json
    from mimic_redundancy.model import features as feats
    from mimic_redundancy.model.model import backbone_dtypes, build_backbone, library_versions
    from mimic_redundancy.pipeline.config import shard_rows

    from mimic_redundancy.core import numerics

    depth = settings["depth"]
    device = _threads_and_device(settings, threads)
    snapshots = local_snapshots(read_json(manifest_path))
    samples, _, _ = _read_data(settings["model"], depth["data"], snapshots)
    part = shard_rows(shard, len(depth["times"]) * len(samples))  # checked before the backbone is built
    wrapper = build_backbone(depth["backbone"], device, snapshots)
    log.info("depth features: %d samples x video times %s%s", len(samples), depth["times"],
             f" (shard {shard}: rows {part.start} to {part.stop} of {len(depth['times']) * len(samples)})"
             if shard else "")
    warm = samples.batch([0], device)  # one untimed pass, so the first timed row is not the warm-up's
    feats.library_video_hiddens(wrapper, warm.video, warm.prompts, torch.zeros(1, device=device), 0, device)
    rows = feats.compute_features(wrapper, samples, device, video_times=depth["times"], part=part)
    if not all(bool(h.float().isfinite().all()) for h in rows.hiddens):
        raise ValidationFailed(f"backbone check failed: non-finite hiddens in {features_path}")
    extra = {"backbone_json": depth["backbone"], "dtypes_json": backbone_dtypes(wrapper), "device": str(device),
             "backbone_parameters": str(sum(p.numel() for p in wrapper.parameters())), "draws": "0",
             "versions_json": library_versions(), "checks_json": [], "numerics_json": numerics.record(device),
             **head_rng_metadata(wrapper)}
    own = {"shard_json": {"shard": shard, "rows": [part.start, part.stop]}} if shard else {}  # for the gather
    feats.save_features(features_path, rows, "depth", depth, {**extra, **own})


def depth(settings: dict, features_path, npz_path, threads: int = 1) -> None:
    """MimicVideo.sample at every video-denoising time, from the depth features (head only)."""
    from mimic_redundancy.analysis.depth import run_depth
    from mimic_redundancy.core.io import DEPTH_ARRAYS

    net, device, rows = _head(settings, features_path, threads, kind="depth")
    arrays = run_depth(net, rows, settings["steps"], settings["batch_size"], device)
    reference_rows = rows.subset(arrays["final"].shape[1])  # time 0's rows: the samples, in the probe's order
    _save_run(npz_path, arrays, DEPTH_ARRAYS, settings, device, reference_rows)


def validate(settings: dict, features_path, report_path, threads: int = 1) -> None:
    """Write the validation report; raise ValidationFailed (after logging the report) if a check fails."""
    import json

    from mimic_redundancy.analysis.validation import validate_model
    from mimic_redundancy.core.io import write_json

    net, device, rows = _head(settings, features_path, threads, limit=settings["limit"])
    report = validate_model(net, device, settings, rows)
    if not report["passed"]:
        log.error("validation report:\n%s", json.dumps(report, indent=2))
        failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["passed"]]
        raise ValidationFailed("validation failed: " + "; ".join(failed))
    write_json(report_path, report)


def probe(settings: dict, features_path, npz_path, threads: int = 1, shard: str | None = None) -> None:
    from mimic_redundancy.analysis.probe import run_probe
    from mimic_redundancy.core.io import PROBE_ARRAYS

    net, device, rows = _head(settings, features_path, threads, shard=shard)
    log.info("probing %d samples x %d steps, batch size %d", len(rows), settings["steps"], settings["batch_size"])
    start = time.perf_counter()
    arrays = run_probe(net, rows, settings["steps"], settings["batch_size"], device)
    log.info("probe took %.1f s", time.perf_counter() - start)
    _save_run(npz_path, arrays, PROBE_ARRAYS, settings, device, rows, rows.meta.get("shard"))


def sweep(settings: dict, features_path, npz_path, threads: int = 1, shard: str | None = None) -> None:
    from mimic_redundancy.analysis.sweep import run_sweep
    from mimic_redundancy.core.io import SWEEP_ARRAYS

    net, device, rows = _head(settings, features_path, threads, shard=shard)
    arrays = run_sweep(net, rows, settings["sweep_steps"], settings["reference_steps"],
                       settings["batch_size"], settings["repeats"], device)
    _save_run(npz_path, arrays, SWEEP_ARRAYS, settings, device, rows, rows.meta.get("shard"))


def backbone(settings: dict, manifest_path, features_path, npz_path, threads: int = 1, shard: str | None = None) -> None:
    """The library's per-step video recompute: the whole model (backbone + head) on the first samples
    (`features_path`, the run's features, gives how many samples the run has); a shard on its share of them."""
    import numpy as np

    from mimic_redundancy.analysis.backbone import run_backbone
    from mimic_redundancy.core.hub import local_snapshots
    from mimic_redundancy.core.io import BACKBONE_ARRAYS, read_json
    from mimic_redundancy.model.features import feature_rows
    from mimic_redundancy.model.model import attach_backbone, build_backbone, build_head

    device = _threads_and_device(settings["model"], threads)
    snapshots = local_snapshots(read_json(manifest_path))
    samples, dims, which = _read_data(settings["features_model"], settings["data"], snapshots, shard=shard)
    wrapper = build_backbone(settings["backbone"], device, snapshots)
    net = attach_backbone(build_head(settings["model"], device, dims, wrapper.dim_latent, wrapper.head_rng_state),
                          wrapper)
    log.info("the whole model of preset '%s' on %s: %d samples x %d steps, hiddens recomputed every step",
             settings["model"]["preset"], device, len(samples), settings["steps"])
    arrays = run_backbone(net, samples, settings["steps"], settings["fixed_video_noise"], device)
    arrays["total_samples"] = np.int64(feature_rows(features_path))
    _save_run(npz_path, arrays, BACKBONE_ARRAYS, settings, device, samples,
              {"shard": shard, "rows": [which.start, which.stop]} if shard else None)


def gather(what: str, shard_paths: list, out_path) -> None:
    """Join a stage's shards into the file an unsharded run writes (what: probe, sweep, backbone, or the
    features kind inference/train/depth). Numpy and the files' own formats only: no torch, no model."""
    from mimic_redundancy.core import io
    from mimic_redundancy.core.shards import gather_features, gather_npz

    start = time.perf_counter()
    if what in ("inference", "train", "depth"):
        gather_features(shard_paths, out_path)
    else:
        gather_npz(shard_paths, out_path, {"probe": io.PROBE_ARRAYS, "sweep": io.SWEEP_ARRAYS,
                                           "backbone": io.BACKBONE_ARRAYS, "rollout": io.ROLLOUT_ARRAYS}[what])
    log.info("gathered %d shards into %s in %.2f s", len(shard_paths), out_path, time.perf_counter() - start)


def train(settings: dict, manifest_path, features_path, check_path, checkpoint_dir, loss_path, summary_path,
          threads: int = 1) -> None:
    """Train the action head on the cached training draws, save a head-only checkpoint that references the
    backbone, and prove it reloads bit for bit."""
    import json

    from mimic_redundancy.analysis.metrics import write_csv
    from mimic_redundancy.core.io import read_json, write_json
    from mimic_redundancy.model.features import load_features
    from mimic_redundancy.model.train import backbone_reference, train_model, verify_round_trip

    net, device, rows = _head(settings, features_path, threads, kind="train")
    checks = load_features(check_path, settings["check_digest"], "inference").subset(settings["check_samples"])
    manifest = read_json(manifest_path)
    rows_, summary = train_model(net, rows, settings, device)
    reference = backbone_reference(settings["backbone"], manifest)
    settings = {**settings, "train_features": {"digest": rows.meta["config_digest"],
                                               **json.loads(rows.meta["config_json"])}}
    summary["round_trip"] = verify_round_trip(net, checks, checkpoint_dir, settings, reference, manifest, device)
    write_csv(loss_path, rows_)
    write_json(summary_path, summary)
