"""``segment``, ``demo`` and ``everything``: masks for one photo."""

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np

from ..errors import TinySamError
from ..files import resolve_path
from ..image import load_image, save_image
from ..masks import box_xywh, encode_rle, mask_to_box
from ..predictor import PredictorBase
from .models import make_predictor
from .options import add_everything_options, add_model_options, add_prompt_options, everything_settings
from .outputs import check_output, check_output_dir


def _ms(timings: dict[str, float]) -> dict[str, float]:
    return {k: round(v * 1000, 1) for k, v in timings.items()}


def segment_one(
    predictor: PredictorBase, coords: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None
) -> tuple[np.ndarray, float, dict]:
    """Best single mask (H, W) for one prompt set, its score and the JSON record (``bbox`` XYWH, SAM's convention)."""
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box, multimask_output=False)
    mask, score = masks[0], float(scores[0])
    record = {"score": score, "area": int(mask.sum()), "bbox": box_xywh(mask_to_box(mask)), "timings_ms": _ms(predictor.timings)}
    return mask, score, record


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one object from point/box prompts and write an overlay."""
    if not args.point and args.box is None:
        raise TinySamError("give at least one --point X,Y[,LABEL] or a --box X0,Y0,X1,Y1")
    if args.mask_out is not None and resolve_path(args.mask_out) == resolve_path(args.out):
        raise TinySamError("--out and --mask-out are the same file")
    check_output(args.out, args.overwrite, [args.image])
    check_output(args.mask_out, args.overwrite, [args.image], (".png",))
    image = load_image(args.image)
    coords = np.array([p[:2] for p in args.point], dtype=np.float64) if args.point else None
    labels = np.array([p[2] for p in args.point], dtype=np.int64) if args.point else None
    box = np.array(args.box, dtype=np.float64) if args.box is not None else None

    from ..prompts import check_prompts
    from ..visualize import draw_overlay

    check_prompts(coords, labels, box, None, image.shape[:2])  # fail on bad prompts before loading a model
    predictor = make_predictor(args)
    predictor.set_image(image)
    mask, score, record = segment_one(predictor, coords, labels, box)

    outputs = [(args.out, draw_overlay(image, mask, coords, labels, box, score))]
    if args.mask_out is not None:
        outputs.append((args.mask_out, mask.astype(np.uint8) * 255))
    for path, picture in outputs:
        save_image(path, picture, overwrite=args.overwrite)
    record = {
        "image": str(args.image),
        "size_hw": list(image.shape[:2]),
        "backend": predictor.describe(),
        "flavour": predictor.flavour,
        **record,
    }
    record.update(overlay=str(args.out), mask=str(args.mask_out) if args.mask_out else None)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        x, y, bw, bh = record["bbox"]
        print(
            f"score {score:.3f}, area {record['area']} px, bbox x {x} y {y} w {bw} h {bh} ({predictor.describe()}); overlay -> {args.out}"
        )
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
    outputs = [args.out_dir / "demo_point.png", args.out_dir / "demo_box.png"]
    check_output_dir(args.out_dir, [image_path, args.model_dir])
    for path in outputs:
        check_output(path, args.overwrite, [image_path])
    image = load_image(image_path)
    h, w = image.shape[:2]

    from ..visualize import draw_overlay

    start = time.perf_counter()
    predictor = make_predictor(args)
    load_s = time.perf_counter() - start
    predictor.set_image(image)
    print(f"{image_path} ({w}x{h}) on {predictor.describe()}")
    print(
        f"  load/compile {1000 * load_s:.0f} ms, preprocess {1000 * predictor.timings['preprocess']:.0f} ms, encoder {1000 * predictor.timings['encoder']:.0f} ms"
    )
    prompts = [
        ("point", np.array([[w / 2, h / 2]]), np.array([1]), None),
        ("box", None, None, np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4])),
    ]
    for (name, coords, labels, box), path in zip(prompts, outputs):
        mask, score, record = segment_one(predictor, coords, labels, box)
        save_image(path, draw_overlay(image, mask, coords, labels, box, score), overwrite=args.overwrite)
        t = record["timings_ms"]
        print(
            f"  {name:5s}: score {score:.3f}, area {record['area']} px, decoder {t['decoder']:.0f} ms, postprocess {t['postprocess']:.0f} ms -> {path}"
        )
    return 0


def _print_stats(stats: dict) -> None:
    for stage in ("grid", "stage1", "stage2"):
        if stage in stats:
            c = stats[stage]
            print(f"  {stage}: {c['prompts']} prompts, {c['masks_decoded']} masks, {c['passed_pred_iou']} past IoU, {c['kept']} kept")
    if "stage2_candidates" in stats:
        print(f"  stage2 candidates {stats['stage2_candidates']}, covered by stage 1 (skipped) {stats['stage2_covered']}")
    print(f"  before NMS {stats['before_nms']}, after {stats['after_nms']}")
    print("  seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in stats["seconds"].items()))


def cmd_everything(args: argparse.Namespace) -> int:
    """Segment everything: overlay PNG, COCO-RLE JSON, counts and timings per stage."""
    from ..files import write_text
    from ..mask_generator import make_generator
    from ..visualize import draw_masks

    overlay_path, json_path = args.out / "overlay.png", args.out / "masks.json"
    check_output_dir(args.out, [args.image, args.model_dir])
    for path in (overlay_path, json_path):
        check_output(path, args.overwrite, [args.image], (path.suffix,))
    settings = everything_settings(args)
    image = load_image(args.image)
    predictor = make_predictor(args)
    generator = make_generator(predictor, settings, progress=True)
    start = time.perf_counter()
    records = generator.generate(image)
    total = time.perf_counter() - start
    masks = [r["segmentation"] for r in records]
    for record in records:
        record["segmentation"] = encode_rle(record["segmentation"])
    save_image(overlay_path, draw_masks(image, masks), overwrite=args.overwrite)
    write_text(json_path, json.dumps(records) + "\n")
    print(
        f"{args.image} ({image.shape[1]}x{image.shape[0]}), {settings.mode} on {predictor.describe()}: {len(records)} masks in {total:.2f} s"
    )
    _print_stats(generator.stats)
    if not records:
        print(
            f"  no mask passed --pred-iou-thresh {settings.pred_iou_thresh:g} and --stability-score-thresh {settings.stability_score_thresh:g}:"
            " lower them (untrained or random weights predict low IoUs)"
        )
    print(f"overlay -> {overlay_path}, masks (COCO RLE) -> {json_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``segment``, ``demo`` and ``everything``."""
    p = sub.add_parser("segment", help="segment one object from point/box prompts")
    p.add_argument("image", type=Path, help="input image file")
    add_prompt_options(p)
    p.add_argument("--out", type=Path, required=True, help="overlay image to write (.png/.jpg)")
    p.add_argument("--mask-out", type=Path, help="binary mask PNG to write (0/255)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (bbox is XYWH with inclusive max, SAM's convention)")
    add_model_options(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="main job: segment a photo with a point and a box, print timings")
    p.add_argument("image", type=Path, nargs="?", help="input image (default: a sample photo shipped with matplotlib)")
    p.add_argument("--out-dir", type=Path, default=Path("tinysam-demo"), help="where the overlays go (default: %(default)s)")
    add_model_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("everything", help="segment everything: hierarchical (TinySAM) or point-grid (SAM) mode")
    p.add_argument("image", type=Path, help="input image file")
    p.add_argument("--out", type=Path, required=True, help="folder for overlay.png and masks.json")
    add_everything_options(p)
    add_model_options(p)
    p.set_defaults(func=cmd_everything)
