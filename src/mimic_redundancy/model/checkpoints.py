"""Checkpoint folders as files: formats, config.json checks and the backbone a checkpoint references.

JSON only (no torch), so the DAG can read a checkpoint's backbone reference while it is being built.
  v1  model.safetensors (the tiny model whole: wrapper + head), config.json, tokenizer.json
  v2  model.safetensors (the action head alone), config.json with `video_backbone`: a pretrained Hub repo at
      its resolved 40-hex commit, or the tiny random wrapper's recipe (model_seed, tokenizer), with
      extract_layer and dtype
"""
from __future__ import annotations

import json
from pathlib import Path

FORMAT_V1 = "mimic-redundancy/checkpoint-v1"
FORMAT_V2 = "mimic-redundancy/checkpoint-v2"
CHECKPOINT_FILES = {FORMAT_V1: ("model.safetensors", "config.json", "tokenizer.json"),
                    FORMAT_V2: ("model.safetensors", "config.json")}


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file."""


# the fields of config.json the loader reads, as (lowest, highest) integers: the config schema's ranges for the
# preset keys they come from (dim, depth, extract_layer, model_seed, chunk_len, action_dim, joint_dim)
HEAD_FIELDS = {"dim": (8, 65536), "depth": (1, 1024), "dim_video_hidden": (1, 65536), "action_chunk_len": (1, 4096),
               "dim_action": (1, 4096), "dim_joint_state": (1, 4096)}
BACKBONE_INTEGERS = {"extract_layer": (0, 1024), "model_seed": (0, 2**63 - 1)}
BACKBONE_DTYPES = ("float32", "bfloat16", "float16")
FIX = "copy the checkpoint folder again, or rerun the train rule that wrote it (docs/training.md)"
JSON_TYPES = {str: "a string", float: "a fractional number", bool: "a boolean", type(None): "null", list: "an array",
              dict: "an object"}


def _integer_problem(path: Path, key: str, value, low: int, high: int) -> str | None:
    """Why `value` is not an integer in [low, high] (None: it is), naming the key and how to fix it."""
    if isinstance(value, int) and not isinstance(value, bool):
        if low <= value <= high:
            return None
        return f"{path}: '{key}' must be an integer from {low} to {high}, got {value}; {FIX}"
    try:  # a number written as a string ("512") or as a float (512.0): say how to write it
        number = float(value) if isinstance(value, (str, float)) else None
    except ValueError:
        number = None
    hint = (f"write it as a JSON integer, \"{key.split('.')[-1]}\": {int(number)}; otherwise "
            if number is not None and number.is_integer() and low <= number <= high else "")
    return (f"{path}: '{key}' must be an integer from {low} to {high}, got {value!r} "
            f"({JSON_TYPES.get(type(value), type(value).__name__)}); {hint}{FIX}")


def check_fields(path: Path, config: dict) -> None:
    """Type and range of every field the loader reads (MimicVideo's arguments, the backbone reference), so a
    hand-edited config.json fails here, naming the key, instead of deep in torch."""
    args = config["mimic_video"]
    unknown = sorted(set(args) - set(HEAD_FIELDS))
    if unknown or "dim" not in args:
        raise CheckpointError(f"{path}: 'mimic_video' holds MimicVideo's arguments {list(HEAD_FIELDS)} ('dim' "
                              f"required), got {sorted(args)}{f'; unknown: {unknown}' if unknown else ''}; {FIX}")
    backbone = config["video_backbone"]
    fields = [(f"mimic_video.{k}", args[k], *HEAD_FIELDS[k]) for k in HEAD_FIELDS if k in args]
    fields += [(f"video_backbone.{k}", backbone[k], *BACKBONE_INTEGERS[k]) for k in BACKBONE_INTEGERS if k in backbone]
    for key, value, low, high in fields:
        if problem := _integer_problem(path, key, value, low, high):
            raise CheckpointError(problem)
    if backbone.get("dtype", "float32") not in BACKBONE_DTYPES:
        raise CheckpointError(f"{path}: 'video_backbone.dtype' must be one of {list(BACKBONE_DTYPES)}, got "
                              f"{backbone['dtype']!r}; {FIX}")
    if not isinstance(config.get("joint_normalizer", False), bool):
        raise CheckpointError(f"{path}: 'joint_normalizer' must be true or false, got "
                              f"{config['joint_normalizer']!r}; {FIX}")
    if config["format"] == FORMAT_V2 and backbone["kind"] == "tiny-random":
        tokenizer = backbone.get("tokenizer")
        if "model_seed" not in backbone or not (tokenizer == "builtin" or isinstance(tokenizer, dict)
                                                and isinstance(tokenizer.get("repo"), str)):
            raise CheckpointError(f"{path}: a tiny-random 'video_backbone' is its recipe: an integer 'model_seed' and "
                                  f"a 'tokenizer' ('builtin' or a Hub repo {{\"repo\": ...}}), got {backbone!r}; {FIX}")


def read_checkpoint_config(folder) -> dict:
    """config.json of a checkpoint folder, checked: a known format and every file that format needs."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a checkpoint folder holds config.json and model.safetensors "
                              "(written by the train rule; see docs/training.md)")
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error}); copy the checkpoint folder again, or rerun "
                              "the train rule that wrote it") from None
    if not isinstance(config, dict) or config.get("format") not in CHECKPOINT_FILES:
        found = config.get("format") if isinstance(config, dict) else None
        raise CheckpointError(f"{path}: unknown checkpoint format {found!r}; this pipeline reads "
                              f"{sorted(CHECKPOINT_FILES)} (retrain with the train rule to get {FORMAT_V2!r})")
    missing = [name for name in CHECKPOINT_FILES[config["format"]] if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: checkpoint files {missing} not found; a {config['format']} checkpoint "
                              f"holds {list(CHECKPOINT_FILES[config['format']])}")
    if not isinstance(config.get("mimic_video"), dict):
        raise CheckpointError(f"{path}: expected a 'mimic_video' object of MimicVideo constructor arguments")
    backbone = config.get("video_backbone")
    kinds = {FORMAT_V1: ("tiny-random",), FORMAT_V2: ("tiny-random", "pretrained")}[config["format"]]
    if not isinstance(backbone, dict) or backbone.get("kind") not in kinds or "extract_layer" not in backbone:
        raise CheckpointError(f"{path}: 'video_backbone' must be an object with kind in {list(kinds)} and an "
                              f"integer extract_layer, got {backbone!r}")
    if backbone["kind"] == "pretrained" and not all(isinstance(backbone.get(k), str) for k in ("repo", "revision")):
        raise CheckpointError(f"{path}: a pretrained 'video_backbone' names its Hub 'repo' and 'revision' "
                              f"(the resolved commit), got {backbone!r}")
    check_fields(path, config)
    return config


