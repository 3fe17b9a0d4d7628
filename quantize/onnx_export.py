"""``export --format onnx``: ``encoder.onnx``, ``decoder.onnx`` (``onnx_graphs``), checked (``onnx_check``), and ``config.json``."""

import json
import time
from pathlib import Path

import torch

from tinysam_edge import __version__
from tinysam_edge.errors import TinySamError, error_cause
from tinysam_edge.files import check_replaceable, replaced_dir, write_text
from tinysam_edge.manifest import ONNX_CONFIG_FILE, ONNX_FORMAT
from tinysam_edge.masks import MASK_THRESHOLD
from tinysam_edge.models import build_sam
from tinysam_edge.models.modeling import Sam, TinyViT
from tinysam_edge.transforms import IMG_SIZE, PIXEL_MEAN, PIXEL_STD
from tinysam_edge.weights import get_entry, resolve_checkpoint, sha256_file

from .onnx_check import TOLERANCES, agreement, check_agreement, worst
from .onnx_graphs import DYNAMIC_AXES, ENCODER_INPUT, ENCODER_OUTPUT, OPSET, export_decoder, export_encoder


def quantize_decoder(source: Path, target: Path) -> None:
    """onnxruntime's dynamic INT8 quantization of the decoder, with segment-anything's script's settings (QUInt8 weights, per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model_input=source, model_output=target, per_channel=False, reduce_range=False, weight_type=QuantType.QUInt8)


def onnx_config(
    sam: Sam,
    source: dict,
    files: dict,
    return_single_mask: bool,
    use_stability_score: bool,
    report: dict,
    encoder_preprocessing: bool = False,
) -> dict:
    """The ``config.json`` of an ONNX export: files, interface, preprocessing, prompt conventions and the check's figures."""
    import onnx
    import onnxruntime

    single = {
        "tinysam": "the best score among tokens 1..3 (TinySAM never trained token 0)",
        "sam": "SAM's rule: token 0 when there are more than 2 points (padding included), else the best score among tokens 1..3",
    }[sam.flavour]
    encoder_input = (
        "float32 [H,W,3]: RGB 0..255 resized (longest side 1024); the graph normalises and zero-pads it"
        if encoder_preprocessing
        else "float32 [1,3,1024,1024]: the preprocessed image (see preprocessing)"
    )
    return {
        "format": ONNX_FORMAT,
        "model": "vit_t" if isinstance(sam.image_encoder, TinyViT) else "vit",
        "flavour": sam.flavour,
        "source": source,
        "versions": {
            "tinysam_edge": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "opset": OPSET,
        "files": files,
        "encoder": {
            "inputs": {ENCODER_INPUT: encoder_input},
            "outputs": {ENCODER_OUTPUT: "float32 [1,256,64,64]"},
            "dynamic_axes": {ENCODER_INPUT: {"0": "image_height", "1": "image_width"}} if encoder_preprocessing else {},
            "preprocessing_in_graph": encoder_preprocessing,
        },
        "decoder": _decoder_interface(return_single_mask, use_stability_score, single),
        "preprocessing": {
            "image_format": "RGB",
            "longest_side": IMG_SIZE,
            "resize": "longest side to 1024, h' = int(h * 1024 / max(h, w) + 0.5); PIL bilinear on uint8 (antialiased when shrinking)",
            "pixel_mean": PIXEL_MEAN.tolist(),
            "pixel_std": PIXEL_STD.tolist(),
            "normalize": "(x - pixel_mean) / pixel_std per channel, float32",
            "padding": "zeros at the bottom and right, after normalising, to 1024x1024; layout NCHW",
        },
        "prompts": "points first, then the box as two corner points (labels 2, 3); without a box append a (0, 0) point with label -1",
        "mask_threshold": MASK_THRESHOLD,
        "check": {"runtime": "onnxruntime CPUExecutionProvider", "tolerances": TOLERANCES, "max_abs_diff_vs_torch": report},
    }


def _decoder_interface(return_single_mask: bool, use_stability_score: bool, single: str) -> dict:
    """The decoder part of ``config.json``: SamOnnxModel's inputs, outputs and options."""
    k = "1" if return_single_mask else "4"
    return {
        "interface": "segment-anything 1.0 scripts/export_onnx_model.py (SamOnnxModel)",
        "inputs": {
            "image_embeddings": "float32 [1,256,64,64] from the encoder",
            "point_coords": "float32 [1,N,2] (x, y) in the 1024 frame: x * resized_w / w, y * resized_h / h",
            "point_labels": "float32 [1,N]: 1 positive, 0 negative, 2 / 3 box top-left / bottom-right, -1 padding point",
            "mask_input": "float32 [1,1,256,256] low-res logits of an earlier prediction (zeros when unused)",
            "has_mask_input": "float32 [1]: 1 uses mask_input, 0 ignores it",
            "orig_im_size": "float32 [2]: original image (H, W)",
        },
        "outputs": {
            "masks": f"float32 [1,{k},H,W] logits at orig_im_size; a mask is logits > {MASK_THRESHOLD}",
            "iou_predictions": f"float32 [1,{k}] " + ("stability scores" if use_stability_score else "predicted IoU"),
            "low_res_masks": f"float32 [1,{k},256,256] logits (feed one back as mask_input)",
        },
        "dynamic_axes": {name: {str(axis): dim for axis, dim in axes.items()} for name, axes in DYNAMIC_AXES.items()},
        "return_single_mask": return_single_mask,
        "use_stability_score": use_stability_score,
        "single_mask": single if return_single_mask else "not used: all four tokens (0: single-mask token, 1..3: multimask)",
    }


def export_onnx(
    sam: Sam,
    out_dir: str | Path,
    source: dict,
    return_single_mask: bool = True,
    use_stability_score: bool = False,
    quantize: str | None = None,
    encoder_preprocessing: bool = False,
    log=print,
) -> dict:
    """Write ``encoder.onnx``, ``decoder.onnx`` (and ``decoder_int8.onnx`` with ``quantize="dynamic"``) and ``config.json``.

    The pair is run in onnxruntime and checked against ``sam`` (``check_agreement``) before the
    config is written; the INT8 decoder's differences are recorded, not enforced. Export and check
    failures are ``TinySamError``. Returns the config.
    """
    if quantize not in (None, "dynamic"):
        raise ValueError(f"quantize must be None or 'dynamic', got {quantize!r}")
    out_dir = Path(out_dir)
    sam = sam.eval()
    files = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
    options = {"return_single_mask": return_single_mask, "use_stability_score": use_stability_score}
    try:
        start = time.perf_counter()
        export_encoder(sam, out_dir / files["encoder"], encoder_preprocessing)
        export_decoder(sam, out_dir / files["decoder"], **options)
        log(f"exported encoder.onnx and decoder.onnx in {time.perf_counter() - start:.1f} s; checking them in onnxruntime")
        report = agreement(sam, out_dir, files["decoder"], **options)
        check_agreement(report)
        if quantize == "dynamic":
            files["decoder_int8"] = "decoder_int8.onnx"
            quantize_decoder(out_dir / files["decoder"], out_dir / files["decoder_int8"])
            int8 = agreement(sam, out_dir, files["decoder_int8"], **options)
            report["decoder_int8"] = worst({name: case for name, case in int8.items() if name != "encoder"})
            log("decoder_int8.onnx against torch: " + ", ".join(f"{k} {v:.3g}" for k, v in report["decoder_int8"].items()))
    except (RuntimeError, OSError, ValueError) as exc:  # torch.onnx, onnx and onnxruntime raise these for export and IO failures
        raise TinySamError(f"ONNX export into {out_dir} failed ({error_cause(exc)})") from exc
    config = onnx_config(sam, source, files, report=report, encoder_preprocessing=encoder_preprocessing, **options)
    write_text(out_dir / ONNX_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return config


def refuse_pickled_module(checkpoint: str | Path) -> None:
    """Refuse Q-TinySAM (``tinysam_w8a8``), a pickled fake-quant module, with what to use instead."""
    entry = get_entry(Path(checkpoint).name) or get_entry(str(checkpoint))
    if entry is not None and entry.pickled_module:
        raise TinySamError(
            f"{entry.name} is a pickled fake-quant PyTorch module (simulated INT8 in custom classes of the official TinySAM code), "
            "not weights an ONNX graph can hold; export the float weights (--checkpoint tinysam_42.3) and quantize those: "
            "--quantize dynamic (onnxruntime INT8 decoder) or 'tinysam-edge quantize' (NNCF INT8 for OpenVINO)"
        )


def export_onnx_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, flavour: str | None = None, overwrite: bool = False, log=print, **options
) -> dict:
    """Build the model from a checkpoint (file or registry name) and export it to ONNX into ``out_dir``.

    The files are written beside ``out_dir`` and moved into place at the end
    (``tinysam_edge.files.replaced_dir``), so a failed export leaves no half folder and ``overwrite``
    replaces only an earlier export of this tool.
    """
    refuse_pickled_module(checkpoint)
    check_replaceable(out_dir, [checkpoint], overwrite)  # before the slow part
    path, _ = resolve_checkpoint(checkpoint)
    refuse_pickled_module(path)
    sam = build_sam("auto", checkpoint=path, flavour=flavour)
    log(f"exporting {path.name} to ONNX in {out_dir}")
    with replaced_dir(out_dir, [path], overwrite) as staging:
        return export_onnx(sam, staging, {"name": path.name, "sha256": sha256_file(path)}, log=log, **options)
