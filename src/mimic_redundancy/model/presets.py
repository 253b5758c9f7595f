"""What a model preset's settings say to build, without building it (no torch: the config reads it at DAG build)."""
from __future__ import annotations


def preset_backbone(spec: dict, model_seed: int) -> dict:
    """The backbone spec of a model preset's settings (backbone, tokenizer, extract_layer, dtype)."""
    common = {"extract_layer": spec["extract_layer"], "dtype": spec.get("dtype", "float32")}
    if spec["backbone"] == "tiny-random":
        return {"kind": "tiny-random", "model_seed": model_seed, "tokenizer": spec["tokenizer"], **common}
    return {"kind": "pretrained", "repo": spec["backbone"]["repo"], "revision": spec["backbone"].get("revision", "main"),
            **common}
