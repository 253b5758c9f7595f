"""A loopback imitation of the Hugging Face Hub, for tests that run the real Hub clients offline.

`HubServer(root)` serves the folders under `root` as Hub repos: `root/models/<org>/<name>/...` is the model repo
`<org>/<name>`, `root/datasets/<org>/<name>/...` the dataset repo of that id (and `root/spaces/...`). Point the real
`huggingface_hub` at it with `HF_ENDPOINT=<server.url>` and `HF_HUB_DISABLE_XET=1`; both are read when
`huggingface_hub` is imported, so set them in the environment of a fresh process. Routes served (all that
`snapshot_download`, `hf_hub_download`, `HfApi.list_repo_files/list_repo_tree/model_info` and the
`from_pretrained` of transformers and diffusers ask for):

    GET       /api/{models|datasets|spaces}/{repo}[/revision/{rev}]        repo info: id, sha, siblings
    GET       /api/{models|datasets|spaces}/{repo}/tree/{rev}[/{path}]     file listing (?recursive=true|false)
    HEAD/GET  /[datasets/|spaces/]{repo}/resolve/{rev}/{path}              a file (X-Repo-Commit, ETag, Range)

Each repo has one branch, `main`, whose commit is a sha1 of the repo's files (`commit()`); `main` and that sha are
the only revisions. Errors carry the Hub's `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`),
which the client turns into its typed errors. Repo ids are always `<org>/<name>`.

Fault injection: `server.truncate[path_in_repo] = n` makes the server never deliver bytes of that file (in any repo)
past offset `n`: a GET announces the full length (Content-Length), sends what lies before `n`, then closes the
connection, so the client sees an interrupted body. Its resumes (Range requests, which the server honours) get no
further, so huggingface_hub gives up after its 5 retries (1 s apart) with httpx's RemoteProtocolError.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

URL_PREFIXES = {"datasets": "dataset", "spaces": "space"}  # resolve urls of models have no prefix
SKIPPED_PARTS = {".git", ".cache"}


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content, which the Hub reports as a file's `oid` and `ETag`."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """Serves `root/<repo_type>s/<org>/<name>/` over HTTP on 127.0.0.1 (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = ""  # http://127.0.0.1:<port>, set by start()
        self.requests: list[tuple[str, str]] = []  # (method, raw path with query) of each request, in order
        self.truncate: dict[str, int] = {}  # path in repo -> bytes of it that a GET may ever deliver
        self._lock = threading.Lock()
        self._oids: dict[tuple, str] = {}  # (file, size, mtime_ns) -> git blob sha1
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "HubServer":
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "HubServer":
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- repo contents -----------------------------------------------------------------------------------------
    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, tuple[int, str]]:
        """{path in repo: (size, git blob sha1)} of every file in the repo, sorted by path."""
        base = self.repo_dir(repo_id, repo_type)
        out = {}
        for file in sorted(p for p in base.rglob("*") if p.is_file()):
            rel = file.relative_to(base)
            if SKIPPED_PARTS.isdisjoint(rel.parts):
                stat = file.stat()
                key = (file, stat.st_size, stat.st_mtime_ns)
                with self._lock:
                    if key not in self._oids:
                        self._oids[key] = git_blob_sha1(file.read_bytes())
                    out[rel.as_posix()] = (stat.st_size, self._oids[key])
        return out

    def commit(self, repo_id: str, repo_type: str = "model") -> str:
        """The 40-hex commit the server reports for the repo's `main` branch: a sha1 of its paths and contents."""
        return _commit_of(self.files(repo_id, repo_type))


