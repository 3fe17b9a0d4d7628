"""The ``tinysam-edge`` command line: one module per command group. Torch-side commands import torch only when they run."""

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence

from ..errors import Terminated, TinySamError, error_cause
from . import bench, convert, evaluate, label, live, segment, serve, train, weights
from .options import Parser

#: Command groups in the order ``--help`` lists them.
GROUPS = (weights, segment, convert, bench, evaluate, live, train, label, serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = Parser(prog="tinysam-edge", description="TinySAM segment-anything for Intel edge devices.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        group.register(sub)
    return parser


_TERMINATED = threading.Event()


def _raise_terminated(signum: int, frame: object) -> None:
    _TERMINATED.set()  # a library may turn the exception into its own error on the way out: the flag still says why
    raise Terminated


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"tinysam-edge: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand. Every failure is one line on stderr, never a traceback.

    Exit status: 2 user error, 130 Ctrl-C, 143 SIGTERM, 1 an unexpected error (a bug: its type and
    message are printed; ``TINYSAM_EDGE_DEBUG=1`` shows the traceback).
    """
    return run_parsed(build_parser().parse_args(argv))


def run_script(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: Sequence[str] | None = None) -> int:
    """A demo script's entry point: parse its options and ``run`` them, failing exactly as the CLI does (see ``main``)."""
    args = parser.parse_args(argv)
    args.func = run
    return run_parsed(args)


def run_parsed(args: argparse.Namespace) -> int:
    """Run ``args.func(args)`` with SIGTERM raised like Ctrl-C and warnings on one line; the exit status of ``main``."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if threading.current_thread() is threading.main_thread() else None
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    _TERMINATED.clear()
    try:
        return _run(args)
    finally:
        warnings.formatwarning = formatwarning
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    """Run one parsed command and map every failure to one line and an exit status (see ``main``)."""
    try:
        return args.func(args)
    except Terminated:
        print("tinysam-edge: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("tinysam-edge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _TERMINATED.is_set():  # a library turned the SIGTERM into its own error on the way out
            print("tinysam-edge: terminated", file=sys.stderr)
            return 143
        if isinstance(exc, (TinySamError, ValueError, OSError)):
            text = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename and exc.strerror else error_cause(exc)
            print(f"tinysam-edge: error: {text}", file=sys.stderr)
            return 2
        if os.environ.get("TINYSAM_EDGE_DEBUG"):  # the last line of defence against a traceback, unless asked for one
            raise
        print(
            f"tinysam-edge: internal error: {type(exc).__name__}: {error_cause(exc)} (a bug; TINYSAM_EDGE_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return 1
