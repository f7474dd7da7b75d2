"""``rayalign serve``: an OpenAI-compatible Ray Serve endpoint for a policy or judge model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (Ray Serve)",
        description="Starts Ray Serve with /v1/models, /v1/completions and /v1/chat/completions "
        "(vLLM via ray.serve.llm on GPUs when installed, else transformers with dynamic "
        "batching). Binds 127.0.0.1 unless --host says otherwise; Ctrl-C stops it.",
    )
    parser.add_argument("--model", required=True, help="local path, hub id or built-in name (smollm2-135m-instruct)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or env RAYALIGN_API_KEY)")
    parser.add_argument("--backend", choices=("auto", "transformers", "vllm"), default="auto")
    parser.add_argument("--name", default="rayalign", help="Serve application name")
    parser.add_argument("--route-prefix", default="/", help="URL prefix, e.g. /judge for a judge model")
    parser.add_argument("--model-id", default=None, help="name shown in /v1/models (default: folder name)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="dynamic batching limit (1 = off)")
    parser.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask for")
    parser.add_argument("--max-prompt-tokens", type=int, default=2048)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the model repo's own code (off by default)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from ray import serve

    from rayalign.cache import cache_root
    from rayalign.config import ModelConfig
    from rayalign.console import log_to
    from rayalign.ray_session import init_ray, serve_need
    from rayalign.serve.protocol import ServerLimits
    from rayalign.serve.server import serve_model

    log_to(cache_root())  # a long-running server: its log file from the start (not buffered)
    init_ray(need=serve_need(args.replicas, args.num_cpus, args.num_gpus or 0))

    api_key = args.api_key or os.environ.get("RAYALIGN_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: binding {args.host} without --api-key exposes the model to the network")
    limits = ServerLimits(max_tokens=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens)
    served = serve_model(
        ModelConfig(name_or_path=args.model, trust_remote_code=args.trust_remote_code),
        app_name=args.name, route_prefix=args.route_prefix, host=args.host, port=args.port,
        backend=args.backend, api_key=api_key, model_id=args.model_id, limits=limits,
        max_batch_size=args.max_batch_size, num_replicas=args.replicas, num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )
    if served.backend == "vllm" and api_key:
        print("note: the vLLM backend (ray.serve.llm) does not check --api-key; keep it on 127.0.0.1")
    print(f"serving {served.model_id!r} ({served.backend}) at {served.url}/v1  (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("shutting down Serve...", flush=True)
        serve.shutdown()
    return 0
