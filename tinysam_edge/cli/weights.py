"""``weights``: the registry of official checkpoints and the download cache."""

import argparse

from .. import weights
from .outputs import log


def cmd_weights_list(args: argparse.Namespace) -> int:
    """Print the registry and each file's cache state: missing, corrupt, verified (pinned digest) or unverified."""
    print(f"cache: {weights.cache_dir()}")
    for entry in weights.REGISTRY.values():
        state, detail = weights.cache_state(entry)
        default = " (default)" if entry.name == weights.DEFAULT_WEIGHTS else ""
        note = f" [{state}: {detail}]" if state == "corrupt" else ""
        print(f"{entry.name:14s} {state:10s} {entry.filename:22s} {entry.description}{default}{note}")
    _list_model_dirs()
    return 0


def _list_model_dirs() -> None:
    """The model dirs exported into the cache (``--checkpoint`` without ``--model-dir`` exports there once)."""
    from ..errors import ModelDirError
    from ..manifest import Manifest

    folders = sorted(p for p in (weights.cache_dir() / "ir").glob("*") if p.is_dir() and not p.name.startswith("."))
    print(f"exported model dirs ({len(folders)}; pass one as --model-dir):")
    for folder in folders:
        try:
            manifest = Manifest.read(folder)
            print(f"  {folder}  {manifest.source.get('name', '?')}, {manifest.weights_precision}, flavour {manifest.flavour}")
        except ModelDirError as exc:
            print(f"  {folder}  unusable: {exc}")


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    """Download one registry file into the cache (a corrupt cached file is replaced)."""
    state, detail = weights.cache_state(weights.REGISTRY[args.name])
    print(weights.fetch(args.name, force=args.force))
    if state == "corrupt":
        log(f"note: the cached file was corrupt ({detail}); it was downloaded again")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``weights list`` and ``weights fetch``."""
    from .options import Parser

    p = sub.add_parser("weights", help="list or download official weight files")
    wsub = p.add_subparsers(dest="weights_command", required=True, parser_class=Parser)
    wsub.add_parser("list", help="show the registry and the cache").set_defaults(func=cmd_weights_list)
    p = wsub.add_parser("fetch", help="download a registry file into the cache (replaces a corrupt one)")
    p.add_argument("name", choices=list(weights.REGISTRY), help="registry name")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.set_defaults(func=cmd_weights_fetch)
