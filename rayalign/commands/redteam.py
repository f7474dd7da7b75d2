"""``rayalign redteam``: BFPO-style red-teaming pairs from a model's own harmful outputs."""

from __future__ import annotations

import argparse
import json

from rayalign.commands.common import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "redteam",
        help="sample responses to harmful prompts, judge and rank them, write preference pairs",
        description="For each harmful prompt, samples two responses from the served model, labels "
        "each with the judge, orders them by helpfulness with the ranker (llm judge, or the "
        "heuristic fallback: a non-refusal beats a refusal, then the longer answer), keeps "
        "prompts where a response was harmful, and writes canonical pairs (JSONL) for "
        "`rayalign train`.",
    )
    parser.add_argument("--model", required=True, help="model path/name")
    parser.add_argument("--prompts", required=True, help="prompts file (JSONL/CSV with prompt) or benchmark spec")
    parser.add_argument("--output", default="outputs/redteam/pairs.jsonl", help="pairs JSONL to write")
    parser.add_argument("--judge", default=None, help="judge name (default eval.judge)")
    parser.add_argument("--judge-url", default=None)
    parser.add_argument("--judge-model", default=None)
    parser.add_argument("--ranker", choices=("heuristic", "llm"), default=None)
    parser.add_argument("--ranker-url", default=None)
    parser.add_argument("--limit", type=int, default=None, help="prompts to use (seeded subset)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0)")
    parser.add_argument("--config", default=None)
    add_overrides(parser, "eval.max_new_tokens=64")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ray import serve

    from rayalign.config import load_config
    from rayalign.eval.redteam import run_redteam
    from rayalign.serve.server import serve_running

    cfg = load_config(args.config, args.overrides)
    for key, value in {
        "judge": args.judge, "judge_url": args.judge_url, "judge_model": args.judge_model,
        "ranker": args.ranker, "ranker_url": args.ranker_url, "limit": args.limit,
        "data_dir": args.data_dir, "max_new_tokens": args.max_new_tokens,
        "redteam_temperature": args.temperature,
    }.items():
        if value is not None:
            setattr(cfg.eval, key, value)
    model_cfg = cfg.model.model_copy(update={"name_or_path": args.model})
    from pathlib import Path

    from rayalign.console import log_to

    log_to(Path(args.output).expanduser().parent)
    started_here = not serve_running()
    try:
        summary = run_redteam(model_cfg, cfg.eval, args.prompts, args.output)
    finally:
        if started_here:
            serve.shutdown()
    print(json.dumps(summary, indent=2))
    return 0
