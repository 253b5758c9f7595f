"""Check the pipeline config and split it into the settings each stage depends on.

Each `*_settings` function returns exactly what its stage reads; the rules pass it as
`params`, so Snakemake reruns a stage when, and only when, one of these values changes.
"""
from __future__ import annotations

import copy
import math
import re
import sys
from array import array
from itertools import product
from pathlib import Path

import yaml

from mimic_redundancy.model.presets import preset_backbone

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "config.schema.yaml"
TRAIN_SEED_BASE = 10_000  # synthetic training samples have seeds TRAIN_SEED_BASE + i


# keys an older config may still use, and where each went
MOVED = {"sim.demos": "sets.demos.layouts", "sim.layout_seed": "sets.demos.layout_seeds",
         "rollout.episodes": "sets.<rollout.set>.layouts", "rollout.layout_seed": "sets.<rollout.set>.layout_seeds",
         "train.seed": "train.seeds"}


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
    if error.validator == "oneOf" and error.context:
        # e.g. inputs.episodes: 'all' or a list; the alternative of the value's own kind (no const, enum or type
        # failure at the key itself) says what is wrong with it, instead of "not valid under any of the given schemas"
        branches = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        own_kind = [subs for subs in branches.values()
                    if not any(not e.relative_path and e.validator in ("const", "enum", "type") for e in subs)]
        if len(own_kind) == 1:
            hint = error.schema.get("description")
            return "\n  ".join(_describe(e) + (f" (expected: {hint})" if hint and not e.schema.get("description")
                                               else "")
                               for e in sorted(own_kind[0], key=lambda e: (list(e.absolute_path), e.message)))
    key = _key(error.absolute_path)
    schema = error.schema
    if error.validator == "uniqueItems":
        repeated = list(dict.fromkeys(repr(v) for i, v in enumerate(error.instance) if v in error.instance[:i]))
        return (f"config key '{key}': {error.message}: {', '.join(repeated)} listed more than once; allowed: each "
                "value once" + (f" (expected: {schema['description']})" if schema.get("description") else ""))
    written = _yaml_number(error.instance, "integer" in str(error.validator_value)) \
        if error.validator == "type" and isinstance(error.instance, str) else None
    if written is not None:  # PyYAML reads 1.0e9 and 1e-3 as strings: YAML 1.1 floats need '.' and a signed exponent
        hint = schema.get("description")
        return (f"config key '{key}': {error.message}: YAML 1.1 (PyYAML, which reads the config) takes "
                f"{error.instance} for text (a number in exponent form needs a decimal point and a signed exponent); "
                f"write {written}" + (f" (expected: {hint})" if hint else ""))
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(schema.get("properties", {}))) or "(names of your choice)"
        moved = [f"'{key}.{name}' is now '{MOVED[f'{key}.{name}']}'" for name in error.instance
                 if f"{key}.{name}" in MOVED]
        return (f"config key '{key}': {error.message}; allowed keys: {allowed}"
                + (f" ({'; '.join(moved)}: docs/closed-loop.md#episode-sets)" if moved else ""))
    if error.validator == "required":
        return f"config key '{key}': {error.message}"
    hint = schema.get("description")
    if error.validator == "enum":
        hint = "one of " + ", ".join(map(str, schema["enum"]))
    return f"config key '{key}': {error.message}" + (f" (expected: {hint})" if hint else "")


def _yaml_number(text: str, integer: bool = False) -> str | None:
    """How to write a number that YAML 1.1 read as text ('1.0e9' -> '1.0e+9'; for an integer key, '1e3' -> '1000'),
    or None if `text` is no number in exponent form."""
    match = re.fullmatch(r"([-+]?)(\d+)(?:\.(\d*))?[eE]([-+]?)(\d+)", text.strip())
    if not match:
        return None
    sign, whole, fraction, exponent_sign, exponent = match.groups()
    value = float(text)
    if integer and value.is_integer() and abs(value) < 2 ** 63:
        return str(int(value))
    return f"{sign}{whole}.{fraction or '0'}e{exponent_sign or '+'}{exponent}"


def _schema() -> dict:
    # libyaml when present: the pure-Python loader took ~0.15 s of every Snakemake start for this file
    return yaml.load(SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _exact_validator():
    """Draft 2020-12 with exact integers (JSON Schema's 'integer' accepts 50.0, and YAML's `50.0` is a float, which
    then crashes a job after deleting its old outputs) that fills the schema's defaults as it validates, as
    snakemake.utils.validate does (the FAQ recipe): one pass over the config instead of two."""
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults}, type_checker=checker)


def _non_finite(node, path=()) -> list[tuple]:
    """The keys of every NaN and infinity in the config: YAML's .nan passes every bound of the schema (it compares
    false with each), so the schema alone lets it through to the jobs."""
    if isinstance(node, float) and not math.isfinite(node):
        return [path]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [found for key, value in items for found in _non_finite(value, (*path, key))]


def _hint(schema: dict, path) -> str | None:
    """The schema's description of the key at `path` (None where a oneOf or $ref would have to be followed)."""
    for part in path:
        if isinstance(part, int):
            schema = schema.get("items")
        else:
            schema = schema.get("properties", {}).get(part) or schema.get("additionalProperties")
        if not isinstance(schema, dict):
            return None
    return schema.get("description")


