"""``export``, ``quantize`` and ``compare``: FP32 IR from a checkpoint, INT8 IR from FP32 IR, and their agreement."""

import argparse
import json
from pathlib import Path

from .. import weights
from ..errors import TinySamError
from ..files import check_replaceable
from ..image import list_images, load_image
from ..masks import FLAVOURS
from .models import torch_side
from .options import (
    POSITIVE_INT,
    THRESHOLDS,
    UNIT,
    add_device_options,
    add_everything_options,
    add_overwrite,
    everything_options,
    number,
    refuse_unused,
)
from .outputs import check_output, log


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to an OpenVINO model dir, or to ONNX files with ``--format onnx``."""
    if args.format == "onnx":
        return _export_onnx(args)
    refuse_unused(args, ["model_dir", "multimask", "stability_score", "quantize", "encoder_preprocessing"], "without --format onnx")
    args.checkpoint = args.checkpoint or weights.DEFAULT_WEIGHTS
    entry = weights.get_entry(args.checkpoint)
    check_replaceable(args.out, [Path(args.checkpoint), weights.cached_path(entry) if entry else None], args.overwrite)
    _, export = torch_side("export")
    manifest = export.export_checkpoint(
        args.checkpoint,
        args.out,
        flavour=args.flavour,
        trust_pickle=args.trust_pickle,
        overwrite=args.overwrite,
        log=log,
        compress_to_fp16=args.fp16,
        **{name: getattr(args, name) for name in ("point_slots", "static_batch") if getattr(args, name) is not None},
    )
    print(f"exported {manifest.source['name']} ({manifest.weights_precision} weights, flavour {manifest.flavour}) -> {args.out}")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    """``export --format onnx``: encoder.onnx, decoder.onnx and config.json in segment-anything's ONNX interface."""
    refuse_unused(args, ["fp16", "point_slots", "static_batch", "trust_pickle"], "with --format onnx")
    if args.model_dir is not None:
        if args.checkpoint is not None:
            raise TinySamError("give --checkpoint or --model-dir, not both (a model dir names the checkpoint it was exported from)")
        if args.flavour is not None:
            raise TinySamError("--flavour applies to --checkpoint; a model dir's flavour is fixed at export (export --flavour)")
        checkpoint, flavour = _model_dir_source(args.model_dir)
    else:
        checkpoint, flavour = args.checkpoint or weights.DEFAULT_WEIGHTS, args.flavour
    entry = weights.get_entry(str(checkpoint))
    check_replaceable(args.out, [Path(checkpoint), weights.cached_path(entry) if entry else None, args.model_dir], args.overwrite)
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        from ..quantize import onnx_export
    except ImportError as exc:
        raise TinySamError(
            f"export --format onnx needs torch, onnx and onnxruntime ({exc}); install them with: pip install 'tinysam-edge[convert,onnx]'"
        ) from exc
    config = onnx_export.export_onnx_checkpoint(
        checkpoint,
        args.out,
        flavour=flavour,
        overwrite=args.overwrite,
        log=log,
        return_single_mask=not args.multimask,
        use_stability_score=args.stability_score,
        quantize=args.quantize,
        encoder_preprocessing=args.encoder_preprocessing,
    )
    print(f"exported {config['source']['name']} to ONNX (flavour {config['flavour']}, opset {config['opset']}) -> {args.out}")
    return 0


def _model_dir_source(model_dir: Path) -> tuple[Path, str]:
    """The checkpoint (a cached registry file, sha256 checked) and flavour an OpenVINO model dir was exported from."""
    from ..manifest import Manifest

    manifest = Manifest.read(model_dir)
    name = manifest.source.get("name", "")
    entry = weights.get_entry(name)
    if entry is None:
        raise TinySamError(
            f"{model_dir} was exported from {name!r}, which is not a registry name, and does not record where it is: pass --checkpoint"
        )
    path, _ = weights.resolve_checkpoint(entry.name)
    if weights.sha256_file(path) != manifest.source.get("sha256"):
        raise TinySamError(f"{path} is not the file {model_dir} was exported from (its sha256 differs): pass that file as --checkpoint")
    return path, manifest.flavour


