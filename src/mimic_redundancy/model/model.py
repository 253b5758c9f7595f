"""Build the two halves of a mimic-video model: the video backbone (the cost) and the action head.

The backbone (CosmosPredictWrapper: transformer, VAE, T5 encoder) runs only in the `features` stage and
the `backbone` analysis; every other model stage builds the action head alone
(`MimicVideo(dim, None, dim_video_hidden=...)`) and reads the hiddens the features stage cached.
A random head's weights are drawn, as the library draws them in `torch.manual_seed(model_seed);
MimicVideo(dim, CosmosPredictWrapper(...))`, from torch's CPU RNG where the backbone's construction left it:
build_backbone records that state (`wrapper.head_rng_state`), the features files carry it (metadata
`head_rng_state`), and build_head draws the head from it, so the head-only stages, a model built whole and the
library's own construction have the same head, tensor for tensor.

Checkpoints (`save_checkpoint`): format v2 holds the action head alone and references the backbone
(a Hub repo at its resolved commit, or the seeded tiny random wrapper); format v1 (the tiny model saved
whole, with its tokenizer) still loads.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from mimic_redundancy.data.tokenizer import load_tokenizer
from mimic_redundancy.model.checkpoints import FORMAT_V2, CheckpointError, read_checkpoint_config

LIBRARY_DIMS = {"chunk_len": 32, "action_dim": 20, "joint_dim": 32}  # MimicVideo's defaults
CONSTRUCTOR_DIMS = {"chunk_len": "action_chunk_len", "action_dim": "dim_action", "joint_dim": "dim_joint_state"}
WRAPPER_PREFIX = "video_predict_wrapper."
HEAD_ARGUMENTS = ("dim", "depth", "dim_video_hidden", "action_chunk_len", "dim_action", "dim_joint_state")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DimensionError(ValueError):
    """The data and the model disagree on a dimension; the message names both sides."""


class BackboneError(RuntimeError):
    """A video backbone that cannot be built here; the message says what to install or fetch."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"config device '{name}' asks for CUDA, but torch sees no CUDA device; "
                           "set device: auto or device: cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, where: str) -> torch.dtype:
    """The backbone dtype, after checking that this device runs the ops the backbone needs in it."""
    dtype = DTYPES[name]
    if dtype == torch.float32:
        return dtype
    try:
        with torch.autocast(device.type, dtype=dtype):
            x = torch.ones(2, 4, 3, 3, 3, device=device)
            torch.nn.functional.conv3d(x, torch.ones(4, 4, 1, 1, 1, device=device)).sum().item()
            (x.flatten(1) @ x.flatten(1).T).sum().item()
    except Exception as error:
        raise RuntimeError(f"{where}: dtype {name} does not run on device {device} "
                           f"({type(error).__name__}: {str(error)[:200]}); use dtype float32 (or bfloat16) "
                           "there, or run this stage on a GPU") from None
    return dtype


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


# -- dimensions ------------------------------------------------------------------------------------------------

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


# -- the video backbone ----------------------------------------------------------------------------------------

def _tiny_wrapper(tokenizer, extract_layer: int):
    from mimic_video.cosmos_predict import CosmosPredictWrapper

    with _tokenizer_for_wrapper(tokenizer):
        return CosmosPredictWrapper(extract_layer=extract_layer, random_weights=True, tiny=True)


def check_guardrail(snapshot, guardrail_snapshot) -> None:
    """Fail before any GPU work when the pipeline needs the safety checker and it is not installed or fetched."""
    from mimic_redundancy.core.hub import needs_guardrail

    if not needs_guardrail(snapshot):
        return
    try:
        import cosmos_guardrail  # noqa: F401
    except Exception as error:  # not installed, or installed beside a torchvision that does not fit this torch
        raise BackboneError(
            f"{Path(snapshot) / 'model_index.json'} has no safety_checker, so diffusers' CosmosVideoToWorldPipeline "
            "builds NVIDIA's CosmosSafetyChecker, which needs the package cosmos_guardrail "
            f"({type(error).__name__}: {error}): install it on the GPU nodes with `pip install -e '.[cosmos]'` "
            "(CUDA torch only), and fetch its weights on the head node with prefetch (the guardrail repo is "
            "gated: export HF_TOKEN there; see docs/cluster.md)") from None
    if guardrail_snapshot is None:
        raise BackboneError("the backbone needs NVIDIA's safety checker, but the manifest lists no 'guardrail' repo: "
                            "rerun prefetch on the head node with HF_TOKEN set (see docs/cluster.md)")


