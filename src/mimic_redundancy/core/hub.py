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
# NVIDIA's safety checker (cosmos_guardrail 0.3.2): a gated repo (needs HF_TOKEN) and a text classifier
GUARDRAIL_REPOS = [
    {"role": "guardrail", "repo": "nvidia/Cosmos-1.0-Guardrail",
     "allow_patterns": ["blocklist/*", "blocklist/**/*", "face_blur_filter/Resnet50_Final.pth"]},
    {"role": "guardrail-text", "repo": "Qwen/Qwen3Guard-Gen-0.6B",
     "allow_patterns": ["*.json", "*.safetensors", "merges.txt", "vocab.json", "tokenizer*"]},
]
DATASET_SELECT = ("episodes", "train_episodes", "camera", "state_key", "action_key", "prompt")
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class HubError(RuntimeError):
    """A Hub repo that cannot be fetched, or is not (completely) in the cache."""


def offline_env(cache_dir: str | os.PathLike) -> dict[str, str]:
    home = Path(cache_dir).resolve()
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1",
            **{flag: "1" for flag in OFFLINE_FLAGS}}


def required_repos(backbone: dict, inputs: dict | None = None) -> list[dict]:
    """The Hub repos a backbone spec (config.backbone_spec) and a lerobot input need, as (role, repo, repo_type,
    revision, allow_patterns) records. The safety checker's repos are added by prefetch once it has seen the
    backbone's model_index.json (`guardrail_repos`)."""
    repos = []
    if inputs and inputs.get("source") == "lerobot":
        spec = inputs["lerobot"]
        repos.append({"role": "dataset", "repo": spec["repo"], "repo_type": "dataset",
                      "revision": spec.get("revision", "main"),
                      "allow_patterns": spec.get("allow_patterns", ALLOW_PATTERNS["dataset"]),
                      # what prefetch checks in the metadata and fetches the files of (lerobot.plan_fetch)
                      "select": {k: inputs[k] for k in DATASET_SELECT if k in inputs}})
    specs = {"backbone": backbone if backbone.get("kind") == "pretrained" else None,
             "tokenizer": backbone.get("tokenizer")}
    for role, spec in specs.items():
        if isinstance(spec, dict):
            repos.append({"role": role, "repo": spec["repo"], "repo_type": spec.get("repo_type", "model"),
                          "revision": spec.get("revision", "main"),
                          "allow_patterns": spec.get("allow_patterns", ALLOW_PATTERNS[role])})
    return repos


def needs_guardrail(snapshot) -> bool:
    """diffusers' CosmosVideoToWorldPipeline builds NVIDIA's CosmosSafetyChecker (package cosmos_guardrail)
    unless the repo's model_index.json names a safety_checker component of its own."""
    import json

    index = json.loads((Path(snapshot) / "model_index.json").read_text())
    component = index.get("safety_checker")
    return not (isinstance(component, list) and component[0] not in (None, "cosmos_guardrail"))


def guardrail_repos() -> list[dict]:
    """What cosmos_guardrail 0.3.2's CosmosSafetyChecker() loads (it names no revision: it reads refs/main)."""
    return [{**spec, "repo_type": "model", "revision": "main", "write_ref": True} for spec in GUARDRAIL_REPOS]


def go_online() -> None:
    """Lift the pipeline's offline flags for this process (prefetch only); must precede the Hub imports."""
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("go_online() must run before huggingface_hub is imported")
    for flag in OFFLINE_FLAGS:
        os.environ.pop(flag, None)


# Hashing a file above this size when a job starts costs more than it saves; prefetch hashes every file.
HASH_AT_LOAD_BYTES = 16 << 20


def _hub_files(api, repo: dict, commit: str) -> list[dict]:
    """What the Hub says the allowed files of `repo` at `commit` are: path, bytes and, where the Hub gives
    one, the hash (sha256 of an LFS file, else the git blob sha1)."""
    from huggingface_hub.utils import filter_repo_objects

    listing = [f for f in api.list_repo_tree(repo["repo"], repo_type=repo["repo_type"], revision=commit,
                                             recursive=True) if hasattr(f, "blob_id")]  # files, not folders
    files = []
    for f in filter_repo_objects(listing, allow_patterns=repo["allow_patterns"], key=lambda f: f.path):
        entry = {"path": f.path, "bytes": f.size}
        if f.lfs is not None:
            entry["sha256"] = f.lfs.sha256
        elif f.blob_id:
            entry["git_sha1"] = f.blob_id
        files.append(entry)
    return sorted(files, key=lambda f: f["path"])


def _digest(path: Path, entry: dict) -> tuple[str, str] | None:
    """(kind, hex) of the file's content in the kind of hash the Hub gave for it, or None if it gave none."""
    import hashlib

    if "sha256" in entry:
        kind, digest = "sha256", hashlib.sha256()
    elif "git_sha1" in entry:
        kind, digest = "git_sha1", hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    else:
        return None
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return kind, digest.hexdigest()