def cmd_quantize(args: argparse.Namespace) -> int:
    """NNCF W8A8: FP32 model dir + calibration images -> INT8 model dir."""
    if args.max_drop is None:
        refuse_unused(args, ["held_out", "max_iterations"], "without --max-drop (they set up accuracy control)")
    images = list_images(args.calib)
    check_replaceable(args.out, [args.model_dir, *images], args.overwrite)
    held_out = 0
    if args.max_drop is not None:
        held_out = args.held_out if args.held_out is not None else max(1, len(images) // 5)
        if held_out >= len(images):
            raise TinySamError(f"--held-out {held_out} leaves no calibration image of the {len(images)} found")
    try:
        from ..quantize import ptq
    except ImportError as exc:
        raise TinySamError(f"quantize needs NNCF ({exc}); install it with: pip install 'tinysam-edge[convert]'") from exc
    report = ptq.quantize_model_dir(
        args.model_dir,
        images,
        args.out,
        subset_size=args.subset_size,
        decoder=args.decoder,
        max_drop=args.max_drop,
        held_out=held_out,
        max_iterations=args.max_iterations,
        overwrite=args.overwrite,
        log=log,
    )
    print(json.dumps(report, indent=2))
    print(f"INT8 model dir -> {args.out}")
    return 0 if report.get("drop_met", True) else 3


def cmd_compare(args: argparse.Namespace) -> int:
    """Best-mask IoU and score error of a candidate model dir against a reference, points and boxes apart."""
    from ..files import write_text
    from ..predictor import Predictor
    from ..quantize.evaluation.agreement import compare_predictors, everything_agreement, format_summary

    if args.everything is None:
        refuse_unused(args, ["pred_iou_thresh", "stability_score_thresh", "high_score_thresh", "box_nms_thresh"], "without --everything")
    check_output(args.out, args.overwrite, [args.annotations, args.everything, args.reference, args.candidate, args.images], (".json",))
    images = list_images(args.images)[: args.limit]
    reference = Predictor(args.reference, device=args.device, precision=args.precision)
    candidate = Predictor(args.candidate, device=args.device, precision=args.candidate_precision or args.precision)
    report = compare_predictors(reference, candidate, images, args.annotations, objects_per_image=args.objects_per_image)
    if args.everything is not None:
        image = load_image(args.everything)
        report["everything"] = everything_agreement(reference, candidate, image, **everything_options(args))
    report.update(
        reference=str(args.reference), candidate=str(args.candidate), device=candidate.device_used, precision=candidate.precision_used
    )
    print(format_summary(report))
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"report -> {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export``, ``quantize`` and ``compare``."""
    _add_export(sub)
    _add_quantize(sub)
    _add_compare(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    from ..manifest import POINT_SLOTS, STATIC_BATCH

    p = sub.add_parser("export", help="export a checkpoint to an OpenVINO model dir, or to ONNX (--format onnx)")
    p.add_argument(
        "--format", choices=["openvino", "onnx"], default="openvino", help="OpenVINO IR model dir or ONNX files (default: %(default)s)"
    )
    p.add_argument("--checkpoint", help=f"checkpoint file or registry name (default: {weights.DEFAULT_WEIGHTS})")
    p.add_argument("--model-dir", type=Path, help="onnx: export the checkpoint this model dir was exported from (a registry name)")
    p.add_argument("--out", type=Path, required=True, help="model dir to create")
    p.add_argument("--fp16", action="store_true", help="store weights as FP16 (default: full-precision FP32)")
    slots, batch = "{}..{}".format(*POINT_SLOTS), "{}..{}".format(*STATIC_BATCH)
    p.add_argument(
        "--point-slots",
        type=number(int, *POINT_SLOTS),
        help=f"point slots of the static decoders, {slots} (default: 8)",
    )
    p.add_argument(
        "--static-batch",
        type=number(int, *STATIC_BATCH),
        help=f"prompt batch of the static batch decoder, {batch} (default: 64)",
    )
    p.add_argument("--multimask", action="store_true", help="onnx: the decoder returns all four masks (default: the flavour's single mask)")
    p.add_argument("--stability-score", action="store_true", help="onnx: iou_predictions carries SAM's stability score instead")
    p.add_argument("--quantize", choices=["dynamic"], help="onnx: also write decoder_int8.onnx (onnxruntime dynamic INT8)")
    p.add_argument(
        "--encoder-preprocessing",
        action="store_true",
        help="onnx: encoder.onnx takes the resized RGB image (H, W, 3) and normalises and pads it (AnyLabeling's SAM loader)",
    )
    p.add_argument("--flavour", choices=FLAVOURS, help="single-mask rule recorded in the manifest")
    p.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole pickled module (can run code)")
    p.add_argument("--overwrite", action="store_true", help="replace the model dir in --out (never a folder holding other files)")
    p.set_defaults(func=cmd_export)


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="NNCF W8A8 post-training quantization of an exported model dir")
    p.add_argument("--model-dir", type=Path, required=True, help="FP32 model dir from 'tinysam-edge export'")
    p.add_argument("--calib", required=True, help="calibration images: a folder or a glob")
    p.add_argument("--out", type=Path, required=True, help="INT8 model dir to create")
    p.add_argument("--subset-size", type=POSITIVE_INT, default=128, help="calibration samples (default: %(default)s)")
    p.add_argument(
        "--decoder",
        choices=["fp", "int8"],
        default="fp",
        help="keep the decoders in full precision or quantize the plain and per-prompt ones too (default: %(default)s)",
    )
    p.add_argument("--max-drop", type=UNIT, help="accuracy control: largest allowed drop of mean best-mask IoU vs FP32, 0..1 (e.g. 0.01)")
    p.add_argument(
        "--max-iterations", type=POSITIVE_INT, help="accuracy control: most layers to revert to float per model (default: no limit)"
    )
    p.add_argument("--held-out", type=POSITIVE_INT, help="images kept out of calibration to measure the drop (default: 20%% of --calib)")
    p.add_argument("--overwrite", action="store_true", help="replace the model dir in --out (never a folder holding other files)")
    p.set_defaults(func=cmd_quantize)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from ..devices import PRECISIONS

    p = sub.add_parser("compare", help="mask agreement of two model dirs (e.g. INT8 or bf16 against FP32 f32) on point and box prompts")
    p.add_argument("--reference", type=Path, required=True, help="reference model dir (FP32)")
    p.add_argument("--candidate", type=Path, required=True, help="candidate model dir (e.g. INT8)")
    p.add_argument("--images", required=True, help="images: a folder or a glob")
    p.add_argument("--annotations", type=Path, help="COCO instances JSON: prompts from real objects")
    p.add_argument(
        "--objects-per-image",
        type=POSITIVE_INT,
        default=4,
        help="objects (each gives a point and a box prompt) per image (default: %(default)s)",
    )
    p.add_argument("--limit", type=POSITIVE_INT, help="use only the first N images")
    add_device_options(p)
    p.add_argument(
        "--candidate-precision", choices=PRECISIONS, help="the candidate's precision, e.g. bf16 against f32 (default: --precision)"
    )
    p.add_argument(
        "--everything", type=Path, metavar="IMAGE", help="also: share of the reference's everything-mode masks the candidate matches"
    )
    add_everything_options(p, "everything: ", (*THRESHOLDS, "box_nms_thresh"))
    p.add_argument("--out", type=Path, default=Path("compare.json"), help="JSON report (default: %(default)s)")
    add_overwrite(p)
    p.set_defaults(func=cmd_compare)
