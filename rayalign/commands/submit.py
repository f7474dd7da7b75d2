"""``rayalign submit JOB.yaml``: run a job spec on a Ray cluster through the Job Submission API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rayalign.commands.common import add_address, add_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "submit",
        help="submit a job spec to a Ray cluster (validated locally first)",
        description="Validate a job spec, ship job.working_dir to the cluster and run the "
        "sub-command the spec names (job.command: train, sweep, eval) as a Ray job.",
    )
    parser.add_argument("spec", help="job spec YAML inside the working directory")
    add_overrides(parser, "train.num_workers=16")
    add_address(parser)
    parser.add_argument("--follow", action="store_true", help="stream the logs until it ends")
    parser.add_argument("--submission-id", help="choose the job's id (default: generated)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rayalign.config import load_config
    from rayalign.jobs import jobclient
    from rayalign.jobs.jobspec import plan_launch

    cfg = load_config(args.spec, args.overrides)
    launch = plan_launch(cfg, Path(args.spec), args.overrides)
    cluster = jobclient.connect(args.address)
    job_id = jobclient.submit(cluster, launch, args.submission_id)
    print(f"submitted {job_id} to {cluster.url}")
    print(f"  runs:   {launch.entrypoint}")
    print(f"  ships:  {launch.working_dir}")
    if not args.follow:
        print(f"  follow: rayalign jobs logs {job_id} --follow    stop: rayalign jobs stop {job_id}")
        return 0
    try:
        final = jobclient.follow(cluster, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} keeps running (rayalign jobs stop {job_id})")
        return 130
    print(f"job {job_id}: {final}", file=sys.stderr)
    return 0 if final == "SUCCEEDED" else 1
