"""``label``: masks for a whole image collection (detector boxes or everything mode), as resumable shards and one COCO file."""

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TinySamError
from ..files import check_writable
from .models import model_dir_for
from .options import add_everything_options, add_model_options, everything_settings, number
from .outputs import check_output, log

if TYPE_CHECKING:
    from ..label.annotate import Task
    from ..label.inputs import ImageList
    from ..label.job import Engine

RAY_ONLY = ("ray_address", "batch_size", "cpus_per_worker")


def _check(args: argparse.Namespace) -> None:
    """Option combinations argparse cannot express; one line each."""
    given = [name for name in RAY_ONLY if getattr(args, name) is not None]
    if args.engine == "local" and given:
        raise TinySamError(f"--{given[0].replace('_', '-')} applies to --engine ray")
    if args.resume and args.overwrite:
        raise TinySamError("give --resume (finish the job in --out) or --overwrite (start it again), not both")
    if args.everything:
        everything_settings(args)  # refuses a bad combination before any work
    if args.boxes is not None and args.images.suffix.lower() != ".json":
        raise TinySamError(
            "--boxes needs IMAGES as a COCO images JSON: detections name their image by its id, which a folder or list does not carry"
        )
    if args.out.exists() and not args.out.is_dir():
        raise TinySamError(f"--out {args.out} is a file; give a folder")


def _task(args: argparse.Namespace, images: "ImageList") -> tuple["Task", dict[int, list[dict]], list[dict], dict]:
    """The Task, detections by image id, output categories and the job settings that a resume must match."""
    from ..label.annotate import Task
    from ..label.inputs import OBJECT_CATEGORY, detections_fingerprint, read_detections

    if args.boxes is not None:
        detections, categories, ignored = read_detections(args.boxes, images)
        if ignored:
            log(f"note: {ignored} detections refer to images not in {args.images}; ignored")
        if not detections:
            raise TinySamError(f"no detection in {args.boxes} refers to an image of {args.images} (their image_id must be the images' ids)")
        return Task("boxes"), detections, categories, {"prompt": {"mode": "boxes", "detections_sha256": detections_fingerprint(detections)}}
    settings = everything_settings(args)
    return Task("everything", settings), {}, [OBJECT_CATEGORY], {"prompt": settings.as_dict()}


def _engine(args: argparse.Namespace, task: "Task", detections: dict, model_dir: Path) -> "Engine":
    """The chosen engine as a function of the pending images."""
    if args.engine == "ray":
        from ..label.ray_engine import iter_ray

        cpus, batch = args.cpus_per_worker or 1.0, args.batch_size or 4
        return lambda pending: iter_ray(
            pending, task, detections, model_dir, args.device, args.precision, args.workers, cpus, batch, args.ray_address
        )
    from ..label.annotate import Labeller
    from ..label.local import iter_local

    def make_labeller() -> Labeller:  # one compiled model, a session (and stream) per worker thread
        return Labeller(model_dir, task, device=args.device, precision=args.precision, sessions=args.workers)

    return lambda pending: iter_local(pending, make_labeller, detections, args.workers)


def cmd_label(args: argparse.Namespace) -> int:
    """Label every image of IMAGES into OUT_DIR (shards, annotations.json, errors.jsonl); resumable."""
    from ..label import job as jobs
    from ..label.inputs import read_images
    from ..label.shards import OUTPUTS
    from ..manifest import Manifest

    _check(args)
    check_writable(args.out)  # before any slow work
    for path in (args.out / name for name in OUTPUTS):  # resume and --overwrite replace these files: never an input
        check_output(path, True, [args.images, args.boxes], (path.suffix,))
    images = read_images(args.images, args.image_root)
    task, detections, categories, settings = _task(args, images)
    model_dir = model_dir_for(args)
    Manifest.read(model_dir)  # a bad model dir fails here, before OUT_DIR is touched
    settings.update(model=str(Path(model_dir).resolve()), precision=args.precision)
    job = jobs.Job(args.out, images, categories, args.shard_size, settings)
    done = jobs.prepare(job, resume=args.resume, overwrite=args.overwrite)
    todo = len(images.items) - sum(min(args.shard_size, len(images.items) - s * args.shard_size) for s in done)
    log(f"labelling {todo} of {len(images.items)} images ({task.mode}) with --engine {args.engine}, {args.workers} worker(s) -> {args.out}")
    try:
        counts = jobs.run(job, _engine(args, task, detections, model_dir), done)
    except KeyboardInterrupt as exc:
        _interrupted(args.out, exc)
        raise
    print(jobs.summary_line(args.out, counts))
    return 0


def _interrupted(out: Path, exc: KeyboardInterrupt) -> None:
    """Ctrl-C or SIGTERM while labelling: say how to resume, and exit at once if worker threads are still busy.

    The shards on disk are whole (each is written atomically with its checksum). A worker inside an
    OpenVINO compile or inference cannot be interrupted and Python would wait for it at exit (tens
    of seconds), so the process ends here with ``os._exit`` once the output is flushed.
    """
    from ..errors import Terminated
    from ..label.shards import SHARD_DIR

    kept = len(list((out / SHARD_DIR).glob("shard-*.sha256")))
    log(f"tinysam-edge: interrupted; {kept} complete shards kept in {out / SHARD_DIR}: run the same command with --resume to finish")
    if any(t.name.startswith("label-") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(143 if isinstance(exc, Terminated) else 130)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``label``."""
    p = sub.add_parser("label", help="auto-label an image collection: COCO masks for detector boxes or everything mode, on this box or Ray")
    p.add_argument(
        "images", type=Path, metavar="IMAGES", help="a folder (recursive), a text file of image paths, or a COCO JSON with an 'images' list"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder: shards/, annotations.json (COCO instances), errors.jsonl")
    p.add_argument("--image-root", type=Path, help="folder the COCO JSON's file_name values are relative to (default: the JSON's folder)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument(
        "--boxes", type=Path, metavar="DETECTIONS.json", help="COCO results list of detector boxes; categories and scores come from it"
    )
    prompt.add_argument(
        "--everything", action="store_true", help="everything mode; masks get category 'object' (id 1) and their predicted IoU as score"
    )
    add_everything_options(p, prefix="everything mode: ")
    add_model_options(p, backends=False)
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process; ray: Ray Data with an actor pool (default: %(default)s)",
    )
    p.add_argument(
        "--workers", type=number(int, 1, 4096), default=1, help="predictors: threads (local) or Ray actors (default: %(default)s)"
    )
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray)")
    p.add_argument(
        "--cpus-per-worker", type=number(float, 0.01, 1024), help="ray: logical CPUs (and OpenVINO threads) per actor (default: 1)"
    )
    p.add_argument("--batch-size", type=number(int, 1, 1024), help="ray: images per actor call (default: 4)")
    p.add_argument("--shard-size", type=number(int, 1, 1_000_000), default=1000, help="images per JSON Lines shard (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="finish the job in --out: complete shards are kept, the rest is labelled")
    p.set_defaults(func=cmd_label)
