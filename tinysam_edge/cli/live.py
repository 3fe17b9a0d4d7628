"""``webcam``: live segmentation of a camera, video file or stream."""

import argparse
from pathlib import Path

from .models import make_predictor
from .options import NON_NEGATIVE_INT, POSITIVE_INT, add_model_options, add_prompt_options, number
from .outputs import check_output, check_output_dir


def cmd_webcam(args: argparse.Namespace) -> int:
    """Live segmentation with persistent prompts: a window, or --headless with scripted prompts."""
    from .. import capture, live, overlay, window

    source = None if capture.is_live(args.source) else Path(args.source)
    for path, suffix in ((args.record, ".mp4"), (args.timings, ".json")):
        check_output(path, args.overwrite, [source], (suffix,))
    if not args.headless:
        window.require_tk()
        check_output_dir(args.snapshot_dir.resolve(), [source])  # resolved: the default "." has no name to probe with
    frames = capture.FrameSource(args.source, reconnect=args.reconnect)
    prompts = overlay.PersistentPrompts(args.point, args.box)
    view = None if args.headless else window.LiveWindow(prompts, title=f"tinysam-edge {args.source}")
    try:
        predictor = make_predictor(args, sessions=args.in_flight, **live.PREDICTOR_OPTIONS)
        timings = live.run(predictor, frames, prompts, args.max_frames, args.record, view, args.snapshot_dir, args.in_flight)
    finally:
        if view is not None:
            view.close()
    if args.timings is not None:
        live.write_timings(args.timings, predictor, timings)
    if timings:
        print(live.summarize(timings))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``webcam``."""
    p = sub.add_parser(
        "webcam",
        help="live segmentation of a camera, video file or stream",
        description="Live segmentation in a window: left click adds a positive point, right click a negative one, a left drag "
        "sets the box; c clears, e shows every mask of the current frame, s saves a snapshot PNG, q or Esc quits. "
        "A video file's last frame stays on screen until you quit.",
    )
    p.add_argument("--source", default="0", help="camera index, video file or stream URL (default: %(default)s)")
    p.add_argument("--headless", action="store_true", help="no window: scripted --point/--box, write --record/--timings")
    add_prompt_options(p, persistent=True)
    p.add_argument("--max-frames", type=POSITIVE_INT, default=10**9, help="stop after this many frames")
    p.add_argument("--record", type=Path, help="write the annotated video (.mp4)")
    p.add_argument("--timings", type=Path, help="write per-frame timings, mask areas and prompts (.json)")
    p.add_argument("--snapshot-dir", type=Path, default=Path("."), help="where the s key saves snapshots (default: the current folder)")
    p.add_argument("--reconnect", type=NON_NEGATIVE_INT, default=0, help="reopen a camera/stream that stops, up to N times")
    p.add_argument(
        "--in-flight",
        type=number(int, 1, 4),
        default=1,
        help="frames encoding at once, on as many streams (default: %(default)s; 2 can raise FPS with bf16 on two cores, "
        "at the cost of frame age and memory: docs/live.md)",
    )
    add_model_options(p, backends=False)
    p.set_defaults(func=cmd_webcam)