def _non_finite_problem(schema: dict, config: dict, path) -> str:
    value = config
    for part in path:
        value = value[part]
    hint = _hint(schema, path)
    return (f"config key '{_key(path)}': {value} is not a finite number (NaN and infinity slip past the bounds); "
            "allowed: a finite number, not .nan, .inf or -.inf" + (f" (expected: {hint})" if hint else ""))


def validate_config(config: dict) -> dict:
    """Validate `config` in place (filling schema defaults) and return it; raise ConfigError on any problem."""
    schema = _schema()
    non_finite = _non_finite(config)
    problems = [_non_finite_problem(schema, config, path) for path in non_finite]
    errors = sorted(_exact_validator()(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    problems += [_describe(e) for e in errors if tuple(e.absolute_path) not in non_finite]
    if problems:  # listed one per line with key and allowed values
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
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
    if not problems:
        problems += _resolve_selected(config)
    problems += _cross_key_problems(config)
    if config["preset"] in config["compare"]:  # e.g. --config preset=tiny compare=[tiny]
        config["compare"] = [name for name in config["compare"] if name != config["preset"]]
        print(f"config note: preset '{config['preset']}' is also listed in 'compare'; it is run once and not "
              f"compared with itself (compare: {config['compare']})", file=sys.stderr)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return config


SELECTED = "{preset}"  # in a checkpoint folder: the selected preset (presets.trained: results/{preset}/train/checkpoint)


def _resolve_selected(config: dict) -> list[str]:
    """Resolve `{preset}` in checkpoint folders to the selected preset, so `trained` is the checkpoint of the preset
    being run (`--config preset=tiny-t5` trains tiny-t5, never tiny). A selected preset that is itself a checkpoint
    is not trained here: the presets that follow it are dropped from 'compare', with a note."""
    selected = config["preset"]
    following = [name for name, spec in config["presets"].items() if SELECTED in spec.get("checkpoint", "")]
    if selected in following:
        return [f"config key 'preset': preset '{selected}' is the checkpoint of the selected preset "
                f"({config['presets'][selected]['checkpoint']}); select the preset to train instead, e.g. "
                f"--config preset=tiny (it then runs beside '{selected}')"]
    for name in following:
        config["presets"][name] = {"checkpoint": config["presets"][name]["checkpoint"].replace(SELECTED, selected)}
    first = config["train"]["seeds"][0]
    for name, spec in config["presets"].items():  # results/<p>/train/checkpoint: the first policy train writes
        if "checkpoint" in spec:
            spec["checkpoint"] = re.sub(r"^(results/[^/]+/train)/checkpoint(/?)$", rf"\1/seed-{first}/checkpoint\2",
                                        spec["checkpoint"])
    untrainable = [name for name in config["compare"] if name in following and "checkpoint" in config["presets"][selected]]
    if untrainable:
        config["compare"] = [name for name in config["compare"] if name not in untrainable]
        print(f"config note: preset '{selected}' is a checkpoint and is not trained here, so {untrainable} (its "
              f"trained checkpoint) are not compared (compare: {config['compare']})", file=sys.stderr)
    return []


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
    total = known_sample_count(config) if sharded(config) else None  # lerobot, demos: shard_rows checks in the job
    if total:  # an empty table is reported by the job that reads it
        problems += shard_problems(config["shards"], total, config["probe"]["batch_size"])
    problems += _closed_loop_problems(config)
    if config["early_stop"]["target_step"] > steps:
        problems.append(f"config key 'early_stop.target_step': {config['early_stop']['target_step']} exceeds probe.steps "
                        f"({steps}); allowed: integers from 1 to {steps}")
    if 0 not in config["depth"]["times"]:  # every depth is compared with the clean video's
        problems.append(f"config key 'depth.times': {config['depth']['times']} lacks 0, the reference every other "
                        "video-denoising time is compared with; allowed: times from 0 to 1, 0 among them")
    problems += _depth_time_problems(config["depth"]["times"])
    labels = [f"{t:g}" for t in config["metrics"]["convergence_thresholds"]]
    if len(set(labels)) != len(labels):  # comparison.csv names its columns convergence_step_<t:g>
        problems.append(f"config key 'metrics.convergence_thresholds': {config['metrics']['convergence_thresholds']} "
                        f"has thresholds that print alike ({labels}); allowed: distinct fractions between 0 and 1")
    return problems


def _depth_time_problems(times: list) -> list[str]:
    """depth.times that become one time where they are used: stored as float32 (the features' video_time, depth.npz)
    and labelled with :g (6 significant digits: depth.json's keys, comparison.csv's columns)."""
    labels = {}
    for time, stored in zip(times, array("f", times).tolist()):
        labels.setdefault(f"{abs(stored):g}", []).append(time)  # abs: -0.0 is 0 once stored
    alike = [f"{' and '.join(map(str, group))} (both '{label}')" for label, group in labels.items() if len(group) > 1]
    if not alike:
        return []
    return [f"config key 'depth.times': {'; '.join(alike)} are one time once stored as float32 and labelled with 6 "
            "significant digits; allowed: times from 0 to 1 that differ in their first 6 significant digits"]


def known_sample_count(config: dict) -> int | None:
    """How many samples the run has, where the DAG build can tell: synthetic, seeds x prompts; video_dir, seeds x
    the selected rows of episodes.csv (one window each). None where the data must be read first (lerobot, demos,
    or a table that is missing or unreadable: the job that reads it names the problem)."""
    inputs = config["inputs"]
    if inputs["source"] == "synthetic":
        return len(samples(config))
    if inputs["source"] != "video_dir":
        return None
    episodes = inputs["episodes"]
    if episodes == "all":
        import csv

        try:
            with open(video_dir_table(config), newline="", encoding="utf-8-sig") as f:
                episodes = list(csv.DictReader(f))
        except (OSError, UnicodeError, csv.Error):
            return None
    return len(config["seeds"]) * len(episodes)


def _closed_loop_problems(config: dict) -> list[str]:
    """The rollout rules against the probe schedule, and the window convention a closed loop can feed."""
    steps, rollout, problems = config["probe"]["steps"], config["rollout"], []
    if not closed_loop(config):  # the rollout settings are read by closed-loop runs alone
        return problems
    for key in ("steps", "stop_steps"):
        too_large = [k for k in rollout[key] if k > steps]
        if too_large:
            problems.append(f"config key 'rollout.{key}': {too_large} exceed probe.steps ({steps}); allowed: integers "
                            f"from 1 to {steps} (every rule is a schedule of at most probe.steps head evaluations)")
    from mimic_redundancy.model.rules import check_rule_params

    keyed = lambda messages: [f"config key '{m.replace(': ', chr(39) + ': ', 1)}" for m in messages]  # 'key': why
    for tau in rollout["probeflow"]:
        problems += keyed(check_rule_params("probeflow", {"cos_threshold": tau}, "rollout.probeflow"))
    for i, jump in enumerate(rollout["dense_jump"]):
        problems += keyed(check_rule_params("dense_jump", jump, f"rollout.dense_jump[{i}]"))
    others = [k for k in rollout["also_against"] if k not in rollout["steps"] or k == reference_k(config)]
    if others:
        problems.append(f"config key 'rollout.also_against': {others} are not other rolled-out K's; allowed: K's of "
                        f"rollout.steps {sorted(rollout['steps'])} besides the reference K={reference_k(config)}")
    reference = reference_k(config)
    if reference not in rollout["steps"]:
        problems.append(f"config key 'rollout.reference': K={reference} is not rolled out; allowed: one of "
                        f"rollout.steps {sorted(rollout['steps'])}")
    elif (len(rollout["steps"]) + 2 * len(rollout["stop_steps"]) + bool(rollout["clean_change"])
          + len(rollout["probeflow"]) + len(rollout["dense_jump"])) < 2:
        problems.append(f"config key 'rollout.steps': K={reference} is the reference and the only rule, so nothing is "
                        "compared with it; allowed: another K in rollout.steps, a stop in rollout.stop_steps, or "
                        "rollout.clean_change: true")
    if config["inputs"]["frame_window"] != "history":
        problems.append("config key 'inputs.frame_window': the closed loop's policy sees only the frames up to now, so "
                        f"its training windows must too; allowed with inputs.source {config['inputs']['source']} and "
                        f"sim.backend {config['sim']['backend']}: history")
    demos = config["inputs"]["source"] == "demos"  # else a Hub dataset's policy: no demonstrations are made
    sim_config = config["sim"]
    try:  # the simulator's own lists: only closed-loop configs import it (a few seconds)
        from mimic_redundancy.sim.backends import simulator
        from mimic_redundancy.sim.common import SimError

        sim = simulator(sim_config["backend"])
    except (ModuleNotFoundError, ValueError) as error:  # not installed, or MUJOCO_GL unusable
        return problems + [f"config key 'inputs.source': demos needs the simulator: {error}"]
    # per task its checks in turn, the first failure alone: an unknown task fails check_task, prompt_of and
    # check_expert alike, and was listed once per check
    expert = getattr(sim, "check_expert", None) if demos else None  # LIBERO's expert solves some tasks only
    task_checks = [sim.check_task, lambda task: sim.prompt_of(task, sim_config["tasks"][task])] + \
        ([expert] if expert else [])
    checks = [(task_checks, task) for task in sim_config["tasks"]] + [([sim.check_camera], sim_config["camera"])]
    checks += [([lambda name: sim.check_set(name, config["sets"][name])], name) for name in SETS]
    for in_turn, value in checks:
        try:
            for check in in_turn:
                check(value)
        except SimError as error:
            problems.append(str(error))
    if problems:
        return problems
    problems += camera_problems(config["inputs"]["camera"], sim_config["backend"], sim_config["camera"])
    problems += set_overlaps(config["sets"], sim.layout_key)
    for task in sim_config["tasks"]:
        limit = sim.step_limit(task)
        for key in ("rollout.max_steps", "sim.max_steps") if demos else ("rollout.max_steps",):
            value = rollout["max_steps"] if key == "rollout.max_steps" else sim_config["max_steps"]
            if limit is not None and value > limit:
                problems.append(f"config key '{key}': {value} exceeds {task}'s step limit {limit} (its suite's, as the "
                                f"LIBERO evaluations use); allowed: 1 to {limit}")
    if rollout["execute_steps"] > rollout["max_steps"]:
        problems.append(f"config key 'rollout.execute_steps': {rollout['execute_steps']} exceeds rollout.max_steps "
                        f"({rollout['max_steps']}); allowed: 1 to {rollout['max_steps']}")
    for preset in rollout_presets(config):
        chunk, where = rollout_chunk(config, preset)
        if chunk is not None and rollout["execute_steps"] > chunk:
            problems.append(f"config key 'rollout.execute_steps': {rollout['execute_steps']} exceeds the action chunk "
                            f"of preset '{preset}' ({chunk}, {where}); allowed: 1 to {chunk} (a decision executes "
                            "actions of the one chunk it samples)")
    if sharded(config):
        problems += rollout_shard_problems(config)
    return problems


def camera_problems(camera: str, backend: str, sim_camera: str) -> list[str]:
    """inputs.camera against the simulator's: the env renders sim.camera, which the backend's datasets store under
    one key (sim/backends.py); the policy must have been trained on that key ('auto' picks it)."""
    from mimic_redundancy.sim.backends import CONVENTIONS

    key = CONVENTIONS[backend].camera_key(sim_camera)
    if camera in ("auto", key):
        return []
    return [f"config key 'inputs.camera': the policy is trained on {camera!r}, but sim.camera {sim_camera!r} is "
            f"{key!r} in {backend}'s datasets; allowed: auto or {key} (or set sim.camera to the camera the policy "
            "sees)"]


LIBRARY_CHUNK_LEN = 32  # MimicVideo's action_chunk_len default (model/model.LIBRARY_DIMS; torch-free here)


def rollout_chunk(config: dict, preset: str) -> tuple[int | None, str]:
    """The action chunk a rollout preset's policies sample and where it is set: the source preset's chunk_len (a
    checkpoint trained here), else the checkpoint's config.json (None while it does not exist: the job checks)."""
    from mimic_redundancy.model.checkpoints import CheckpointError, read_checkpoint_config

    source = trained_from(config, preset)
    if source:
        chunk = config["presets"][source].get("chunk_len")
        return (chunk, f"presets.{source}.chunk_len") if chunk else (LIBRARY_CHUNK_LEN, f"presets.{source} sets no "
                                                                     "chunk_len: mimic-video's default")
    folder = config["presets"][preset]["checkpoint"]
    try:
        args = read_checkpoint_config(folder)["mimic_video"]
    except CheckpointError:
        return None, folder
    return args.get("action_chunk_len", LIBRARY_CHUNK_LEN), f"{folder}/config.json"


def rollout_shard_problems(config: dict) -> list[str]:
    """`shards` against the rollout's batches: each rollout shard runs whole batches (rollout.batch_size episodes of
    one task: a sample's last bits depend on its batch), so there are at most tasks x ceil(layouts / batch_size)."""
    rollout, shards = config["rollout"], config["shards"]
    from mimic_redundancy.sim.common import set_layouts

    layouts, tasks = len(set_layouts(config["sets"][rollout["set"]])), len(config["sim"]["tasks"])
    per_task = lambda size: -(-layouts // size)
    batches = tasks * per_task(rollout["batch_size"])
    if shards <= batches:
        return []
    fitting = [size for size in range(1, rollout["batch_size"]) if tasks * per_task(size) >= shards]
    per = per_task(rollout["batch_size"])
    return [f"config key 'shards': {shards} shards, but the rollout makes {batches} batch{'es' * (batches > 1)} "
            f"({tasks} task{'s' * (tasks > 1)} x {per} batch{'es' * (per > 1)} of at most rollout.batch_size "
            f"{rollout['batch_size']} of the {layouts} layouts of sets.{rollout['set']}); allowed: shards up to "
            f"{batches}" + (f", or a rollout.batch_size of at most {max(fitting)}" if fitting else "")
            + " (each rollout shard runs whole batches)"]


def shard_problems(shards: int, total: int, batch_size: int) -> list[str]:
    """Why `shards` cannot split `total` samples: each shard needs a sample, and whole probe batches, since a
    sample's actions depend (in the last bits) on the batch it is sampled in. The depth features' rows (depth.times
    x the samples, batches of one) are never fewer than the samples, so what passes here splits them too."""
    batches = -(-total // batch_size)
    if shards > total:
        return [f"config key 'shards': {shards} shards for {total} samples; allowed: 1 to {total} "
                f"(each shard runs a contiguous range of samples)"]
    if shards > batches:
        return [f"config key 'shards': {shards} shards, but the {total} samples make {batches} probe batch"
                f"{'es' if batches > 1 else ''} of probe.batch_size {batch_size}; allowed: shards up to {batches}, "
                f"or a probe.batch_size of at most {total // shards} (each shard runs whole batches, so that "
                "sharded results equal unsharded ones bit for bit)"]
    return []


def sharded(config: dict) -> bool:
    """Whether the sharded stages run one job per shard and a gather (config `shards` > 1)."""
    return config["shards"] > 1


def shard_items(config: dict, stage: str) -> list[str]:
    """The shard wildcard values of a stage, '1-of-4' .. '4-of-4' (the backbone analysis: at most one per sample
    of backbone.samples)."""
    count = config["shards"]
    limit = config["backbone"]["samples"]
    if stage == "backbone" and limit != "all":
        count = min(count, limit)
    return [f"{i}-of-{count}" for i in range(1, count + 1)]


def shard_rows(shard: str | None, total: int, batch_size: int = 1, allow_empty: bool = False) -> range:
    """The contiguous rows [start, stop) of `total` that shard 'i-of-n' runs (None: all of them). Shards take
    whole batches of `batch_size` rows, spread as evenly as whole batches allow (`allow_empty`: a shard may get
    none, e.g. of a few training windows)."""
    if shard is None:
        return range(total)
    match = re.fullmatch(r"(\d+)-of-(\d+)", shard)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(f"shard {shard!r}: expected 'i-of-n' with 1 <= i <= n")
    i, n = int(match.group(1)), int(match.group(2))
    problems = [] if allow_empty else shard_problems(n, total, batch_size)
    if problems:
        raise ConfigError(problems[0])
    batches = -(-total // batch_size)
    first, last = (i - 1) * batches // n, i * batches // n
    return range(first * batch_size, min(last * batch_size, total))


def read_only_problem(folder: str = "results") -> str | None:
    """Why no job can write under the results folder (None: it can, or it does not exist yet): the folder, or a folder
    in it, that this user cannot write (permissions, or a read-only mount). Snakemake itself says it only when a job
    is about to run (ProtectedOutputException: 'Write-protected output files'), after the jobs before it ran."""
    import os

    root = Path(folder)
    if not root.is_dir():
        return None
    locked = [str(p) for p in [root, *sorted(p for p in root.iterdir() if p.is_dir())] if not os.access(p, os.W_OK)]
    if not locked:
        return None
    shown = ", ".join(f"{p}/" for p in locked[:5]) + (" ..." if len(locked) > 5 else "")
    return (f"{folder}/ is read-only: this user cannot write {shown}, so no job could write its outputs; make it "
            f"writable (chmod -R u+w {folder}, or mount it read-write), or run the workflow in a copy of this folder "
            "that you can write")


def default_config() -> dict:
    """config.yaml, checked and with the schema's defaults: the embedded default that benchmarks and checks use."""
    return validate_config(yaml.safe_load((SCHEMA.parents[1] / "config.yaml").read_text()))


def run_presets(config: dict) -> list[str]:
    """The selected preset and those compared with it, in that order."""
    return [config["preset"], *config["compare"]]


def preset_names(config: dict) -> list[str]:
    return list(config["presets"])


def hub_cache(config: dict) -> str:
    return config["hub"]["cache_dir"]


def video_dir_table(config: dict) -> Path | None:
    """inputs.source video_dir: the episodes.csv its videos are listed in (None for the other sources)."""
    inputs = config["inputs"]
    return Path(inputs["video_dir"]) / "episodes.csv" if inputs["source"] == "video_dir" else None


def samples(config: dict) -> list[tuple[int, str]]:
    """Every (seed, prompt) pair, seed-major: the sample order of a synthetic run's NPZ."""
    return list(product(config["seeds"], config["prompts"]))


def input_settings(config: dict) -> dict:
    """The inputs keys the selected source reads (so editing another source's keys reruns nothing)."""
    inputs = config["inputs"]
    keys = {"synthetic": ["frames", "height", "width"],
            "lerobot": ["frames", "height", "width", "frame_skip", "episodes", "windows_per_episode", "lerobot",
                        "camera", "state_key", "action_key", "prompt"],
            "video_dir": ["frames", "height", "width", "frame_skip", "episodes", "video_dir"],
            "demos": ["frames", "height", "width", "frame_skip", "frame_window", "episodes", "windows_per_episode",
                      "camera", "state_key", "action_key", "prompt"]}[inputs["source"]]
    extra = {"video_dir": {"windows_per_episode": 1}, "demos": {"dataset": DEMOS_DATASET, "demos": demos_settings(config)},
             "lerobot": {"frame_window": inputs["frame_window"]} if inputs["frame_window"] != "forward" else {}}
    return {"source": inputs["source"], **{k: inputs[k] for k in keys}, **extra.get(inputs["source"], {})}


# -- the closed loop (docs/closed-loop.md) -----------------------------------------------------------------------
DEMOS_DATASET = "results/demos/dataset"  # the demos stage's LeRobot v3.0 dataset (inputs.source demos)
SETS = ("demos", "dev", "test")  # the episode sets per task (sim/common.SETS), disjoint


def set_overlaps(sets: dict, layout_key) -> list[str]:
    """Pairs of episode sets that share a layout (layout_key(seed, index): the simulator's notion of the same
    layout), each named with the shared layouts."""
    from mimic_redundancy.sim.common import set_layouts

    keys = {name: {layout_key(*pair): pair for pair in set_layouts(sets[name])} for name in SETS}
    problems = []
    for i, a in enumerate(SETS):
        for b in SETS[i + 1:]:
            shared = [keys[a][k] for k in keys[a] if k in keys[b]]
            if shared:
                shown = ", ".join(f"seed {seed} layout {index}" for seed, index in shared[:5])
                problems.append(f"config keys 'sets.{a}' and 'sets.{b}': the episode sets overlap at {len(shared)} "
                                f"layout{'s' * (len(shared) > 1)} ({shown}{', ...' if len(shared) > 5 else ''}); "
                                "allowed: disjoint sets (other layout_seeds, or first/layouts ranges that do not meet)")
    return problems


def reference_k(config: dict) -> int:
    """The K every rollout rule is compared with: rollout.reference, else the largest rollout.steps."""
    return config["rollout"].get("reference") or max(config["rollout"]["steps"])


def policy_seeds(config: dict, preset: str) -> list[int]:
    """The trained policies of a rollout preset: train.seeds for a checkpoint trained here, [0] for one trained
    elsewhere (its only policy)."""
    return list(config["train"]["seeds"]) if trained_from(config, preset) else [0]


def policy_checkpoint(config: dict, preset: str, seed: int) -> str:
    """The checkpoint folder of one policy of a rollout preset."""
    source = trained_from(config, preset)
    return train_dir(source, seed) + "/checkpoint" if source else config["presets"][preset]["checkpoint"]


def train_dir(preset: str, seed: int) -> str:
    """Where train writes the policy of one seed: results/<preset>/train/seed-<seed>."""
    return f"results/{preset}/train/seed-{seed}"


def closed_loop(config: dict) -> bool:
    """Whether the run rolls its trained policies out: a closed-loop study on the simulator's demonstrations
    (inputs.source demos), or a policy trained on a LeRobot dataset from the Hub rolled out in LIBERO (inputs.source
    lerobot with sim.backend libero: the dataset must be in LIBERO's conventions, docs/closed-loop.md)."""
    source = config["inputs"]["source"]
    return source == "demos" or (source == "lerobot" and config["sim"]["backend"] == "libero")


def demos_settings(config: dict) -> dict:
    """What decides the demonstrations: the tasks and their prompts, the demos set's layouts, camera, size, rate,
    step limit."""
    sim, inputs = config["sim"], config["inputs"]
    return {**{k: sim[k] for k in ("backend", "tasks", "camera", "fps", "max_steps")},
            "set": dict(sorted(config["sets"]["demos"].items())), "height": inputs["height"], "width": inputs["width"]}


def rollout_presets(config: dict) -> list[str]:
    """The presets rolled out: the checkpoints among the run's presets (a random head does no task)."""
    return [p for p in run_presets(config) if "checkpoint" in config["presets"][p]] if closed_loop(config) else []


def rollout_settings(config: dict, preset: str, seed: int | None = None) -> dict:
    """The rollout stage of one policy (train seed `seed`; None: the preset's first): its head, the backbone, what it
    sees, the simulator, the rules, the episode set."""
    rollout = dict(sorted(config["rollout"].items()))
    seed = policy_seeds(config, preset)[0] if seed is None else int(seed)
    inputs = {k: config["inputs"][k] for k in ("frames", "frame_skip", "height", "width", "state_key", "action_key",
                                               "camera")}
    model = {**model_settings(config, preset), "checkpoint": policy_checkpoint(config, preset, seed)}
    episodes = {"set": rollout["set"], **dict(sorted(config["sets"][rollout["set"]].items()))}
    return {"model": model, "policy": seed, "backbone": backbone_spec(config, preset), "inputs": inputs,
            "demos": demos_settings(config), "probe_steps": config["probe"]["steps"], "episodes": episodes,
            "rollout": {k: v for k, v in rollout.items()
                        if k not in ("margin", "alpha", "bootstrap", "reference", "also_against", "videos", "set",
                             "nearest_demo_subsets")},
            "numerics": numerics_settings(config), "device": config["device"]}


def nearest_demo_settings(config: dict, name: str) -> dict:
    """The nearest-demo baseline on episode set `name`: the demonstrations, the set, the rollout's step limit."""
    return {"demos": demos_settings(config), "episodes": {"set": name, **dict(sorted(config["sets"][name].items()))},
            "max_steps": config["rollout"]["max_steps"], "subsets": sorted(config["rollout"]["nearest_demo_subsets"])}


def rollout_metrics_settings(config: dict, reference: int | None = None) -> dict:
    """The answers: the pre-specified decision (margin, alpha, the reference: rollout.reference, or one of
    rollout.also_against) and the bootstrap's resamples."""
    rollout = config["rollout"]
    return {"margin": rollout["margin"], "alpha": rollout["alpha"], "reference": reference or reference_k(config),
            "bootstrap": rollout["bootstrap"], "steps": sorted(rollout["steps"])}


def data_settings(config: dict, limit: int | None = None) -> dict:
    """What decides a run's samples: synthetic, the seed x prompt pairs; real data, the seeds (the
    windows come from the data). `limit`: only the first samples (seed-major) are used."""
    inputs = input_settings(config)
    if inputs["source"] == "synthetic":
        return {"inputs": inputs, "samples": samples(config)[:limit]}
    return {"inputs": inputs, "seeds": config["seeds"][:limit], "limit": limit}


def model_settings(config: dict, preset: str) -> dict:
    """The action head: built from settings (its weights from model_seed) or a checkpoint's."""
    spec = config["presets"][preset]
    numerics = numerics_settings(config)
    if "checkpoint" in spec:  # the weights come from the checkpoint, not from model_seed
        return {"preset": preset, **spec, "device": config["device"], "numerics": numerics}
    head = {k: v for k, v in spec.items() if k not in ("backbone", "tokenizer", "extract_layer", "dtype")}
    return {"preset": preset, **head, "model_seed": config["model_seed"], "device": config["device"],
            "numerics": numerics}


def numerics_settings(config: dict) -> dict:
    """What fixes a model job's numbers (numerics.py): part of every model stage's settings and features identity."""
    return dict(sorted(config["numerics"].items()))


def trained_from(config: dict, preset: str) -> str | None:
    """The preset whose train rule writes this checkpoint preset's folder (results/<p>/train/checkpoint)."""
    folder = config["presets"][preset].get("checkpoint", "")
    match = re.fullmatch(r"results/([^/]+)/train/(?:seed-\d+/)?checkpoint/?", folder)
    source = config["presets"].get(match.group(1)) if match else None
    return match.group(1) if source is not None and "checkpoint" not in source else None  # a checkpoint is not trained


def trained_presets(config: dict) -> list[str]:
    """Presets that some checkpoint preset trains: their features include training draws."""
    return sorted({p for p in (trained_from(config, q) for q in config["presets"]) if p})


def feature_preset(config: dict, preset: str) -> str:
    """Whose features (and Hub manifest) a preset uses: a checkpoint trained here on a frozen backbone sees
    exactly its source preset's hiddens, so it reuses them instead of running the backbone again."""
    return trained_from(config, preset) or preset


def backbone_spec(config: dict, preset: str) -> dict:
    """The video backbone of a preset, as data: what the features stage builds and a checkpoint references."""
    from mimic_redundancy.model.checkpoints import CheckpointError, checkpoint_backbone

    spec = config["presets"][preset]
    if "checkpoint" in spec:
        source = trained_from(config, preset)
        if source:
            return backbone_spec(config, source)
        try:
            return checkpoint_backbone(spec["checkpoint"])
        except CheckpointError:  # not there yet: the job reports it (Snakemake names the missing files first)
            return {"kind": "checkpoint", "folder": spec["checkpoint"]}
    return preset_backbone(spec, config["model_seed"])


def train_data_settings(config: dict) -> dict:
    """The training windows: every window of the selected episodes (synthetic: a pool of its own seeds)."""
    train = config["train"]
    inputs = input_settings(config)
    if inputs["source"] == "synthetic":
        return {"inputs": inputs, "samples": list(zip(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + train["synthetic_samples"]),
                                                      [config["prompts"][i % len(config["prompts"])]
                                                       for i in range(train["synthetic_samples"])]))}
    episodes = inputs.get("episodes") if train["episodes"] == "inputs" else train["episodes"]
    return {"inputs": {**inputs, "episodes": episodes, "windows_per_episode": None}, "seeds": [train["seeds"][0]],
            "limit": None}


def _features_identity(config: dict, preset: str) -> dict:
    """What decides each features file's content (digested; the device is left out on purpose)."""
    source = feature_preset(config, preset)
    backbone = backbone_spec(config, source)
    model = model_settings(config, source)
    dims = {k: model[k] for k in ("chunk_len", "action_dim", "joint_dim", "checkpoint") if k in model}
    numerics = numerics_settings(config)
    probe = {"backbone": backbone, "dims": dims, "data": data_settings(config), "numerics": numerics}
    train = None
    if source in trained_presets(config):
        train = {"backbone": backbone, "dims": dims, "data": train_data_settings(config),
                 "draws": config["features"]["draws"], "seed": config["train"]["seeds"][0], "numerics": numerics}
    return {"inference": probe, "train": train}


def features_digest(config: dict, preset: str, kind: str) -> str:
    """The digest a head stage requires of the features it reads (kind: inference or train)."""
    from mimic_redundancy.core.io import config_digest

    return config_digest(_features_identity(config, preset)[kind])[1]


def features_settings(config: dict, preset: str) -> dict:
    """The features stage: one backbone build, inference rows for every probe sample, and training draws
    when a checkpoint preset trains this preset."""
    identity = _features_identity(config, preset)
    synthetic = config["inputs"]["source"] == "synthetic"
    model = model_settings(config, preset)  # only what fixes the data's dimensions: the head may change freely
    dims = {k: model[k] for k in ("preset", "chunk_len", "action_dim", "joint_dim", "checkpoint") if k in model}
    return {"model": dims, **identity, "device": config["device"], "numerics": numerics_settings(config),
            "prompts": config["prompts"] if synthetic else []}


def checkpoint_files(config: dict, preset: str, folder: str | None = None) -> list[str]:
    """A checkpoint preset's files (or those of another checkpoint `folder`, e.g. one policy's): rule inputs, so a
    checkpoint the train rule writes is made first."""
    from mimic_redundancy.model.checkpoints import CHECKPOINT_FILES, FORMAT_V1, FORMAT_V2

    folder = folder or config["presets"][preset].get("checkpoint")
    if not folder:
        return []
    form = FORMAT_V2
    try:
        import json

        form = json.loads((Path(folder) / "config.json").read_text()).get("format", FORMAT_V2)
    except (OSError, ValueError, AttributeError):
        pass
    names = CHECKPOINT_FILES[FORMAT_V1] if form == FORMAT_V1 else CHECKPOINT_FILES[FORMAT_V2]
    return [f"{folder.rstrip('/')}/{name}" for name in names]


def prefetch_settings(config: dict, preset: str) -> dict:
    """What decides the manifest's content; the timeout is left out on purpose (no rerun for it)."""
    from mimic_redundancy.core.hub import required_repos

    # a dataset's files are fetched for the episodes that are probed and those that are trained on
    inputs = {**config["inputs"], "train_episodes": config["train"]["episodes"]}
    return {"repos": required_repos(backbone_spec(config, preset), inputs), "cache_dir": config["hub"]["cache_dir"]}


def validate_settings(config: dict, preset: str) -> dict:
    limit = config["validate"]["fidelity_samples"]
    return {"model": model_settings(config, preset), "features_digest": features_digest(config, preset, "inference"),
            "limit": limit, "steps": config["probe"]["steps"], "tolerance": config["validate"]["fidelity_tolerance"]}


def probe_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "features_digest": features_digest(config, preset, "inference"),
            "steps": config["probe"]["steps"], "batch_size": config["probe"]["batch_size"]}


def sweep_settings(config: dict, preset: str) -> dict:
    return {"model": model_settings(config, preset), "features_digest": features_digest(config, preset, "inference"),
            "batch_size": config["probe"]["batch_size"], "sweep_steps": sorted(config["sweep"]["steps"]),
            "reference_steps": config["sweep"]["reference_steps"], "repeats": config["sweep"]["repeats"]}


def early_stop_settings(config: dict) -> dict:
    """The early-stopping rules read probe.npz and sweep.npz alone: only their own keys (and the intervals'
    metrics.bootstrap) rerun them."""
    return {**config["early_stop"], "bootstrap": config["metrics"]["bootstrap"]}


def _depth_identity(config: dict, preset: str) -> dict:
    """What decides the depth features' content (digested): the backbone, the samples and the video times."""
    source = feature_preset(config, preset)
    model = model_settings(config, source)
    dims = {k: model[k] for k in ("chunk_len", "action_dim", "joint_dim", "checkpoint") if k in model}
    return {"backbone": backbone_spec(config, source), "dims": dims, "data": data_settings(config),
            "times": sorted(float(t) for t in config["depth"]["times"]), "numerics": numerics_settings(config)}


def depth_features_settings(config: dict, preset: str) -> dict:
    """The depth_features stage: one backbone build, every probe sample at every video-denoising time."""
    model = model_settings(config, preset)
    dims = {k: model[k] for k in ("preset", "chunk_len", "action_dim", "joint_dim", "checkpoint") if k in model}
    return {"model": dims, "depth": _depth_identity(config, preset), "device": config["device"],
            "numerics": numerics_settings(config)}


def depth_settings(config: dict, preset: str) -> dict:
    """The depth stage (head only): MimicVideo.sample at every video time, from the depth features."""
    from mimic_redundancy.core.io import config_digest

    return {"model": model_settings(config, preset), "features_digest": config_digest(_depth_identity(config, preset))[1],
            "steps": config["depth"]["steps"], "batch_size": config["probe"]["batch_size"]}


def backbone_settings(config: dict, preset: str) -> dict:
    """The per-step recompute analysis: the whole model (backbone + head) on the first `backbone.samples`."""
    limit = config["backbone"]["samples"]
    return {"model": model_settings(config, preset), "backbone": backbone_spec(config, preset),
            "features_model": model_settings(config, feature_preset(config, preset)),
            "data": data_settings(config, None if limit == "all" else limit), "steps": config["probe"]["steps"],
            "fixed_video_noise": config["backbone"]["fixed_video_noise"]}


def train_settings(config: dict, preset: str, seed: int | None = None) -> dict:
    """Training one policy (train seed `seed`; None: the first) reads the training draws of the features; the
    checkpoint references the backbone."""
    if preset not in trained_presets(config):
        raise ConfigError(f"config key 'presets': preset '{preset}' is trained, but no preset points at its checkpoint, "
                          "so its features hold no training draws; add e.g. "
                          f"'{preset}-trained: {{checkpoint: results/{preset}/train/checkpoint}}' under 'presets'")
    train = config["train"]
    return {"model": model_settings(config, preset), "backbone": backbone_spec(config, preset),
            "features_digest": features_digest(config, preset, "train"),
            "check_digest": features_digest(config, preset, "inference"), "draws": config["features"]["draws"],
            "seed": train["seeds"][0] if seed is None else int(seed),
            **{k: train[k] for k in ("steps", "batch_size", "lr", "check_samples")},
            **({"flow_times": train["flow_times"]} if train["flow_times"] != "library" else {}),
            **({"lr_schedule": train["lr_schedule"]} if train["lr_schedule"] != "constant" else {}),
            **({"normalize_state": True} if train["normalize_state"] else {})}


def compare_settings(config: dict) -> dict:
    return {"presets": run_presets(config), **metrics_settings(config)}


def metrics_settings(config: dict) -> dict:
    # keys sorted: Snakemake compares params as text, so the key order of a --configfile must not rerun a stage
    return dict(sorted(config["metrics"].items()))


def plot_settings(config: dict) -> dict:
    return dict(sorted(config["plot"].items()))
