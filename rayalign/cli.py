"""The ``rayalign`` command: a thin dispatcher over one module per sub-command.

Each module in :mod:`rayalign.commands` exposes ``register(subparsers)``; heavy
imports (torch, ray) happen inside the command's ``run`` so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rayalign import __version__
from rayalign.errors import UserError

#: Sub-command name -> module that registers it, in the order ``--help`` lists them.
COMMANDS = {
    "demo": "rayalign.commands.demo",
    "toy": "rayalign.commands.toy",
    "data": "rayalign.commands.data",
    "train": "rayalign.commands.train",
    "sweep": "rayalign.commands.sweep",
    "eval": "rayalign.commands.eval",
    "serve": "rayalign.commands.serve",
    "redteam": "rayalign.commands.redteam",
    "plan": "rayalign.commands.plan",
    "submit": "rayalign.commands.submit",
    "jobs": "rayalign.commands.jobs",
    "cache": "rayalign.commands.cache",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayalign",
        description="Safety alignment of language models (SafeDPO, BFPO, DPO, IPO) on Ray.",
    )
    parser.add_argument("--version", action="version", version=f"rayalign {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).register(subparsers)
    for sub in subparsers.choices.values():
        sub.add_argument(
            "-v", "--verbose", action="store_true",
            help="show Ray's and Serve's own output on the console (default: only in the log file)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    from rayalign import console

    args = build_parser().parse_args(argv)
    console.setup(args.command, verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"rayalign {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rayalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
