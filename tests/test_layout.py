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


def test_default_config_is_valid_and_complete():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    filled = cfg.validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert filled == config, "config.yaml spells out every key (the schema's defaults add nothing)"
    assert config["preset"] == "tiny" and len(cfg.samples(config)) >= 8


def test_readme_commands_and_ci():
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci/run").read_text()
