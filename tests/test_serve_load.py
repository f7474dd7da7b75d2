"""benchmarks/serve_load.py, smaller: valid requests answered 200, malformed ones 4xx,
unauthenticated ones 401, no 5xx and no replica restarts, with many concurrent clients."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("serve_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_plan_mixes_a_tenth_of_every_malformed_kind():
    bench = _bench()
    shots = bench.plan(140, "m")
    kinds = [s.kind for s in shots]
    assert kinds.count("valid") == 126
    assert set(kinds) - {"valid"} == set(bench.MALFORMED)  # every kind appears


def test_serve_endpoint_under_load_with_broken_clients(ray_local, tiny_model_dir):
    from ray import serve

    from rayalign.serve.protocol import ServerLimits
    from rayalign.serve.server import free_port, serve_model

    bench = _bench()
    limits = ServerLimits(max_request_bytes=20_000, max_prompt_tokens=200, max_tokens=32, default_max_tokens=8)
    served = serve_model(str(tiny_model_dir), app_name="load-test", route_prefix="/", port=free_port(),
                         backend="transformers", api_key=bench.KEY, limits=limits, num_cpus=0.5,
                         access_log=False)
    try:
        before = bench.replica_states("load-test")
        report = bench.fire(served.url, bench.plan(140, served.model_id), clients=32)
        restarts = bench.replica_restarts(before, bench.replica_states("load-test"))
    finally:
        serve.shutdown()
    assert report["requests"] == 140 and report["malformed"] == 14
    assert report["valid_not_200"] == 0, report
    assert report["malformed_not_4xx"] == 0, report
    assert report["unauthenticated_not_401"] == 0, report
    assert report["server_errors"] == 0 and not any(k.startswith("5") for k in report["status_counts"])
    assert report["status_counts"].get("401") == 4  # 2 no-key + 2 wrong-key of the 14
    assert before and restarts == 0
