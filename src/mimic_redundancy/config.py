"""Check the pipeline config and split it into the settings each stage depends on.

Each `*_settings` function returns exactly what its stage reads; the rules pass it as
`params`, so Snakemake reruns a stage when, and only when, one of these values changes.
"""
from __future__ import annotations

import re
import sys
from itertools import product
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"
TRAIN_SEED_BASE = 10_000  # synthetic training samples have seeds TRAIN_SEED_BASE + i


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
        if len(fitting) == 1:
            return _describe(best_match(fitting[0]))
        # none fits: the branch that knows most of the given keys is the one meant; report all its problems at once
        def known_keys(index):
            branch = error.schema["oneOf"][index]
            if "$ref" in branch:  # "#/$defs/<name>"
                branch = _schema()["$defs"][branch["$ref"].rsplit("/", 1)[1]]
            return len(set(error.instance) & set(branch.get("properties", {})))

        meant = branches[max(branches, key=lambda index: (known_keys(index), -len(branches[index])))]
        return "\n  ".join(_describe(e) for e in sorted(meant, key=lambda e: (list(e.absolute_path), e.message)))
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


def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def _exact_validator():
    """Draft 2020-12 with exact integers: JSON Schema's 'integer' accepts 50.0 (and YAML's `50.0` is a float),
    which then crashes a job (torch.linspace, manual_seed, indexing) after deleting its old outputs."""
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return validators.extend(Draft202012Validator, type_checker=checker)


def validate_config(config: dict) -> dict:
    """Validate `config` in place (filling schema defaults) and return it; raise ConfigError on any problem."""
    from snakemake.utils import validate

    schema = _schema()
    errors = sorted(_exact_validator()(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
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
    problems += _cross_key_problems(config)
    if config["preset"] in config["compare"]:  # e.g. --config preset=trained with the default compare: [trained]
        config["compare"] = [name for name in config["compare"] if name != config["preset"]]
        print(f"config note: preset '{config['preset']}' is also listed in 'compare'; it is run once and not "
              f"compared with itself (compare: {config['compare']})", file=sys.stderr)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return config


def _cross_key_problems(config: dict) -> list[str]:
    """Constraints between keys that the analyses assume (the schema checks each key alone)."""
    problems = []
    steps = config["probe"]["steps"]
    too_large = [s for s in config["metrics"]["probe_steps"] if s > steps]
    if too_large:
        problems.append(f"config key 'metrics.probe_steps': {too_large} exceed probe.steps ({steps}); "
                        f"allowed: integers from 1 to {steps}")
    sweep = config["sweep"]
    if sweep["reference_steps"] <= max(sweep["steps"]):  # else the 'reference' is no finer than what it judges
        problems.append(f"config key 'sweep.reference_steps': {sweep['reference_steps']} is not larger than the "
                        f"largest sweep.steps ({max(sweep['steps'])}); allowed: {max(sweep['steps']) + 1} to 10000 "
                        f"(the fine reference every K is compared with)")
    trained = [name for name in [config["preset"], *config["compare"]]
               if name in config["presets"] and trained_from(config, name)]  # unknown names: reported above
    if trained and config["inputs"]["source"] == "synthetic":  # the probe must not run on training samples
        pool = range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + config["train"]["synthetic_samples"])
        overlap = [s for s in config["seeds"] if s in pool]
        if overlap:
            problems.append(f"config key 'seeds': {overlap} are seeds of the training pool of preset "
                            f"'{trained[0]}' ({pool[0]} .. {pool[-1]}, train.synthetic_samples); allowed: seeds "
                            f"below {pool[0]} or above {pool[-1]}")
    labels = [f"{t:g}" for t in config["metrics"]["convergence_thresholds"]]
    if len(set(labels)) != len(labels):  # comparison.csv names its columns convergence_step_<t:g>
        problems.append(f"config key 'metrics.convergence_thresholds': {config['metrics']['convergence_thresholds']} "
                        f"has thresholds that print alike ({labels}); allowed: distinct fractions between 0 and 1")
    return problems


def trained_from(config: dict, preset: str) -> str | None:
    """The preset whose train rule writes this checkpoint preset's folder, or None if none does."""
    folder = config["presets"][preset].get("checkpoint", "")
    match = re.fullmatch(r"results/([^/]+)/train/checkpoint/?", folder)
    return match.group(1) if match else None


def samples(config: dict) -> list[tuple[int, str]]:
    """Every (seed, prompt) pair, seed-major: the sample order of a synthetic run's NPZ."""
    return list(product(config["seeds"], config["prompts"]))


def input_settings(config: dict) -> dict:
    """The inputs keys the selected source reads (so editing another source's keys reruns nothing)."""
    inputs = config["inputs"]
    keys = {"synthetic": ["frames", "height", "width"],
            "lerobot": ["frames", "height", "width", "frame_skip", "episodes", "windows_per_episode", "lerobot"],
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

    return {"repos": required_repos(config["presets"][preset], config["inputs"]),
            "cache_dir": config["hub"]["cache_dir"]}


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
    pool = {"samples": list(zip(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + train["synthetic_samples"]),
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