def _commit_of(files: dict[str, tuple[int, str]]) -> str:
    return hashlib.sha1(json.dumps(files).encode()).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    # -- routing -----------------------------------------------------------------------------------------------
    def _serve(self, body: bool) -> None:
        with self.hub._lock:
            self.hub.requests.append((self.command, self.path))
        url = urlsplit(self.path)
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        if segs[:1] == ["api"] and len(segs) >= 4 and segs[1] in ("models", "datasets", "spaces"):
            repo_type, repo_id, rest = segs[1][:-1], "/".join(segs[2:4]), segs[4:]
            if not rest or (rest[0] == "revision" and len(rest) == 2):
                return self._info(repo_type, repo_id, rest[1] if rest else "main", body)
            if rest[0] == "tree" and len(rest) >= 2:
                recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                return self._tree(repo_type, repo_id, rest[1], "/".join(p for p in rest[2:] if p), recursive, body)
        else:
            repo_type = URL_PREFIXES.get(segs[0], "model") if segs else "model"
            segs = segs[1:] if segs and segs[0] in URL_PREFIXES else segs
            if len(segs) >= 5 and segs[2] == "resolve":
                return self._file(repo_type, "/".join(segs[:2]), segs[3], "/".join(segs[4:]), body)
        self._error(404, None, f"no such route: {url.path}", body)

    def _resolve(self, repo_type: str, repo_id: str, rev: str, body: bool) -> tuple[dict, str] | None:
        """(files, commit) of the repo at `rev`, or None after sending the Hub's 404."""
        if {".", ".."} & set(repo_id.split("/")) or not self.hub.repo_dir(repo_id, repo_type).is_dir():
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found", body)
        files = self.hub.files(repo_id, repo_type)
        sha = _commit_of(files)
        if rev not in ("main", sha):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", body)
        return files, sha

    def _info(self, repo_type: str, repo_id: str, rev: str, body: bool) -> None:
        if resolved := self._resolve(repo_type, repo_id, rev, body):
            files, sha = resolved
            self._json({"id": repo_id, "sha": sha, "private": False,
                        "siblings": [{"rfilename": path} for path in files]}, sha, body)

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str, recursive: bool, body: bool) -> None:
        if not (resolved := self._resolve(repo_type, repo_id, rev, body)):
            return
        files, sha = resolved
        prefix = f"{path}/" if path else ""
        entries: dict[str, dict] = {}
        for file, (size, oid) in files.items():
            if not file.startswith(prefix):
                continue
            rel = file[len(prefix):].split("/")
            for depth in range(1, len(rel)) if recursive else range(1, min(len(rel), 2)):  # folders on the way
                folder = prefix + "/".join(rel[:depth])
                entries.setdefault(folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(),
                                            "size": 0, "path": folder})
            if recursive or len(rel) == 1:
                entries[file] = {"type": "file", "oid": oid, "size": size, "path": file}
        if path and not entries:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", body, sha)
        self._json(list(entries.values()), sha, body)

    def _file(self, repo_type: str, repo_id: str, rev: str, path: str, body: bool) -> None:
        if not (resolved := self._resolve(repo_type, repo_id, rev, body)):
            return
        files, sha = resolved
        if path not in files:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {rev}", body, sha)
        size, oid = files[path]
        start, end = 0, size - 1
        status, match = 200, re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start, end = int(match[1]), min(int(match[2] or size - 1), size - 1)
            if start >= size:
                return self._error(416, None, f"range {match[0]} outside {size} bytes", body, sha)
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", sha)
        self.send_header("ETag", f'"{oid}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        data = (self.hub.repo_dir(repo_id, repo_type) / path).read_bytes()[start:end + 1]
        limit = self.hub.truncate.get(path)
        if limit is not None and start + len(data) > limit:
            self.wfile.write(data[:max(limit - start, 0)])  # announced more: the client sees an interrupted body
            self.close_connection = True
            return
        self.wfile.write(data)

    # -- responses ---------------------------------------------------------------------------------------------
    def _json(self, payload, sha: str, body: bool) -> None:
        self._send(200, json.dumps(payload).encode(), {"X-Repo-Commit": sha}, body)

    def _error(self, status: int, code: str | None, message: str, body: bool, sha: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, "X-Repo-Commit": sha}
        self._send(status, json.dumps({"error": message}).encode(), headers, body)

    def _send(self, status: int, data: bytes, headers: dict, body: bool) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if value:
                self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


# -- repos to serve (heavy imports stay inside the functions) ----------------------------------------------------
def t5_tokenizer():
    """A real T5TokenizerFast (Unigram) over letters and word starts: 108 pieces + T5's 100 sentinels."""
    import string

    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in string.ascii_letters] + [("\u2581" + c, -2.5) for c in string.ascii_letters]
    return T5TokenizerFast(vocab=vocab)


