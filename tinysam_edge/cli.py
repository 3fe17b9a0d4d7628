"""The ``tinysam-edge`` command line. Torch-side subcommands import torch only when they run."""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import weights
from .errors import TinySamError
from .image import load_image, save_image

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
        print(f"{entry.name:14s} {'cached ' if cached else 'missing'} {entry.filename:18s} {entry.description}{default}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """Download one registry file into the cache."""
    path = weights.fetch(args.name, force=args.force)
    print(path)
    return 0


def _make_torch_predictor(args: argparse.Namespace):  # noqa: ANN202 - avoids importing torch for the annotation
    try:
        from .models import TorchPredictor, build_sam
    except ImportError as exc:
        raise TinySamError(f"the torch backend needs PyTorch ({exc}); install it with: pip install 'tinysam-edge[convert]'") from exc
    return TorchPredictor(build_sam("vit_t", checkpoint=args.checkpoint, flavour=args.flavour, trust_pickle=args.trust_pickle))


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
    predictor = _make_torch_predictor(args)
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box, multimask_output=False)
    mask, score = masks[0], float(scores[0])

    save_image(args.out, draw_overlay(image, mask, coords, labels, box, score), overwrite=args.overwrite)
    if args.mask_out is not None:
        save_image(args.mask_out, mask.astype(np.uint8) * 255, overwrite=args.overwrite)
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] if xs.size else [0, 0, 0, 0]
    result = {
        "image": str(args.image),
        "size_hw": list(image.shape[:2]),
        "backend": "torch",
        "flavour": predictor.flavour,
        "score": score,
        "area": int(mask.sum()),
        "bbox_xywh": bbox,
        "overlay": str(args.out),
        "mask": str(args.mask_out) if args.mask_out else None,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"score {score:.3f}, area {result['area']} px, bbox {bbox}; overlay -> {args.out}")
    return 0


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
    p_seg.add_argument("--checkpoint", default=weights.DEFAULT_WEIGHTS, help="checkpoint file or registry name (default: %(default)s)")
    p_seg.add_argument("--point", type=parse_point, action="append", default=[], metavar="X,Y[,LABEL]", help="point prompt; label 1 positive (default), 0 negative; repeatable")
    p_seg.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="box prompt in pixels")
    p_seg.add_argument("--out", type=Path, required=True, help="overlay image to write (.png/.jpg)")
    p_seg.add_argument("--mask-out", type=Path, help="binary mask PNG to write (0/255)")
    p_seg.add_argument("--json", action="store_true", help="print the result as JSON")
    p_seg.add_argument("--backend", choices=["torch"], default="torch", help="inference backend")
    p_seg.add_argument("--flavour", choices=["tinysam", "sam"], help="single-mask rule (default: from the weights; tinysam)")
    p_seg.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole pickled module (can run code)")
    p_seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p_seg.set_defaults(func=cmd_segment)
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