def _pretrained_wrapper(snapshot, extract_layer: int, dtype: torch.dtype):
    """CosmosPredictWrapper(model_name=<local snapshot>) with the pipeline *loaded* in `dtype` (the library
    loads it in float32 and has no dtype argument; casting afterwards would cost the float32 peak)."""
    from mimic_video.cosmos_predict import CosmosPredictWrapper

    class LoadedIn(CosmosPredictWrapper):
        def _init_pretrained(self, model_name: str):
            from diffusers import CosmosVideoToWorldPipeline

            pipeline = CosmosVideoToWorldPipeline.from_pretrained(model_name, torch_dtype=dtype)
            self.vae, self.transformer = pipeline.vae, pipeline.transformer
            self.text_encoder, self.tokenizer = pipeline.text_encoder, pipeline.tokenizer
            self.vae_temporal_compression_ratio = self.vae.config.temporal_compression_ratio
            self.vae_spatial_compression_ratio = self.vae.config.spatial_compression_ratio
            self.vae_latent_channels = self.vae.config.latent_channels
            del pipeline

    return LoadedIn(model_name=str(snapshot), extract_layer=extract_layer, random_weights=False)


def build_backbone(spec: dict, device: torch.device, snapshots: dict | None = None):
    """The video backbone a spec (config.backbone_spec) describes, in eval mode on `device`.

    tiny-random: mimic-video's tiny random wrapper, weights seeded by spec['model_seed'], cast to the dtype
    (random weights: nothing to load); full-random: the 7B shape with random weights, created on the device in
    the dtype; pretrained: the diffusers pipeline from its verified local snapshot,
    loaded in the dtype; checkpoint-v1: the tiny wrapper saved whole in an old checkpoint.

    The random kinds (tiny-random, full-random) seed torch's RNG with spec['model_seed'] and record torch's CPU RNG
    state right after the wrapper's construction, before anything else draws, as `wrapper.head_rng_state` (a uint8
    tensor): where the library's `torch.manual_seed(model_seed); MimicVideo(dim, CosmosPredictWrapper(...))` draws
    its action head from (build_head; full-random built on a GPU draws its weights from the GPU's RNG, so there the
    state is not a CPU build's). Loaded backbones (pretrained, checkpoint-v1) draw no random construction to follow:
    their `head_rng_state` is None, and a random head on them is seeded from model_seed (build_head)."""
    import logging
    import time

    start = time.perf_counter()
    snapshots = snapshots or {}
    dtype = resolve_dtype(spec.get("dtype", "float32"), device, f"backbone dtype of {spec.get('kind')}")
    if spec["kind"] not in ("tiny-random", "full-random", "checkpoint-v1", "pretrained"):
        raise ValueError(f"unknown backbone kind {spec['kind']!r}")
    if spec["kind"] == "pretrained":  # checked before anything loads
        if "backbone" not in snapshots:
            raise BackboneError("the pretrained backbone is not in the prefetch manifest: run prefetch")
        check_guardrail(snapshots["backbone"], snapshots.get("guardrail"))
    head_rng_state = None
    if spec["kind"] in RANDOM_BACKBONES:
        torch.manual_seed(spec["model_seed"])
    if spec["kind"] == "tiny-random":
        wrapper = _tiny_wrapper(load_tokenizer(spec["tokenizer"], snapshots.get("tokenizer")), spec["extract_layer"])
        head_rng_state = torch.get_rng_state()
        wrapper = wrapper.to(dtype)
    elif spec["kind"] == "full-random":  # the 7B Cosmos shape with random weights (gpu-check), made in place
        from mimic_video.cosmos_predict import CosmosPredictWrapper

        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device), _tokenizer_for_wrapper(load_tokenizer("builtin")):
                wrapper = CosmosPredictWrapper(extract_layer=spec["extract_layer"], random_weights=True, tiny=False)
            head_rng_state = torch.get_rng_state()
        finally:
            torch.set_default_dtype(default)
    elif spec["kind"] == "checkpoint-v1":
        from transformers import T5TokenizerFast

        folder = Path(spec["folder"])
        tokenizer = _load_checkpoint_tokenizer(folder, T5TokenizerFast)
        wrapper = _tiny_wrapper(tokenizer, spec["extract_layer"])
        state = _read_weights(folder / "model.safetensors", lambda k: k.startswith(WRAPPER_PREFIX))
        _load_state(wrapper, {k[len(WRAPPER_PREFIX):]: v for k, v in state.items()}, folder / "model.safetensors")
    else:  # pretrained
        wrapper = _pretrained_wrapper(snapshots["backbone"], spec["extract_layer"], dtype)
    wrapper.head_rng_state = head_rng_state
    wrapper.backbone_dtype = dtype
    wrapper = wrapper.to(device).eval()
    if dtype != torch.float32:  # the library's forward feeds float32 inputs and VAE statistics to half weights
        _forward_in(wrapper, device, dtype)
    logging.getLogger(__name__).info("built the %s backbone on %s in %.1f s: %s", spec["kind"], device,
                                     time.perf_counter() - start, backbone_dtypes(wrapper))
    return wrapper


