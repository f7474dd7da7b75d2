"""A real Ray head (and extra nodes) started with ``ray start`` for cluster tests.

Token auth is switched on only in the environment of the processes started here
(``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``), never in the test process, whose own local
Ray (``ray_local``) must stay a plain one. Every port is picked free so the head never
collides with another Ray on this machine; each node runs ``ray start --block`` in its
own session so stopping it (SIGTERM, then SIGKILL of its process group) tears down
exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
RAYALIGN = str(Path(sys.executable).with_name("rayalign"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_ports() -> list[str]:
    """Per-node ports that default to fixed numbers (and so collide between clusters)."""
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]


@dataclass
class LocalHead:
    """One head node with token auth on 127.0.0.1, plus any worker nodes joined to it."""

    temp_dir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_env(self) -> dict[str, str]:
        """The nodes' environment: token auth on, and this venv's `python` first on PATH
        (job entrypoints run `python -m rayalign.cli`, as they would in the cluster image)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
            RAY_DEDUP_LOGS="0",
        )
        return env

    def client_env(self, *, token: str | None = "same", home: Path | None = None) -> dict[str, str]:
        """Environment for a CLI client: the head's token (or another, or none) and a clean HOME."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["HOME"] = str(home or self.temp_dir / "client-home")  # no stray ~/.ray/auth_token
        Path(env["HOME"]).mkdir(parents=True, exist_ok=True)
        if token is not None:
            env["RAY_AUTH_TOKEN"] = self.token if token == "same" else token
        return env

    def _launch(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = (self.temp_dir / log_name).open("w")
        proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *args],
            env=self.node_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def start(self, *, num_cpus: int, resources: dict[str, float], timeout: float = 60) -> None:
        self._launch(
            [
                "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
                "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.temp_dir / 'ray'}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                f"--resources={json.dumps(resources)}", *_node_ports(),
            ],
            "head.log",
        )
        self.wait_for_nodes(1, timeout)

    def add_node(self, *, num_cpus: int, resources: dict[str, float], timeout: float = 60) -> None:
        """Join another raylet (a stand-in for a second machine) to the head."""
        alive = len(self.alive_nodes())
        # Its own temp dir, as a separate machine has its own disk: nodes sharing one
        # runtime_resources folder would delete each other's unpacked working_dirs.
        self._launch(
            [
                f"--address=127.0.0.1:{self.gcs_port}", "--node-ip-address=127.0.0.1",
                f"--temp-dir={self.temp_dir / f'n{len(self.processes)}'}",
                f"--num-cpus={num_cpus}", "--num-gpus=0", f"--resources={json.dumps(resources)}",
                *_node_ports(),
            ],
            f"node{len(self.processes)}.log",
        )
        self.wait_for_nodes(alive + 1, timeout)

    def get(self, path: str) -> dict:
        request = urllib.request.Request(
            self.address + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> list[dict]:
        try:
            nodes = self.get("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return []
        return [n for n in nodes if n.get("state") == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"ray start exited early ({proc.returncode}); see {self.temp_dir}")
            if len(self.alive_nodes()) >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{count} Ray node(s) not up after {timeout}s; logs in {self.temp_dir}")

    def actors(self, class_name: str) -> list[dict]:
        """Actors of a class, dead ones included (the state API keeps them)."""
        query = f"/api/v0/actors?limit=1000&detail=1&filter_keys=class_name&filter_predicates=%3D&filter_values={class_name}"
        return self.get(query)["data"]["result"]["result"]

    def stop(self) -> None:
        """SIGTERM every ``ray start --block`` (it stops its node's processes), then SIGKILL."""
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of this node's group is left


def rayalign(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAYALIGN, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