def _mismatch(folder: Path, entry: dict, hash_limit: int | None = None) -> str | None:
    """Why the cached file does not match the Hub's record of it, or None if it does."""
    path = folder / entry["path"]
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"{size} bytes, the Hub's file has {entry['bytes']}"
    if hash_limit is None or size <= hash_limit:
        got = _digest(path, entry)
        if got and got[1] != entry[got[0]]:
            return f"{got[0]} {got[1][:12]}..., the Hub's file has {entry[got[0]][:12]}..."
    return None


def _forget(folder: Path, rel: str) -> None:
    """Remove a cached file (the snapshot's link and the blob behind it), so the next download fetches it anew."""
    link = folder / rel
    if link.is_symlink():
        link.resolve().unlink(missing_ok=True)
    link.unlink(missing_ok=True)


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
                           f"revision, and run prefetch on a machine that reaches the Hub (the head node)"
                           + (". It is NVIDIA's safety checker, which the backbone's pipeline builds: the repo is "
                              "gated, so accept its licence on the Hub and export HF_TOKEN on the head node"
                              if repo["role"].startswith("guardrail") else "")) from None
        log.info("%s -> commit %s; downloading %s", name, info.sha, repo["allow_patterns"])
        try:
            files = _hub_files(api, repo, info.sha)
            if not files:
                raise HubError(f"{name}: no file matches allow_patterns {repo['allow_patterns']}")
            # a cached file is not fetched again, even when damaged: check every one against the Hub's
            # size and hash, and fetch anew what does not match (once)
            for attempt in (1, 2):
                folder = Path(snapshot_download(repo["repo"], repo_type=repo["repo_type"], revision=info.sha,
                                                allow_patterns=repo["allow_patterns"], etag_timeout=timeout_s,
                                                max_workers=1))
                checked = time.perf_counter()
                bad = {f["path"]: why for f in files if (why := _mismatch(folder, f))}
                log.info("%s: %d cached files checked against the Hub's sizes and hashes in %.1f s", name,
                         len(files), time.perf_counter() - checked)
                if not bad:
                    break
                log.warning("%s: cached files that do not match the Hub (%s)%s", name,
                            "; ".join(f"{p}: {why}" for p, why in bad.items()),
                            ": fetching them again" if attempt == 1 else "")
                for rel in bad:
                    _forget(folder, rel)
            else:
                raise HubError(f"{name} (commit {info.sha}): files do not match the Hub's record after a fresh "
                               f"download: {bad}. The Hub or the network delivers damaged files; run the same command again "
                               "later (no manifest was written, so prefetch reruns)")
        except HubError:
            raise
        except Exception as error:
            raise HubError(f"download of {name} (commit {info.sha}) failed: {type(error).__name__}: {error}. "
                           "Run the same command again (no manifest was written, so prefetch reruns): finished files are "
                           "kept, unfinished ones are redone") from None
        if repo.get("write_ref"):  # its loader asks for the branch by name, offline: point refs/ at the commit
            ref = folder.parent.parent / "refs" / repo["revision"]
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(info.sha)
        total = sum(f["bytes"] for f in files)
        for f in files:
            log.info("  %s (%d bytes)", f["path"], f["bytes"])
        log.info("%s: %d files, %d bytes in %.1f s -> %s", name, len(files), total, time.perf_counter() - start, folder)
        entries.append({**repo, "resolved_revision": info.sha, "files": files, "bytes": total,
                        "snapshot": str(folder), "cache": constants.HF_HUB_CACHE})
    return entries


def local_snapshot(entry: dict, preset: str = "<preset>") -> Path:
    """The cached snapshot folder of a manifest entry, offline; every manifest file present and whole (size;
    small files also their hash)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from mimic_redundancy.core.io import rebuild_command

    name = f"{entry['repo_type']} {entry['repo']}@{entry['resolved_revision']}"
    # the manifest is up to date, so a plain run would not redo prefetch: force it
    fix = (f"fetch it again with `{rebuild_command(f'results/{preset}/prefetch.json')}` where the Hub is "
           "reachable, with the same hub.cache_dir, then rerun")
    try:
        folder = Path(snapshot_download(entry["repo"], repo_type=entry["repo_type"],
                                        revision=entry["resolved_revision"], local_files_only=True,
                                        allow_patterns=entry["allow_patterns"]))
    except LocalEntryNotFoundError:
        raise HubError(f"{name} is not in the Hub cache {os.environ.get('HF_HUB_CACHE')}: {fix}") from None
    broken = {f["path"]: why for f in entry["files"] if (why := _mismatch(folder, f, HASH_AT_LOAD_BYTES))}
    if broken:
        raise HubError(f"{name} is incomplete or damaged in the Hub cache {folder} "
                       f"({'; '.join(f'{p}: {why}' for p, why in broken.items())}): {fix}")
    return folder


def local_snapshots(manifest: dict) -> dict[str, Path]:
    """Role -> verified snapshot folder for every repo in a prefetch manifest."""
    return {entry["role"]: local_snapshot(entry, manifest.get("preset", "<preset>")) for entry in manifest["repos"]}
