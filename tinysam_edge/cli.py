"""The ``tinysam-edge`` command line. Torch-side subcommands import torch only when they run."""

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import weights
from .errors import TinySamError
from .image import load_image, save_image

if TYPE_CHECKING:
    from .predictor import PredictorBase

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _floats(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in count or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{what} must be {'/'.join(str(c) for c in count)} comma-separated finite numbers, got {text!r}")
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y`` or ``X,Y,LABEL`` (label 1 positive, 0 negative; default 1)."""
    values = _floats(text, (2, 3), "--point X,Y[,LABEL]")
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"--point label must be 1 (positive) or 0 (negative), got {text!r}")
    return values[0], values[1], int(label)


def parse_box(text: str) -> list[float]:
    """``X0,Y0,X1,Y1`` in original-image pixels."""
    return _floats(text, (4,), "--box X0,Y0,X1,Y1")


def _check_output(path: Path | None, overwrite: bool, inputs: Sequence[Path], suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> None:
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise TinySamError(f"{path}: unsupported output type {path.suffix!r}; use one of {', '.join(suffixes)}")
    if any(path.resolve() == p.resolve() for p in inputs):
        raise TinySamError(f"{path} is an input file; refusing to overwrite it")
    if path.exists() and not overwrite:
        raise TinySamError(f"{path} exists; pass --overwrite to replace it")


def cmd_weights_list(args: argparse.Namespace) -> int:
    """Print the registry and what is cached."""
    print(f"cache: {weights.cache_dir()}")
    for entry in weights.REGISTRY.values():
        cached = weights.cached_path(entry).is_file()
        default = " (default)" if entry.name == weights.DEFAULT_WEIGHTS else ""
        print(f"{entry.name:14s} {'cached ' if cached else 'missing'} {entry.filename:22s} {entry.description}{default}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """Download one registry file into the cache."""
    path = weights.fetch(args.name, force=args.force)
    print(path)
    return 0


def _torch_side(what: str):  # noqa: ANN202 - the module is only importable with the [convert] extra
    try:
        from . import models
        from .quantize import export
    except ImportError as exc:
        raise TinySamError(f"{what} needs PyTorch ({exc}); install it with: pip install 'tinysam-edge[convert]'") from exc
    return models, export


def make_predictor(args: argparse.Namespace) -> "PredictorBase":
    """The predictor the common model options ask for (exporting a checkpoint to IR once if needed)."""
    if args.backend == "torch":
        if args.model_dir is not None:
            raise TinySamError("--model-dir is an OpenVINO model; use --checkpoint with --backend torch")
        models, _ = _torch_side("the torch backend")
        return models.TorchPredictor(models.build_sam("auto", checkpoint=args.checkpoint, flavour=args.flavour, trust_pickle=args.trust_pickle))
    from .predictor import Predictor

    model_dir = args.model_dir
    if model_dir is None:
        _, export = _torch_side(f"exporting {args.checkpoint} to OpenVINO IR (or pass --model-dir)")
        model_dir = export.cached_model_dir(args.checkpoint, flavour=args.flavour, trust_pickle=args.trust_pickle, log=_log)
    return Predictor(model_dir, device=args.device, precision=args.precision)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _describe(predictor: "PredictorBase") -> str:
    if hasattr(predictor, "device_used"):
        return f"OpenVINO on {predictor.device_used}, {predictor.precision_used}"
    return "torch eager, f32"


def _segment_result(image: np.ndarray, predictor: "PredictorBase", coords, labels, box) -> tuple[np.ndarray, float, dict]:
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box, multimask_output=False)
    mask, score = masks[0], float(scores[0])
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if xs.size else [0, 0, 0, 0]
    return mask, score, {"score": score, "area": int(mask.sum()), "bbox_xywh": bbox, "timings_ms": _ms(predictor.timings)}


def _ms(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 1) for k, v in timings.items()}


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one object from point/box prompts and write an overlay."""
    if not args.point and args.box is None:
        raise TinySamError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    _check_output(args.out, args.overwrite, [args.image])
    _check_output(args.mask_out, args.overwrite, [args.image, args.out], (".png",))
    image = load_image(args.image)
    coords = np.array([p[:2] for p in args.point], dtype=np.float64) if args.point else None
    labels = np.array([p[2] for p in args.point], dtype=np.int64) if args.point else None
    box = np.array(args.box, dtype=np.float64) if args.box is not None else None

    from .prompts import check_prompts
    from .visualize import draw_overlay

    check_prompts(coords, labels, box, None, image.shape[:2])  # fail on bad prompts before loading a model
    predictor = make_predictor(args)
    predictor.set_image(image)
    mask, score, result = _segment_result(image, predictor, coords, labels, box)

    save_image(args.out, draw_overlay(image, mask, coords, labels, box, score), overwrite=args.overwrite)
    if args.mask_out is not None:
        save_image(args.mask_out, mask.astype(np.uint8) * 255, overwrite=args.overwrite)
    result = {"image": str(args.image), "size_hw": list(image.shape[:2]), "backend": _describe(predictor), "flavour": predictor.flavour, **result}
    result.update(overlay=str(args.out), mask=str(args.mask_out) if args.mask_out else None)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"score {score:.3f}, area {result['area']} px, bbox {result['bbox_xywh']} ({_describe(predictor)}); overlay -> {args.out}")
    return 0


