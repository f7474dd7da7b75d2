"""``rayalign sweep``: a Ray Tune search over loss hyperparameters with the Pareto front."""

from __future__ import annotations

import argparse

from rayalign.commands.common import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="sweep β, Δ, α, ... with Ray Tune (train + quick eval per trial) and plot the Pareto front",
        description="Each trial trains with Ray Train and evaluates the exported model; outputs a table "
        "of all trials, the best config per objective, the Pareto-optimal set and plots.",
    )
    parser.add_argument("config", help="sweep config YAML (model/data/loss/train/eval + sweep sections)")
    add_overrides(parser, "sweep.num_samples=4")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted sweep, keeping the finished trials")
    parser.add_argument("--summarise", action="store_true",
                        help="run nothing: write the table, Pareto front and plots of a stopped "
                        "sweep from its finished trials")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rayalign.config import load_config
    from rayalign.ray_session import init_ray
    from rayalign.tune.sweep import run_sweep, sweep_dir, sweep_need

    cfg = load_config(args.config, args.overrides)
    from rayalign.console import log_to

    print(f"[rayalign] sweep outputs: {sweep_dir(cfg)}")
    log_to(sweep_dir(cfg))
    init_ray(dashboard=True, need=sweep_need(cfg))
    result = run_sweep(cfg, resume=args.resume, summarise_only=args.summarise)
    shown = [c for c in result.table.columns if c not in ("ref_cache",)]
    print(result.table[shown].to_string(index=False))
    print(f"\n{len(result.pareto)} Pareto-optimal trial(s); {len(result.errors)} failed")
    for metric, row in result.best.items():
        print(f"best {metric}: trial {row['trial']} ({row[metric]:.3f})")
    print(f"table: {result.output_dir / 'trials.csv'}\nplots: {result.output_dir}")
    return 0 if len(result.errors) < len(result.table) else 1
