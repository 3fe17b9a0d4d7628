"""``eval``: zero-shot instance segmentation with detector boxes as prompts (COCO and LVIS v1 protocols)."""

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import write_text
from ..predictor import PredictorBase
from .models import make_predictor
from .options import POSITIVE_INT, add_device_options, add_model_options, add_overwrite
from .outputs import check_output

if TYPE_CHECKING:
    from ..quantize.evaluation.coco import Job

DATASETS = ("coco", "lvis")


def _prepare(args: argparse.Namespace) -> "Job":
    """Ground truth and detections of ``args.dataset``, checked before any model loads."""
    if args.dataset == "lvis":
        from ..quantize.evaluation.lvis import prepare_lvis as prepare_inputs
    else:
        from ..quantize.evaluation.coco import prepare_coco as prepare_inputs

    return prepare_inputs(args.images, args.annotations, args.detections, limit=args.limit)


def _run(predictor: PredictorBase, job: "Job") -> tuple[dict, float]:
    """Segment and score ``job`` on ``predictor``; returns the report and the seconds it took."""
    from ..quantize.evaluation.coco import run_job

    start = time.perf_counter()
    report = run_job(predictor, job)
    return report, time.perf_counter() - start


def cmd_eval(args: argparse.Namespace) -> int:
    """TinySAM's zero-shot protocol: detection boxes -> best masks -> COCOeval segm or LVIS federated AP."""
    summary_path = args.out.with_name(args.out.stem + ".summary.json")
    for path in (args.out, summary_path):
        check_output(path, args.overwrite, [args.annotations, args.detections], (".json",))
    job = _prepare(args)
    predictor = make_predictor(args)
    report, seconds = _run(predictor, job)
    print(report["summary"])
    per_image = seconds / report["images"]
    counts = f"{report['images']} images, {report['detections']} detections"
    print(f"{counts} on {predictor.describe()}: {seconds:.1f} s ({per_image:.2f} s per image); warnings {report['warnings']}")
    write_text(args.out, json.dumps(report.pop("results")) + "\n")
    summary = {"dataset": args.dataset, **report, "backend": predictor.describe(), "seconds": seconds, "seconds_per_image": per_image}
    write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    print(f"results -> {args.out}, summary -> {summary_path}")
    return 0


def cmd_eval_compare(args: argparse.Namespace) -> int:
    """Mask AP of two model dirs (e.g. FP32 and INT8) on the same detections, side by side."""
    from ..predictor import Predictor

    out = args.out or Path(f"{args.dataset}_compare.json")
    check_output(out, args.overwrite, [args.annotations, args.detections], (".json",))
    job, reports = _prepare(args), {}
    for name, folder in (("reference", args.reference), ("candidate", args.candidate)):
        predictor = Predictor(folder, device=args.device, precision=args.precision)
        report, seconds = _run(predictor, job)
        report.pop("results")
        reports[name] = {**report, "model_dir": str(folder), "backend": predictor.describe(), "seconds_per_image": seconds / report["images"]}  # fmt: skip
    ref, cand = reports["reference"]["stats"], reports["candidate"]["stats"]
    print(f"{args.dataset.upper()}\n| metric | reference | candidate | drop |\n| --- | --- | --- | --- |")
    for key in ref:
        print(f"| {key} | {ref[key]:.3f} | {cand[key]:.3f} | {ref[key] - cand[key]:+.3f} |")
    speeds = (reports[name]["seconds_per_image"] for name in ("reference", "candidate"))
    print("seconds per image: reference {:.2f}, candidate {:.2f}".format(*speeds))
    write_text(out, json.dumps({"dataset": args.dataset, **reports}, indent=2) + "\n")
    print(f"report -> {out}")
    return 0


def _add_inputs(parser: argparse.ArgumentParser, annotations: str) -> None:
    parser.add_argument("--images", type=Path, required=True, help="folder of the annotated images")
    parser.add_argument("--annotations", type=Path, required=True, help=annotations)
    parser.add_argument(
        "--detections", type=Path, required=True, help="COCO results JSON of detector boxes (image_id, category_id, bbox, score)"
    )
    parser.add_argument("--limit", type=POSITIVE_INT, help="evaluate only the first N images (by id)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval coco``, ``eval lvis`` and ``eval compare``."""
    from .options import Parser

    p = sub.add_parser("eval", help="zero-shot instance segmentation on COCO or LVIS (box prompts from a detector)")
    esub = p.add_subparsers(dest="eval_command", required=True, parser_class=Parser)
    p = esub.add_parser("coco", help="segment every detection and run COCOeval segm")
    _add_inputs(p, "COCO instances JSON (ground truth)")
    p.add_argument(
        "--out", type=Path, default=Path("coco_results.json"), help="results JSON; the summary goes beside it (default: %(default)s)"
    )
    add_model_options(p)
    p.set_defaults(func=cmd_eval, dataset="coco")
    p = esub.add_parser("lvis", help="segment the best 300 detections per image and run LVIS's federated mask AP")
    _add_inputs(
        p, "LVIS v1 JSON (e.g. lvis_v1_val.json); images are found by file_name or by the coco_url name, flat or in train2017/val2017"
    )
    p.add_argument(
        "--out", type=Path, default=Path("lvis_results.json"), help="results JSON; the summary goes beside it (default: %(default)s)"
    )
    add_model_options(p)
    p.set_defaults(func=cmd_eval, dataset="lvis")
    p = esub.add_parser("compare", help="mask AP of two model dirs (e.g. FP32 vs INT8) on the same detections, side by side")
    p.add_argument("--dataset", choices=DATASETS, default="coco", help="protocol and annotation format (default: %(default)s)")
    _add_inputs(p, "ground truth: COCO instances JSON, or LVIS v1 JSON with --dataset lvis")
    p.add_argument("--reference", type=Path, required=True, help="reference model dir (FP32)")
    p.add_argument("--candidate", type=Path, required=True, help="candidate model dir (e.g. INT8)")
    add_device_options(p)
    p.add_argument("--out", type=Path, help="JSON report (default: <dataset>_compare.json)")
    add_overwrite(p)
    p.set_defaults(func=cmd_eval_compare)
