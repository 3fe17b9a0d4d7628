"""Export the parity-proven PyTorch model to OpenVINO IR: a static encoder and dynamic + static decoders."""

import time
from pathlib import Path

import openvino as ov
import torch
from torch import nn

from tinysam_edge import __version__
from tinysam_edge.decoder_graphs import prompt_shaped
from tinysam_edge.errors import ModelDirError, TinySamError, error_cause
from tinysam_edge.files import check_replaceable, replaced_dir
from tinysam_edge.manifest import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    POINT_SLOTS,
    PROMPT_POINT_INPUTS,
    STATIC_BATCH,
    Manifest,
    VariantShape,
)
from tinysam_edge.models import build_sam
from tinysam_edge.models.modeling import CachedMaskDecoder, Sam
from tinysam_edge.models.modeling.cached_decoder import STATE_NAMES
from tinysam_edge.weights import cache_dir, resolve_checkpoint, sha256_file

DEFAULT_POINT_SLOTS = 8
DEFAULT_STATIC_BATCH = 64


class DecoderForExport(nn.Module):
    """Prompt encoder + mask decoder with the IR contract of ``tinysam_edge.manifest.DECODER_INPUTS``.

    ``has_mask_input`` (1,) switches the dense prompt between ``mask_input`` (M, 1, 256, 256), M in
    {1, B}, and the learned no-mask embedding, arithmetically so one graph serves both.
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.register_buffer("dense_pe", sam.prompt_encoder.get_dense_pe().detach().clone())

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        sparse = pe.embed_points(point_coords, point_labels)
        has_mask = has_mask_input.reshape(-1, 1, 1, 1)
        # Summing over the mask batch (0 or 1 masks) lets an empty mask_input skip the mask branch.
        mask_dense = pe.mask_downscaling(mask_input).sum(0, keepdim=True)
        dense = has_mask * mask_dense + (1 - has_mask) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        masks, iou, _ = self.mask_decoder(image_embeddings, self.dense_pe, sparse, dense, pe.slot_bias(point_labels))
        return masks, iou


class ImageStateForExport(nn.Module):
    """(1, 256, 64, 64) embedding -> the cached decoder's per-image tensors (``STATE_NAMES``)."""

    def __init__(self, cached: CachedMaskDecoder) -> None:
        super().__init__()
        self.cached = cached

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.cached.image_state(image_embeddings)


class PromptDecoderForExport(nn.Module):
    """Per-image tensors + (B, N, 2) coords / (B, N) labels -> low-res logits (B, 4, 256, 256) and IoU (B, 4)."""

    def __init__(self, cached: CachedMaskDecoder) -> None:
        super().__init__()
        self.cached = cached

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *state, point_coords, point_labels = inputs
        return self.cached(tuple(state), point_coords, point_labels)


def _name_ports(model: ov.Model, inputs: list[str], outputs: list[str]) -> ov.Model:
    for port, name in zip(model.inputs, inputs):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, outputs):
        port.get_tensor().set_names({name})
    return model


def convert_encoder(sam: Sam) -> ov.Model:
    """Static (1, 3, 1024, 1024) normalised pixels -> (1, 256, 64, 64) embedding."""
    example = torch.zeros(1, 3, 1024, 1024)
    with torch.no_grad():
        model = ov.convert_model(sam.image_encoder.eval(), example_input=example, input=[ov.PartialShape([1, 3, 1024, 1024])])
    return _name_ports(model, [ENCODER_INPUT], [ENCODER_OUTPUT])


def convert_decoder(sam: Sam) -> ov.Model:
    """Decoder with dynamic prompt batch B, point count N and mask batch M."""
    example = (
        torch.zeros(1, 256, 64, 64),
        torch.zeros(1, 2, 2),
        torch.tensor([[1.0, -1.0]]),
        torch.zeros(1, 1, 256, 256),
        torch.zeros(1),
    )
    shapes = [[1, 256, 64, 64], [-1, -1, 2], [-1, -1], [-1, 1, 256, 256], [1]]
    with torch.no_grad():
        model = ov.convert_model(DecoderForExport(sam).eval(), example_input=example, input=[ov.PartialShape(s) for s in shapes])
    return _name_ports(model, list(DECODER_INPUTS), list(DECODER_OUTPUTS))


def convert_cached_decoder(sam: Sam) -> tuple[ov.Model, ov.Model]:
    """The decoder split for repeated prompts: per-image state graph and per-prompt graph (dynamic B, N)."""
    cached = CachedMaskDecoder(sam.prompt_encoder, sam.mask_decoder).eval()
    embedding = torch.zeros(1, 256, 64, 64)
    with torch.no_grad():
        state = cached.image_state(embedding)
        image_model = ov.convert_model(ImageStateForExport(cached), example_input=(embedding,), input=[ov.PartialShape([1, 256, 64, 64])])
        example = (*state, torch.zeros(1, 2, 2), torch.tensor([[1.0, -1.0]]))
        shapes = [ov.PartialShape(list(t.shape)) for t in state] + [ov.PartialShape([-1, -1, 2]), ov.PartialShape([-1, -1])]
        prompt_model = ov.convert_model(PromptDecoderForExport(cached), example_input=example, input=shapes)
    return (
        _name_ports(image_model, ["image_embeddings"], list(STATE_NAMES)),
        _name_ports(prompt_model, [*STATE_NAMES, *PROMPT_POINT_INPUTS], list(DECODER_OUTPUTS)),
    )


