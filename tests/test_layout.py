"""The project's files agree with each other: pins, schema, README commands, CI."""
from __future__ import annotations

import tomllib

import yaml

from conftest import REPO
from mimic_redundancy import config as cfg


def test_conda_env_pins_match_the_python_project():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "envs/pipeline.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert all("==" in p for p in project), "every dependency is pinned exactly"
    assert sorted(p.lower() for p in pip) == sorted(p.lower() for p in project)
    sim = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["sim"]
    env = yaml.safe_load((REPO / "envs/sim.yaml").read_text())  # the closed loop's rules: the pipeline + the simulator
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(p.lower() for p in pip) == sorted(p.lower() for p in project + sim)


def test_default_config_is_valid_and_complete():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    filled = cfg.validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert config["presets"]["trained"]["checkpoint"] == "results/{preset}/train/checkpoint"  # the selected preset's
    config["presets"]["trained"]["checkpoint"] = f"results/{config['preset']}/train/checkpoint"
    assert filled == config, "config.yaml spells out every key (the schema's defaults add nothing)"
    assert config["preset"] == "tiny" and len(cfg.samples(config)) >= 8


def test_readme_commands_and_ci():
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci/run").read_text()


# A dry run in one Python process, then a look at what it imported: the DAG build (rules/common.smk, config.py and
# every params function) must not pay for torch (~2 s and ~300 MB per Snakemake start, Slurm jobs included).
NO_TORCH_PROBE = """
import atexit, os, sys
atexit.register(lambda: print("torch imported:", "torch" in sys.modules, file=sys.__stderr__, flush=True))
from snakemake.cli import main
sys.argv = ["snakemake", "--profile", "profiles/local", "-n", *sys.argv[1:]]
main()
"""


def test_the_dag_build_imports_no_torch(workflow):
    """The embedded default's whole DAG (both presets, training, compare) is built without importing torch."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", NO_TORCH_PROBE], cwd=workflow, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "train" in output and "compare" in output, output[-3000:]  # the whole default DAG was planned
    assert "torch imported: False" in output, output[-3000:]


def test_the_npz_contract_in_the_docs_is_the_one_io_checks():
    from mimic_redundancy.io import contract_markdown

    text = (REPO / "docs/npz.md").read_text()
    generated = text.split("<!-- generated: mimic_redundancy.io.contract_markdown() -->\n", 1)[1]
    generated = generated.split("<!-- end generated -->", 1)[0]
    assert generated == contract_markdown(), "docs/npz.md is stale: regenerate it with the command it gives"


def test_the_readme_is_a_five_minute_read_and_its_links_resolve():
    import re

    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for link in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name} links to {link}, which does not exist"
    index = (REPO / "docs/README.md").read_text()
    unlisted = [p.name for p in pages[1:] if p.name != "README.md" and f"]({p.name})" not in index]
    assert not unlisted, f"docs/README.md does not list {unlisted}"
