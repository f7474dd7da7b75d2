"""`rayalign submit` / `rayalign jobs` against a real head started with `ray start --head`.

One head (token auth on, 127.0.0.1, free ports, its own temp dir) serves the whole
module; a second `ray start` node joins it for the multi-node test. The CLI runs as a
subprocess whose environment alone carries the token, so this test process's own Ray
settings are never touched.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from cluster_support import LocalHead, free_port, rayalign

from rayalign.jobs import jobclient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SUBMITTED = re.compile(r"submitted (\S+) to")


@pytest.fixture(scope="module")
def head():
    # A short path: Ray's unix sockets live under the temp dir (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rah-", dir="/tmp"))
    node = LocalHead(temp_dir)
    try:
        node.start(num_cpus=2, resources={"rayalign_node_a": 1})
        yield node
    finally:
        node.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def cluster_for(head: LocalHead) -> jobclient.Cluster:
    """An in-process client: the token goes in a header, not this process's environment."""
    return jobclient.connect(head.address, env={"RAY_AUTH_TOKEN": head.token})


def test_submit_follow_collects_the_jobs_output(head: LocalHead) -> None:
    env = head.client_env()
    done = rayalign("submit", "jobs/smoke_toy.yaml", "--address", head.address, "--follow", env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    job_id = SUBMITTED.search(done.stdout).group(1)
    # the toy experiment's table, streamed back from the driver on the head
    assert re.search(r"bfpo\s+0\.10 .*global order\s+yes", done.stdout), done.stdout[-2000:]
    assert f"job {job_id}: SUCCEEDED" in done.stderr

    status = rayalign("jobs", "status", job_id, "--address", head.address, env=env, cwd=REPO)
    info = json.loads(status.stdout)
    assert info["status"] == "SUCCEEDED"
    assert info["metadata"]["rayalign_command"] == "toy"
    assert info["entrypoint"].startswith("python -m rayalign.cli toy --steps 50")

    logs = rayalign("jobs", "logs", job_id, "--address", head.address, env=env, cwd=REPO)
    assert "global order" in logs.stdout
    listing = rayalign("jobs", "list", "--address", head.address, env=env, cwd=REPO)
    assert re.search(rf"{job_id}\s+SUCCEEDED", listing.stdout)


def test_stop_a_running_job(head: LocalHead, tmp_path: Path) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(
        f"job: {{command: toy, working_dir: {tmp_path}, args: [--steps, '1000000', --seeds, '1',"
        " --betas, '0.1', --output-dir, out]}\n"
    )
    env = head.client_env()
    started = rayalign("submit", str(spec), "--address", head.address, env=env, cwd=REPO)
    assert started.returncode == 0, started.stderr[-2000:]
    job_id = SUBMITTED.search(started.stdout).group(1)
    stopped = rayalign("jobs", "stop", job_id, "--address", head.address, env=env, cwd=REPO)
    assert "stop requested" in stopped.stdout
    cluster = cluster_for(head)
    assert jobclient.follow(cluster, job_id, out=io.StringIO()) == "STOPPED"


def test_missing_token_is_a_clear_error(head: LocalHead) -> None:
    done = rayalign(
        "jobs", "list", "--address", head.address, env=head.client_env(token=None), cwd=REPO
    )
    assert done.returncode == 2
    assert "requires an auth token and none was found" in done.stderr
    assert "Traceback" not in done.stderr


def test_wrong_token_is_a_clear_error(head: LocalHead) -> None:
    done = rayalign(
        "submit", "jobs/smoke_toy.yaml", "--address", head.address,
        env=head.client_env(token="not-the-token"), cwd=REPO,
    )
    assert done.returncode == 2
    assert "rejected the auth token from RAY_AUTH_TOKEN" in done.stderr


def test_wrong_address_is_a_clear_error(head: LocalHead) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    done = rayalign("submit", "jobs/smoke_toy.yaml", "--address", nowhere, env=head.client_env(), cwd=REPO)
    assert done.returncode == 2
    assert f"cannot reach the Ray job API at {nowhere}" in done.stderr
    gcs = rayalign("jobs", "list", "--address", "ray://127.0.0.1:10001", env=head.client_env(), cwd=REPO)
    assert gcs.returncode == 2 and "not the Ray client or GCS port" in gcs.stderr


def test_bad_spec_is_rejected_before_anything_is_submitted(head: LocalHead, tmp_path: Path) -> None:
    before = len(jobclient.list_jobs(cluster_for(head)))
    spec = tmp_path / "bad.yaml"
    spec.write_text("train:\n  num_wrkers: 2\nloss:\n  name: ppo\n")
    done = rayalign("submit", str(spec), "--address", head.address, env=head.client_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "train.num_wrkers" in done.stderr and "loss.name" in done.stderr
    assert str(spec) in done.stderr
    assert len(jobclient.list_jobs(cluster_for(head))) == before


def test_tiny_training_job_places_one_worker_on_each_node(head: LocalHead) -> None:
    """Multi-node stand-in: a second raylet joins the head, and a 2-worker DeepSpeed run of
    jobs/train_tiny.yaml submitted with STRICT_SPREAD puts one worker on each node."""
    if len(head.alive_nodes()) < 2:
        head.add_node(num_cpus=1, resources={"rayalign_node_b": 1})
    node_ids = {n["node_id"] for n in head.alive_nodes()}
    assert len(node_ids) == 2

    done = rayalign(
        "submit", "jobs/train_tiny.yaml", "--address", head.address, "--follow",
        "--set", "train.num_workers=2", "--set", "train.placement_strategy=STRICT_SPREAD",
        "--set", "train.max_steps=4", "--set", "train.checkpoint_every=4",
        # placement is the point: no eval split (test_resources' local 2-worker run keeps
        # one), reference log-probs in the loop
        "--set", "data.eval_fraction=0", "--set", "data.precompute_ref_logps=false",
        env=head.client_env(), cwd=REPO, timeout=420,
    )
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-2000:])
    job_id = SUBMITTED.search(done.stdout).group(1)
    # the training run's own summary, streamed back from the driver
    assert re.search(r"\[rayalign\] done: 4 steps, loss \d", done.stdout), done.stdout[-3000:]

    cluster = cluster_for(head)
    info = cluster.client.get_job_info(job_id)
    assert "--set train.placement_strategy=STRICT_SPREAD" in info.entrypoint
    workers = [a for a in head.actors("RayTrainWorker") if a.get("job_id") == info.job_id]
    assert len(workers) == 2, workers
    assert {w["node_id"] for w in workers} == node_ids


def test_train_refuses_at_once_on_a_cluster_that_cannot_hold_it(head: LocalHead, tmp_path) -> None:
    """A 2-CPU head (3 CPUs once the multi-node test has joined its 1-CPU node) and a run
    needing 3 Train workers + their Ray Data task: a one-line error naming needed vs
    available, before any data is read, instead of a silent hang."""
    import time

    # A driver joining a token-auth cluster needs the token *and* token mode on its side.
    env = {**head.client_env(), "RAY_ADDRESS": f"127.0.0.1:{head.gcs_port}", "RAY_AUTH_MODE": "token"}
    started = time.monotonic()
    done = rayalign("train", "jobs/train_tiny.yaml", "--set", "train.num_workers=3",
                    "--set", f"train.output_dir={tmp_path}", env=env, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(r"needs CPU=4 at once, the cluster has CPU=[23] ", done.stderr), done.stderr[-2000:]
    assert "3 Train worker(s)" in done.stderr
    assert time.monotonic() - started < 90
    assert not (tmp_path / "tiny-safedpo" / "data").exists()  # stopped before the data pipeline
