"""``rayalign cache info|clear``: what rayalign keeps under its cache root, and freeing it."""

from __future__ import annotations

import argparse

from rayalign.commands.common import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache",
        help="show or clear rayalign's caches (RAYALIGN_CACHE, default ~/.cache/rayalign)",
        description="Every rayalign cache lives under one root: $RAYALIGN_CACHE, default "
        "~/.cache/rayalign (models/: converted built-in models; prepared/: prepared preference "
        "data). A config's data.cache_dir moves the prepared data only.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    info = verbs.add_parser("info", help="each cache's folder, entries and size")
    clear = verbs.add_parser("clear", help="remove caches (all kinds unless named)")
    clear.add_argument("kinds", nargs="*", metavar="KIND", help="models and/or prepared (default: both)")
    clear.add_argument("--yes", action="store_true", help="really delete (without it: show what would go)")
    for sub in (info, clear):
        sub.add_argument("--config", default=None, help="a config whose data.cache_dir to include")
        add_overrides(sub, "data.cache_dir=/scratch/rayalign")
    info.set_defaults(func=run_info)
    clear.set_defaults(func=run_clear)


def _data_cache_dir(args: argparse.Namespace) -> str | None:
    if not args.config and not args.overrides:
        return None
    from rayalign.config import load_config

    return load_config(args.config, args.overrides).data.cache_dir


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def run_info(args: argparse.Namespace) -> int:
    from rayalign.cache import ENV, cache_info

    info = cache_info(_data_cache_dir(args))
    source = f"${ENV}" if info["from_env"] else f"default; set ${ENV} to move it"
    print(f"cache root: {info['root']}  ({source})")
    for kind, k in info["kinds"].items():
        print(f"  {kind:<9} {k['path']}  {k['entries']} entries, {_mib(k['bytes'])}  ({k['holds']})")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from rayalign.cache import KINDS, clear_cache
    from rayalign.errors import UserError

    kinds = list(args.kinds) or list(KINDS)
    try:
        freed = clear_cache(kinds, _data_cache_dir(args), dry_run=not args.yes)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    verb = "freed" if args.yes else "would free"
    for kind, size in freed.items():
        print(f"{kind}: {verb} {_mib(size)}")
    if not args.yes:
        print("(dry run: add --yes to delete)")
    return 0
