"""The transformers-backed Serve endpoint under load, with broken clients mixed in.

Serves the tiny random Llama (API key on, 127.0.0.1, a free port) and sends a fixed
number of requests from ``--clients`` concurrent clients. A tenth of them are malformed,
cycling through: bad JSON, wrong types, an oversize prompt (more tokens than the limit),
an oversize body, an unknown model, no key, a wrong key. Prints ONE JSON object:

``requests``, ``requests_per_s``, ``p50_ms``, ``p99_ms`` (latency of every request),
``status_counts`` ({status: count}), ``replica_restarts`` (replica actors that died or
restarted during the run), and the three failure counts the targets are about:
``valid_not_200``, ``malformed_not_4xx``, ``unauthenticated_not_401``. Targets: all three
zero, no 5xx, no replica restarts. ``tests/test_serve_load.py`` runs a smaller version.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/serve_load.py [--requests 640] [--clients 64]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests

KEY = "load-test-key"
#: Malformed kinds, in the order they cycle. "unauthenticated" ones must get exactly 401.
MALFORMED = ("bad_json", "wrong_types", "oversize_prompt", "oversize_body", "unknown_model", "no_key", "wrong_key")
UNAUTHENTICATED = frozenset({"no_key", "wrong_key"})


@dataclass(frozen=True)
class Shot:
    """One request to send: its kind (``valid`` or a MALFORMED name) and how."""

    kind: str
    path: str
    headers: dict[str, str]
    data: bytes


def plan(n: int, model_id: str, *, malformed_every: int = 10, prompt_limit: int = 200,
         body_limit: int = 20_000) -> list[Shot]:
    """``n`` requests; every ``malformed_every``-th one malformed (cycling through MALFORMED)."""
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    shots: list[Shot] = []
    for i in range(n):
        if i % malformed_every == malformed_every - 1:
            kind = MALFORMED[(i // malformed_every) % len(MALFORMED)]
        else:
            kind = "valid"
        body: object = (
            {"model": model_id, "prompt": f"Tell me about topic {i}", "max_tokens": 4, "temperature": 0}
            if i % 2 else
            {"model": model_id, "messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 4}
        )
        path = "/v1/completions" if i % 2 else "/v1/chat/completions"
        headers = dict(auth)
        raw = None
        if kind == "bad_json":
            raw = b'{"model": "x", "prompt": '
        elif kind == "wrong_types":
            body = {"model": model_id, "prompt": 12345, "max_tokens": "many"} if i % 2 else \
                {"model": model_id, "messages": "not a list", "temperature": "hot"}
        elif kind == "oversize_prompt":
            words = " ".join(["safety"] * (prompt_limit * 3))
            body = {"model": model_id, "prompt": words, "max_tokens": 4} if i % 2 else \
                {"model": model_id, "messages": [{"role": "user", "content": words}], "max_tokens": 4}
        elif kind == "oversize_body":
            body = {"model": model_id, "prompt": "x" * (body_limit * 2), "max_tokens": 4}
        elif kind == "unknown_model":
            body = {**body, "model": "no-such-model"}
        elif kind == "no_key":
            headers.pop("Authorization")
        elif kind == "wrong_key":
            headers["Authorization"] = "Bearer wrong-key"
        data = raw if raw is not None else json.dumps(body).encode()
        shots.append(Shot(kind, path, headers, data))
    return shots


def replica_states(app_name: str) -> dict[str, tuple[str, int]]:
    """{actor id: (state, restarts)} of this app's Serve replica actors (GCS actor table)."""
    from ray._private import state

    return {
        actor_id: (a["State"], int(a.get("NumRestarts", 0) or 0))
        for actor_id, a in state.actors().items()
        if str(a.get("ActorClassName", "")).startswith(f"ServeReplica:{app_name}:")
    }


def replica_restarts(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> int:
    """Replicas that restarted, died or were replaced between two snapshots."""
    restarts = sum(max(0, after[a][1] - before.get(a, ("", 0))[1]) for a in after)
    dead = sum(1 for a, (s, _) in after.items() if s == "DEAD" and before.get(a, ("",))[0] != "DEAD")
    new = sum(1 for a in after if a not in before)
    return restarts + dead + new


def fire(url: str, shots: list[Shot], clients: int, timeout: float = 300.0) -> dict:
    """Send ``shots`` from ``clients`` threads (one keep-alive session each); tally statuses."""
    local = threading.local()

    def one(shot: Shot) -> tuple[str, int, float]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        start = time.perf_counter()
        try:
            status = session.post(url + shot.path, data=shot.data, headers=shot.headers, timeout=timeout).status_code
        except requests.RequestException:
            status = 0  # connection reset / timeout: counted as a failure
        return shot.kind, status, (time.perf_counter() - start) * 1000

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, shots))
    elapsed = time.perf_counter() - start
    latencies = np.array([r[2] for r in results])
    statuses = Counter(r[1] for r in results)
    return {
        "requests": len(results),
        "clients": clients,
        "malformed": sum(1 for r in results if r[0] != "valid"),
        "requests_per_s": round(len(results) / elapsed, 2),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "valid_not_200": sum(1 for k, s, _ in results if k == "valid" and s != 200),
        "malformed_not_4xx": sum(1 for k, s, _ in results if k != "valid" and not 400 <= s < 500),
        "unauthenticated_not_401": sum(1 for k, s, _ in results if k in UNAUTHENTICATED and s != 401),
        "server_errors": sum(v for k, v in statuses.items() if k >= 500 or k == 0),
    }


def run(n_requests: int, clients: int, *, model: str = "tiny-random-llama", max_batch_size: int = 8) -> dict:
    """Serve ``model``, fire the load, report (Ray must not be running in this process yet,
    or be one this process owns)."""
    from ray import serve

    from rayalign.ray_session import init_ray, serve_need
    from rayalign.serve.protocol import ServerLimits
    from rayalign.serve.server import free_port, serve_model

    init_ray(need=serve_need(1, 1.0, 0.0), quiet=True)
    limits = ServerLimits(max_request_bytes=20_000, max_prompt_tokens=200, max_tokens=32, default_max_tokens=8)
    app_name = "serve-load"
    served = serve_model(model, app_name=app_name, route_prefix="/", port=free_port(), backend="transformers",
                         api_key=KEY, limits=limits, max_batch_size=max_batch_size, access_log=False)
    try:
        before = replica_states(app_name)
        report = fire(served.url, plan(n_requests, served.model_id), clients)
        time.sleep(1.0)  # let a replica that crashed at the very end show up as dead
        report["replica_restarts"] = replica_restarts(before, replica_states(app_name))
        report["replicas"] = len(before)
    finally:
        serve.shutdown()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=640)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--model", default="tiny-random-llama")
    args = parser.parse_args()
    print(json.dumps(run(args.requests, args.clients, model=args.model)))


if __name__ == "__main__":
    main()
