"""Head-node prefetch and offline jobs, through the real huggingface_hub/transformers/diffusers code
against the loopback Hub (tests/hub_server.py), in real Snakemake runs."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import time

import pytest

from conftest import SMALL, executed_rules, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow  # real Snakemake runs against the loopback Hub
from hub_server import HubServer, save_t5_tokenizer, save_tiny_cosmos_pipeline

T5 = "google-t5/t5-small"
TINY_COSMOS = "test-org/tiny-cosmos"
# the cosmos preset pointed at the tiny test pipeline (2 transformer blocks); the per-step backbone recompute on
# the first 2 samples (it loads the pipeline as for all)
COSMOS = {"presets": {"cosmos": {"backbone": {"repo": TINY_COSMOS, "revision": "main"}, "extract_layer": 1}},
          "preset": "cosmos", "backbone": {"fixed_video_noise": False, "samples": 2}}


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    save_t5_tokenizer(root / "models" / T5)
    save_tiny_cosmos_pipeline(root / "models" / TINY_COSMOS)
    return root


@pytest.fixture
def hub(hub_root):
    with HubServer(hub_root) as server:
        yield server


def run(workdir, endpoint: str, overrides: dict, *targets: str, timeout: int = 600):
    """Snakemake with HF_ENDPOINT pointing at `endpoint` (the pipeline sets every other HF_* itself)."""
    config = write_config(workdir, {**SMALL, **overrides})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1")
    return snakemake(workdir, *targets, "--configfile", str(config), timeout=timeout, env=env)


def ok(result):
    assert result.returncode == 0, f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def run_fix(workdir, endpoint: str, overrides: dict, log: str):
    """Run the command an error message gives (`snakemake --profile profiles/local ...`), as given: it names the
    run's own --configfile (the test's config file, written again with `overrides`)."""
    [command] = set(re.findall(r"`(snakemake [^`]+)`", log))  # the message and its traceback
    words = shlex.split(command)
    assert words[:3] == ["snakemake", "--profile", "profiles/local"], command
    config = write_config(workdir, {**SMALL, **overrides})
    assert words[words.index("--configfile") + 1] == str(config), command
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_DISABLE_XET="1")
    return snakemake(workdir, *words[3:], env=env)


def hub_requests(server: HubServer) -> list[str]:
    # huggingface_hub also asks a best-effort /api/agent-harnesses; count only repo traffic
    return [path for _, path in server.requests if "agent-harnesses" not in path]


# the backbone analysis builds the model as features does: for the tokenizer alone (tiny-t5), features covers it
@pytest.mark.parametrize("overrides, repo, stages", [({"preset": "tiny-t5"}, T5, ["features", "validate"]),
                                                     (COSMOS, TINY_COSMOS, ["backbone", "features", "validate"])],
                         ids=["tiny-t5", "cosmos"])
def test_prefetch_then_every_job_that_reads_the_cache_runs_offline(workflow, hub, overrides, repo, stages):
    """prefetch online, then the jobs that load Hub files (features, the backbone analysis) and a head-only job
    (validate) offline: no Hub request after prefetch. (The rest of the DAG reads only their outputs.)"""
    preset = overrides["preset"]
    ok(run(workflow, hub.url, overrides, f"results/{preset}/prefetch.json"))
    manifest = json.loads((workflow / f"results/{preset}/prefetch.json").read_text())
    [entry] = manifest["repos"]
    assert entry["repo"] == repo and entry["revision"] == "main"
    assert entry["resolved_revision"] == hub.commit(repo) and len(entry["resolved_revision"]) == 40
    cache = (workflow / "resources/hf/hub").resolve()
    assert entry["snapshot"] == str(cache / f"models--{repo.replace('/', '--')}/snapshots/{entry['resolved_revision']}")
    served = hub.files(repo)
    assert {f["path"]: f["bytes"] for f in entry["files"]} == {p: size for p, (size, _) in served.items()
                                                                if p != ".gitattributes"}
    assert entry["bytes"] == sum(f["bytes"] for f in entry["files"])
    log = (workflow / f"results/{preset}/logs/prefetch.log").read_text()
    assert f"-> commit {entry['resolved_revision']}" in log and "bytes in" in log

    before = len(hub_requests(hub))
    targets = [f"results/{preset}/{name}" for stage, name in [("validate", "validate.json"),
                                                               ("backbone", "backbone.npz")] if stage in stages]
    result = ok(run(workflow, hub.url, overrides, *targets))
    assert executed_rules(result) == stages
    assert len(hub_requests(hub)) == before, "no job may talk to the Hub after prefetch"
    report = json.loads((workflow / f"results/{preset}/validate.json").read_text())
    assert report["passed"] and report["fidelity_max_abs_diff"] <= 1e-5
    assert report["hub_environment"] == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                                         "HF_HOME": str(cache.parent), "HF_HUB_CACHE": str(cache)}
    # the served tokenizer (208 pieces), loaded from the cache: not the 104-token offline fallback
    assert "with 208 tokens" in next(c for c in report["checks"] if c["name"] == "tokenizer")["detail"]
    # unchanged config: nothing reruns, and nothing asks the Hub
    assert executed_rules(ok(run(workflow, hub.url, overrides, *targets))) == []
    assert len(hub_requests(hub)) == before


def test_a_changed_revision_reruns_prefetch_and_everything_downstream(workflow, hub):
    # the part of the DAG up to the first job that reads the cache (what reruns after it follows the same params:
    # tests/test_workflow.py); what reruns is decided at DAG build, so a dry run plans it, then prefetch runs
    target = "results/tiny-t5/features/inference.safetensors"
    ok(run(workflow, hub.url, {"preset": "tiny-t5"}, target))
    pinned = {"preset": "tiny-t5", "presets": {"tiny-t5": {"tokenizer": {"repo": T5, "revision": hub.commit(T5)}}}}
    planned = ok(run(workflow, hub.url, pinned, target, "-n"))
    assert planned_jobs(planned.stdout + planned.stderr) == {"prefetch": 1, "features": 1}
    assert executed_rules(ok(run(workflow, hub.url, pinned, "results/tiny-t5/prefetch.json"))) == ["prefetch"]
    manifest = json.loads((workflow / "results/tiny-t5/prefetch.json").read_text())
    assert manifest["repos"][0]["revision"] == manifest["repos"][0]["resolved_revision"] == hub.commit(T5)
    assert executed_rules(ok(run(workflow, hub.url, pinned, "results/tiny-t5/prefetch.json"))) == []


def test_a_job_whose_repo_is_not_in_the_cache_fails_at_once(workflow, hub):
    ok(run(workflow, hub.url, {"preset": "tiny-t5"}, "results/tiny-t5/prefetch.json"))
    shutil.rmtree(workflow / "resources/hf/hub")
    start = time.monotonic()
    result = run(workflow, hub.url, {"preset": "tiny-t5"}, "results/tiny-t5/validate.json")
    assert result.returncode != 0 and time.monotonic() - start < 60
    log = (workflow / "results/tiny-t5/logs/features.log").read_text()  # the first job that reads the cache
    assert f"model {T5}@{hub.commit(T5)} is not in the Hub cache" in log
    assert "prefetch" in log and "where the Hub is reachable" in log
    assert not (workflow / "results/tiny-t5/features/inference.safetensors").exists()
    assert not (workflow / "results/tiny-t5/validate.json").exists()
    # the advice works: the manifest is up to date, so it must force prefetch (the target, and the run's own
    # --configfile, before --forcerun)
    fix = (f"`snakemake --profile profiles/local results/tiny-t5/prefetch.json --configfile "
           f"{workflow / 'test-config.yaml'} --forcerun prefetch`")
    assert fix in log
    assert executed_rules(ok(run_fix(workflow, hub.url, {"preset": "tiny-t5"}, log))) == ["prefetch"]
    entry = json.loads((workflow / "results/tiny-t5/prefetch.json").read_text())["repos"][0]
    for name in ("tokenizer.json", "tokenizer_config.json"):  # back in the cache, whole (jobs read it: tests above)
        assert (workflow / entry["snapshot"] / name).read_bytes() == (hub.repo_dir(T5) / name).read_bytes()


def test_a_damaged_cached_file_is_detected_not_used_and_a_forced_prefetch_fetches_it_again(workflow, hub):
    ok(run(workflow, hub.url, {"preset": "tiny-t5"}, "results/tiny-t5/prefetch.json"))
    entry = json.loads((workflow / "results/tiny-t5/prefetch.json").read_text())["repos"][0]
    served = hub.files(T5)
    # the manifest records the Hub's size and hash (git blob sha1 of a non-LFS file), not what is on disk
    assert {f["path"]: (f["bytes"], f["git_sha1"]) for f in entry["files"]} == \
        {p: v for p, v in served.items() if p != ".gitattributes"}
    blobs = {name: (workflow / entry["snapshot"] / name).resolve() for name in ("tokenizer.json",
                                                                                  "tokenizer_config.json")}
    blobs["tokenizer.json"].write_bytes(blobs["tokenizer.json"].read_bytes()[:100])  # cut short
    config = bytearray(blobs["tokenizer_config.json"].read_bytes())
    config[-2] ^= 0x20  # same size, other content
    blobs["tokenizer_config.json"].write_bytes(bytes(config))
    result = run(workflow, hub.url, {"preset": "tiny-t5"}, "results/tiny-t5/validate.json")
    assert result.returncode != 0
    log = (workflow / "results/tiny-t5/logs/features.log").read_text()
    assert "is incomplete or damaged in the Hub cache" in log
    assert f"tokenizer.json: 100 bytes, the Hub's file has {served['tokenizer.json'][0]}" in log
    assert "tokenizer_config.json: git_sha1" in log
    # the forced prefetch the message gives checks the cache against the Hub and fetches the damaged files again
    assert executed_rules(ok(run_fix(workflow, hub.url, {"preset": "tiny-t5"}, log))) == ["prefetch"]
    prefetch_log = (workflow / "results/tiny-t5/logs/prefetch.log").read_text()
    assert "cached files that do not match the Hub" in prefetch_log and "fetching them again" in prefetch_log
    for name in blobs:  # whole again (validate then runs, as in the test above)
        assert (workflow / entry["snapshot"] / name).read_bytes() == (hub.repo_dir(T5) / name).read_bytes()


def test_an_interrupted_prefetch_is_redone_never_used(workflow, hub):
    hub.truncate["tokenizer.json"] = 100  # the connection drops after 100 bytes of tokenizer.json
    result = run(workflow, hub.url, {"preset": "tiny-t5"}, "results/tiny-t5/prefetch.json")
    assert result.returncode != 0
    assert "download of model google-t5/t5-small" in (workflow / "results/tiny-t5/logs/prefetch.log").read_text()
    assert not (workflow / "results/tiny-t5/prefetch.json").exists()
    hub.truncate.clear()
    # the next run fetches it whole (that a job then loads it from the cache: the tests above)
    assert executed_rules(ok(run(workflow, hub.url, {"preset": "tiny-t5"}, "results/tiny-t5/prefetch.json"))) == \
        ["prefetch"]
    entry = json.loads((workflow / "results/tiny-t5/prefetch.json").read_text())["repos"][0]
    size = hub.files(T5)["tokenizer.json"][0]
    assert (workflow / entry["snapshot"] / "tokenizer.json").stat().st_size == size


def test_prefetch_fails_fast_when_nothing_listens(workflow):
    with socket.socket() as probe:  # a free loopback port with nothing behind it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    result = run(workflow, f"http://127.0.0.1:{port}", {"preset": "tiny-t5"}, "results/tiny-t5/prefetch.json")
    assert result.returncode != 0 and time.monotonic() - start < 60
    log = (workflow / "results/tiny-t5/logs/prefetch.log").read_text()
    assert f"cannot resolve model {T5}@main on the Hub at http://127.0.0.1:{port}" in log
    assert "run prefetch on a machine that reaches the Hub" in log


def test_prefetch_fails_within_its_timeout_when_the_hub_never_answers(workflow):
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        start = time.monotonic()
        result = run(workflow, f"http://127.0.0.1:{silent.getsockname()[1]}",
                     {"preset": "tiny-t5", "hub": {"timeout_s": 2}}, "results/tiny-t5/prefetch.json")
        elapsed = time.monotonic() - start
    assert result.returncode != 0 and elapsed < 60, elapsed
    log = (workflow / "results/tiny-t5/logs/prefetch.log").read_text()
    assert "within 2 s" in log and "Timeout" in log


def test_features_refuse_a_degenerate_tokenizer_from_the_hub(tmp_path, workflow):
    """A 'google-t5/t5-small' that knows no word (like the offline fallback) is refused before any backbone pass."""
    from transformers import T5TokenizerFast

    root = tmp_path / "bad-hub"
    T5TokenizerFast(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]).save_pretrained(
        root / "models" / T5)
    with HubServer(root) as bad:
        # same word count: identical ids when every word is <unk>
        result = run(workflow, bad.url, {"preset": "tiny-t5", "prompts": ["peel the orange", "pick the apple"]},
                     "results/tiny-t5/validate.json")
    assert result.returncode != 0
    log = (workflow / "results/tiny-t5/logs/features.log").read_text()
    assert "backbone check failed: tokenizer" in log and "identical token ids" in log
    assert "map to the unknown token" in log and "backbone row" not in log  # before any backbone pass
    assert not (workflow / "results/tiny-t5/features/inference.safetensors").exists()
    assert not (workflow / "results/tiny-t5/validate.json").exists()



def test_cached_files_are_checked_against_the_hubs_sha256_of_lfs_files(tmp_path):
    """The loopback Hub lists no LFS files; the Hub gives an LFS file's sha256, which prefetch checks the same way."""
    import hashlib

    from mimic_redundancy.core.hub import _mismatch

    data = b"weights" * 1000
    (tmp_path / "model.safetensors").write_bytes(data)
    entry = {"path": "model.safetensors", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert _mismatch(tmp_path, entry) is None
    assert _mismatch(tmp_path, {**entry, "sha256": "0" * 64}).startswith("sha256 ")
    assert _mismatch(tmp_path, {**entry, "sha256": "0" * 64}, hash_limit=100) is None  # jobs hash small files only
    assert _mismatch(tmp_path, {**entry, "bytes": 5}) == f"{len(data)} bytes, the Hub's file has 5"
    assert _mismatch(tmp_path, {**entry, "path": "gone.bin"}) == "missing"

# the cosmos preset in bf16, trained on its cached features: a second preset reads the trained checkpoint
# (a narrow head, so that 60 steps show a clearly falling loss)
TRAINED_COSMOS = {"presets": {"cosmos": {**COSMOS["presets"]["cosmos"], "dtype": "bfloat16", "dim": 64, "depth": 1},
                              "cosmos-trained": {"checkpoint": "results/cosmos/train/checkpoint"}},
                  "preset": "cosmos", "compare": ["cosmos-trained"], "features": {"draws": 2},
                  "train": {"steps": 60, "batch_size": 8, "lr": 1.0e-3, "synthetic_samples": 16, "check_samples": 2}}


def test_a_pretrained_backbone_in_bf16_trains_from_its_features_end_to_end(workflow, hub):
    """prefetch -> features (the only backbone pass of the study, bf16) -> train (head only) -> the trained
    preset's probe; no Hub request after prefetch; then the backbone's files leave the cache and validate, probe
    and train still run, bit for bit (every head stage, sweep included, with the backbone made to raise:
    tests/test_workflow.py::test_head_stages_never_build_the_backbone...)."""
    import numpy as np

    from mimic_redundancy.analysis.metrics import read_csv
    from mimic_redundancy.core.io import load_probe

    ok(run(workflow, hub.url, TRAINED_COSMOS, "results/cosmos/prefetch.json"))
    before = len(hub_requests(hub))
    # the head stages of both presets (the whole DAG of a Hub preset: test_prefetch_then_every_job...; of a trained
    # preset: tests/test_real_inputs.py)
    targets = [f"results/{p}/{f}" for p in ("cosmos", "cosmos-trained") for f in ("validate.json", "probe.npz")]
    result = ok(run(workflow, hub.url, TRAINED_COSMOS, *targets, "results/cosmos/train/seed-0/summary.json"))
    assert len(hub_requests(hub)) == before, "no job may talk to the Hub after prefetch"
    # the trained preset reuses cosmos's manifest and features: one backbone pass for both
    assert executed_rules(result) == ["features", "probe", "probe", "train", "validate", "validate"]
    commit = hub.commit(TINY_COSMOS)
    folder = workflow / "results/cosmos/train/seed-0/checkpoint"
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "mimic-redundancy/checkpoint-v2"
    assert config["video_backbone"] == {"kind": "pretrained", "repo": TINY_COSMOS, "revision": commit,
                                        "extract_layer": 1, "dtype": "bfloat16"}
    assert {(i["role"], i["repo"], i["commit"]) for i in config["provenance"]["hub_inputs"]} == {
        ("backbone", TINY_COSMOS, commit)}
    summary = json.loads((workflow / "results/cosmos/train/seed-0/summary.json").read_text())
    assert summary["round_trip"]["identical"] and summary["draws"] == 2 and summary["windows"] == 16
    head_bytes = 4 * summary["trained_parameters"]
    assert head_bytes < (folder / "model.safetensors").stat().st_size < head_bytes + 64 * 1024  # the head alone
    assert len(read_csv(workflow / "results/cosmos/train/seed-0/loss.csv")["loss"]) == 60
    # the loss falls: on fixed rows with fixed flow times and noise (the per-step losses are heavy-tailed)
    assert summary["fixed_loss_after"] < 0.5 * summary["fixed_loss_before"], summary
    report = json.loads((workflow / "results/cosmos/validate.json").read_text())
    assert report["dtypes"] == {"transformer": "bfloat16", "vae": "bfloat16", "text_encoder": "bfloat16",
                                "action_head": "float32"}
    trained_report = json.loads((workflow / "results/cosmos-trained/validate.json").read_text())
    assert trained_report["passed"] and trained_report["backbone"]["repo"] == TINY_COSMOS

    # the backbone can no longer be built: the head stages do not need it (the pretrained preset's; the trained
    # preset's head stages are the same code on another checkpoint)
    shutil.rmtree(workflow / f"resources/hf/hub/models--{TINY_COSMOS.replace('/', '--')}")
    old = load_probe(workflow / "results/cosmos/probe.npz")
    again = ok(run(workflow, hub.url, TRAINED_COSMOS, "results/cosmos/probe.npz", "results/cosmos/train/seed-0/summary.json",
                   "--forcerun", "validate", "probe", "train"))
    assert executed_rules(again) == ["probe", "train", "validate"]
    assert len(hub_requests(hub)) == before
    np.testing.assert_array_equal(load_probe(workflow / "results/cosmos/probe.npz")["trajectory"], old["trajectory"])
    refused = run(workflow, hub.url, TRAINED_COSMOS, "results/cosmos/features/inference.safetensors",
                  "--forcerun", "features")
    assert refused.returncode != 0
    assert "is not in the Hub cache" in (workflow / "results/cosmos/logs/features.log").read_text()


def test_a_head_only_checkpoint_whose_backbone_commit_is_not_on_the_hub_fails_in_prefetch(workflow, hub):
    folder = workflow / "checkpoints/my-model"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"")
    missing = "0123456789abcdef" * 2 + "01234567"
    (folder / "config.json").write_text(json.dumps({
        "format": "mimic-redundancy/checkpoint-v2", "mimic_video": {"dim": 64, "depth": 1},
        "video_backbone": {"kind": "pretrained", "repo": TINY_COSMOS, "revision": missing, "extract_layer": 1,
                           "dtype": "float32"}}))
    result = run(workflow, hub.url, {"preset": "checkpoint"}, "results/checkpoint/prefetch.json")
    assert result.returncode != 0
    log = (workflow / "results/checkpoint/logs/prefetch.log").read_text()
    assert f"cannot resolve model {TINY_COSMOS}@{missing}" in log


