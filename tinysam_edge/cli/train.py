"""``train``: distil a TinySAM student from a SAM teacher (the ``[train]`` extra)."""

import argparse
import json
import re
from pathlib import Path

from ..errors import TinySamError
from ..files import write_text
from .options import POSITIVE_INT, number
from .outputs import check_output_dir, log


def _training():
    try:
        from ..models import training
    except ImportError as exc:
        raise TinySamError(f"training needs PyTorch and pycocotools ({exc}); install them with: pip install 'tinysam-edge[train]'") from exc
    return training


def torch_device(text: str) -> str:
    """An argparse type: a torch device name (``auto``, ``cpu``, ``cuda[:N]``, ``xpu[:N]``, ``mps``); whether it exists is checked when used."""
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected a torch device: auto, cpu, cuda, cuda:N, xpu, xpu:N or mps (lower case), got {text!r}")
    return text


def cmd_train_cache(args: argparse.Namespace) -> int:
    """Precompute teacher image embeddings."""
    check_output_dir(args.out, [args.images, args.annotations, Path(args.teacher)])
    common = {"model": args.model, "flip": args.flip, "amp": args.amp, "log": log}
    if args.engine == "ray":
        try:
            from ..models.training.teacher_cache_ray import cache_teacher_ray
        except ImportError as exc:
            raise TinySamError(f"--engine ray needs PyTorch ({exc}); install it with: pip install 'tinysam-edge[train,scale]'") from exc
        ray_options = {"workers": args.workers, "cpus_per_worker": args.cpus_per_worker, "address": args.ray_address}
        cache = cache_teacher_ray(args.teacher, str(args.images), str(args.out), args.annotations, **common, **ray_options)
    else:
        if args.ray_address is not None:
            raise TinySamError("--ray-address needs --engine ray")
        local = {"device": args.device, "batch_size": args.batch_size, "num_workers": args.loader_workers}
        cache = _training().cache_teacher(args.teacher, str(args.images), str(args.out), args.annotations, **local, **common)
    print(f"teacher embeddings of {cache.meta.checkpoint} in {cache.root}")
    return 0


def cmd_train_distill(args: argparse.Namespace) -> int:
    """Run or resume a distillation from a config file."""
    training = _training()
    config = training.read_config(args.config, args.set)
    out = training.train(config, resume=args.resume, log=log)
    print(f"student checkpoint (official layout): {out / 'student_last.pth'}; logs and training.png in {out}")
    return 0


def cmd_train_bench(args: argparse.Namespace) -> int:
    """Time real training steps of a config and print where the time goes."""
    training = _training()
    from ..models.training.bench import format_bench, run_bench

    result = run_bench(training.read_config(args.config, args.set), args.steps, args.warmup, log=log)
    print(format_bench(result))
    if args.json is not None:
        write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train cache-teacher``, ``train distill`` and ``train bench``."""
    from .options import Parser

    p = sub.add_parser("train", help="distill a TinySAM student from a SAM teacher (PyTorch, CUDA or CPU)")
    tsub = p.add_subparsers(dest="train_command", required=True, parser_class=Parser)
    p = tsub.add_parser("cache-teacher", help="precompute teacher image embeddings (fp16, resumable)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint file or registry name (e.g. sam_vit_h)")
    p.add_argument(
        "--model",
        default="auto",
        choices=["auto", "vit_t", "vit_b", "vit_l", "vit_h"],
        help="teacher architecture (default: from the checkpoint)",
    )
    p.add_argument("--images", type=Path, required=True, help="image folder (SA-1B layout: a JSON next to each image)")
    p.add_argument("--annotations", help="COCO instances JSON (COCO layout instead of SA-1B)")
    p.add_argument("--out", type=Path, required=True, help="cache folder (an existing cache of the same teacher is resumed)")
    p.add_argument("--flip", action="store_true", help="also cache horizontally flipped images (needed for data.flip)")
    p.add_argument("--device", type=torch_device, default="auto", help="torch device (default: CUDA when available, else CPU)")
    p.add_argument(
        "--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="autocast dtype (default: bf16 on CUDA, off on CPU)"
    )
    p.add_argument("--batch-size", type=POSITIVE_INT, default=8, help="local: images per batch (each with its flip) (default: %(default)s)")
    p.add_argument(
        "--loader-workers", type=number(int, 0, 256), default=4, help="local: processes that read images ahead (default: %(default)s)"
    )
    p.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="local: this process; ray: CPU actors on Ray (default: %(default)s)"
    )
    p.add_argument("--workers", type=POSITIVE_INT, default=1, help="ray: actors (default: %(default)s)")
    p.add_argument(
        "--cpus-per-worker",
        type=number(float, 0.01, 1024),
        default=1.0,
        help="ray: CPUs (and torch threads) per actor (default: %(default)s)",
    )
    p.add_argument("--ray-address", help="ray: address of an existing cluster (default: start Ray locally)")
    p.set_defaults(func=cmd_train_cache)
    p = tsub.add_parser("distill", help="train a student from a TOML/YAML config (see configs/)")
    p.add_argument("--config", type=Path, required=True, help="config file (.toml, or .yaml with PyYAML)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value; repeatable")
    p.add_argument("--resume", action="store_true", help="continue the run in run.out from its last checkpoint")
    p.set_defaults(func=cmd_train_distill)
    p = tsub.add_parser("bench", help="time real training steps of a config: images/s, step split, device busy, memory, syncs")
    p.add_argument("--config", type=Path, required=True, help="config file (.toml, or .yaml with PyYAML)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value; repeatable")
    p.add_argument("--steps", type=POSITIVE_INT, default=10, help="measured steps (default: %(default)s)")
    p.add_argument("--warmup", type=number(int, 0, 10_000), default=2, help="steps run before measuring (default: %(default)s)")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_train_bench)
