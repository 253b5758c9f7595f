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
    if error.validator == "oneOf" and error.context and isinstance(error.instance, dict):
        from jsonschema.exceptions import best_match

        # the alternative whose required keys are present (e.g. a checkpoint preset), else the closest one
        branches = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [subs for subs in branches.values() if not any(e.validator == "required" for e in subs)]
        return _describe(best_match(fitting[0] if len(fitting) == 1 else error.context))
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
    for name in config["compare"]:
        if name not in config["presets"]:
            problems.append(f"config key 'compare': unknown preset '{name}'; allowed: {', '.join(config['presets'])}")
    for name, preset in config["presets"].items():
        if "checkpoint" in preset:
            continue
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
    """Every (seed, prompt) pair, seed-major: the sample order of a synthetic run's NPZ."""
    return list(product(config["seeds"], config["prompts"]))


def input_settings(config: dict) -> dict:
    """The inputs keys the selected source reads (so editing another source's keys reruns nothing)."""
    inputs = config["inputs"]
    keys = {"synthetic": ["frames", "height", "width"],
            "lerobot": ["frames", "height", "width", "frame_skip", "episodes", "windows_per_episode", "lerobot",
                        "camera", "state_key", "action_key", "prompt"],
            "video_dir": ["frames", "height", "width", "frame_skip", "episodes", "video_dir"]}[inputs["source"]]
    return {"source": inputs["source"], **{k: inputs[k] for k in keys},
            **({"windows_per_episode": 1} if inputs["source"] == "video_dir" else {})}


def data_settings(config: dict, limit: int | None = None) -> dict:
    """What decides a run's samples: synthetic, the seed x prompt pairs; real data, the seeds (the
    windows come from the data). `limit`: only the first samples (seed-major) are used."""
    inputs = input_settings(config)
    if inputs["source"] == "synthetic":
        return {"inputs": inputs, "samples": samples(config)[:limit]}
    return {"inputs": inputs, "seeds": config["seeds"][:limit], "limit": limit}


def model_settings(config: dict, preset: str) -> dict:
    spec = config["presets"][preset]
    if "checkpoint" in spec:  # the weights come from the checkpoint, not from model_seed
        return {"preset": preset, **spec, "device": config["device"]}
    return {"preset": preset, **spec, "model_seed": config["model_seed"], "device": config["device"]}


def checkpoint_files(config: dict, preset: str) -> list[str]:
    """A checkpoint preset's files: rule inputs, so a checkpoint the train rule writes is made first."""
    from .model import CHECKPOINT_FILES

    folder = config["presets"][preset].get("checkpoint")
    return [f"{folder.rstrip('/')}/{name}" for name in CHECKPOINT_FILES] if folder else []


def prefetch_settings(config: dict, preset: str) -> dict:
    """What decides the manifest's content; the timeout is left out on purpose (no rerun for it)."""
    from .hub import required_repos

    # a dataset's files are fetched for the episodes that are probed and those that are trained on
    inputs = {**config["inputs"], "train_episodes": config["train"]["episodes"]}
    return {"repos": required_repos(config["presets"][preset], inputs), "cache_dir": config["hub"]["cache_dir"]}


def validate_settings(config: dict, preset: str) -> dict:
    limit = config["validate"]["fidelity_samples"]
    synthetic = config["inputs"]["source"] == "synthetic"  # real data brings its own prompts
    return {"model": model_settings(config, preset), "data": data_settings(config, limit), "limit": limit,
            "steps": config["probe"]["steps"], "prompts": config["prompts"] if synthetic else [],
            "tolerance": config["validate"]["fidelity_tolerance"]}


def probe_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "data": data_settings(config), "steps": config["probe"]["steps"],
            "batch_size": config["probe"]["batch_size"]}


def sweep_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "data": data_settings(config),
            "batch_size": config["probe"]["batch_size"], "sweep_steps": sorted(config["sweep"]["steps"]),
            "reference_steps": config["sweep"]["reference_steps"], "repeats": config["sweep"]["repeats"]}


def backbone_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "data": data_settings(config),
            "steps": config["probe"]["steps"], "fixed_video_noise": config["backbone"]["fixed_video_noise"]}


def train_settings(config: dict, preset: str) -> dict:
    """Training reads every window of the selected episodes (synthetic: a pool of its own seeds)."""
    train = config["train"]
    pool = {"samples": list(zip(range(10_000, 10_000 + train["synthetic_samples"]),
                                [config["prompts"][i % len(config["prompts"])]
                                 for i in range(train["synthetic_samples"])]))}
    inputs = input_settings(config)
    episodes = inputs.get("episodes") if train["episodes"] == "inputs" else train["episodes"]
    data = {"inputs": inputs, **pool} if inputs["source"] == "synthetic" else \
        {"inputs": {**inputs, "episodes": episodes, "windows_per_episode": None}, "seeds": [train["seed"]],
         "limit": None}
    return {"model": model_settings(config, preset), "data": data,
            **{k: train[k] for k in ("steps", "batch_size", "lr", "seed", "check_samples")}}


def compare_settings(config: dict) -> dict:
    return {"presets": [config["preset"], *config["compare"]], **metrics_settings(config)}


def metrics_settings(config: dict) -> dict:
    return dict(config["metrics"])


def plot_settings(config: dict) -> dict:
    return dict(config["plot"])