def test_a_pipeline_that_needs_nvidias_safety_checker(tmp_path, workflow):
    """A repo without a safety_checker of its own: prefetch also fetches the guardrail's repos (refs/main for
    its loader); without cosmos_guardrail installed, the first model job fails at once, saying what to do."""
    root = tmp_path / "guarded-hub"
    save_tiny_cosmos_pipeline(root / "models" / TINY_COSMOS, stand_in_safety_checker=False)
    guarded = {**COSMOS, "preset": "cosmos"}
    with HubServer(root) as server:  # the gated guardrail repo is not served: prefetch says how to get it
        result = run(workflow, server.url, guarded, "results/cosmos/prefetch.json")
        assert result.returncode != 0
        log = (workflow / "results/cosmos/logs/prefetch.log").read_text()
        assert "cannot resolve model nvidia/Cosmos-1.0-Guardrail@main" in log and "export HF_TOKEN" in log
        for repo, files in {"nvidia/Cosmos-1.0-Guardrail": ["blocklist/custom/words.txt",
                                                            "face_blur_filter/Resnet50_Final.pth"],
                            "Qwen/Qwen3Guard-Gen-0.6B": ["config.json", "model.safetensors"]}.items():
            for name in files:
                (root / "models" / repo / name).parent.mkdir(parents=True, exist_ok=True)
                (root / "models" / repo / name).write_text("{}")
        ok(run(workflow, server.url, guarded, "results/cosmos/prefetch.json"))
        manifest = json.loads((workflow / "results/cosmos/prefetch.json").read_text())
        assert [e["role"] for e in manifest["repos"]] == ["backbone", "guardrail", "guardrail-text"]
        ref = workflow / "resources/hf/hub/models--nvidia--Cosmos-1.0-Guardrail/refs/main"
        assert ref.read_text() == server.commit("nvidia/Cosmos-1.0-Guardrail")
        start = time.monotonic()
        result = run(workflow, server.url, guarded, "results/cosmos/validate.json")
    assert result.returncode != 0 and time.monotonic() - start < 120
    log = (workflow / "results/cosmos/logs/features.log").read_text()
    assert "needs the package cosmos_guardrail" in log and "pip install -e '.[cosmos]'" in log
    assert "HF_TOKEN" in log and "backbone row" not in log
    assert not (workflow / "results/cosmos/features/inference.safetensors").exists()
