"""Ray's Job Submission SDK at the edge: address, auth token, submit, follow, manage.

Token authentication (Ray >= 2.52): a head started with ``RAY_AUTH_MODE=token``
rejects every dashboard/job-API request without ``Authorization: Bearer <token>``.
Ray's own SDK adds that header only when the *client* process also runs with
``RAY_AUTH_MODE=token``; rayalign finds the token the way Ray does
(``RAY_AUTH_TOKEN``, then the file named by ``RAY_AUTH_TOKEN_PATH``, then
``~/.ray/auth_token``) and sends the header itself, so ``rayalign submit`` works
whether or not the caller exported ``RAY_AUTH_MODE``. ``RAY_AUTH_MODE=disabled``
turns that off. The token never goes into the job's runtime_env: drivers inherit
the head's own environment, where the cluster operator put it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rayalign.errors import UserError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from rayalign.jobs.jobspec import JobLaunch

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "STOPPED")


class ClusterError(UserError):
    """The cluster could not be reached, refused us, or does not know the job."""


def resolve_address(explicit: str | None, env: Mapping[str, str] = os.environ) -> str:
    """The job API URL: --address, else RAY_API_SERVER_ADDRESS / an http RAY_ADDRESS, else local."""
    address = explicit or env.get("RAY_API_SERVER_ADDRESS")
    if not address and env.get("RAY_ADDRESS", "").startswith(("http://", "https://")):
        address = env["RAY_ADDRESS"]
    address = (address or DEFAULT_ADDRESS).rstrip("/")
    if address.startswith("ray://") or address == "auto":
        raise ClusterError(
            f"address {address!r}: jobs go through the dashboard's HTTP job API, "
            f"e.g. {DEFAULT_ADDRESS} (port 8265 of the head), not the Ray client or GCS port"
        )
    if "://" not in address:
        address = f"http://{address}"
    return address


@dataclass(frozen=True)
class Token:
    value: str
    source: str


def resolve_token(env: Mapping[str, str] = os.environ, home: Path | None = None) -> Token | None:
    """The cluster token, found as Ray finds it; None when there is none or auth is disabled."""
    if env.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return Token(env["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    if env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path}: cannot read it ({exc.strerror})") from exc
        if not value:
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path}: the file is empty")
        return Token(value, str(path))
    default = (home or Path.home()) / ".ray" / "auth_token"
    if default.is_file() and default.read_text().strip():
        return Token(default.read_text().strip(), str(default))
    return None


@contextlib.contextmanager
def cluster_errors(address: str, token: Token | None) -> Iterator[None]:
    """Turn the SDK's connection/auth/HTTP exceptions into one-line errors saying what to do."""
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        if token is None:
            raise ClusterError(
                f"the Ray cluster at {address} requires an auth token and none was found: "
                "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or write it to ~/.ray/auth_token; "
                "`ray get-auth-token` prints it on the head)"
            ) from exc
        raise ClusterError(
            f"the Ray cluster at {address} rejected the auth token from {token.source}: "
            "it does not match the cluster's token"
        ) from exc
    except ConnectionError as exc:
        raise ClusterError(
            f"cannot reach the Ray job API at {address}: is the head running and is its "
            "dashboard port reachable from here? (private clusters: `ray dashboard "
            "cluster.yaml` or `kubectl port-forward svc/HEAD-svc 8265:8265`, then use "
            f"{DEFAULT_ADDRESS})"
        ) from exc
    except RuntimeError as exc:
        raise ClusterError(f"Ray job API at {address}: {exc}") from exc


@dataclass(frozen=True)
class Cluster:
    """A connected job-API client with the address and token it was made with."""

    client: JobSubmissionClient
    url: str
    token: Token | None

    def errors(self) -> contextlib.AbstractContextManager[None]:
        return cluster_errors(self.url, self.token)


def connect(address: str | None = None, env: Mapping[str, str] = os.environ) -> Cluster:
    """A client for the cluster's job API, authenticated when a token is available."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address, env)
    token = resolve_token(env)
    headers = {"Authorization": f"Bearer {token.value}"} if token else None
    with cluster_errors(url, token):
        return Cluster(JobSubmissionClient(url, headers=headers), url, token)


def submit(
    cluster: Cluster, launch: JobLaunch, submission_id: str | None = None, *, retries: int = 5
) -> str:
    """Upload the working dir and start the job; returns its submission id.

    A head that has just started answers "No available agent" until its job agent is
    up; that one error is retried for a few seconds instead of failing the submission.
    """
    for attempt in range(retries + 1):
        try:
            with cluster.errors():
                return cluster.client.submit_job(
                    entrypoint=launch.entrypoint,
                    runtime_env=launch.runtime_env,
                    metadata=launch.metadata,
                    submission_id=submission_id,
                )
        except ClusterError as exc:
            if "No available agent" not in str(exc) or attempt == retries:
                raise
            time.sleep(2.0)
    raise AssertionError("unreachable")


def follow(cluster: Cluster, job_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs until it ends; returns its final status name."""

    async def _tail() -> None:
        async for chunk in cluster.client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    with cluster.errors():
        asyncio.run(_tail())
    return status(cluster, job_id)


def status(cluster: Cluster, job_id: str) -> str:
    with cluster.errors():
        return str(cluster.client.get_job_status(job_id).value)


def describe(cluster: Cluster, job_id: str) -> dict[str, object]:
    """Status, message, entrypoint, timing and rayalign metadata of one job."""
    with cluster.errors():
        info = cluster.client.get_job_info(job_id)
    return {
        "submission_id": info.submission_id,
        "status": str(info.status.value),
        "message": info.message,
        "entrypoint": info.entrypoint,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "metadata": dict(info.metadata or {}),
    }


def list_jobs(cluster: Cluster) -> list[dict[str, object]]:
    """All jobs the cluster knows, oldest first."""
    with cluster.errors():
        jobs = cluster.client.list_jobs()
    rows = [
        {
            "submission_id": job.submission_id or job.job_id,
            "status": str(job.status.value),
            "start_time": job.start_time or 0,
            "entrypoint": job.entrypoint,
        }
        for job in jobs
    ]
    return sorted(rows, key=lambda row: row["start_time"])


def logs(cluster: Cluster, job_id: str) -> str:
    with cluster.errors():
        return cluster.client.get_job_logs(job_id)


def stop(cluster: Cluster, job_id: str) -> bool:
    """Ask the cluster to stop a job; False when it had already ended."""
    with cluster.errors():
        return bool(cluster.client.stop_job(job_id))
