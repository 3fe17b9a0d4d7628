"""The ``tinysam-edge`` command line: one module per command group. Torch-side commands import torch only when they run."""

import argparse
import sys
from collections.abc import Sequence

from ..errors import TinySamError
from . import bench, convert, evaluate, live, segment, train, weights
from .options import Parser

#: Command groups in the order ``--help`` lists them.
GROUPS = (weights, segment, convert, bench, evaluate, live, train)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = Parser(prog="tinysam-edge", description="TinySAM segment-anything for Intel edge devices.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        group.register(sub)
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
