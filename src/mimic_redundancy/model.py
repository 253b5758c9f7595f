"""Build the mimic-video model that a preset describes, with seeded weights, on a chosen device."""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .tokenizer import load_tokenizer


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"config device '{name}' asks for CUDA, but torch sees no CUDA device; "
                           "set device: auto or device: cpu")
    return torch.device(name)


@contextmanager
def _tokenizer_for_wrapper(tokenizer):
    """Hand `tokenizer` to CosmosPredictWrapper's random-weight init, which hard-codes
    T5TokenizerFast.from_pretrained("google-t5/t5-small") (a silent <unk>-only tokenizer offline)."""
    from mimic_video import cosmos_predict

    class Given:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return tokenizer

    original = cosmos_predict.T5TokenizerFast
    cosmos_predict.T5TokenizerFast = Given
    try:
        yield
    finally:
        cosmos_predict.T5TokenizerFast = original


LIBRARY_DIMS = {"chunk_len": 32, "action_dim": 20, "joint_dim": 32}  # MimicVideo's defaults
CONSTRUCTOR_DIMS = {"chunk_len": "action_chunk_len", "action_dim": "dim_action", "joint_dim": "dim_joint_state"}
CHECKPOINT_FORMAT = "mimic-redundancy/checkpoint-v1"
CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")


class DimensionError(ValueError):
    """The data and the model disagree on a dimension; the message names both sides."""


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file."""


def read_checkpoint_config(folder) -> dict:
    import json
    from pathlib import Path

    folder = Path(folder)
    missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: checkpoint files {missing} not found; a checkpoint folder holds "
                              f"{list(CHECKPOINT_FILES)} (written by the train rule; see README 'Checkpoints')")
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as error:
        raise CheckpointError(f"{folder / 'config.json'}: not valid JSON ({error})") from None
    if config.get("format") != CHECKPOINT_FORMAT or not isinstance(config.get("mimic_video"), dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected format {CHECKPOINT_FORMAT!r} with a "
                              f"'mimic_video' object of MimicVideo constructor arguments")
    backbone = config.get("video_backbone", {})
    if backbone.get("kind") != "tiny-random" or not isinstance(backbone.get("extract_layer"), int):
        raise CheckpointError(f"{folder / 'config.json'}: 'video_backbone' must be "
                              "{\"kind\": \"tiny-random\", \"extract_layer\": <int>} (the only backbone a checkpoint "
                              "holds whole)")
    return config


def model_dims(model: dict) -> dict:
    """The dimensions the model config fixes, each with where it is set: {key: (value, where)}."""
    if "checkpoint" in model:
        args = read_checkpoint_config(model["checkpoint"])["mimic_video"]
        where = f"checkpoint {model['checkpoint']}/config.json"
        return {key: (args.get(arg, LIBRARY_DIMS[key]), f"{where} ({arg})") for key, arg in CONSTRUCTOR_DIMS.items()}
    return {key: (model[key], f"config presets.{model['preset']}.{key}") for key in LIBRARY_DIMS if key in model}


def resolve_dims(model: dict, data: dict) -> dict:
    """chunk_len, action_dim and joint_dim: from the model config where it sets them, else from the data
    (data.data_dims), else mimic-video's defaults; a disagreement raises DimensionError naming both."""
    fixed = model_dims(model)
    for key, (value, where) in data.items():
        if key in fixed and fixed[key][0] != value:
            fix = ("use data with matching dimensions, or train a checkpoint on this data" if "checkpoint" in model
                   else f"remove {fixed[key][1].split()[-1]} from the config to take it from the data")
            raise DimensionError(f"{key} mismatch: {where} has {value}, but {fixed[key][1]} says {fixed[key][0]}; {fix}")
    return {key: fixed.get(key, data.get(key, (LIBRARY_DIMS[key],)))[0] for key in LIBRARY_DIMS}


def _tiny_wrapper(tokenizer, extract_layer: int):
    from mimic_video.cosmos_predict import CosmosPredictWrapper

    with _tokenizer_for_wrapper(tokenizer):
        return CosmosPredictWrapper(extract_layer=extract_layer, random_weights=True, tiny=True)


