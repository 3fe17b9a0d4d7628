"""``bench``: torch eager against the OpenVINO variants, the decoder stage of a click, and everything mode."""

import argparse
import json
from pathlib import Path

from ..devices import PRECISIONS
from ..errors import TinySamError
from ..everything_settings import LIMITS
from ..files import write_text
from ..image import load_image
from ..manifest import Manifest
from .models import torch_side
from .options import POSITIVE_INT, THRESHOLDS, add_everything_options, add_overwrite, everything_options, number, refuse_unused
from .outputs import check_output, check_output_dir, log


def _outputs(args: argparse.Namespace, stem: str, suffixes: tuple[str, ...] = (".json", ".md")) -> list[Path]:
    """Checked ``<out-dir>/<stem><suffix>`` output paths."""
    inputs = [args.everything, args.decoder, args.model_dir, args.int8_dir, Path(args.checkpoint)]
    check_output_dir(args.out_dir, inputs)
    outputs = [args.out_dir / f"{stem}{suffix}" for suffix in suffixes]
    for path in outputs:
        check_output(path, args.overwrite, inputs, (path.suffix,))
    return outputs


def _refuse_unused(args: argparse.Namespace) -> None:
    """Options of one benchmark given to another are refused, not ignored."""
    if args.everything is not None and args.decoder is not None:
        raise TinySamError("give --everything or --decoder, not both (each is its own benchmark)")
    if args.everything is None:
        refuse_unused(args, ["points_per_batch", *THRESHOLDS], "without --everything")
    if args.quick or args.everything is not None or args.decoder is not None:
        refuse_unused(args, ["seconds"], "without benchmark_app runs (--quick, --everything and --decoder skip them)")
    if args.everything is not None or args.decoder is not None:
        refuse_unused(args, ["quick"], "with --everything or --decoder")


def _write_report(outputs: list[Path], report: dict, table: str) -> None:
    """Print a benchmark's table and write it (.md) with the report (.json)."""
    print(table)
    write_text(outputs[0], json.dumps(report, indent=2) + "\n")
    write_text(outputs[1], table + "\n")


def _local_checkpoint(args: argparse.Namespace) -> str | None:
    """``--checkpoint``, or None when a model dir was given and the checkpoint is not here (the torch side is then skipped)."""
    from .. import weights

    if args.model_dir is None or args.decoder is not None:  # exporting, and the decoder bench's MAC counts, need it
        return args.checkpoint
    try:
        weights.resolve_checkpoint(args.checkpoint, download=False)
    except TinySamError as exc:
        log(f"note: no torch eager baseline ({exc}); timing the OpenVINO variants only")
        return None
    return args.checkpoint


def cmd_bench(args: argparse.Namespace) -> int:
    """Time torch eager against the OpenVINO variants (and benchmark_app on every IR unless --quick)."""
    _refuse_unused(args)
    if args.everything is not None:
        outputs = _outputs(args, "everything")
    elif args.decoder is not None:
        outputs = _outputs(args, "decoder")
    else:
        outputs = _outputs(args, "bench", (".json", ".md", ".png"))
    if args.int8_dir is not None:
        Manifest.read(args.int8_dir)  # a corrupt --int8-dir stops here, not silently later
    _, export = torch_side("bench")
    from ..quantize.benchmark import pipeline

    precisions = tuple(dict.fromkeys(args.precision or ("f32", "bf16")))
    model_dir = args.model_dir or export.cached_model_dir(args.checkpoint, log=log)
    checkpoint = _local_checkpoint(args)
    dirs = pipeline.model_dirs(model_dir, args.int8_dir)
    common = {"rounds": args.rounds, "device": args.device, "precisions": precisions, "log": log}
    if args.everything is not None:
        options = {**everything_options(args), "points_per_batch": args.points_per_batch or 32}  # 32: docs/benchmarks.md's setting
        report = pipeline.everything_bench(dirs, load_image(args.everything), generator_options=options, **common)
        _write_report(outputs, report, pipeline.format_everything(report))
    elif args.decoder is not None:
        from ..quantize.benchmark.decoder import decoder_report, format_decoder

        report = decoder_report(dirs, checkpoint, load_image(args.decoder), **common)
        _write_report(outputs, report, format_decoder(report))
    else:
        if args.quick:
            report = pipeline.quick_bench(model_dir, args.int8_dir, checkpoint, **common)
        else:
            report = pipeline.full_bench(model_dir, args.int8_dir, checkpoint, seconds=args.seconds or 10, **common)
        _write_report(outputs, report, pipeline.format_tables(report))
        pipeline.plot(report, outputs[2])
    print(f"results -> {', '.join(map(str, outputs))}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench``."""
    from .. import weights

    p = sub.add_parser("bench", help="benchmark torch eager vs OpenVINO (f32, bf16, INT8) and benchmark_app on every IR")
    p.add_argument("--checkpoint", default=weights.DEFAULT_WEIGHTS, help="checkpoint of the torch variants (default: %(default)s)")
    p.add_argument("--model-dir", type=Path, help="FP32 model dir of that checkpoint (default: export it once into the cache)")
    p.add_argument("--int8-dir", type=Path, help="INT8 model dir from 'tinysam-edge quantize' to include")
    p.add_argument("--device", default="CPU", help="OpenVINO device: CPU, GPU, NPU or AUTO (default: %(default)s)")
    p.add_argument(
        "--precision", choices=PRECISIONS, action="append", help="OpenVINO precision to time; repeatable (default: f32 and bf16)"
    )
    p.add_argument("--quick", action="store_true", help="only the Python pipeline: torch eager vs OpenVINO")
    p.add_argument("--rounds", type=POSITIVE_INT, default=5, help="interleaved pipeline rounds (default: %(default)s)")
    p.add_argument("--seconds", type=POSITIVE_INT, help="seconds per benchmark_app run (default: 10)")
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"), help="where the reports go (default: %(default)s)")
    p.add_argument("--everything", type=Path, metavar="IMAGE", help="instead: hierarchical vs grid everything mode on IMAGE")
    p.add_argument(
        "--decoder",
        type=Path,
        metavar="IMAGE",
        help="instead: first / repeated click decoder stage on IMAGE per variant vs the official SAM decoder",
    )
    p.add_argument(
        "--points-per-batch", type=number(*LIMITS["points_per_batch"]), help="everything: prompts per decoder call (default: 32)"
    )
    add_everything_options(p, "everything: ", THRESHOLDS)
    add_overwrite(p)
    p.set_defaults(func=cmd_bench)
