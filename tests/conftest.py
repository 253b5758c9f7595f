"""Shared test helpers: a copy of the workflow in a temporary folder, and real Snakemake runs in it."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
WORKFLOW_FILES = ["Snakefile", "config.yaml", "rules", "scripts", "schemas", "src", "envs", "profiles", "report"]

# The embedded default's tiny preset, as config.yaml sets it (the one place it is decided): TINY_PRESET is the
# preset's keys, TINY the whole-model settings the stages build it from (config.model_settings + the backbone keys).
DEFAULT_CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
TINY_PRESET = dict(DEFAULT_CONFIG["presets"]["tiny"])
TINY = {"preset": "tiny", **TINY_PRESET, "model_seed": DEFAULT_CONFIG["model_seed"], "device": "cpu"}
TINY_INPUTS = {k: DEFAULT_CONFIG["inputs"][k] for k in ("frames", "height", "width")}

# Small but complete: 2 seeds x 2 prompts, 10 Euler steps, two probe batches (so that 2 shards can split it: the
# sharded runs compare with small_run); one preset (tests/test_real_inputs.py runs the default's train +
# trained-preset comparison). The session's shared run (small_run) uses it.
SMALL = {
    "compare": [],
    "seeds": [0, 1],
    "probe": {"steps": 10, "batch_size": 2},
    "metrics": {"probe_steps": [2, 4, 6, 8, 10], "convergence_thresholds": [0.9, 0.99]},
    "sweep": {"steps": [1, 2, 5, 10], "reference_steps": 20, "repeats": 1},
    "depth": {"times": [0, 1.0], "steps": 4},  # the video-denoising depth: the clean and the fully noised video
}
# SMALL in 2 shards: 4 samples in 2 probe batches, one batch per shard (and half of the training windows' draws)
SHARDS = {**SMALL, "shards": 2}


def merged(*configs: dict) -> dict:
    """Snakemake's merge of --configfile files over config.yaml (nested keys are updated, not replaced)."""
    out: dict = {}

    def update(into, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                update(into[key], value)
            else:
                into[key] = copy.deepcopy(value)

    for c in configs:
        update(out, c)
    return out


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def write_config(workdir: Path, overrides: dict, name: str = "test-config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(overrides))
    return path


def snakemake(workdir: Path, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(SNAKEMAKE), "--profile", "profiles/local", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=timeout, env=env)


def run_ok(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = snakemake(workdir, *args)
    assert result.returncode == 0, f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def executed_rules(result: subprocess.CompletedProcess) -> list[str]:
    """Rules of the jobs that ran (the aggregate rule 'all' left out), from Snakemake's own log."""
    text = result.stdout + result.stderr
    return sorted(r for r in re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", text) if r != "all")


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count of a run's or a dry run's "Job stats" table ('all' included); {} when nothing is to do."""
    stats = output.split("Job stats:", 1)[1].split("total", 1)[0] if "Job stats:" in output else ""
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)\s*$", stats, re.M)}


def planned_rules(workdir: Path, *args: str) -> list[str]:
    """The rules a run would execute (a dry run: Snakemake decides what reruns while it builds the DAG, so this is
    exactly what a real run executes), 'all' left out, one entry per job."""
    result = snakemake(workdir, "-n", *args)
    assert result.returncode == 0, f"dry run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return sorted(r for r, n in planned_jobs(result.stdout + result.stderr).items() for _ in range(n) if r != "all")


def copy_run(workdir: Path, dest: Path) -> Path:
    """A private copy of a finished run (files, mtimes and Snakemake's metadata), to change without touching it."""
    shutil.copytree(workdir, dest, symlinks=True)
    return dest


@pytest.fixture
def workflow(tmp_path) -> Path:
    return copy_workflow(tmp_path)


# -- shared runs: one per session, read by many tests; copy_run() them before changing anything -------------------
@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The whole DAG of the SMALL config (one preset, local profile), run once per session: (workdir, result).
    SMALL is written into the copy's config.yaml, so the docs' commands run there as written. Under pytest-xdist
    (make test: 2 workers) the workers share one run: the first to ask makes it, under a file lock, in the folder
    the workers' temporary folders share; the others wait for it and read its recorded result."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    workdir, record = shared / "small_run", shared / "small_run.json"
    with FileLock(shared / "small_run.lock"):
        if not record.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # a run that failed in another worker
            copy_workflow(workdir)
            config = yaml.safe_load((workdir / "config.yaml").read_text())
            (workdir / "config.yaml").write_text(yaml.safe_dump({**config, **SMALL}, sort_keys=False))
            result = run_ok(workdir)
            record.write_text(json.dumps({"args": result.args, "returncode": result.returncode,
                                          "stdout": result.stdout, "stderr": result.stderr}))
    recorded = json.loads(record.read_text())
    return workdir, subprocess.CompletedProcess(**recorded)


@pytest.fixture
def completed(small_run):
    """The session's full run of the SMALL config (conftest.small_run); copy it before changing anything."""
    return small_run


@pytest.fixture
def rerun(completed, tmp_path):
    """A private copy of the completed run, and a function that reruns it with config overrides."""
    workdir = copy_run(completed[0], tmp_path / "run")

    def run(overrides: dict):
        config = write_config(workdir, {**SMALL, **overrides})
        return executed_rules(run_ok(workdir, "--configfile", str(config)))

    return workdir, run
