"""Generated tokens/s: through Ray Serve (HTTP, batching on and off) vs calling ``generate``.

Prints ONE JSON object. All four numbers are measured side by side in one run on the same
model, prompts and settings:

* ``direct_unbatched``: ``TransformersBackend.generate`` one prompt at a time, in-process;
* ``direct_batched``: the same, all prompts of a wave in one left-padded batch;
* ``serve_batching_off``: HTTP to a Serve replica with ``max_batch_size=1``;
* ``serve_batching_on``: HTTP to a Serve replica with ``@serve.batch`` (``max_batch_size=N``);
* ``serve_through_ray_data``: the same replica driven the way ``rayalign eval`` drives it,
  :func:`rayalign.eval.generate.generate` (one Ray Data actor sending ``--concurrency``
  requests at once); its time includes starting that actor, as an evaluation pays it.

The HTTP runs send ``--concurrency`` requests at once, as the eval pipeline does; each
reports the batch sizes the replica ran (``batch_sizes``: size -> count, the warm-up's 1
included), which shows whether requests reached it together. Every run
uses one torch thread (the replica has ``num_cpus=1``), so the ratios isolate batching and
HTTP overhead from thread-count effects. Greedy
decoding with EOS ignored would need a model-specific hack, so the tiny random model (which
rarely emits EOS) stands in by default; pass ``--model`` for a real one.

    .venv/bin/python benchmarks/eval_throughput.py [--model PATH] [--prompts 32] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def _prompts(n: int) -> list[str]:
    topics = ["bread", "Python lists", "the capital of France", "a polite email", "safety", "foxes"]
    return [f"Tell me about {topics[i % len(topics)]} in {i % 5 + 2} sentences." for i in range(n)]


def direct(backend, prompts, max_tokens: int, batch: int) -> dict:
    from rayalign.serve.backends import GenerationRequest

    requests = [GenerationRequest(backend.encode_chat([{"role": "user", "content": p}]), max_tokens) for p in prompts]
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(requests), batch):
        tokens += sum(len(r.token_ids) for r in backend.generate(requests[i:i + batch]))
    seconds = time.perf_counter() - start
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}


def through_serve(model: str, prompts, max_tokens: int, max_batch_size: int, concurrency: int,
                  *, ray_data: bool = False, batch_wait_s: float | None = None) -> dict:
    """Generated tokens/s from a fresh Serve replica, sent from a thread pool or, with
    ``ray_data``, through the evaluation's own Ray Data path. ``batch_wait_s``: how long the
    replica holds a batch open (default: ``eval.batch_wait_timeout_s``'s)."""
    import requests
    from ray import serve

    from rayalign.config import EvalConfig
    from rayalign.serve.server import serve_model

    if batch_wait_s is None:
        batch_wait_s = EvalConfig().batch_wait_timeout_s

    name = f"bench-{max_batch_size}{'-data' if ray_data else ''}"
    served = serve_model(model, app_name=name, route_prefix=f"/{name}",
                         port=0, backend="transformers", max_batch_size=max_batch_size,
                         batch_wait_timeout_s=batch_wait_s, num_cpus=1)
    session = requests.Session()

    def one(prompt: str) -> int:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}
        resp = session.post(served.url + "/v1/chat/completions", json=body, timeout=600)
        resp.raise_for_status()
        return resp.json()["usage"]["completion_tokens"]

    one(prompts[0])  # warm-up
    start = time.perf_counter()
    if ray_data:
        from rayalign.eval.client import Endpoint
        from rayalign.eval.generate import GenerationSettings, generate

        rows = generate([{"prompt": p} for p in prompts], Endpoint(served.url),
                        GenerationSettings(max_tokens=max_tokens, score_references=False),
                        concurrency=concurrency, desc="through Ray Data")
        failed = [r["error"] for r in rows if r["error"]]
        if failed:
            raise SystemExit(f"{len(failed)} requests failed through Ray Data, e.g. {failed[0]}")
        tokens = sum(r["completion_tokens"] for r in rows)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            tokens = sum(pool.map(one, prompts))
    seconds = time.perf_counter() - start
    stats = session.get(served.url + "/v1/stats", timeout=30).json()
    serve.delete(served.app_name)
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "batch_sizes": stats["batch_sizes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model path/name (default: a tiny random model)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-wait-s", type=float, default=None,
                        help="how long a replica holds a batch open (default: eval.batch_wait_timeout_s's)")
    args = parser.parse_args()

    import ray
    import torch

    from rayalign.config import ModelConfig
    from rayalign.modeling.models import build_tiny_model
    from rayalign.serve.backends import TransformersBackend

    # The Serve replica gets num_cpus=1, and Ray pins its torch to one thread; give the
    # direct runs the same single thread so the comparison is about batching and HTTP only.
    torch.set_num_threads(1)
    model = args.model or str(build_tiny_model(tempfile.mkdtemp(prefix="rayalign-bench-"), hidden_size=256,
                                               num_layers=4))
    prompts = _prompts(args.prompts)
    backend = TransformersBackend(ModelConfig(name_or_path=model))
    direct(backend, prompts[:2], 4, 2)  # warm-up
    results = {
        "direct_unbatched": direct(backend, prompts, args.max_tokens, 1),
        "direct_batched": direct(backend, prompts, args.max_tokens, args.concurrency),
    }
    del backend
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        results["serve_batching_off"] = through_serve(model, prompts, args.max_tokens, 1, args.concurrency)
        results["serve_batching_on"] = through_serve(model, prompts, args.max_tokens, args.concurrency,
                                                     args.concurrency, batch_wait_s=args.batch_wait_s)
        results["serve_through_ray_data"] = through_serve(model, prompts, args.max_tokens, args.concurrency,
                                                          args.concurrency, ray_data=True,
                                                          batch_wait_s=args.batch_wait_s)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    on, off = results["serve_batching_on"]["tokens_per_s"], results["serve_batching_off"]["tokens_per_s"]
    print(json.dumps({
        "model": args.model or "tiny-random-llama (256 hidden, 4 layers)",
        "prompts": args.prompts, "max_tokens": args.max_tokens, "concurrency": args.concurrency,
        **results,
        "serve_batching_speedup": round(on / off, 2),
        "serve_vs_direct_batched": round(on / results["direct_batched"]["tokens_per_s"], 2),
        "ray_data_vs_threads": round(results["serve_through_ray_data"]["tokens_per_s"] / on, 2),
    }))


if __name__ == "__main__":
    main()
