"""``rayalign plan JOB.yaml``: what a job spec will ask for and whether it fits, before it runs."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rayalign.commands.common import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="dry run: resolve a job spec and estimate GPUs, memory per GPU and steps",
        description="Resolve and validate a job spec, then print the memory per GPU (weights, "
        "gradients, optimizer, activations) for its ZeRO stage, the GPUs and nodes it asks "
        "for, and the steps per epoch. Downloads nothing.",
    )
    parser.add_argument("spec", help="job spec (the YAML that train/sweep/eval read)")
    add_overrides(parser, "train.num_workers=16")
    parser.add_argument("--rows", type=int, help="pairs in data.sources (when not countable)")
    parser.add_argument(
        "--helpfulness-rows", type=int, help="pairs in data.helpfulness_sources (BFPO buffered)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rayalign.config import load_config
    from rayalign.jobs.plan import format_plan, plan_spec

    cfg = load_config(args.spec, args.overrides)
    plan = plan_spec(cfg, Path(args.spec), args.overrides, args.rows, args.helpfulness_rows)
    if args.json:
        payload = asdict(plan)
        payload.update(total_gpus=plan.total_gpus, total_nodes=plan.total_nodes)
        if plan.memory is not None:
            payload["memory"]["total"] = plan.memory.total
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(format_plan(plan, cfg))
    return 0
