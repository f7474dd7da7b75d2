"""``rayalign jobs list|status|logs|stop``: manage jobs on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys
import time

from rayalign.commands.common import add_address


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "jobs", help="list, inspect, read logs of and stop jobs on a Ray cluster"
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    listing = verbs.add_parser("list", help="every job the cluster knows")
    add_address(listing)
    listing.set_defaults(func=run_list)
    for name, func, text in (
        ("status", run_status, "status, message and metadata of one job"),
        ("logs", run_logs, "the job's driver logs"),
        ("stop", run_stop, "stop a running job"),
    ):
        verb = verbs.add_parser(name, help=text)
        verb.add_argument("job_id", help="submission id, as `rayalign submit` printed it")
        add_address(verb)
        if name == "logs":
            verb.add_argument("--follow", action="store_true", help="stream until the job ends")
        verb.set_defaults(func=func)


def run_list(args: argparse.Namespace) -> int:
    from rayalign.jobs import jobclient

    rows = jobclient.list_jobs(jobclient.connect(args.address))
    if not rows:
        print("no jobs")
    for row in rows:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(int(row["start_time"]) / 1000))
        print(f"{row['submission_id']:<32} {row['status']:<10} {started}  {row['entrypoint']}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from rayalign.jobs import jobclient

    print(json.dumps(jobclient.describe(jobclient.connect(args.address), args.job_id), indent=2))
    return 0


def run_logs(args: argparse.Namespace) -> int:
    from rayalign.jobs import jobclient

    cluster = jobclient.connect(args.address)
    if args.follow:
        final = jobclient.follow(cluster, args.job_id)
        print(f"job {args.job_id}: {final}", file=sys.stderr)
        return 0 if final == "SUCCEEDED" else 1
    sys.stdout.write(jobclient.logs(cluster, args.job_id))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from rayalign.jobs import jobclient

    stopped = jobclient.stop(jobclient.connect(args.address), args.job_id)
    print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    return 0
