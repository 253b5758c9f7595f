"""Check the pipeline config and split it into the settings each stage depends on.

Each `*_settings` function returns exactly what its stage reads; the rules pass it as
`params`, so Snakemake reruns a stage when, and only when, one of these values changes.
"""
from __future__ import annotations

from itertools import product
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value the pipeline cannot run with; the message names the key and what is allowed."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error) -> str:
    """One line per schema violation: the key, the problem, and what is allowed."""
    key = _key(error.absolute_path)
    schema = error.schema
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {}))) or "(names of your choice)"
        return f"config key '{key}': {error.message}; allowed keys: {allowed}"
    if error.validator == "required":
        return f"config key '{key}': {error.message}"
    hint = schema.get("description")
    if error.validator == "enum":
        hint = "one of " + ", ".join(map(str, schema["enum"]))
    return f"config key '{key}': {error.message}" + (f" (expected: {hint})" if hint else "")


def validate_config(config: dict) -> dict:
    """Validate `config` in place (filling schema defaults) and return it; raise ConfigError on any problem."""
    from jsonschema import Draft202012Validator
    from snakemake.utils import validate

    schema = yaml.safe_load(SCHEMA.read_text())
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:  # listed one per line with key and allowed values, before Snakemake's own check
        raise ConfigError("invalid config:\n  " + "\n  ".join(_describe(e) for e in errors))
    validate(config, str(SCHEMA))  # Snakemake's check, which also fills the schema's defaults
    problems = []
    if config["preset"] not in config["presets"]:
        problems.append(f"config key 'preset': unknown preset '{config['preset']}'; allowed: "
                        f"{', '.join(config['presets'])} (add others under 'presets')")
    for name, preset in config["presets"].items():
        pretrained = isinstance(preset["backbone"], dict)
        if pretrained != (preset["tokenizer"] == "pipeline"):
            problems.append(f"config key 'presets.{name}.tokenizer': "
                            + ("a pretrained backbone brings its own tokenizer; allowed: pipeline" if pretrained
                               else "'pipeline' needs a pretrained backbone repo; allowed: builtin or a Hub repo"))
    steps = config["probe"]["steps"]
    too_large = [s for s in config["metrics"]["probe_steps"] if s > steps]
    if too_large:
        problems.append(f"config key 'metrics.probe_steps': {too_large} exceed probe.steps ({steps}); "
                        f"allowed: integers from 1 to {steps}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return config


def samples(config: dict) -> list[tuple[int, str]]:
    """Every (seed, prompt) pair, seed-major: the sample order of the probe NPZ."""
    return list(product(config["seeds"], config["prompts"]))


def model_settings(config: dict, preset: str) -> dict:
    return {"preset": preset, **config["presets"][preset], "model_seed": config["model_seed"],
            "device": config["device"]}


def prefetch_settings(config: dict, preset: str) -> dict:
    """What decides the manifest's content; the timeout is left out on purpose (no rerun for it)."""
    from .hub import required_repos

    return {"repos": required_repos(config["presets"][preset]), "cache_dir": config["hub"]["cache_dir"]}


def validate_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "inputs": config["inputs"], "steps": config["probe"]["steps"],
            "prompts": config["prompts"], "samples": samples(config)[: config["validate"]["fidelity_samples"]],
            "tolerance": config["validate"]["fidelity_tolerance"]}


def probe_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "inputs": config["inputs"], "steps": config["probe"]["steps"],
            "samples": samples(config), "batch_size": config["probe"]["batch_size"]}


def sweep_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "inputs": config["inputs"], "samples": samples(config),
            "batch_size": config["probe"]["batch_size"], "sweep_steps": sorted(config["sweep"]["steps"]),
            "reference_steps": config["sweep"]["reference_steps"], "repeats": config["sweep"]["repeats"]}


def backbone_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "inputs": config["inputs"], "samples": samples(config),
            "steps": config["probe"]["steps"], "fixed_video_noise": config["backbone"]["fixed_video_noise"]}


def metrics_settings(config: dict) -> dict:
    return dict(config["metrics"])


def plot_settings(config: dict) -> dict:
    return dict(config["plot"])
