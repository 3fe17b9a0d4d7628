"""``weights``: the registry of official checkpoints and the download cache."""

import argparse

from .. import weights


def cmd_weights_list(args: argparse.Namespace) -> int:
    """Print the registry and what is cached."""
    print(f"cache: {weights.cache_dir()}")
    for entry in weights.REGISTRY.values():
        cached = weights.cached_path(entry).is_file()
        default = " (default)" if entry.name == weights.DEFAULT_WEIGHTS else ""
        print(f"{entry.name:14s} {'cached ' if cached else 'missing'} {entry.filename:22s} {entry.description}{default}")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """Download one registry file into the cache."""
    print(weights.fetch(args.name, force=args.force))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``weights list`` and ``weights fetch``."""
    from .options import Parser

    p = sub.add_parser("weights", help="list or download official weight files")
    wsub = p.add_subparsers(dest="weights_command", required=True, parser_class=Parser)
    wsub.add_parser("list", help="show the registry and the cache").set_defaults(func=cmd_weights_list)
    p = wsub.add_parser("fetch", help="download a registry file into the cache")
    p.add_argument("name", choices=list(weights.REGISTRY), help="registry name")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=cmd_weights_fetch)
