"""Hugging Face Hub files: fetched once by `prefetch` (head node), read offline everywhere else.

Every job but prefetch runs with HF_HUB_OFFLINE=1 and the project's cache (`offline_env`, set by
rules/common.smk, so Slurm jobs inherit it too). Offline jobs never call the Hub by repo name:
they resolve the snapshot folder recorded in prefetch's manifest with `local_files_only=True`
and check every file against the manifest, so a missing or half-downloaded repo fails at once
with a message, instead of transformers' silent <unk>-only tokenizer or minutes of retries.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Files each role needs (allow_patterns); a preset's repo spec may override them.
ALLOW_PATTERNS = {
    "tokenizer": ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"],
    # diffusers checks every component model_index.json names, safety_checker included, when loading offline
    "backbone": ["model_index.json", "scheduler/*", "text_encoder/*", "tokenizer/*", "transformer/*", "vae/*",
                 "safety_checker/*"],
    # a LeRobot v1.6 dataset: what mimic-video's LiberoDataset downloads (v2.x, v3.0: lerobot.plan_fetch picks)
    "dataset": ["data/*.parquet", "data/**/*.parquet", "videos/**/*", "meta_data/*"],
}
DATASET_SELECT = ("episodes", "train_episodes", "camera", "state_key", "action_key", "prompt")
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class HubError(RuntimeError):
    """A Hub repo that cannot be fetched, or is not (completely) in the cache."""


def offline_env(cache_dir: str | os.PathLike) -> dict[str, str]:
    home = Path(cache_dir).resolve()
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1",
            **{flag: "1" for flag in OFFLINE_FLAGS}}


def required_repos(preset: dict, inputs: dict | None = None) -> list[dict]:
    """The Hub repos a preset (and a lerobot input) needs, as (role, repo, repo_type, revision,
    allow_patterns) records."""
    repos = []
    if inputs and inputs.get("source") == "lerobot":
        spec = inputs["lerobot"]
        repos.append({"role": "dataset", "repo": spec["repo"], "repo_type": "dataset",
                      "revision": spec.get("revision", "main"),
                      "allow_patterns": spec.get("allow_patterns", ALLOW_PATTERNS["dataset"]),
                      # what prefetch checks in the metadata and fetches the files of (lerobot.plan_fetch)
                      "select": {k: inputs[k] for k in DATASET_SELECT if k in inputs}})
    for role in ("backbone", "tokenizer"):
        spec = preset.get(role)
        if isinstance(spec, dict):
            repos.append({"role": role, "repo": spec["repo"], "repo_type": spec.get("repo_type", "model"),
                          "revision": spec.get("revision", "main"),
                          "allow_patterns": spec.get("allow_patterns", ALLOW_PATTERNS[role])})
    return repos


def go_online() -> None:
    """Lift the pipeline's offline flags for this process (prefetch only); must precede the Hub imports."""
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("go_online() must run before huggingface_hub is imported")
    for flag in OFFLINE_FLAGS:
        os.environ.pop(flag, None)


def _snapshot_files(folder: Path) -> list[dict]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    return [{"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size} for p in files]


def fetch(repos: list[dict], timeout_s: float) -> list[dict]:
    """Download each repo's allowed files at its revision into HF_HUB_CACHE; return manifest entries."""
    from huggingface_hub import HfApi, constants, snapshot_download

    api, entries = HfApi(), []
    for repo in repos:
        name = f"{repo['repo_type']} {repo['repo']}@{repo['revision']}"
        start = time.perf_counter()
        try:
            info = api.repo_info(repo["repo"], repo_type=repo["repo_type"], revision=repo["revision"],
                                 timeout=timeout_s)
        except Exception as error:  # any failure here means: this machine cannot use the Hub for it
            raise HubError(f"cannot resolve {name} on the Hub at {constants.ENDPOINT} "
                           f"(within {timeout_s:g} s): {type(error).__name__}: {error}. Check the repo and "
                           f"revision, and run prefetch on a machine that reaches the Hub (the head node)") from None
        log.info("%s -> commit %s; downloading %s", name, info.sha, repo["allow_patterns"])
        try:
            folder = Path(snapshot_download(repo["repo"], repo_type=repo["repo_type"], revision=info.sha,
                                            allow_patterns=repo["allow_patterns"], etag_timeout=timeout_s,
                                            max_workers=1))
        except Exception as error:
            raise HubError(f"download of {name} (commit {info.sha}) failed: {type(error).__name__}: {error}. "
                           f"Run prefetch again: finished files are kept, unfinished ones are redone") from None
        files = _snapshot_files(folder)
        if not files:
            raise HubError(f"{name}: no file matches allow_patterns {repo['allow_patterns']}")
        total = sum(f["bytes"] for f in files)
        for f in files:
            log.info("  %s (%d bytes)", f["path"], f["bytes"])
        log.info("%s: %d files, %d bytes in %.1f s -> %s", name, len(files), total, time.perf_counter() - start, folder)
        entries.append({**repo, "resolved_revision": info.sha, "files": files, "bytes": total,
                        "snapshot": str(folder), "cache": constants.HF_HUB_CACHE})
    return entries


def local_snapshot(entry: dict) -> Path:
    """The cached snapshot folder of a manifest entry, offline; every manifest file present and whole."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    name = f"{entry['repo_type']} {entry['repo']}@{entry['resolved_revision']}"
    fix = ("run `snakemake --profile profiles/local prefetch` (or the whole workflow) where the Hub is "
           "reachable, with the same hub.cache_dir")
    try:
        folder = Path(snapshot_download(entry["repo"], repo_type=entry["repo_type"],
                                        revision=entry["resolved_revision"], local_files_only=True,
                                        allow_patterns=entry["allow_patterns"]))
    except LocalEntryNotFoundError:
        raise HubError(f"{name} is not in the Hub cache {os.environ.get('HF_HUB_CACHE')}: {fix}") from None
    broken = [f["path"] for f in entry["files"]
              if not (folder / f["path"]).is_file() or (folder / f["path"]).stat().st_size != f["bytes"]]
    if broken:
        raise HubError(f"{name} is incomplete in the Hub cache {folder} (missing or wrong size: {broken}): {fix}")
    return folder


def local_snapshots(manifest: dict) -> dict[str, Path]:
    """Role -> verified snapshot folder for every repo in a prefetch manifest."""
    return {entry["role"]: local_snapshot(entry) for entry in manifest["repos"]}