FRAME_KEYS = ("height", "width", "frames", "frame_skip")  # the inputs.* keys that shape what the policy sees


def trained_frames(config: dict) -> dict | None:
    """What a policy saw in training (a checkpoint's config.json, read_checkpoint_config): {height, width, frames,
    frame_skip: its inputs.* settings, fps: the data's rate (None: no rate, e.g. synthetic videos, or unknown),
    where: the config.json keys it was read from}. The train rule records it (provenance.trained_frames); a
    checkpoint trained here before it did gives it from the training features' settings it recorded
    (provenance.train_features.data.inputs; fps for demonstrations made here). None: a checkpoint that records
    neither (trained elsewhere, or format v1)."""
    provenance = config.get("provenance") if isinstance(config.get("provenance"), dict) else {}
    if isinstance(provenance.get("trained_frames"), dict):
        return {**provenance["trained_frames"], "where": "provenance.trained_frames"}
    features = provenance.get("train_features")
    inputs = (features.get("data") or {}).get("inputs") if isinstance(features, dict) else None
    if not isinstance(inputs, dict) or not {"height", "width"} <= set(inputs):
        return None
    demos = inputs.get("demos") if isinstance(inputs.get("demos"), dict) else {}
    return {**{k: inputs[k] for k in FRAME_KEYS if k in inputs}, "fps": demos.get("fps"),
            "where": "provenance.train_features.data.inputs"}


def checkpoint_backbone(folder) -> dict:
    """The backbone a checkpoint was trained on, as a backbone spec (config.backbone_spec's form)."""
    config = read_checkpoint_config(folder)
    backbone = dict(config["video_backbone"])
    if config["format"] == FORMAT_V1:  # the wrapper's weights and tokenizer are in the folder
        return {"kind": "checkpoint-v1", "folder": str(folder), "extract_layer": backbone["extract_layer"],
                "dtype": "float32"}
    return {"dtype": "float32", **backbone}
