"""A damaged file a stage reads is named, with what is wrong and the command that rebuilds it; the README's and
the troubleshooting guide's commands run as written."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, copy_run, executed_rules, planned_jobs, planned_rules, run_ok, snakemake
from mimic_redundancy.analysis.metrics import read_csv, write_csv
from mimic_redundancy.core.io import PROBE_ARRAYS, InputFileError, load_npz, load_probe, read_json, rebuild_command
from mimic_redundancy.pipeline import config as cfg


def test_the_rebuild_command_puts_the_target_before_forcerun():
    assert rebuild_command("results/tiny/probe.npz") == \
        "snakemake --profile profiles/local results/tiny/probe.npz --forcerun probe"
    assert rebuild_command("/abs/work/results/tiny-t5/train/seed-0/summary.json").endswith(
        "results/tiny-t5/train/seed-0/summary.json --forcerun train")
    assert rebuild_command("elsewhere/file.csv") == "snakemake --profile profiles/local --force elsewhere/file.csv"


def damaged(kind: str, path):
    """Write a damaged file of `kind` at `path`."""
    if kind == "truncated npz":
        with open(path, "wb") as f:
            np.savez(f, trajectory=np.zeros((3, 2, 4, 5), np.float32))
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "npz of another kind":
        with open(path, "wb") as f:
            np.savez(f, steps=np.arange(3))
    elif kind == "missing npz":
        pass
    elif kind in ("truncated json", "truncated manifest"):
        path.write_text('{"steps": 10, "conv')
    elif kind == "json list":
        path.write_text("[1, 2]")
    elif kind == "truncated csv":
        write_csv(path, [{"step": s, "mse_vs_final": 0.5} for s in range(1, 5)])
        path.write_text(path.read_text()[:-3])  # "4,0.5" -> "4,0", a number still
    elif kind == "csv row cut short":
        path.write_text("step,mse_vs_final\n1,0.5\n2\n")
    elif kind == "empty csv":
        path.write_text("")
    elif kind == "csv with text":
        path.write_text("step,mse_vs_final\n1,abc\n")


CASES = {  # kind: (file name under results/tiny/, reader, what the message must say)
    "truncated npz": ("probe.npz", lambda p: load_probe(p), "not a readable NPZ (BadZipFile"),
    "npz of another kind": ("probe.npz", lambda p: load_probe(p), "missing arrays"),
    "missing npz": ("sweep.npz", lambda p: load_npz(p, PROBE_ARRAYS), "no such file"),
    "truncated json": ("convergence.json", read_json, "not valid JSON"),
    "json list": ("backbone.json", read_json, "holds a JSON list"),
    "truncated manifest": ("prefetch.json", read_json, "not valid JSON"),
    "truncated csv": ("metrics.csv", read_csv, "the file was cut short"),
    "csv row cut short": ("metrics.csv", read_csv, "line 3 does not have the header's 2 cells"),
    "empty csv": ("sweep.csv", read_csv, "the file is empty"),
    "csv with text": ("metrics.csv", read_csv, "a cell is not a number"),
}
RULES = {"prefetch.json": "prefetch", "probe.npz": "probe", "sweep.npz": "sweep", "convergence.json": "metrics", "backbone.json": "backbone_metrics",
         "metrics.csv": "metrics", "sweep.csv": "sweep_metrics"}


@pytest.mark.parametrize("kind", CASES)
def test_a_damaged_file_is_named_with_the_fix(tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)  # stages see paths relative to the workflow folder, as Snakemake gives them
    name, reader, problem = CASES[kind]
    path = tmp_path / "results" / "tiny" / name
    path.parent.mkdir(parents=True)
    damaged(kind, path)
    with pytest.raises(InputFileError) as error:
        reader(f"results/tiny/{name}")
    message = str(error.value)
    assert message.startswith(f"results/tiny/{name}: ") and problem in message, message
    assert message.endswith(f"Rebuild it: snakemake --profile profiles/local results/tiny/{name} "
                            f"--forcerun {RULES[name]}"), message
    json.dumps(message)  # one line of plain text


# -- through real Snakemake runs: one small run shared by the tests below --------------------------------------
# the README and the reference pages that hold local-profile commands (docs/cluster.md needs a cluster and a study)
DOCS = [REPO / "README.md", *(REPO / "docs" / name for name in ["troubleshooting.md", "pipeline.md", "hub.md", "inputs.md",
                                                           "training.md", "metrics.md", "slurm.md", "performance.md"])]


@pytest.fixture(scope="module")
def docs_run(small_run, tmp_path_factory):
    """A copy of the session's shared run (conftest.small_run: SMALL in config.yaml itself, so the docs' commands
    run as written)."""
    return copy_run(small_run[0], tmp_path_factory.mktemp("docs") / "wf")


def doc_commands(text: str) -> list[str]:
    """Every snakemake command in a markdown text (code block lines and inline code), and `make run [SMK=...]`."""
    found, in_block = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_block = not in_block
            continue
        for candidate in [line] if in_block else re.findall(r"`([^`]+)`", line):
            try:
                words = shlex.split(candidate, comments=True)
            except ValueError:
                continue
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value prefixes
                words = words[1:]
            if words[:1] in (["snakemake"], [".venv/bin/snakemake"]) or words[:2] == ["make", "run"]:
                found.append(" ".join(shlex.quote(w) for w in shlex.split(candidate, comments=True)))
    return found


def as_argv(command: str) -> tuple[dict, list[str]]:
    """(environment additions, argv) of a documented command; `make run SMK=...` is the snakemake it runs."""
    words, env = shlex.split(command), {}
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    if words[:2] == ["make", "run"]:
        smk = [w.split("=", 1)[1] for w in words[2:] if w.startswith("SMK=")]
        words = ["snakemake", "--profile", "profiles/local", *(shlex.split(smk[0]) if smk else [])]
    return env, [str(SNAKEMAKE), *words[1:]]


# commands the docs mention that this test does not run, and where they are run instead
NOT_RUN_HERE = {"snakemake --report": "tests/test_workflow.py builds the report of a complete run",
                "snakemake --lint": "tests/test_workflow.py::test_lint_reports_nothing"}


@pytest.mark.slow
def test_every_documented_command_runs(docs_run):
    """Each snakemake command of the README and the troubleshooting guide, run as written: as a dry run (-n), except
    --unlock; a named target plans no 'all', and `<target> --forcerun <rule>` plans exactly that rule. (The fix
    commands are also run for real: probe.npz below, prefetch.json in tests/test_hub.py.)"""
    commands = [c for doc in DOCS for c in doc_commands(doc.read_text())]
    assert set(NOT_RUN_HERE) <= set(commands), "a skipped command is no longer in the docs: drop it from the list"
    commands = [c for c in commands if c not in NOT_RUN_HERE]
    assert ".venv/bin/snakemake --profile profiles/local results/tiny/probe.npz --forcerun probe" in commands
    assert len(commands) >= 12, commands
    # what the documented commands point at: a folder of the user's own
    for path in cfg.checkpoint_files(yaml.safe_load((docs_run / "config.yaml").read_text()), "checkpoint"):
        (docs_run / path).parent.mkdir(parents=True, exist_ok=True)
        (docs_run / path).touch()
    (docs_run / "my.yaml").write_text("seeds: [0, 1]\n")
    failures = []
    runs = {}  # one run per distinct command line (`make run`, `.venv/bin/snakemake` and `snakemake` alike)
    for command in commands:
        env, argv = as_argv(command.replace("<preset>", "tiny"))
        runs.setdefault((tuple(sorted(env.items())), tuple(argv)), command)

    def dry_run(key):
        env, argv = dict(key[0]), list(key[1])
        if "--unlock" not in argv:
            argv.append("-n")
        return argv, subprocess.run(argv, cwd=docs_run, capture_output=True, text=True, timeout=300,
                                    env={**os.environ, **env})

    # two at a time (a dry run takes no lock and changes no file); --unlock runs alone, after them
    unlock = [key for key in runs if "--unlock" in key[1]]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(dry_run, [key for key in runs if key not in unlock]))
    results += [dry_run(key) for key in unlock]
    for (argv, result), command in zip(results, [runs[key] for key in runs if key not in unlock] +
                                       [runs[key] for key in unlock]):
        output = result.stdout + result.stderr
        planned = planned_jobs(output)
        targets = [w for w in argv[1:] if w.startswith("results/")]
        forced = argv[argv.index("--forcerun") + 1:] if "--forcerun" in argv else []
        forced = forced[:next((i for i, w in enumerate(forced) if w.startswith("-")), len(forced))]
        if result.returncode != 0:
            failures.append(f"{command}: exit {result.returncode}\n{output[-1500:]}")
        elif targets and "all" in planned:
            failures.append(f"{command}: plans the whole workflow ({planned}), not {targets}")
        elif forced and set(planned) != set(forced):
            failures.append(f"{command}: plans {planned}, not only {forced}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_a_truncated_probe_npz_is_named_and_the_command_given_rebuilds_it(docs_run):
    probe = docs_run / "results/tiny/probe.npz"
    probe.write_bytes(probe.read_bytes()[:1000])
    result = snakemake(docs_run, "results/tiny/metrics.csv", "--forcerun", "metrics")
    assert result.returncode != 0
    log = (docs_run / "results/tiny/logs/metrics.log").read_text()
    fix = "snakemake --profile profiles/local results/tiny/probe.npz --forcerun probe"
    assert "InputFileError: results/tiny/probe.npz: not a readable NPZ (BadZipFile" in log, log[-2000:]
    assert f"Rebuild it: {fix}" in log
    assert fix.replace("tiny", "<preset>", 1) in (REPO / "docs/troubleshooting.md").read_text()
    assert not (docs_run / "results/tiny/metrics.csv").exists(), "no stale table beside a failed metrics job"
    # the command, as given: only the probe runs, and then the tables rebuild from it
    assert executed_rules(run_ok(docs_run, *shlex.split(fix)[3:])) == ["probe"]
    assert executed_rules(run_ok(docs_run, "results/tiny/metrics.csv")) == ["metrics"]


@pytest.mark.slow
@pytest.mark.parametrize("name, reader, reader_target, problem", [
    ("metrics.csv", "plot", "results/tiny/figures/convergence.png", "the last line has no line end"),
    ("prefetch.json", "features", "results/tiny/features/inference.safetensors", "not valid JSON"),  # the backbone's
], ids=["csv", "manifest"])
def test_a_damaged_table_or_manifest_is_named_and_the_command_given_rebuilds_it(docs_run, name, reader,
                                                                                reader_target, problem):
    path = docs_run / "results/tiny" / name
    path.write_text(path.read_text()[:-3])
    result = snakemake(docs_run, reader_target, "--forcerun", reader)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    fix = rebuild_command(f"results/tiny/{name}")
    assert f"results/tiny/{name}: {problem}" in output and f"Rebuild it: {fix}" in output, output[-3000:]
    assert not (docs_run / reader_target).exists()
    rule = fix.split()[-1]
    assert executed_rules(run_ok(docs_run, *shlex.split(fix)[3:])) == [rule]


# -- features files: checked by content (sha256 of every tensor) and by the rows the config says they hold ----------
def _resave(path, change):
    """Rewrite a real features file through save_features (so its checksums fit the new content), `change` applied
    to its rows: what a writer with a bug would leave."""
    from mimic_redundancy.model.features import load_features, save_features

    rows = load_features(path)
    rows = change(rows) or rows
    meta = rows.meta
    kept = {k: v for k, v in meta.items() if k not in ("format", "kind", "config_json", "config_digest", "source",
                                                      "prompts_json", "sha256_json", "seconds_json")}
    save_features(path, rows, meta["kind"], json.loads(meta["config_json"]), kept)


def _flip_bytes(path, tensor="hiddens.0"):
    from mimic_redundancy.core.shards import _header

    header, start = _header(path)
    first = start + header[tensor]["data_offsets"][0]
    data = bytearray(path.read_bytes())
    data[first + 5:first + 9] = bytes(b ^ 0x5A for b in data[first + 5:first + 9])
    path.write_bytes(bytes(data))


def _drop_tensor(path, name):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys() if k != name}, f.metadata()
    save_file(tensors, str(path), metadata=meta)


def _half(rows):
    rows.hiddens = [h.half() for h in rows.hiddens]


def _seed_short(rows):
    rows.seeds.pop()


def _swap_prompts(rows):
    rows.prompts[0], rows.prompts[1] = rows.prompts[1], rows.prompts[0]


def _times_reversed(rows):
    rows.video_time = rows.video_time.flip(0)


def _first_shard(rows):
    """What one shard's file of a `shards: 2` run holds: the first half of the rows, and its shard recorded."""
    half = rows.subset(len(rows) // 2)
    half.meta = {**rows.meta, "shard_json": json.dumps({"shard": "1-of-2", "rows": [0, len(half)]})}
    return half


FEATURE_DAMAGE = {  # case: (file under results/tiny/, damage, what the message must say)
    "bytes flipped": ("features/inference.safetensors", _flip_bytes,
                      "the bytes of tensors ['hiddens.0'] differ from the sha256 recorded when it was written"),
    "a shard's file": ("features/inference.safetensors", lambda p: _resave(p, _first_shard),
                       "holds 2 rows, but its 4 samples (inputs, seeds, prompts) give 4"),
    "hiddens in float16": ("features/inference.safetensors", lambda p: _resave(p, _half),
                           "tensor 'hiddens.0' is float16, not float32"),
    "seed a row short": ("features/inference.safetensors", lambda p: _resave(p, _seed_short),
                         "tensor 'seed' holds 3 rows, the others 4"),
    "prompts swapped": ("features/inference.safetensors", lambda p: _resave(p, _swap_prompts),
                        "row 0 has prompt 'open the top drawer', but its 4 samples (inputs, seeds, prompts) give "
                        "'pick up the red block'"),
    "no noise": ("features/inference.safetensors", lambda p: _drop_tensor(p, "noise"), "has no ['noise']"),
    "depth: bytes flipped": ("depth/features.safetensors", lambda p: _flip_bytes(p, "noise"),
                             "the bytes of tensors ['noise'] differ from the sha256"),
    "depth: times swapped": ("depth/features.safetensors",
                             lambda p: _resave(p, _times_reversed),
                             "row 0 has video_time 1.0, but its 4 samples (inputs, seeds, prompts) x 2 video times "
                             "give 0.0"),
}


@pytest.fixture(scope="module")
def features_config(small_run):
    """The session run's config (SMALL), resolved: what the head stages expect of its features."""
    return cfg.validate_config(yaml.safe_load((small_run[0] / "config.yaml").read_text()))


@pytest.mark.slow  # the session's shared run (small_run)
@pytest.mark.parametrize("case", FEATURE_DAMAGE)
def test_a_features_file_whose_content_or_rows_are_wrong_is_named_with_the_fix(small_run, features_config,
                                                                              tmp_path, monkeypatch, case):
    """The session run's own features files, damaged as a disk, a copy or a writer with a bug would: the head
    stage reading them (load_features, as probe, sweep, validate, train and depth call it) names the file, what is
    wrong and the command that rebuilds it, instead of computing wrong numbers from it."""
    from mimic_redundancy.model.features import FeaturesError, load_features

    name, damage, problem = FEATURE_DAMAGE[case]
    monkeypatch.chdir(tmp_path)  # paths relative to the workflow folder, as Snakemake gives them
    path = tmp_path / "results/tiny" / name
    path.parent.mkdir(parents=True)
    shutil.copy(small_run[0] / "results/tiny" / name, path)
    kind = "depth" if name.startswith("depth") else "inference"
    digest = (cfg.depth_settings if kind == "depth" else cfg.probe_settings)(features_config, "tiny")["features_digest"]
    load_features(f"results/tiny/{name}", digest, kind)  # the run's file is good
    damage(path)
    with pytest.raises(FeaturesError) as error:
        load_features(f"results/tiny/{name}", digest, kind)
    message = str(error.value)
    rule = "depth_features" if kind == "depth" else "features"
    assert message.startswith(f"results/tiny/{name}: ") and problem in message, message
    assert f"rebuild it with `snakemake --profile profiles/local results/tiny/{name} --forcerun {rule}`" in message


@pytest.mark.slow
def test_rebuilding_damaged_features_reruns_nothing_that_read_them(small_run, tmp_path):
    """Damaged features stop the stage that reads them (its log names the file and the fix); the fix, run as
    given, rebuilds the same bytes (no wall times inside), so the next plain run redoes only the stage that
    failed and what follows it: nothing else that reads the features (validate, probe, the training...)."""
    workdir = copy_run(small_run[0], tmp_path / "wf")
    features = workdir / "results/tiny/features/inference.safetensors"
    good, stat = features.read_bytes(), features.stat()
    _flip_bytes(features)
    os.utime(features, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # damaged on disk: the mtime stays
    result = snakemake(workdir, "results/tiny/sweep.npz", "--forcerun", "sweep")
    assert result.returncode != 0
    log = (workdir / "results/tiny/logs/sweep.log").read_text()
    fix = "snakemake --profile profiles/local results/tiny/features/inference.safetensors --forcerun features"
    assert "FeaturesError: results/tiny/features/inference.safetensors: the bytes of tensors ['hiddens.0']" in log, log
    assert f"rebuild it with `{fix}`" in log
    assert executed_rules(run_ok(workdir, *shlex.split(fix)[3:])) == ["features"]
    assert features.read_bytes() == good
    planned = planned_rules(workdir)
    assert "sweep" in planned and not {"features", "validate", "probe", "metrics", "depth"} & set(planned), planned


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """A job killed while writing (a gather streaming gigabytes of features) leaves a complete hidden temporary;
    the next write of that file removes it, and leaves a live writer's, other files' and the results alone."""
    from mimic_redundancy.core.io import write_json

    target = tmp_path / "results/tiny/features/inference.safetensors"
    target.parent.mkdir(parents=True)
    finished = subprocess.Popen(["true"])
    finished.wait()  # a pid that no longer runs: the killed job's
    live = subprocess.Popen(["sleep", "60"])
    try:
        stale = target.with_name(f".{target.name}.tmp-{finished.pid}")
        running = target.with_name(f".{target.name}.tmp-{live.pid}")
        other = target.with_name(f".train.safetensors.tmp-{finished.pid}")
        for path in (stale, running, other, target.with_name("train.safetensors")):
            path.write_bytes(b"x" * 100)
        write_json(target, {"written": True})
    finally:
        live.kill()
        live.wait()
    assert json.loads(target.read_text()) == {"written": True}
    assert not stale.exists() and running.exists() and other.exists()
    assert target.with_name("train.safetensors").exists()