def _forward_in(wrapper, device: torch.device, dtype: torch.dtype) -> None:
    """Run the wrapper's every forward (called by MimicVideo or by the features stage) under autocast to `dtype`;
    the action head outside it stays float32 (MimicVideo casts the hiddens with .float())."""
    forward = wrapper.forward

    def forward_in_dtype(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype):
            return forward(*args, **kwargs)

    wrapper.forward = forward_in_dtype


def backbone_dtypes(wrapper) -> dict[str, str]:
    """The dtype of every backbone component's parameters."""
    parts = {"transformer": wrapper.transformer, "vae": wrapper.vae, "text_encoder": wrapper.text_encoder}
    return {name: ",".join(sorted({str(p.dtype).removeprefix("torch.") for p in part.parameters()}))
            for name, part in parts.items()}


# -- the action head -------------------------------------------------------------------------------------------

def head_arguments(model: dict, dims: dict, dim_video_hidden: int) -> dict:
    """MimicVideo constructor arguments of a head built from settings (not a checkpoint)."""
    return {"dim": model["dim"], "depth": model["depth"], "dim_video_hidden": dim_video_hidden,
            **{arg: dims[key] for key, arg in CONSTRUCTOR_DIMS.items()}}


RANDOM_BACKBONES = ("tiny-random", "full-random")  # built from model_seed: the head follows their construction


def rng_state_hex(state: torch.Tensor) -> str:
    """A CPU RNG state (torch.get_rng_state) as text, for a file's metadata (features: `head_rng_state`)."""
    return state.numpy().tobytes().hex()


def rng_state_from_hex(text: str) -> torch.Tensor:
    """The CPU RNG state rng_state_hex wrote."""
    return torch.frombuffer(bytearray.fromhex(text), dtype=torch.uint8).clone()


def build_head(model: dict, device: torch.device, dims: dict, dim_video_hidden: int, rng_state: torch.Tensor | None):
    """The action head alone: MimicVideo(dim, None, dim_video_hidden=...), eval mode, float32.

    From settings: weights drawn on the CPU after `torch.set_rng_state(rng_state)`, the state a random backbone's
    construction left (build_backbone's `wrapper.head_rng_state`, or a features file's `head_rng_state`
    metadata): the library's own head, on every device, whether or not a backbone is built here. A loaded backbone
    (pretrained) leaves no state (None, given explicitly): the head is seeded from `model_seed` right before it is
    built. From a checkpoint: its weights (`rng_state` is not used)."""
    from mimic_video import MimicVideo

    if "checkpoint" in model:
        net = load_head(model["checkpoint"], dim_video_hidden)
    else:
        if rng_state is None:
            torch.manual_seed(model["model_seed"])
        else:
            torch.set_rng_state(rng_state)
        net = MimicVideo(video_predict_wrapper=None, **head_arguments(model, dims, dim_video_hidden))
    return net.to(device).eval()


