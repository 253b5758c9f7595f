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


def build_model(model: dict, device: torch.device, snapshots: dict | None = None):
    """MimicVideo(dim, CosmosPredictWrapper(extract_layer, ...), depth) in eval mode.

    backbone 'tiny-random': the tiny random-weight wrapper with the preset's tokenizer; otherwise the
    pretrained pipeline from its local snapshot folder (`snapshots`: role -> folder, from hub.local_snapshots).
    Random weights are drawn on the CPU from `model_seed`, so they are identical on every device.
    """
    from mimic_video import MimicVideo
    from mimic_video.cosmos_predict import CosmosPredictWrapper

    snapshots = snapshots or {}
    torch.manual_seed(model["model_seed"])
    if model["backbone"] == "tiny-random":
        tokenizer = load_tokenizer(model["tokenizer"], snapshots.get("tokenizer"))
        with _tokenizer_for_wrapper(tokenizer):
            wrapper = CosmosPredictWrapper(extract_layer=model["extract_layer"], random_weights=True, tiny=True)
    else:
        wrapper = CosmosPredictWrapper(model_name=str(snapshots["backbone"]), extract_layer=model["extract_layer"],
                                       random_weights=False)
    net = MimicVideo(model["dim"], wrapper, depth=model["depth"])
    return net.to(device).eval()


def parameter_counts(net) -> dict[str, int]:
    wrapper = sum(p.numel() for p in net.video_predict_wrapper.parameters())
    head = sum(p.numel() for p in net.action_parameters())
    return {"total": sum(p.numel() for p in net.parameters()), "action_head": head, "video_wrapper": wrapper}


def library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import version

    names = ["torch", "mimic-video", "diffusers", "transformers", "huggingface_hub", "numpy"]
    return {"python": platform.python_version(), **{n: version(n) for n in names}}
