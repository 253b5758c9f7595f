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
    if not isinstance(backbone, dict) or backbone.get("kind") not in kinds \
            or not isinstance(backbone.get("extract_layer"), int):
        raise CheckpointError(f"{path}: 'video_backbone' must be an object with kind in {list(kinds)} and an "
                              f"integer extract_layer, got {backbone!r}")
    if backbone["kind"] == "pretrained" and not all(isinstance(backbone.get(k), str) for k in ("repo", "revision")):
        raise CheckpointError(f"{path}: a pretrained 'video_backbone' names its Hub 'repo' and 'revision' "
                              f"(the resolved commit), got {backbone!r}")
    return config


def checkpoint_backbone(folder) -> dict:
    """The backbone a checkpoint was trained on, as a backbone spec (config.backbone_spec's form)."""
    config = read_checkpoint_config(folder)
    backbone = dict(config["video_backbone"])
    if config["format"] == FORMAT_V1:  # the wrapper's weights and tokenizer are in the folder
        return {"kind": "checkpoint-v1", "folder": str(folder), "extract_layer": backbone["extract_layer"],
                "dtype": "float32"}
    return {"dtype": "float32", **backbone}