def attach_backbone(head, wrapper):
    """The whole model: the head with the backbone as its video_predict_wrapper (what MimicVideo(dim, wrapper)
    builds), for the stages that run the library's video path (the backbone analysis, benchmarks)."""
    if head.dim_video_hidden != wrapper.dim_latent:
        raise DimensionError(f"the action head cross-attends to {head.dim_video_hidden}-dim hiddens, but the backbone "
                             f"gives {wrapper.dim_latent}")
    head.video_predict_wrapper = wrapper
    return head


def build_model(model: dict, device: torch.device, snapshots: dict | None = None, dims: dict | None = None):
    """The whole model of a preset given as settings (dim, depth, backbone, tokenizer, extract_layer, model_seed):
    `MimicVideo(dim, CosmosPredictWrapper(...))` as the library builds it, for benchmarks and tests."""
    from mimic_redundancy.model.presets import preset_backbone

    wrapper = build_backbone(preset_backbone(model, model["model_seed"]), device, snapshots)
    head = build_head(model, device, dims or resolve_dims(model, {}), wrapper.dim_latent, wrapper.head_rng_state)
    return attach_backbone(head, wrapper)


def net_dims(net) -> dict:
    return {"chunk_len": net.action_chunk_len, "action_dim": net.dim_action, "joint_dim": net.dim_joint_state}


def head_parameters(net) -> list[torch.nn.Parameter]:
    """The action head's parameters in a fixed order (MimicVideo.action_parameters is an unordered set)."""
    return [p for name, p in net.named_parameters() if not name.startswith(WRAPPER_PREFIX)]


