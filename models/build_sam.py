"""Model registry and strict, safe checkpoint IO in the official state_dict layout."""

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from tinysam_edge.errors import CheckpointError
from tinysam_edge.masks import FLAVOURS
from tinysam_edge.weights import resolve_checkpoint

from .modeling import MaskDecoder, PromptEncoder, Sam, TinyViT

#: Keys of the official TinyViT ImageNet classifier, present in the checkpoints but never used.
UNUSED_KEY_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")


def _build_vit_t(flavour: str) -> Sam:
    return Sam(TinyViT(), PromptEncoder(), MaskDecoder(), flavour=flavour)


sam_model_registry: dict[str, Callable[[str], Sam]] = {"vit_t": _build_vit_t}


def build_sam(name: str = "vit_t", checkpoint: str | Path | None = None, flavour: str | None = None, trust_pickle: bool = False) -> Sam:
    """Build an eval-mode model, optionally loading a checkpoint (a file path or a weights-registry name).

    ``flavour`` defaults to the registry entry's flavour for registry names and to ``"tinysam"``
    otherwise. ``trust_pickle`` allows unpickling a whole pickled module (never needed for
    state_dict files; unpickling can run arbitrary code).
    """
    if name not in sam_model_registry:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(sam_model_registry)}")
    resolved_flavour = flavour
    path = None
    if checkpoint is not None:
        path, entry = resolve_checkpoint(checkpoint)
        if resolved_flavour is None and entry is not None:
            resolved_flavour = entry.flavour
    resolved_flavour = resolved_flavour or "tinysam"
    if resolved_flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {resolved_flavour!r}; choose one of {FLAVOURS}")
    model = sam_model_registry[name](resolved_flavour)
    if path is not None:
        load_weights(model, read_state_dict(path, trust_pickle=trust_pickle), source=str(path))
    return model.eval()


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state_dict with the official key names.

    Accepts a plain state_dict, one wrapped as ``{"model": ...}`` or ``{"state_dict": ...}``, and a
    ``module.`` prefix (DataParallel/DDP). Drops the unused TinyViT classifier keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # anything else is a damaged or foreign file
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (UnpicklingError: {str(exc).splitlines()[0]})") from exc
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds pickled Python objects, not only tensors (the official tinysam_w8a8.pth is a whole "
                "pickled quantized module); safe loading refuses it because unpickling can run arbitrary code. "
                "If you trust the file, opt in with --trust-pickle (Python: trust_pickle=True)"
            ) from exc
        obj = _load_trusted_pickle(path)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors (found {type(obj).__name__})")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(UNUSED_KEY_PREFIXES)}


def _load_trusted_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:
        raise CheckpointError(
            f"{path} is a pickled module whose classes are not importable here ({exc}); it needs the package it was "
            "saved from (for tinysam_w8a8.pth: the official TinySAM code)"
        ) from exc


def load_weights(model: Sam, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly copy ``state`` into ``model``; one clear error lists missing/unexpected/mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} {tuple(state[k].shape)}!={tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mis_shaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if keys:
                more = f", ... {len(keys) - 5} more" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:5])}{more})")
        raise CheckpointError(f"{source} does not match this model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def save_checkpoint(model: Sam, path: str | Path) -> None:
    """Save a plain state_dict in the official key layout (loadable by ``build_sam`` and the official code)."""
    torch.save(model.state_dict(), Path(path))