def build_model(model: dict, device: torch.device, snapshots: dict | None = None, dims: dict | None = None):
    """MimicVideo(dim, CosmosPredictWrapper(extract_layer, ...), depth, dims) in eval mode.

    backbone 'tiny-random': the tiny random-weight wrapper with the preset's tokenizer; otherwise the
    pretrained pipeline from its local snapshot folder (`snapshots`: role -> folder, from hub.local_snapshots).
    A 'checkpoint' preset loads a checkpoint folder (load_checkpoint). Random weights are drawn on the
    CPU from `model_seed`, so they are identical on every device.
    """
    from mimic_video import MimicVideo
    from mimic_video.cosmos_predict import CosmosPredictWrapper

    if "checkpoint" in model:
        return load_checkpoint(model["checkpoint"]).to(device).eval()
    dims = dims or resolve_dims(model, {})
    snapshots = snapshots or {}
    torch.manual_seed(model["model_seed"])
    if model["backbone"] == "tiny-random":
        wrapper = _tiny_wrapper(load_tokenizer(model["tokenizer"], snapshots.get("tokenizer")), model["extract_layer"])
    else:
        wrapper = CosmosPredictWrapper(model_name=str(snapshots["backbone"]), extract_layer=model["extract_layer"],
                                       random_weights=False)
    net = MimicVideo(model["dim"], wrapper, depth=model["depth"],
                     **{arg: dims[key] for key, arg in CONSTRUCTOR_DIMS.items()})
    net._mimic_redundancy_spec = {"mimic_video": {"dim": model["dim"], "depth": model["depth"],
                                                  **{arg: dims[key] for key, arg in CONSTRUCTOR_DIMS.items()}},
                                  "video_backbone": {"kind": model["backbone"] if isinstance(model["backbone"], str)
                                                     else "pretrained", "extract_layer": model["extract_layer"]}}
    return net.to(device).eval()


def save_checkpoint(net, folder, provenance: dict) -> None:
    """model.safetensors (every weight), config.json (constructor arguments) and tokenizer.json; no pickles.
    Written into a temporary folder and renamed, so an interrupted save leaves no checkpoint."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_model

    spec = getattr(net, "_mimic_redundancy_spec", None)
    if spec is None or spec["video_backbone"]["kind"] != "tiny-random":
        raise CheckpointError("only models with the tiny-random video backbone can be saved whole; "
                              "a pretrained backbone stays on the Hub")
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(net, str(tmp / "model.safetensors"))  # handles T5's tied embeddings
    net.video_predict_wrapper.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    (tmp / "config.json").write_text(json.dumps({"format": CHECKPOINT_FORMAT, **spec, "provenance": provenance},
                                                indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def load_checkpoint(folder):
    """The MimicVideo a checkpoint folder describes, with its weights, on the CPU, in eval mode."""
    from pathlib import Path

    from mimic_video import MimicVideo
    from safetensors.torch import load_model
    from transformers import T5TokenizerFast

    folder = Path(folder)
    config = read_checkpoint_config(folder)
    tokenizer = T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    wrapper = _tiny_wrapper(tokenizer, config["video_backbone"]["extract_layer"])
    try:
        net = MimicVideo(video_predict_wrapper=wrapper, **config["mimic_video"])
    except TypeError as error:
        raise CheckpointError(f"{folder / 'config.json'}: 'mimic_video' is not valid MimicVideo arguments: {error}") from None
    try:
        load_model(net, str(folder / "model.safetensors"), strict=True)
    except Exception as error:
        raise CheckpointError(f"{folder / 'model.safetensors'}: weights do not fit the model config.json describes "
                              f"({type(error).__name__}: {str(error)[:500]})") from None
    net._mimic_redundancy_spec = {k: config[k] for k in ("mimic_video", "video_backbone")}
    return net.eval()


def net_dims(net) -> dict:
    return {"chunk_len": net.action_chunk_len, "action_dim": net.dim_action, "joint_dim": net.dim_joint_state}


def parameter_counts(net) -> dict[str, int]:
    wrapper = sum(p.numel() for p in net.video_predict_wrapper.parameters())
    head = sum(p.numel() for p in net.action_parameters())
    return {"total": sum(p.numel() for p in net.parameters()), "action_head": head, "video_wrapper": wrapper}


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    names = ["torch", "mimic-video", "diffusers", "transformers", "huggingface_hub", "numpy"]
    return {"python": platform.python_version(), **{n: version(n) for n in names}}