def _sample_image() -> Path:
    """A photo that ships with matplotlib (Grace Hopper), used when ``demo`` gets no IMAGE."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise TinySamError("give an IMAGE: the default sample photo comes with matplotlib (pip install matplotlib)")
    return Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: segment a photo with a point and a box prompt, write overlays, print timings."""
    image_path = args.image or _sample_image()
    out_dir = args.out_dir
    outputs = [out_dir / "demo_point.png", out_dir / "demo_box.png"]
    for path in outputs:
        _check_output(path, args.overwrite, [image_path])
    image = load_image(image_path)
    h, w = image.shape[:2]

    from .visualize import draw_overlay

    start = time.perf_counter()
    predictor = make_predictor(args)
    load_s = time.perf_counter() - start
    predictor.set_image(image)
    print(f"{image_path} ({w}x{h}) on {_describe(predictor)}")
    print(f"  load/compile {1000 * load_s:.0f} ms, preprocess {1000 * predictor.timings['preprocess']:.0f} ms, encoder {1000 * predictor.timings['encoder']:.0f} ms")
    prompts = [
        ("point", np.array([[w / 2, h / 2]]), np.array([1]), None),
        ("box", None, None, np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4])),
    ]
    for (name, coords, labels, box), path in zip(prompts, outputs):
        mask, score, result = _segment_result(image, predictor, coords, labels, box)
        save_image(path, draw_overlay(image, mask, coords, labels, box, score), overwrite=args.overwrite)
        t = result["timings_ms"]
        print(f"  {name:5s}: score {score:.3f}, area {result['area']} px, decoder {t['decoder']:.0f} ms, postprocess {t['postprocess']:.0f} ms -> {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a checkpoint to an OpenVINO model dir."""
    _, export = _torch_side("export")
    manifest = export.export_checkpoint(
        args.checkpoint,
        args.out,
        flavour=args.flavour,
        trust_pickle=args.trust_pickle,
        overwrite=args.overwrite,
        log=_log,
        point_slots=args.point_slots,
        static_batch=args.static_batch,
        compress_to_fp16=args.fp16,
    )
    print(f"exported {manifest.source['name']} ({manifest.weights_precision} weights, flavour {manifest.flavour}) -> {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Time torch eager against the OpenVINO variants (and benchmark_app on every IR unless --quick)."""
    _, export = _torch_side("bench")
    from .quantize import bench

    model_dir = args.model_dir or export.cached_model_dir(args.checkpoint, log=_log)
    if args.everything is not None:
        return _bench_everything(args, bench, model_dir)
    if args.decoder is not None:
        return _bench_decoder(args, bench, model_dir)
    outputs = [args.out_dir / name for name in ("bench.json", "bench.md", "bench.png")]
    for path in outputs:
        _check_output(path, args.overwrite, [], (path.suffix,))
    if args.quick:
        report = bench.quick_bench(model_dir, args.checkpoint, rounds=args.rounds, device=args.device, log=_log)
    else:
        report = bench.full_bench(model_dir, args.int8_dir, args.checkpoint, rounds=args.rounds, seconds=args.seconds, device=args.device, log=_log)
    table = bench.format_tables(report)
    print(table)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    outputs[0].write_text(json.dumps(report, indent=2) + "\n")
    outputs[1].write_text(table + "\n")
    bench.plot(report, outputs[2])
    print(f"results -> {', '.join(map(str, outputs))}")
    return 0


def _bench_setup(args: argparse.Namespace, model_dir: Path, stem: str) -> tuple[list[Path], dict[str, Path]]:
    """Checked ``<stem>.json`` / ``<stem>.md`` output paths and the model dirs to compare."""
    outputs = [args.out_dir / f"{stem}{suffix}" for suffix in (".json", ".md")]
    for path in outputs:
        _check_output(path, args.overwrite, [], (path.suffix,))
    return outputs, {"fp32-IR": model_dir} | ({"int8-IR": args.int8_dir} if args.int8_dir is not None else {})


def _bench_everything(args: argparse.Namespace, bench, model_dir: Path) -> int:
    outputs, dirs = _bench_setup(args, model_dir, "everything")
    image = load_image(args.everything)
    options = {"pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh, "high_score_thresh": args.high_score_thresh}
    options["points_per_batch"] = args.points_per_batch
    report = bench.everything_bench(dirs, image, rounds=args.rounds, device=args.device, generator_options=options, log=_log)
    return _write_report(outputs, report, bench.format_everything(report))


def _write_report(outputs: list[Path], report: dict, table: str) -> int:
    """Print a benchmark's table and write it (.md) with the report (.json)."""
    print(table)
    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    outputs[0].write_text(json.dumps(report, indent=2) + "\n")
    outputs[1].write_text(table + "\n")
    print(f"results -> {', '.join(map(str, outputs))}")
    return 0


def _bench_decoder(args: argparse.Namespace, bench, model_dir: Path) -> int:
    from .quantize import decoder_bench

    outputs, dirs = _bench_setup(args, model_dir, "decoder")
    image = load_image(args.decoder)
    report = bench.decoder_report(dirs, args.checkpoint, image, rounds=args.rounds, device=args.device, log=_log)
    return _write_report(outputs, report, decoder_bench.format_decoder(report))


def cmd_quantize(args: argparse.Namespace) -> int:
    """NNCF W8A8: FP32 model dir + calibration images -> INT8 model dir."""
    try:
        from .quantize import ptq
        from .quantize.sampling import list_images
    except ImportError as exc:
        raise TinySamError(f"quantize needs NNCF ({exc}); install it with: pip install 'tinysam-edge[convert]'") from exc
    images = list_images(args.calib)
    held_out = 0
    if args.max_drop is not None:
        held_out = args.held_out if args.held_out is not None else max(1, len(images) // 5)
    report = ptq.quantize_model_dir(
        args.model_dir, images, args.out, subset_size=args.subset_size, decoder=args.decoder, max_drop=args.max_drop, held_out=held_out, max_iterations=args.max_iterations, overwrite=args.overwrite, log=_log
    )
    print(json.dumps(report, indent=2))
    print(f"INT8 model dir -> {args.out}")
    return 0 if report.get("drop_met", True) else 3


def cmd_compare(args: argparse.Namespace) -> int:
    """Best-mask IoU and score error of a candidate model dir against a reference, points and boxes apart."""
    from .predictor import Predictor
    from .quantize.accuracy import compare_predictors, everything_agreement, format_summary
    from .quantize.sampling import list_images

    _check_output(args.out, args.overwrite, [], (".json",))
    images = list_images(args.images)[: args.limit]
    if args.annotations is not None and not args.annotations.is_file():
        raise TinySamError(f"annotations not found: {args.annotations}")
    reference = Predictor(args.reference, device=args.device, precision=args.precision)
    candidate = Predictor(args.candidate, device=args.device, precision=args.candidate_precision or args.precision)
    report = compare_predictors(reference, candidate, images, args.annotations, objects_per_image=args.objects_per_image)
    if args.everything is not None:
        options = {"pred_iou_thresh": args.pred_iou_thresh, "stability_score_thresh": args.stability_score_thresh, "high_score_thresh": args.high_score_thresh}
        report["everything"] = everything_agreement(reference, candidate, load_image(args.everything), box_nms_thresh=args.box_nms_thresh, **options)
    report.update(reference=str(args.reference), candidate=str(args.candidate), device=candidate.device_used, precision=candidate.precision_used)
    print(format_summary(report))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report -> {args.out}")
    return 0


def cmd_everything(args: argparse.Namespace) -> int:
    """Segment everything: overlay PNG, COCO-RLE JSON, counts and timings per stage."""
    from .mask_generator import HierarchicalMaskGenerator, MaskGenerator
    from .visualize import draw_masks

    overlay_path, json_path = args.out / "overlay.png", args.out / "masks.json"
    for path in (overlay_path, json_path):
        _check_output(path, args.overwrite, [args.image], (path.suffix,))
    image = load_image(args.image)
    predictor = make_predictor(args)
    options = dict(
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        min_mask_region_area=args.min_mask_region_area,
        output_mode="coco_rle",
        progress=True,
    )
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:
        raise TinySamError("everything writes COCO RLE with pycocotools: pip install 'tinysam-edge[eval]'") from exc
    if args.mode == "hierarchical":
        generator = HierarchicalMaskGenerator(predictor, high_score_thresh=args.high_score_thresh, **options)
    else:
        generator = MaskGenerator(predictor, **options)
    start = time.perf_counter()
    records = generator.generate(image)
    total = time.perf_counter() - start
    masks = [mask_utils.decode(r["segmentation"]).astype(bool) for r in records]
    save_image(overlay_path, draw_masks(image, masks), overwrite=args.overwrite)
    json_path.write_text(json.dumps(records) + "\n")
    stats = generator.stats
    print(f"{args.image} ({image.shape[1]}x{image.shape[0]}), {args.mode} on {_describe(predictor)}: {len(records)} masks in {total:.2f} s")
    for stage in ("grid", "stage1", "stage2"):
        if stage in stats:
            c = stats[stage]
            print(f"  {stage}: {c['prompts']} prompts, {c['masks_decoded']} masks, {c['passed_pred_iou']} past IoU, {c['kept']} kept")
    if "stage2_candidates" in stats:
        print(f"  stage2 candidates {stats['stage2_candidates']}, covered by stage 1 (skipped) {stats['stage2_covered']}")
    print(f"  before NMS {stats['before_nms']}, after {stats['after_nms']}")
    print("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in stats["seconds"].items()))
    print(f"overlay -> {overlay_path}, masks (COCO RLE) -> {json_path}")
    return 0


def _coco_eval(predictor: "PredictorBase", args: argparse.Namespace) -> tuple[dict, float]:
    from .quantize.coco_eval import run_coco_eval

    start = time.perf_counter()
    report = run_coco_eval(predictor, args.images, args.annotations, args.detections, limit=args.limit)
    return report, time.perf_counter() - start


def cmd_eval_coco(args: argparse.Namespace) -> int:
    """TinySAM's zero-shot COCO protocol: detection boxes -> best masks -> COCOeval segm."""
    summary_path = args.out.with_name(args.out.stem + ".summary.json")
    for path in (args.out, summary_path):
        _check_output(path, args.overwrite, [], (".json",))
    predictor = make_predictor(args)
    report, seconds = _coco_eval(predictor, args)
    print(report["summary"])
    per_image = seconds / report["images"]
    print(f"{report['images']} images, {report['detections']} detections on {_describe(predictor)}: {seconds:.1f} s ({per_image:.2f} s per image); warnings {report['warnings']}")
    args.out.write_text(json.dumps(report.pop("results")) + "\n")
    summary_path.write_text(json.dumps({**report, "backend": _describe(predictor), "seconds": seconds, "seconds_per_image": per_image}, indent=2) + "\n")
    print(f"results -> {args.out}, summary -> {summary_path}")
    return 0


def cmd_eval_compare(args: argparse.Namespace) -> int:
    """COCO AP of two model dirs (e.g. FP32 and INT8) on the same detections, side by side."""
    from .predictor import Predictor

    _check_output(args.out, args.overwrite, [], (".json",))
    reports = {}
    for name, folder in (("reference", args.reference), ("candidate", args.candidate)):
        predictor = Predictor(folder, device=args.device, precision=args.precision)
        report, seconds = _coco_eval(predictor, args)
        report.pop("results")
        reports[name] = {**report, "model_dir": str(folder), "backend": _describe(predictor), "seconds_per_image": seconds / report["images"]}
    ref, cand = reports["reference"]["stats"], reports["candidate"]["stats"]
    print("| metric | reference | candidate | drop |\n| --- | --- | --- | --- |")
    for key in ref:
        print(f"| {key} | {ref[key]:.3f} | {cand[key]:.3f} | {ref[key] - cand[key]:+.3f} |")
    print(f"seconds per image: reference {reports['reference']['seconds_per_image']:.2f}, candidate {reports['candidate']['seconds_per_image']:.2f}")
    args.out.write_text(json.dumps(reports, indent=2) + "\n")
    print(f"report -> {args.out}")
    return 0


def _add_eval_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="folder of the annotated images")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--detections", type=Path, required=True, help="COCO results JSON of detector boxes (every entry is used)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (by id)")


def cmd_webcam(args: argparse.Namespace) -> int:
    """Live segmentation with persistent prompts: a window, or --headless with scripted prompts."""
    from . import live

    for path, suffix in ((args.record, ".mp4"), (args.timings, ".json")):
        if path is not None:
            _check_output(path, args.overwrite, [], (suffix,))
    prompts = live.PersistentPrompts(args.point, args.box)
    if not args.headless:
        live.open_window(prompts)
    frames = live.FrameSource(args.source, reconnect=args.reconnect)
    predictor = make_predictor(args)
    timings = live.run(predictor, frames, prompts, args.max_frames, args.record, window=not args.headless)
    if args.timings is not None:
        live.write_timings(args.timings, predictor, timings)
    if timings:
        print(live.summarize(timings))
    return 0


def _training():  # noqa: ANN202 - the module is only importable with the [train] extra
    try:
        from .models import training
    except ImportError as exc:
        raise TinySamError(f"training needs PyTorch and pycocotools ({exc}); install them with: pip install 'tinysam-edge[train]'") from exc
    return training


def cmd_train_cache(args: argparse.Namespace) -> int:
    """Precompute teacher image embeddings."""
    cache = _training().cache_teacher(
        args.teacher, str(args.images), str(args.out), args.annotations, model=args.model, flip=args.flip, device=args.device, amp=args.amp, log=_log
    )
    print(f"teacher embeddings of {cache.meta.checkpoint} in {cache.root}")
    return 0


def cmd_train_distill(args: argparse.Namespace) -> int:
    """Run or resume a distillation from a config file."""
    training = _training()
    config = training.read_config(args.config, args.set)
    out = training.train(config, resume=args.resume, log=_log)
    print(f"student checkpoint (official layout): {out / 'student_last.pth'}; logs and training.png in {out}")
    return 0


def _add_model_options(parser: argparse.ArgumentParser, backends: bool = True) -> None:
    parser.add_argument("--checkpoint", default=weights.DEFAULT_WEIGHTS, help="checkpoint file or registry name (default: %(default)s)")
    parser.add_argument("--model-dir", type=Path, help="exported OpenVINO model dir (default: export --checkpoint once into the cache)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU or AUTO (default: %(default)s)")
    parser.add_argument("--precision", choices=["f32", "bf16", "f16"], help="inference precision (default: f32 on CPU/GPU)")
    if backends:
        parser.add_argument("--backend", choices=["openvino", "torch"], default="openvino", help="inference backend (default: %(default)s)")
        parser.add_argument("--flavour", choices=["tinysam", "sam"], help="single-mask rule (default: from the weights; tinysam)")
        parser.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole pickled module (can run code)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all subcommands."""
    parser = _Parser(prog="tinysam-edge", description="TinySAM segment-anything for Intel edge devices.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p_weights = sub.add_parser("weights", help="list or download official weight files")
    wsub = p_weights.add_subparsers(dest="weights_command", required=True, parser_class=_Parser)
    wsub.add_parser("list", help="show the registry and the cache").set_defaults(func=cmd_weights_list)
    p_fetch = wsub.add_parser("fetch", help="download a registry file into the cache")
    p_fetch.add_argument("name", help=f"one of: {', '.join(weights.REGISTRY)}")
    p_fetch.add_argument("--force", action="store_true", help="download again even if cached")
    p_fetch.set_defaults(func=cmd_weights_fetch)

    p_seg = sub.add_parser("segment", help="segment one object from point/box prompts")
    p_seg.add_argument("image", type=Path, help="input image file")
    p_seg.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y[,LABEL]", help="point prompt; label 1 positive (default), 0 negative; repeatable")
    p_seg.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="box prompt in pixels")
    p_seg.add_argument("--out", type=Path, required=True, help="overlay image to write (.png/.jpg)")
    p_seg.add_argument("--mask-out", type=Path, help="binary mask PNG to write (0/255)")
    p_seg.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_model_options(p_seg)
    p_seg.set_defaults(func=cmd_segment)

    p_demo = sub.add_parser("demo", help="main job: segment a photo with a point and a box, print timings")
    p_demo.add_argument("image", type=Path, nargs="?", help="input image (default: a sample photo shipped with matplotlib)")
    p_demo.add_argument("--out-dir", type=Path, default=Path("tinysam-demo"), help="where the overlays go (default: %(default)s)")
    _add_model_options(p_demo)
    p_demo.set_defaults(func=cmd_demo)

    p_exp = sub.add_parser("export", help="export a checkpoint to an OpenVINO model dir")
    p_exp.add_argument("--checkpoint", default=weights.DEFAULT_WEIGHTS, help="checkpoint file or registry name (default: %(default)s)")
    p_exp.add_argument("--out", type=Path, required=True, help="model dir to create")
    p_exp.add_argument("--fp16", action="store_true", help="store weights as FP16 (default: full-precision FP32)")
    p_exp.add_argument("--point-slots", type=int, default=8, help="point slots of the static decoders (default: %(default)s)")
    p_exp.add_argument("--static-batch", type=int, default=64, help="prompt batch of the static batch decoder (default: %(default)s)")
    p_exp.add_argument("--flavour", choices=["tinysam", "sam"], help="single-mask rule recorded in the manifest")
    p_exp.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole pickled module (can run code)")
    p_exp.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p_exp.set_defaults(func=cmd_export)

    p_all = sub.add_parser("everything", help="segment everything: hierarchical (TinySAM) or point-grid (SAM) mode")
    p_all.add_argument("image", type=Path, help="input image file")
    p_all.add_argument("--out", type=Path, required=True, help="folder for overlay.png and masks.json")
    p_all.add_argument("--mode", choices=["hierarchical", "grid"], default="hierarchical", help="(default: %(default)s)")
    p_all.add_argument("--points-per-side", type=int, default=32, help="full grid density (default: %(default)s)")
    p_all.add_argument("--points-per-batch", type=int, default=64, help="prompts per decoder call (default: %(default)s)")
    p_all.add_argument("--pred-iou-thresh", type=float, default=0.88, help="(default: %(default)s)")
    p_all.add_argument("--stability-score-thresh", type=float, default=0.95, help="(default: %(default)s)")
    p_all.add_argument("--high-score-thresh", type=float, default=8.5, help="hierarchical coverage logit threshold (default: %(default)s)")
    p_all.add_argument("--box-nms-thresh", type=float, default=0.7, help="(default: %(default)s)")
    p_all.add_argument("--min-mask-region-area", type=int, default=0, help="fill holes / drop islands smaller than this (default: off)")
    _add_model_options(p_all)
    p_all.set_defaults(func=cmd_everything)

    p_eval = sub.add_parser("eval", help="zero-shot instance segmentation on COCO (box prompts from a detector)")
    esub = p_eval.add_subparsers(dest="eval_command", required=True, parser_class=_Parser)
    p_coco = esub.add_parser("coco", help="segment every detection and run COCOeval segm")
    _add_eval_inputs(p_coco)
    p_coco.add_argument("--out", type=Path, default=Path("coco_results.json"), help="results JSON; the summary goes beside it (default: %(default)s)")
    _add_model_options(p_coco)
    p_coco.set_defaults(func=cmd_eval_coco)
    p_ecmp = esub.add_parser("compare", help="COCO AP of two model dirs (e.g. FP32 vs INT8) on the same detections")
    _add_eval_inputs(p_ecmp)
    p_ecmp.add_argument("--reference", type=Path, required=True, help="reference model dir (FP32)")
    p_ecmp.add_argument("--candidate", type=Path, required=True, help="candidate model dir (e.g. INT8)")
    p_ecmp.add_argument("--device", default="CPU", help="OpenVINO device (default: %(default)s)")
    p_ecmp.add_argument("--precision", choices=["f32", "bf16", "f16"], help="inference precision (default: f32 on CPU/GPU)")
    p_ecmp.add_argument("--out", type=Path, default=Path("coco_compare.json"), help="JSON report (default: %(default)s)")
    p_ecmp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p_ecmp.set_defaults(func=cmd_eval_compare)

    p_cam = sub.add_parser("webcam", help="live segmentation of a camera, video file or stream")
    p_cam.add_argument("--source", default="0", help="camera index, video file or stream URL (default: %(default)s)")
    p_cam.add_argument("--headless", action="store_true", help="no window: scripted --point/--box, write --record/--timings")
    p_cam.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y[,LABEL]", help="persistent point prompt; repeatable")
    p_cam.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="persistent box prompt")
    p_cam.add_argument("--max-frames", type=int, default=10**9, help="stop after this many frames")
    p_cam.add_argument("--record", type=Path, help="write the annotated video (.mp4)")
    p_cam.add_argument("--timings", type=Path, help="write per-frame timings (.json)")
    p_cam.add_argument("--reconnect", type=int, default=0, help="reopen a camera/stream that stops, up to N times")
    _add_model_options(p_cam, backends=False)
    p_cam.set_defaults(func=cmd_webcam, backend="openvino", flavour=None, trust_pickle=False)

    p_bench = sub.add_parser("bench", help="benchmark torch eager vs OpenVINO (f32, bf16, INT8) and benchmark_app on every IR")
    p_bench.add_argument("--quick", action="store_true", help="only the Python pipeline: torch eager vs OpenVINO f32/bf16")
    p_bench.add_argument("--int8-dir", type=Path, help="INT8 model dir from 'tinysam-edge quantize' to include")
    p_bench.add_argument("--rounds", type=int, default=5, help="interleaved pipeline rounds (default: %(default)s)")
    p_bench.add_argument("--seconds", type=int, default=10, help="seconds per benchmark_app run (default: %(default)s)")
    p_bench.add_argument("--out-dir", type=Path, default=Path("bench-results"), help="where bench.json/.md/.png go (default: %(default)s)")
    p_bench.add_argument("--everything", type=Path, metavar="IMAGE", help="instead: hierarchical vs grid everything mode on IMAGE")
    p_bench.add_argument(
        "--decoder", type=Path, metavar="IMAGE", help="instead: first / repeated click decoder stage on IMAGE per variant vs the official SAM decoder"
    )
    p_bench.add_argument("--points-per-batch", type=int, default=32, help="everything: prompts per decoder call (default: %(default)s)")
    p_bench.add_argument("--pred-iou-thresh", type=float, default=0.88, help="everything: (default: %(default)s)")
    p_bench.add_argument("--stability-score-thresh", type=float, default=0.95, help="everything: (default: %(default)s)")
    p_bench.add_argument("--high-score-thresh", type=float, default=8.5, help="everything: (default: %(default)s)")
    _add_model_options(p_bench, backends=False)
    p_bench.set_defaults(func=cmd_bench)

    p_q = sub.add_parser("quantize", help="NNCF W8A8 post-training quantization of an exported model dir")
    p_q.add_argument("--model-dir", type=Path, required=True, help="FP32 model dir from 'tinysam-edge export'")
    p_q.add_argument("--calib", required=True, help="calibration images: a folder or a glob")
    p_q.add_argument("--out", type=Path, required=True, help="INT8 model dir to create")
    p_q.add_argument("--subset-size", type=int, default=128, help="calibration samples (default: %(default)s)")
    p_q.add_argument("--decoder", choices=["fp", "int8"], default="fp", help="keep the decoder in full precision or quantize it too (default: %(default)s)")
    p_q.add_argument("--max-drop", type=float, help="accuracy control: largest allowed drop of mean best-mask IoU vs FP32 (e.g. 0.01)")
    p_q.add_argument("--max-iterations", type=int, help="accuracy control: most layers to revert to float per model (default: no limit)")
    p_q.add_argument("--held-out", type=int, help="images kept out of calibration to measure the drop (default: 20%% of --calib)")
    p_q.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p_q.set_defaults(func=cmd_quantize)

    p_cmp = sub.add_parser("compare", help="accuracy of a candidate model dir (e.g. INT8) against a reference (FP32)")
    p_cmp.add_argument("--reference", type=Path, required=True, help="reference model dir (FP32)")
    p_cmp.add_argument("--candidate", type=Path, required=True, help="candidate model dir (e.g. INT8)")
    p_cmp.add_argument("--images", required=True, help="images: a folder or a glob")
    p_cmp.add_argument("--annotations", type=Path, help="COCO instances JSON: prompts from real objects")
    p_cmp.add_argument("--objects-per-image", type=int, default=4, help="objects (each gives a point and a box prompt) per image (default: %(default)s)")
    p_cmp.add_argument("--limit", type=int, help="use only the first N images")
    p_cmp.add_argument("--device", default="CPU", help="OpenVINO device (default: %(default)s)")
    p_cmp.add_argument("--precision", choices=["f32", "bf16", "f16"], help="inference precision (default: f32 on CPU/GPU)")
    p_cmp.add_argument("--candidate-precision", choices=["f32", "bf16", "f16"], help="the candidate's precision, e.g. bf16 against f32 (default: --precision)")
    p_cmp.add_argument("--everything", type=Path, metavar="IMAGE", help="also: share of the reference's everything-mode masks the candidate matches")
    p_cmp.add_argument("--pred-iou-thresh", type=float, default=0.88, help="everything: (default: %(default)s)")
    p_cmp.add_argument("--stability-score-thresh", type=float, default=0.95, help="everything: (default: %(default)s)")
    p_cmp.add_argument("--high-score-thresh", type=float, default=8.5, help="everything: (default: %(default)s)")
    p_cmp.add_argument("--box-nms-thresh", type=float, default=0.7, help="everything: (default: %(default)s)")
    p_cmp.add_argument("--out", type=Path, default=Path("compare.json"), help="JSON report (default: %(default)s)")
    p_cmp.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p_cmp.set_defaults(func=cmd_compare)
    p_train = sub.add_parser("train", help="distill a TinySAM student from a SAM teacher (PyTorch, CUDA or CPU)")
    tsub = p_train.add_subparsers(dest="train_command", required=True, parser_class=_Parser)
    p_tc = tsub.add_parser("cache-teacher", help="precompute teacher image embeddings (fp16, resumable)")
    p_tc.add_argument("--teacher", required=True, help="teacher checkpoint file or registry name (e.g. sam_vit_h)")
    p_tc.add_argument("--model", default="auto", choices=["auto", "vit_t", "vit_b", "vit_l", "vit_h"], help="teacher architecture (default: from the checkpoint)")
    p_tc.add_argument("--images", type=Path, required=True, help="image folder (SA-1B layout: a JSON next to each image)")
    p_tc.add_argument("--annotations", help="COCO instances JSON (COCO layout instead of SA-1B)")
    p_tc.add_argument("--out", type=Path, required=True, help="cache folder (an existing cache of the same teacher is resumed)")
    p_tc.add_argument("--flip", action="store_true", help="also cache horizontally flipped images (needed for data.flip)")
    p_tc.add_argument("--device", default="auto", help="torch device (default: CUDA when available, else CPU)")
    p_tc.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast dtype (default: bf16 on CUDA, off on CPU)")
    p_tc.set_defaults(func=cmd_train_cache)
    p_td = tsub.add_parser("distill", help="train a student from a TOML/YAML config (see configs/)")
    p_td.add_argument("--config", type=Path, required=True, help="config file (.toml, or .yaml with PyYAML)")
    p_td.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value; repeatable")
    p_td.add_argument("--resume", action="store_true", help="continue the run in run.out from its last checkpoint")
    p_td.set_defaults(func=cmd_train_distill)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors print one line and exit with status 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TinySamError, ValueError, OSError) as exc:
        print(f"tinysam-edge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinysam-edge: interrupted", file=sys.stderr)
        return 130
