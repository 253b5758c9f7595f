"""The loopback Hub (tests/hub_server.py) against the real huggingface_hub, transformers and diffusers clients.

Client code runs in a fresh interpreter per step: huggingface_hub reads HF_ENDPOINT, HF_HUB_CACHE and
HF_HUB_OFFLINE when it is imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hub_server import HubServer, save_t5_tokenizer, save_tiny_cosmos_pipeline

TOKENIZER_REPO = "google-t5/t5-small"
COSMOS_REPO = "test-org/tiny-cosmos"
BARE_COSMOS_REPO = "test-org/tiny-cosmos-bare"  # no safety_checker component: __init__ wants cosmos_guardrail
DATASET_REPO = "test-org/tiny-data"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The served repos: a T5 tokenizer, a tiny Cosmos pipeline, and a small dataset with nested folders."""
    root = tmp_path_factory.mktemp("hub")
    save_t5_tokenizer(root / "models" / TOKENIZER_REPO)
    save_tiny_cosmos_pipeline(root / "models" / COSMOS_REPO)
    save_tiny_cosmos_pipeline(root / "models" / BARE_COSMOS_REPO, stand_in_safety_checker=False)
    data = root / "datasets" / DATASET_REPO
    (data / "train" / "shards").mkdir(parents=True)
    (data / "README.md").write_text("# tiny data\n")
    (data / "train" / "shards" / "0.bin").write_bytes(bytes(range(256)) * 64)
    return root


@pytest.fixture
def server(root):
    with HubServer(root) as server:
        yield server


