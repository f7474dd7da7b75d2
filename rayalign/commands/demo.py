"""``rayalign demo``: align the built-in chat model for safety and show the before/after effect."""

from __future__ import annotations

import argparse

from rayalign.commands.common import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="align the built-in SmolLM2-135M-Instruct for safety on this machine and report the effect",
        description="Prepare the built-in demo pairs (Ray Data), evaluate the model through Ray Serve, "
        "train with Ray Train + DeepSpeed, evaluate again, and write a report with plots.",
    )
    parser.add_argument("--method", choices=["safedpo", "bfpo", "dpo"], default="safedpo",
                        help="alignment method (dpo = the plain-DPO baseline)")
    parser.add_argument("--output-dir", default="outputs/demo", help="where the report and model go")
    add_overrides(parser, "train.max_steps=5")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rayalign.console import log_to
    from rayalign.demo import demo_config, format_summary, run_demo

    cfg = demo_config(args.method, args.overrides, args.output_dir)
    log_to(args.output_dir)
    result = run_demo(cfg, method=args.method)
    print(format_summary(result))
    return 0