def save_t5_tokenizer(dest: Path) -> Path:
    """Write `t5_tokenizer()` with save_pretrained (tokenizer.json, tokenizer_config.json) into `dest`."""
    t5_tokenizer().save_pretrained(str(dest))
    return Path(dest)


def save_tiny_cosmos_pipeline(dest: Path, stand_in_safety_checker: bool = True, seed: int = 0) -> Path:
    """Save a tiny diffusers CosmosVideoToWorldPipeline (mimic-video's TINY_* configs, 2 layers) into `dest`.

    CosmosVideoToWorldPipeline.__init__ replaces a None safety_checker with cosmos_guardrail's CosmosSafetyChecker,
    and raises ImportError when cosmos_guardrail is not installed (as here) - also inside from_pretrained. So with
    `stand_in_safety_checker` the repo carries a 1-weight diffusers module (CLIPImageProjection(hidden_size=1)) as its
    `safety_checker/` component, and a plain `CosmosVideoToWorldPipeline.from_pretrained(repo)` (what mimic-video's
    CosmosPredictWrapper._init_pretrained calls) works; it checks nothing, so the pipeline's own __call__ would fail,
    but mimic-video only takes vae, transformer, text_encoder and tokenizer from it. Without it, model_index.json
    has no safety_checker entry (so __init__ builds cosmos_guardrail's), and the repo loads only with cosmos_guardrail
    installed or with `from_pretrained(repo, safety_checker=<any module>)`, e.g. `torch.nn.Identity()`.
    """
    import torch
    from diffusers import CLIPImageProjection, CosmosVideoToWorldPipeline, EDMEulerScheduler
    from diffusers.models.autoencoders.autoencoder_kl_cosmos import AutoencoderKLCosmos
    from diffusers.models.transformers.transformer_cosmos import CosmosTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    components = dict(
        transformer=CosmosTransformer3DModel(
            num_layers=2, in_channels=16, out_channels=16, num_attention_heads=1, attention_head_dim=16,
            mlp_ratio=1.0, text_embed_dim=32, adaln_lora_dim=32, patch_size=(1, 2, 2), max_size=(4, 16, 16),
            extra_pos_embed_type=None, concat_padding_mask=False),
        vae=AutoencoderKLCosmos(
            in_channels=3, out_channels=3, latent_channels=16, encoder_block_out_channels=(8, 16),
            decode_block_out_channels=(8, 16), temporal_compression_ratio=4, spatial_compression_ratio=4,
            num_layers=1, attention_resolutions=(), resolution=64),
        text_encoder=T5EncoderModel(T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                             num_heads=1)),
        tokenizer=t5_tokenizer(),
        # the EDM settings diffusers' Cosmos 1.0 pipelines are used with (the pipeline's type hint)
        scheduler=EDMEulerScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, sigma_schedule="karras",
                                    num_train_timesteps=1000, prediction_type="epsilon", rho=7.0,
                                    final_sigmas_type="sigma_min"),
    )
    pipeline = CosmosVideoToWorldPipeline(**components, safety_checker=CLIPImageProjection(hidden_size=1))
    pipeline.save_pretrained(str(dest))
    if not stand_in_safety_checker:
        index = Path(dest) / "model_index.json"
        config = json.loads(index.read_text())
        del config["safety_checker"]
        index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(Path(dest) / "safety_checker")
    return Path(dest)