def client(server: HubServer, cache: Path, code: str, offline: bool = False,
           timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that talks to `server` and caches into `cache`."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("HF_", "HUGGINGFACE_")) and key not in ("TRANSFORMERS_OFFLINE",)}
    env.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(cache), HF_HUB_CACHE=str(cache / "hub"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"client failed:\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-6000:]}"
    return result.stdout


def fetch(url: str, method: str = "GET", **headers) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_http_contract(server, root):
    """The headers and status codes the clients rely on, checked with plain urllib."""
    sha, data = server.commit(TOKENIZER_REPO), (root / "models" / TOKENIZER_REPO / "tokenizer.json").read_bytes()
    base = f"{server.url}/{TOKENIZER_REPO}/resolve"
    status, headers, body = fetch(f"{base}/main/tokenizer.json", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == sha and headers["Content-Length"] == str(len(data))
    assert headers["ETag"] == '"%s"' % hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id
    status, headers, body = fetch(f"{base}/{sha}/tokenizer.json", Range="bytes=10-19")
    assert (status, body, headers["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{len(data)}")
    assert fetch(f"{base}/main/tokenizer.json", Range="bytes=100-")[2] == data[100:]

    status, headers, _ = fetch(f"{base}/main/spiece.model", "HEAD")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
    assert fetch(f"{base}/v2/tokenizer.json")[1]["X-Error-Code"] == "RevisionNotFound"
    assert fetch(f"{server.url}/nobody/nothing/resolve/main/x")[1]["X-Error-Code"] == "RepoNotFound"

    status, _, body = fetch(f"{server.url}/api/models/{COSMOS_REPO}/tree/main?recursive=false")
    top = {(e["type"], e["path"]) for e in json.loads(body)}
    assert status == 200 and ("file", "model_index.json") in top and ("directory", "vae") in top and len(top) == 7
    status, _, body = fetch(f"{server.url}/api/models/{COSMOS_REPO}/tree/main/vae")
    assert sorted(e["path"] for e in json.loads(body)) == ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    status, headers, _ = fetch(f"{server.url}/api/models/{COSMOS_REPO}/tree/main/additional_chat_templates")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    info = json.loads(fetch(f"{server.url}/api/models/{TOKENIZER_REPO}/revision/{sha}")[2])
    assert info == {"id": TOKENIZER_REPO, "sha": sha, "private": False,
                    "siblings": [{"rfilename": "tokenizer.json"}, {"rfilename": "tokenizer_config.json"}]}


def test_t5_tokenizer_download_then_offline_load(server, tmp_path):
    sha = server.commit(TOKENIZER_REPO)
    out = ok(client(server, tmp_path, f"""
        from huggingface_hub import snapshot_download
        print(snapshot_download({TOKENIZER_REPO!r}, revision="main",
                                allow_patterns=["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]))
    """))
    snapshot = Path(out.strip().splitlines()[-1])
    assert snapshot == tmp_path / "hub" / "models--google-t5--t5-small" / "snapshots" / sha
    assert sorted(p.name for p in snapshot.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert (tmp_path / "hub" / "models--google-t5--t5-small" / "refs" / "main").read_text() == sha
    paths = [path for _, path in server.requests]
    assert f"/api/models/{TOKENIZER_REPO}/revision/main" in paths
    assert ("GET", f"/{TOKENIZER_REPO}/resolve/{sha}/tokenizer.json") in server.requests

    seen = len(server.requests)
    out = ok(client(server, tmp_path, f"""
        from transformers import T5TokenizerFast
        tok = T5TokenizerFast.from_pretrained({TOKENIZER_REPO!r})
        ids = tok("peel the orange").input_ids
        print(len(tok), tok.unk_token_id, ids)
    """, offline=True))
    size, unk, ids = out.strip().splitlines()[-1].split(" ", 2)
    ids = [int(i) for i in ids.strip("[]").split(",")]
    assert int(size) > 104 and len(ids) > 3 and int(unk) not in ids
    assert server.requests[seen:] == [], "the offline step called the server"


def test_transformers_from_pretrained_online(server, tmp_path):
    """from_pretrained straight from the server: its probes for optional files get EntryNotFound 404s."""
    out = ok(client(server, tmp_path, f"""
        from transformers import T5TokenizerFast
        tok = T5TokenizerFast.from_pretrained({TOKENIZER_REPO!r})
        print(len(tok), tok.unk_token_id in tok("peel the orange").input_ids)
    """))
    assert out.strip().splitlines()[-1] == "208 False"
    sha = server.commit(TOKENIZER_REPO)
    assert ("HEAD", f"/{TOKENIZER_REPO}/resolve/{sha}/spiece.model") in server.requests  # not in the repo
    # the 404 carried X-Repo-Commit, so the client cached that the file does not exist
    assert (tmp_path / "hub" / "models--google-t5--t5-small" / ".no_exist" / sha / "spiece.model").exists()


def test_cosmos_pipeline_download_then_offline_load(server, tmp_path):
    ok(client(server, tmp_path, f"""
        from huggingface_hub import snapshot_download
        snapshot_download({COSMOS_REPO!r})
    """))
    seen = len(server.requests)
    out = ok(client(server, tmp_path, f"""
        from diffusers import CosmosVideoToWorldPipeline
        pipe = CosmosVideoToWorldPipeline.from_pretrained({COSMOS_REPO!r})  # as CosmosPredictWrapper does
        print(type(pipe.transformer).__name__, pipe.transformer.config.num_layers, type(pipe.vae).__name__,
              type(pipe.text_encoder).__name__, len(pipe.tokenizer), type(pipe.scheduler).__name__)

        from mimic_video.cosmos_predict import CosmosPredictWrapper
        wrapper = CosmosPredictWrapper(model_name={COSMOS_REPO!r}, extract_layers=1)
        print(wrapper.dim_latent, wrapper.vae_latent_channels, tuple(wrapper.latents_mean.shape))
    """, offline=True))
    lines = out.strip().splitlines()
    assert lines[-2] == "CosmosTransformer3DModel 2 AutoencoderKLCosmos T5EncoderModel 208 EDMEulerScheduler"
    assert lines[-1] == "16 16 (1, 16, 1, 1, 1)"
    assert server.requests[seen:] == [], "the offline step called the server"


def test_cosmos_repo_without_safety_checker_needs_one_passed(server, tmp_path):
    """Without a safety_checker component, loading by name alone needs cosmos_guardrail; passing one works."""
    out = ok(client(server, tmp_path, f"""
        import torch
        from diffusers import CosmosVideoToWorldPipeline
        try:
            CosmosVideoToWorldPipeline.from_pretrained({BARE_COSMOS_REPO!r})
        except ImportError as error:
            print("ImportError:", error)
        pipe = CosmosVideoToWorldPipeline.from_pretrained({BARE_COSMOS_REPO!r}, safety_checker=torch.nn.Identity())
        print(type(pipe.transformer).__name__)
    """))
    lines = out.strip().splitlines()
    assert lines[-2].startswith("ImportError: `cosmos_guardrail` is not installed") and lines[-1] == \
        "CosmosTransformer3DModel"
    # diffusers' own download went through the server: repo info, then the files by commit
    sha = server.commit(BARE_COSMOS_REPO)
    assert ("GET", f"/{BARE_COSMOS_REPO}/resolve/{sha}/transformer/diffusion_pytorch_model.safetensors") in \
        server.requests


def test_unknown_repo_and_revision_fail_fast(server, tmp_path):
    start = time.perf_counter()
    result = client(server, tmp_path, f"""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
        try:
            snapshot_download("test-org/no-such-repo")
        except RepositoryNotFoundError as error:
            print("repo:", type(error).__name__)
        try:
            snapshot_download({TOKENIZER_REPO!r}, revision="v9")
        except RevisionNotFoundError as error:
            print("revision:", type(error).__name__)
    """)
    assert ok(result).strip().splitlines()[-2:] == ["repo: RepositoryNotFoundError",
                                                     "revision: RevisionNotFoundError"]
    assert time.perf_counter() - start < 20
    assert ("GET", "/api/models/test-org/no-such-repo/revision/main") in server.requests


def test_dataset_repo_by_commit(server, tmp_path):
    sha = server.commit(DATASET_REPO, repo_type="dataset")
    out = ok(client(server, tmp_path, f"""
        from huggingface_hub import HfApi, snapshot_download
        print(sorted(HfApi().list_repo_files({DATASET_REPO!r}, repo_type="dataset")))
        print(snapshot_download({DATASET_REPO!r}, repo_type="dataset", revision={sha!r}))
    """))
    files, snapshot = out.strip().splitlines()[-2:]
    assert files == "['README.md', 'train/shards/0.bin']"
    assert (Path(snapshot) / "train" / "shards" / "0.bin").read_bytes() == bytes(range(256)) * 64
    # a commit revision skips the repo-info call
    assert not any("/revision/" in path for _, path in server.requests)
    assert ("GET", f"/datasets/{DATASET_REPO}/resolve/{sha}/train/shards/0.bin") in server.requests


def test_interrupted_download_is_not_kept(server, tmp_path):
    server.truncate["vae/diffusion_pytorch_model.safetensors"] = 1000
    result = client(server, tmp_path, f"""
        from huggingface_hub import snapshot_download
        snapshot_download({COSMOS_REPO!r}, allow_patterns=["vae/*"], max_workers=1)
    """)
    assert result.returncode != 0
    assert "RemoteProtocolError" in result.stderr or "peer closed" in result.stderr, result.stderr[-3000:]
    weights = "vae/diffusion_pytorch_model.safetensors"
    gets = [path for method, path in server.requests if method == "GET" and path.endswith(weights)]
    assert len(gets) > 1, "the client never tried to resume"
    snapshot = tmp_path / "hub" / "models--test-org--tiny-cosmos" / "snapshots" / server.commit(COSMOS_REPO)
    assert not (snapshot / weights).exists()
    size, oid = server.files(COSMOS_REPO)[weights]
    blobs = tmp_path / "hub" / "models--test-org--tiny-cosmos" / "blobs"
    assert not (blobs / oid).exists() and not list(blobs.glob("*.incomplete"))

    # the same cache, once the connection holds: the whole file arrives
    server.truncate.clear()
    ok(client(server, tmp_path, f"""
        from huggingface_hub import snapshot_download
        snapshot_download({COSMOS_REPO!r}, allow_patterns=["vae/*"])
    """))
    assert (snapshot / weights).read_bytes() == (server.repo_dir(COSMOS_REPO) / weights).read_bytes()
