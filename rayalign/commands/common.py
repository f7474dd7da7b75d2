"""Arguments that several sub-commands share, declared once so their help reads the same."""

from __future__ import annotations

import argparse


def add_overrides(parser: argparse.ArgumentParser, example: str = "train.num_workers=2") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, applied over the config file."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config field, e.g. --set {example} (repeatable; the value is YAML, "
        "so lists go whole: --set 'data.sources=[{path: pairs.jsonl}]')",
    )


def add_address(parser: argparse.ArgumentParser) -> None:
    """``--address`` of a cluster's job API, for the commands that talk to one."""
    parser.add_argument(
        "--address",
        help="the head's job API, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS, "
        "an http:// RAY_ADDRESS, else http://127.0.0.1:8265); the auth token comes from "
        "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
    )
