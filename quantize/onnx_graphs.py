"""The ONNX graphs in segment-anything's interface: the decoder of ``scripts/export_onnx_model.py`` and the encoder.

The decoder has the inputs, outputs, dynamic axes and conventions of segment-anything's
``SamOnnxModel``, so tools written for SAM's ONNX files (its web demo, samexporter, AnyLabeling)
run it unchanged. The encoder takes SAM's preprocessed tensor (or, on request, the resized image).
"""

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tinysam_edge.masks import MASK_THRESHOLD
from tinysam_edge.models.modeling import Sam
from tinysam_edge.transforms import IMG_SIZE, PIXEL_MEAN, PIXEL_STD

from .export import DecoderForExport

#: segment-anything's export script defaults to opset 17 (LayerNormalization needs 17).
OPSET = 17
ENCODER_INPUT = "input_image"
ENCODER_OUTPUT = "image_embeddings"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
DYNAMIC_AXES = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
#: SAM's stability offset: IoU of the masks thresholded at logit +1 and -1.
STABILITY_OFFSET = 1.0


class SamOnnxDecoder(nn.Module):
    """Prompt encoder + mask decoder + mask upscaling with ``SamOnnxModel``'s inputs and outputs.

    Inputs: (1, 256, 64, 64) embedding, (1, N, 2) coords in the 1024 frame, (1, N) labels (SAM's:
    -1 padding point, 0 / 1 negative / positive, 2 / 3 box corners), (1, 1, 256, 256) mask logits,
    (1,) has_mask_input, (2,) orig_im_size (H, W). Outputs: masks (1, K, H, W) logits, scores (1, K),
    low-res logits (1, K, 256, 256); K = 4 (all tokens) or 1 with ``return_single_mask``.
    """

    def __init__(self, sam: Sam, return_single_mask: bool, use_stability_score: bool = False) -> None:
        super().__init__()
        self.decoder = DecoderForExport(sam)
        self.flavour = sam.flavour
        self.return_single_mask = return_single_mask
        self.use_stability_score = use_stability_score

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        masks, scores = self.decoder(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)
        if self.use_stability_score:
            scores = stability_score(masks)
        if self.return_single_mask:
            masks, scores = self.select_single(masks, scores, point_labels)
        return upscale_masks(masks, orig_im_size), scores, masks

    def select_single(self, masks: torch.Tensor, scores: torch.Tensor, point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 4, h, w), (1, 4) -> the flavour's single mask (1, 1, h, w), (1, 1).

        ``tinysam``: the best score among tokens 1..3 (token 0 was never trained). ``sam``: SAM's
        rule, token 0 when there are more than two points (padding included), else the best of 1..3.
        """
        if self.flavour == "sam":
            many = (torch.ones_like(point_labels[0]).sum() > 2.5).to(scores.dtype)
            penalty = torch.tensor([0.0, 1.0, 1.0, 1.0]) * many + torch.tensor([1.0, 0.0, 0.0, 0.0]) * (1 - many)
            best = torch.argmax(scores - 1e4 * penalty, dim=1)
        else:
            best = torch.argmax(scores[:, 1:], dim=1) + 1
        return masks.index_select(1, best), scores.index_select(1, best)


def stability_score(masks: torch.Tensor, offset: float = STABILITY_OFFSET) -> torch.Tensor:
    """(B, K, h, w) logits -> (B, K) IoU of the masks at ``MASK_THRESHOLD`` + ``offset`` and - ``offset``."""
    inner = (masks > MASK_THRESHOLD + offset).sum((-1, -2), dtype=torch.float32)
    outer = (masks > MASK_THRESHOLD - offset).sum((-1, -2), dtype=torch.float32)
    return inner / outer


def upscale_masks(masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
    """(B, K, 256, 256) logits -> (B, K, H, W): bilinear to 1024, crop the padding, bilinear to ``orig_im_size`` (H, W).

    The crop size is computed in the graph (an ``arange`` gather), so one export serves every aspect
    ratio; segment-anything 1.0's wrapper turns it into a Python int while tracing, which freezes it
    to the example's ratio.
    """
    masks = F.interpolate(masks, (IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
    size = orig_im_size.to(torch.float32)
    resized = torch.floor(size * (IMG_SIZE / size.max()) + 0.5).to(torch.int64)
    masks = masks.index_select(2, torch.arange(resized[0])).index_select(3, torch.arange(resized[1]))
    hw = orig_im_size.to(torch.int64)
    return F.interpolate(masks, size=(hw[0], hw[1]), mode="bilinear", align_corners=False)


def export_graph(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_axes: dict | None = None,
) -> None:
    """Trace ``module`` on ``example`` into an ONNX file at opset ``OPSET`` with named inputs and outputs."""
    # The TorchScript exporter, as segment-anything's script uses: torch.export's exporter needs
    # onnxscript and cannot size the in-graph crop from the orig_im_size values.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and legacy-exporter deprecation notes, not about this graph
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
        )


class PreprocessingEncoder(nn.Module):
    """Normalise and zero-pad in the graph: (H, W, 3) RGB float 0..255, longest side 1024 -> (1, 256, 64, 64) embedding."""

    def __init__(self, image_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.register_buffer("mean", torch.from_numpy(PIXEL_MEAN).reshape(3, 1, 1))
        self.register_buffer("std", torch.from_numpy(PIXEL_STD).reshape(3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(2, 0, 1) - self.mean) / self.std
        x = F.pad(x, (0, IMG_SIZE - x.shape[2], 0, IMG_SIZE - x.shape[1]))
        return self.image_encoder(x[None])


def export_encoder(sam: Sam, path: Path, preprocessing: bool = False) -> None:
    """Write the image encoder: ``input_image`` (1, 3, 1024, 1024) normalised, padded -> ``image_embeddings`` (1, 256, 64, 64).

    With ``preprocessing`` the input is the resized image (H, W, 3), H and W dynamic (``PreprocessingEncoder``).
    """
    if not preprocessing:
        export_graph(sam.image_encoder, (torch.zeros(1, 3, IMG_SIZE, IMG_SIZE),), path, [ENCODER_INPUT], [ENCODER_OUTPUT])
        return
    axes = {ENCODER_INPUT: {0: "image_height", 1: "image_width"}}
    export_graph(PreprocessingEncoder(sam.image_encoder), (torch.zeros(684, IMG_SIZE, 3),), path, [ENCODER_INPUT], [ENCODER_OUTPUT], axes)


def decoder_example() -> tuple[torch.Tensor, ...]:
    """Example decoder inputs of segment-anything's export script (5 points, a mask, a 1500x2250 image)."""
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(1, 256, 64, 64, generator=generator),
        torch.randint(0, IMG_SIZE, (1, 5, 2), generator=generator).float(),
        torch.randint(0, 4, (1, 5), generator=generator).float(),
        torch.randn(1, 1, 256, 256, generator=generator),
        torch.tensor([1.0]),
        torch.tensor([1500.0, 2250.0]),
    )


def export_decoder(sam: Sam, path: Path, return_single_mask: bool = True, use_stability_score: bool = False) -> None:
    """Write the decoder with ``DECODER_INPUTS`` -> ``DECODER_OUTPUTS`` and the point count dynamic (see ``SamOnnxDecoder``)."""
    module = SamOnnxDecoder(sam, return_single_mask, use_stability_score)
    export_graph(module, decoder_example(), path, DECODER_INPUTS, DECODER_OUTPUTS, DYNAMIC_AXES)
