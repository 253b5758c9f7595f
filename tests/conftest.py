"""Shared test helpers: a copy of the workflow in a temporary folder, and real Snakemake runs in it."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
WORKFLOW_FILES = ["Snakefile", "config.yaml", "rules", "scripts", "schemas", "src", "envs", "profiles", "report"]

# Small but complete: 2 seeds x 2 prompts, 10 Euler steps; one preset (tests/test_real_inputs.py runs
# the default's train + trained-preset comparison).
SMALL = {
    "compare": [],
    "seeds": [0, 1],
    "probe": {"steps": 10, "batch_size": 4},
    "metrics": {"probe_steps": [2, 4, 6, 8, 10], "convergence_thresholds": [0.9, 0.99]},
    "sweep": {"steps": [1, 2, 5, 10], "reference_steps": 20, "repeats": 1},
}


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


@pytest.fixture
def workflow(tmp_path) -> Path:
    return copy_workflow(tmp_path)
