"""``rayalign toy``: the BFPO paper's four-action illustrative experiment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "toy",
        help="reproduce the four-action illustrative experiment (DPO, IPO, BFPO, SafeDPO)",
        description="Train a softmax policy over four actions with each loss and print which "
        "order of the actions it recovers; writes a PNG of the learning curves.",
    )
    parser.add_argument("--output-dir", default="outputs/toy", help="where to write the plot and JSON")
    parser.add_argument("--steps", type=int, default=1800, help="Adam steps per run (default 1800)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per method and beta (default 5)")
    parser.add_argument("--betas", default="0.1,0.5,1.0", help="comma-separated betas")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rayalign.toy import ToySettings, format_table, plot_curves, result_as_json, run_toy

    settings = ToySettings(
        betas=tuple(float(b) for b in args.betas.split(",")), seeds=args.seeds, steps=args.steps
    )
    result = run_toy(settings)
    out = Path(args.output_dir)
    plot = plot_curves(result, out / "toy_curves.png")
    (out / "toy_results.json").write_text(json.dumps(result_as_json(result), indent=2))
    print(format_table(result))
    print(f"\nplot: {plot}\nresults: {out / 'toy_results.json'}")
    return 0