def attach_joint_normalizer(net, joint_states: torch.Tensor) -> dict:
    """z-score the head's joint-state input with the training rows' mean and std (mimic-video's own
    `joint_mean_std` normalizer; constant dimensions keep std 1). Saved with the head (checkpoint config.json
    'joint_normalizer'), so the checkpoint normalizes as it was trained. Returns the statistics."""
    from mimic_video.mimic_video import Normalizer

    mean = joint_states.float().mean(dim=0)
    std = joint_states.float().std(dim=0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    net.joint_normalizer = torch.nn.ModuleList([Normalizer(mean, std)]).to(next(net.parameters()).device)
    return {"mean": mean.tolist(), "std": std.tolist()}


def head_state(net) -> dict[str, torch.Tensor]:
    return {k: v for k, v in net.state_dict().items() if not k.startswith(WRAPPER_PREFIX)}


# -- checkpoints -----------------------------------------------------------------------------------------------

def save_checkpoint(head, folder, backbone: dict, provenance: dict) -> None:
    """Format v2: model.safetensors (the action head's weights alone) and config.json (MimicVideo's constructor
    arguments, the backbone reference, provenance); no pickles. Written into a temporary folder and renamed,
    so an interrupted save leaves no checkpoint."""
    import shutil

    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in head_state(head).items()}, str(tmp / "model.safetensors"),
              metadata={"format": FORMAT_V2})
    args = {k: head._init_kwargs[k] for k in HEAD_ARGUMENTS}
    extra = {"joint_normalizer": True} if head.joint_normalizer is not None else {}  # its statistics: in the weights
    (tmp / "config.json").write_text(json.dumps({"format": FORMAT_V2, "mimic_video": args, "video_backbone": backbone,
                                                 "provenance": provenance, **extra}, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _load_checkpoint_tokenizer(folder: Path, cls):
    try:
        return cls(tokenizer_file=str(folder / "tokenizer.json"))
    except Exception as error:
        raise CheckpointError(f"{folder / 'tokenizer.json'}: not a tokenizers JSON file ({type(error).__name__}: "
                              f"{str(error)[:200]}); copy the checkpoint folder again") from None


def _load_state(module, state: dict, path: Path) -> None:
    """load_state_dict, strict but for tied weights (T5's shared embedding is saved once, under one name)."""
    try:
        result = module.load_state_dict(state, strict=False)
        own = module.state_dict()
        loaded = {own[k].data_ptr() for k in state if k in own}
        missing = [k for k in result.missing_keys if own[k].data_ptr() not in loaded]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model config.json describes "
                              f"({str(error)[:500]})") from None


# converts a checkpoint's weights file to float32, keeping the original beside it (<file>.orig)
TO_FLOAT32 = ("mv {path} {orig} && .venv/bin/python -c \"import sys; from safetensors import safe_open; "
              "from safetensors.torch import save_file; f = safe_open(sys.argv[1], 'pt'); "
              "save_file({{k: f.get_tensor(k).float() for k in f.keys()}}, sys.argv[2], f.metadata())\" {orig} {path}")


def _read_weights(path: Path, keep) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint's model.safetensors: float32, as the format says (docs/training.md); weights in
    another dtype are refused, not upcast silently (a float16 head is not the head that was trained)."""
    import shlex

    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(error).__name__}: {str(error)[:200]}); "
                              "it is truncated or damaged: copy the checkpoint folder again, or rerun the train "
                              "rule that wrote it") from None
    other = {}
    for name, tensor in state.items():
        if tensor.dtype != torch.float32:
            other.setdefault(str(tensor.dtype).removeprefix("torch."), []).append(name)
    if other:
        to_float32 = TO_FLOAT32.format(path=shlex.quote(str(path)), orig=shlex.quote(f"{path}.orig"))
        found = "; ".join(f"{len(names)} of {len(state)} tensors in {dtype} (e.g. {names[0]!r})"
                          for dtype, names in other.items())
        raise CheckpointError(f"{path}: {found}; a checkpoint's weights are float32 (docs/training.md), and this "
                              "pipeline does not upcast them silently. Rerun the train rule that wrote it, or convert "
                              "the file to float32 from the project folder (the values keep their rounding; the "
                              f"original stays beside it as model.safetensors.orig): `{to_float32}`")
    return state


def load_head(folder, dim_video_hidden: int | None = None):
    """The action head of a checkpoint folder (v1 or v2), on the CPU, in eval mode."""
    from mimic_video import MimicVideo

    folder = Path(folder)
    config = read_checkpoint_config(folder)
    args = dict(config["mimic_video"])
    if "dim_video_hidden" not in args:  # v1: the tiny wrapper's width
        if dim_video_hidden is None:
            raise CheckpointError(f"{folder / 'config.json'}: no dim_video_hidden; give the features' width")
        args["dim_video_hidden"] = dim_video_hidden
    elif dim_video_hidden is not None and args["dim_video_hidden"] != dim_video_hidden:
        raise DimensionError(f"{folder / 'config.json'}: the head expects {args['dim_video_hidden']}-dim video "
                             f"hiddens, but the features hold {dim_video_hidden}-dim ones (another backbone?)")
    if config.get("joint_normalizer"):  # placeholders of the right shape: the weights file holds the statistics
        joints = args.get("dim_joint_state", LIBRARY_DIMS["joint_dim"])
        args["joint_mean_std"] = [(torch.zeros(joints), torch.ones(joints))]  # one pair per embodiment
    try:
        net = MimicVideo(video_predict_wrapper=None, **args)
    except (TypeError, AssertionError) as error:
        raise CheckpointError(f"{folder / 'config.json'}: 'mimic_video' is not valid MimicVideo arguments: {error}") from None
    state = _read_weights(folder / "model.safetensors", lambda k: not k.startswith(WRAPPER_PREFIX))
    _load_state(net, state, folder / "model.safetensors")
    return net.eval()


def parameter_counts(net, backbone_parameters: int | None = None) -> dict[str, int]:
    head = sum(p.numel() for p in head_parameters(net))
    wrapper = sum(p.numel() for p in net.video_predict_wrapper.parameters()) if net.video_predict_wrapper is not None \
        else backbone_parameters
    return {"total": head + (wrapper or 0), "action_head": head, "video_wrapper": wrapper}


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    names = ["torch", "mimic-video", "diffusers", "transformers", "huggingface_hub", "numpy"]
    return {"python": platform.python_version(), **{n: version(n) for n in names}}
