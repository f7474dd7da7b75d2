"""``rayalign train CONFIG.yaml [--set key=value ...]``: distributed preference training."""

from __future__ import annotations

import argparse

from rayalign.commands.common import add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model with SafeDPO / BFPO / DPO / IPO / SimPO / cDPO / rDPO on Ray Train + DeepSpeed",
        description="Validate the config, prepare the data, train on Ray (local by default, "
        "or the cluster in RAY_ADDRESS) and export the model in Hugging Face format. "
        "Re-running with the same train.name and train.storage_path resumes from the last "
        "checkpoint. A spec with job.stages trains its stages in order, each from the model "
        "the stage before exported.",
    )
    parser.add_argument("config", help="YAML config file (see jobs/train_tiny.yaml)")
    add_overrides(parser, "train.num_workers=2")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rayalign.config import load_config
    from rayalign.jobs.stages import stage_configs, stage_finished

    cfg = load_config(args.config, args.overrides)  # fails here, before Ray starts
    stages = stage_configs(cfg, source=str(args.config))
    from rayalign.console import log_to
    from rayalign.ray_session import data_need, init_ray, largest, local_cpus, training_need
    from rayalign.train.trainer import output_dir_for, refuse_another_runs_checkpoints, run_training

    for stage in stages:
        refuse_another_runs_checkpoints(stage)  # before Ray starts

    if len(stages) == 1:
        print(f"[rayalign] config {args.config} is valid; outputs go to {output_dir_for(cfg)}")
    else:
        names = ", ".join(s.train.name for s in stages)
        print(f"[rayalign] config {args.config} is valid; {len(stages)} stages: {names}")
    from rayalign.jobs.plan import ignored_note

    for stage in stages:
        if stage.loss.ignored_hyperparameters():
            print(f"[rayalign] note: {ignored_note(stage)}")
    log_to(output_dir_for(stages[0]))
    need = largest([
        n for s in stages
        for n in (training_need(s.train), data_need(s.data, scores_reference=s.scores_reference()))
    ])
    address = init_ray(need=need)  # fits the run or stops here, never hangs waiting
    where = f"a new local instance with {local_cpus(need)} logical CPUs" if address == "local" else address
    print(f"[rayalign] Ray: {where}; one unit of work: {need.what}")
    for number, stage in enumerate(stages, start=1):
        if len(stages) > 1:
            if stage_finished(stage):
                print(f"[rayalign] stage {number}/{len(stages)} {stage.train.name}: already "
                      f"finished with these settings ({output_dir_for(stage)})")
                continue
            print(f"[rayalign] stage {number}/{len(stages)} {stage.train.name} from "
                  f"{stage.model.name_or_path}; outputs go to {output_dir_for(stage)}")
        result = run_training(stage)
        final = result.metrics
        print(
            f"[rayalign] done: {final.get('step')} steps, loss {final.get('loss', float('nan')):.4f}, "
            f"reward accuracy {final.get('rewards/accuracy', float('nan')):.2f}\n"
            f"[rayalign] model: {result.model_dir or '-'}  adapter: {result.adapter_dir or '-'}\n"
            f"[rayalign] metrics: {result.output_dir / 'metrics.jsonl'}  "
            f"summary: {result.output_dir / 'summary.json'}"
        )
    return 0
