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
    parser.add_argument("--steps", type=_positive_int, default=1800, help="Adam steps per run (default 1800)")
    parser.add_argument("--seeds", type=_positive_int, default=5, help="seeds per method and beta (default 5)")
    parser.add_argument("--betas", type=_betas, default="0.1,0.5,1.0", help="comma-separated betas, each > 0")
    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _betas(text: str) -> tuple[float, ...]:
    try:
        betas = tuple(float(b) for b in text.split(","))
    except ValueError:
        betas = ()
    if not betas or any(not 0 < b < float("inf") for b in betas):  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers > 0, e.g. 0.1,0.5, not {text!r}")
    return betas


def run(args: argparse.Namespace) -> int:
    from rayalign.toy import ToySettings, format_table, plot_curves, result_as_json, run_toy

    settings = ToySettings(
        betas=args.betas, seeds=args.seeds, steps=args.steps
    )
    result = run_toy(settings)
    out = Path(args.output_dir)
    plot = plot_curves(result, out / "toy_curves.png")
    (out / "toy_results.json").write_text(json.dumps(result_as_json(result), indent=2))
    print(format_table(result))
    print(f"\nplot: {plot}\nresults: {out / 'toy_results.json'}")
    return 0