def check_static_shapes(point_slots: int, static_batch: int) -> None:
    """Refuse static decoder shapes outside ``POINT_SLOTS`` / ``STATIC_BATCH`` (a 0 batch crashes OpenVINO devices)."""
    for name, value, (low, high) in (("point_slots", point_slots, POINT_SLOTS), ("static_batch", static_batch, STATIC_BATCH)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")


def export_ir(
    sam: Sam,
    out_dir: str | Path,
    source_name: str,
    source_sha256: str,
    point_slots: int = DEFAULT_POINT_SLOTS,
    static_batch: int = DEFAULT_STATIC_BATCH,
    compress_to_fp16: bool = False,
    log=print,
) -> Manifest:
    """Write encoder/decoder IRs (dynamic decoder for CPU, static ones for GPU/NPU) and manifest.json.

    ``point_slots`` (1..64) and ``static_batch`` (1..1024) shape the static decoders; conversion and
    saving errors are ``TinySamError`` with OpenVINO's cause.
    """
    check_static_shapes(point_slots, static_batch)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sam = sam.eval()
    try:
        start = time.perf_counter()
        encoder = convert_encoder(sam)
        log(f"converted encoder in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        decoder = convert_decoder(sam)
        decoder_image, decoder_prompt = convert_cached_decoder(sam)
        log(f"converted decoders in {time.perf_counter() - start:.1f} s")
        models = {
            "encoder": (encoder, None),
            "decoder": (decoder, None),
            "decoder_image": (decoder_image, None),
            "decoder_prompt": (decoder_prompt, None),
            "decoder_static": (prompt_shaped(decoder, 1, point_slots, masks=1), VariantShape(1, point_slots)),
            "decoder_static_batch": (prompt_shaped(decoder, static_batch, point_slots, masks=1), VariantShape(static_batch, point_slots)),
        }
        files = {}
        for name, (model, _) in models.items():
            ov.save_model(model, out_dir / f"{name}.xml", compress_to_fp16=compress_to_fp16)
            files[name] = f"{name}.xml"
    except (RuntimeError, OSError) as exc:  # OpenVINO raises RuntimeError for conversion and IO failures
        raise TinySamError(f"OpenVINO export into {out_dir} failed ({error_cause(exc)})") from exc
    manifest = Manifest(
        model="vit_t",
        flavour=sam.flavour,
        weights_precision="fp16" if compress_to_fp16 else "fp32",
        quantization=None,
        source={"name": source_name, "sha256": source_sha256},
        versions={"tinysam_edge": __version__, "openvino": ov.get_version(), "torch": torch.__version__},
        files=files,
        static_shapes={name: shape for name, (_, shape) in models.items() if shape is not None},
    )
    manifest.write(out_dir)
    return manifest


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    flavour: str | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    log=print,
    **export_options,
) -> Manifest:
    """Build the model from a checkpoint (file or registry name) and export it into ``out_dir``.

    The IRs are written to a temporary sibling folder and swapped into place at the end
    (``files.replaced_dir``), so an interrupted export never leaves a half model dir; an existing
    ``out_dir`` is replaced only with ``overwrite``, and only when it is a model dir.
    """
    out_dir = Path(out_dir)
    check_static_shapes(export_options.get("point_slots", DEFAULT_POINT_SLOTS), export_options.get("static_batch", DEFAULT_STATIC_BATCH))
    check_replaceable(out_dir, [checkpoint], overwrite)  # before the slow part
    path, _ = resolve_checkpoint(checkpoint)
    sam = build_sam("vit_t", checkpoint=path, flavour=flavour, trust_pickle=trust_pickle)
    log(f"exporting {Path(path).name} to OpenVINO IR in {out_dir}")
    with replaced_dir(out_dir, [path], overwrite) as tmp:
        return export_ir(sam, tmp, source_name=Path(path).name, source_sha256=sha256_file(Path(path)), log=log, **export_options)


def cached_model_dir(checkpoint: str | Path, flavour: str | None = None, trust_pickle: bool = False, log=print) -> Path:
    """The exported model dir for a checkpoint, exporting it into the cache on first use."""
    path, _ = resolve_checkpoint(checkpoint)
    digest = sha256_file(Path(path))
    # keyed by weights, flavour and package version, so an upgrade never reuses an IR of an older graph
    name = f"{Path(path).stem}-{digest[:12]}-v{__version__}" + (f"-{flavour}" if flavour else "")
    model_dir = cache_dir() / "ir" / name
    try:
        Manifest.read(model_dir)
        return model_dir
    except ModelDirError:
        pass
    export_checkpoint(path, model_dir, flavour=flavour, trust_pickle=trust_pickle, overwrite=True, log=log)
    return model_dir
