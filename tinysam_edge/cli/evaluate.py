"""``eval``: zero-shot instance segmentation with detector boxes as prompts (COCO protocol)."""

import argparse
import json
import time
from pathlib import Path

from ..files import write_text
from ..predictor import PredictorBase
from .options import POSITIVE_INT, add_device_options, add_model_options, add_overwrite, check_output, describe, make_predictor


def _coco_eval(predictor: PredictorBase, args: argparse.Namespace) -> tuple[dict, float]:
    from ..quantize.evaluation.coco import run_coco_eval

    start = time.perf_counter()
    report = run_coco_eval(predictor, args.images, args.annotations, args.detections, limit=args.limit)
    return report, time.perf_counter() - start


def cmd_eval_coco(args: argparse.Namespace) -> int:
    """TinySAM's zero-shot COCO protocol: detection boxes -> best masks -> COCOeval segm."""
    summary_path = args.out.with_name(args.out.stem + ".summary.json")
    for path in (args.out, summary_path):
        check_output(path, args.overwrite, [args.annotations, args.detections], (".json",))
    predictor = make_predictor(args)
    report, seconds = _coco_eval(predictor, args)
    print(report["summary"])
    per_image = seconds / report["images"]
    print(f"{report['images']} images, {report['detections']} detections on {describe(predictor)}: {seconds:.1f} s ({per_image:.2f} s per image); warnings {report['warnings']}")
    write_text(args.out, json.dumps(report.pop("results")) + "\n")
    write_text(summary_path, json.dumps({**report, "backend": describe(predictor), "seconds": seconds, "seconds_per_image": per_image}, indent=2) + "\n")
    print(f"results -> {args.out}, summary -> {summary_path}")
    return 0


def cmd_eval_compare(args: argparse.Namespace) -> int:
    """COCO AP of two model dirs (e.g. FP32 and INT8) on the same detections, side by side."""
    from ..predictor import Predictor

    check_output(args.out, args.overwrite, [args.annotations, args.detections], (".json",))
    reports = {}
    for name, folder in (("reference", args.reference), ("candidate", args.candidate)):
        predictor = Predictor(folder, device=args.device, precision=args.precision)
        report, seconds = _coco_eval(predictor, args)
        report.pop("results")
        reports[name] = {**report, "model_dir": str(folder), "backend": describe(predictor), "seconds_per_image": seconds / report["images"]}
    ref, cand = reports["reference"]["stats"], reports["candidate"]["stats"]
    print("| metric | reference | candidate | drop |\n| --- | --- | --- | --- |")
    for key in ref:
        print(f"| {key} | {ref[key]:.3f} | {cand[key]:.3f} | {ref[key] - cand[key]:+.3f} |")
    print(f"seconds per image: reference {reports['reference']['seconds_per_image']:.2f}, candidate {reports['candidate']['seconds_per_image']:.2f}")
    write_text(args.out, json.dumps(reports, indent=2) + "\n")
    print(f"report -> {args.out}")
    return 0


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="folder of the annotated images")
    parser.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON (ground truth)")
    parser.add_argument("--detections", type=Path, required=True, help="COCO results JSON of detector boxes (every entry is used)")
    parser.add_argument("--limit", type=POSITIVE_INT, help="evaluate only the first N images (by id)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval coco`` and ``eval compare``."""
    from .options import Parser

    p = sub.add_parser("eval", help="zero-shot instance segmentation on COCO (box prompts from a detector)")
    esub = p.add_subparsers(dest="eval_command", required=True, parser_class=Parser)
    p = esub.add_parser("coco", help="segment every detection and run COCOeval segm")
    _add_inputs(p)
    p.add_argument("--out", type=Path, default=Path("coco_results.json"), help="results JSON; the summary goes beside it (default: %(default)s)")
    add_model_options(p)
    p.set_defaults(func=cmd_eval_coco)
    p = esub.add_parser("compare", help="COCO mask AP of two model dirs (e.g. FP32 vs INT8) on the same detections, side by side")
    _add_inputs(p)
    p.add_argument("--reference", type=Path, required=True, help="reference model dir (FP32)")
    p.add_argument("--candidate", type=Path, required=True, help="candidate model dir (e.g. INT8)")
    add_device_options(p)
    p.add_argument("--out", type=Path, default=Path("coco_compare.json"), help="JSON report (default: %(default)s)")
    add_overwrite(p)
    p.set_defaults(func=cmd_eval_compare)
