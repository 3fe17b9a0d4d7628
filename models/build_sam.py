"""Model registry and strict, safe checkpoint IO in the official state_dict layout."""

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from tinysam_edge.errors import CheckpointError, error_cause
from tinysam_edge.files import atomic_write
from tinysam_edge.masks import FLAVOURS
from tinysam_edge.weights import resolve_checkpoint

from .modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TinyViT

#: Keys of the official TinyViT ImageNet classifier, present in the checkpoints but never used.
UNUSED_KEY_PREFIXES = ("image_encoder.head.", "image_encoder.norm_head.")


def _build_vit_t(flavour: str) -> Sam:
    return Sam(TinyViT(), PromptEncoder(), MaskDecoder(), flavour=flavour)


def _vit_builder(embed_dim: int, depth: int, num_heads: int, global_attn_indexes: tuple[int, ...]) -> Callable[[str], Sam]:
    def build(flavour: str) -> Sam:
        encoder = ImageEncoderViT(embed_dim=embed_dim, depth=depth, num_heads=num_heads, global_attn_indexes=global_attn_indexes)
        return Sam(encoder, PromptEncoder(), MaskDecoder(), flavour=flavour)

    return build


sam_model_registry: dict[str, Callable[[str], Sam]] = {
    "vit_t": _build_vit_t,
    "vit_b": _vit_builder(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _vit_builder(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _vit_builder(1280, 32, 16, (7, 15, 23, 31)),
}

#: Flavour used when neither the caller nor a weights-registry entry names one.
DEFAULT_FLAVOURS = {"vit_t": "tinysam", "vit_b": "sam", "vit_l": "sam", "vit_h": "sam"}

#: Number of ViT blocks in the official SAM image encoders.
_VIT_DEPTHS = {12: "vit_b", 24: "vit_l", 32: "vit_h"}


def infer_model_name(state: Mapping[str, torch.Tensor]) -> str:
    """The ``sam_model_registry`` name whose image encoder has the keys of ``state`` (official layout)."""
    if any(k.startswith("image_encoder.layers.") for k in state):
        return "vit_t"
    prefix = "image_encoder.blocks."
    indexes = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
    blocks = {int(i) for i in indexes if i.isdigit()}
    if blocks and blocks == set(range(len(blocks))) and len(blocks) in _VIT_DEPTHS:
        return _VIT_DEPTHS[len(blocks)]
    found = f"{len(blocks)} image_encoder.blocks.N indexes" if blocks else "no image_encoder.layers.* or image_encoder.blocks.* keys"
    raise CheckpointError(f"cannot infer the model from the checkpoint: found {found}, expected TinyViT layers or 12/24/32 ViT blocks")


def build_sam(name: str = "vit_t", checkpoint: str | Path | None = None, flavour: str | None = None, trust_pickle: bool = False) -> Sam:
    """Build an eval-mode model, optionally loading a checkpoint (a file path or a weights-registry name).

    ``name="auto"`` infers the model from the checkpoint (then required). ``flavour`` defaults to
    the registry entry's flavour for registry names, otherwise to ``"sam"`` for vit_b/l/h and
    ``"tinysam"`` for vit_t. ``trust_pickle`` allows unpickling a whole pickled module (never needed
    for state_dict files; unpickling can run arbitrary code).
    """
    if name != "auto" and name not in sam_model_registry:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(sam_model_registry)} or 'auto'")
    if name == "auto" and checkpoint is None:
        raise ValueError("model 'auto' is inferred from the checkpoint; pass a checkpoint")
    if flavour and flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; choose one of {FLAVOURS}")
    resolved_flavour = flavour
    path = None
    state = None
    if checkpoint is not None:
        path, entry = resolve_checkpoint(checkpoint)
        if resolved_flavour is None and entry is not None:
            resolved_flavour = entry.flavour
        if name == "auto":
            state = read_state_dict(path, trust_pickle=trust_pickle)
            name = infer_model_name(state)
    resolved_flavour = resolved_flavour or DEFAULT_FLAVOURS.get(name, "tinysam")
    if resolved_flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {resolved_flavour!r}; choose one of {FLAVOURS}")
    model = sam_model_registry[name](resolved_flavour)
    if path is not None:
        if state is None:
            state = read_state_dict(path, trust_pickle=trust_pickle)
        try:
            load_weights(model, state, source=str(path))
        except CheckpointError as exc:
            hint = _other_model_hint(state, name)
            if hint is None:
                raise
            raise CheckpointError(f"{exc}; {hint}") from exc
    return model.eval()


def _other_model_hint(state: Mapping[str, torch.Tensor], name: str) -> str | None:
    try:
        inferred = infer_model_name(state)
    except CheckpointError:
        return None
    return None if inferred == name else f"it looks like a {inferred} checkpoint (build it as {inferred!r}, or 'auto')"


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat state_dict with the official key names.

    Accepts a plain state_dict, one wrapped as ``{"model": ...}`` or ``{"state_dict": ...}``, and a
    ``module.`` prefix (DataParallel/DDP). Drops the unused TinyViT classifier keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a PyTorch checkpoint; download or save it again")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # anything else is a damaged or foreign file
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({error_cause(exc)})") from exc
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds pickled Python objects, not only tensors (the official tinysam_w8a8.pth is a whole "
                "pickled quantized module); safe loading refuses it because unpickling can run arbitrary code. "
                "If you trust the file, opt in with --trust-pickle (Python: trust_pickle=True)"
            ) from exc
        obj = _load_trusted_pickle(path)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({error_cause(exc)})") from exc

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


#: ImageNet classes of the official TinyViT classifier head.
_IMAGENET_CLASSES = 1000


def official_state_dict(model: Sam) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` in the official checkpoints' layout, which the official builder loads strictly.

    TinyViT models get the unused classifier tensors (``UNUSED_KEY_PREFIXES``, 439 tensors in all) in
    their official place, before the neck: norm_head as identity (ones, zeros), head as zeros.
    """
    state = model.state_dict()
    if not isinstance(model.image_encoder, TinyViT):
        return state
    neck = "image_encoder.neck.0.weight"
    dim = state[neck].shape[1]
    like = state[neck]
    unused = {
        "image_encoder.norm_head.weight": like.new_ones(dim),
        "image_encoder.norm_head.bias": like.new_zeros(dim),
        "image_encoder.head.weight": like.new_zeros(_IMAGENET_CLASSES, dim),
        "image_encoder.head.bias": like.new_zeros(_IMAGENET_CLASSES),
    }
    out = {}
    for key, value in state.items():
        if key == neck:
            out |= unused
        out[key] = value
    return out


def save_checkpoint(model: Sam, path: str | Path) -> None:
    """Save a plain state_dict in the official key layout (``official_state_dict``; loadable by ``build_sam``), atomically."""
    with atomic_write(path) as tmp:
        torch.save(official_state_dict(model), tmp)
