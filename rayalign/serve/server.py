"""Start Serve, deploy a model (transformers or vLLM backend), wait until it answers HTTP.

Several models (a policy, a baseline, a judge) share one Serve HTTP proxy under different
route prefixes, e.g. ``http://127.0.0.1:8000/policy/v1/...`` and ``.../judge/v1/...``, so a
big judge can sit on its own GPU replica while the client code stays the same.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import requests

from rayalign.config import ModelConfig
from rayalign.errors import UserError
from rayalign.serve.protocol import ServerLimits

Backend = Literal["auto", "transformers", "vllm"]


@dataclass(frozen=True)
class ServedModel:
    url: str  # base URL; the OpenAI API lives under url + "/v1"
    model_id: str
    app_name: str
    backend: str
    api_key: str | None = None


def ensure_ray() -> None:
    """Join ``RAY_ADDRESS`` if set, else start a private local Ray (never a stranger's cluster)."""
    from rayalign.ray_session import init_ray

    init_ray()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_model_id(name_or_path: str) -> str:
    path = Path(name_or_path)
    return path.name if path.exists() else name_or_path


def serve_running() -> bool:
    """Whether a Serve controller already runs in the connected (or to-be-started) Ray."""
    from ray.serve.context import _get_global_client

    ensure_ray()
    return _get_global_client(raise_if_no_controller_running=False) is not None


def start_http(host: str = "127.0.0.1", port: int = 8000) -> tuple[str, int]:
    """Start Serve's HTTP proxy on host:port (0 = a free port), or reuse the running one."""
    from ray import serve
    from ray.serve.context import _get_global_client

    ensure_ray()
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is not None:
        return client.http_config.host, int(client.http_config.port)
    port = port or free_port(_connect_host(host))
    _mute()  # importing Serve added its console handler, which serve.start would log through
    serve.start(http_options={"host": host, "port": port})
    _mute()
    return host, port


def _mute() -> None:
    """Serve (re)configures its driver-side logger; keep it off a quiet console."""
    from rayalign.console import mute_ray

    mute_ray()


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def wait_until_ready(url: str, api_key: str | None = None, timeout_s: float = 180.0) -> None:
    """Poll ``/v1/models`` until the proxy routes to a ready replica."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            resp = requests.get(f"{url}/v1/models", headers=headers, timeout=5)
            if resp.status_code == 200:
                return
            last = f"HTTP {resp.status_code}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.25)
    raise UserError(f"{url} did not become ready within {timeout_s:.0f}s ({last})")


def resolve_backend(backend: Backend) -> str:
    from rayalign.serve.vllm_app import vllm_available

    if backend == "auto":
        return "vllm" if vllm_available() else "transformers"
    return backend


def serve_model(
    model: ModelConfig | str,
    *,
    app_name: str = "rayalign",
    route_prefix: str = "/",
    host: str = "127.0.0.1",
    port: int = 8000,
    backend: Backend = "auto",
    api_key: str | None = None,
    model_id: str | None = None,
    limits: ServerLimits | None = None,
    max_batch_size: int = 8,
    batch_wait_timeout_s: float = 0.02,
    num_replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    torch_threads: int | None = None,
    timeout_s: float = 180.0,
    access_log: bool = True,
) -> ServedModel:
    """Deploy one model as a Serve application and return where it answers."""
    from ray import serve

    from rayalign.modeling.hub import require_hub
    from rayalign.modeling.models import resolve_model_path

    model_cfg = model if isinstance(model, ModelConfig) else ModelConfig(name_or_path=model)
    model_id = model_id or default_model_id(model_cfg.name_or_path)
    chosen = resolve_backend(backend)
    if chosen == "vllm":
        from rayalign.serve.vllm_app import build_vllm_app

        app = build_vllm_app(
            resolve_model_path(model_cfg.name_or_path), model_id, num_replicas=num_replicas,
            trust_remote_code=model_cfg.trust_remote_code,
        )
    else:
        from rayalign.serve.app import ServeSettings, build_generation_app

        # Fail here, in the caller's process, with a clear message (not inside a replica).
        resolved = resolve_model_path(model_cfg.name_or_path)
        if not Path(resolved).exists():
            require_hub(f"model {model_cfg.name_or_path!r}")
        model_cfg = model_cfg.model_copy(update={"name_or_path": resolved})
        settings = ServeSettings(
            model=model_cfg, model_id=model_id, api_key=api_key, limits=limits or ServerLimits(),
            max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s,
            num_replicas=num_replicas, num_cpus=num_cpus, num_gpus=num_gpus,
            torch_threads=torch_threads, access_log=access_log,
        )
        app = build_generation_app(settings)
    bound_host, bound_port = start_http(host, port)
    serve.run(app, name=app_name, route_prefix=route_prefix)
    _mute()
    url = f"http://{_connect_host(bound_host)}:{bound_port}{route_prefix.rstrip('/')}"
    wait_until_ready(url, api_key, timeout_s)
    return ServedModel(url=url, model_id=model_id, app_name=app_name, backend=chosen, api_key=api_key)


def undeploy(served: ServedModel) -> None:
    """Remove one application, leaving Serve (and other apps) running."""
    from ray import serve

    serve.delete(served.app_name)
