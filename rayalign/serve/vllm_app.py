"""The GPU backend: Ray's own ``ray.serve.llm`` OpenAI app running vLLM.

It speaks the same HTTP API as the transformers deployment (``/v1/models``,
``/v1/completions``, ``/v1/chat/completions``), so the eval pipeline does not care which one
it talks to. It cannot run without CUDA and the ``vllm`` extra; :func:`vllm_available`
says why, and :func:`build_vllm_app` turns that into a clear error.
"""

from __future__ import annotations

import importlib.util

from rayalign.errors import UserError


def vllm_unavailable_reason() -> str | None:
    """``None`` when vLLM can serve here, else what is missing."""
    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed (pip install 'rayalign[vllm]')"
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "torch is not importable"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def vllm_available() -> bool:
    return vllm_unavailable_reason() is None


def build_vllm_app(
    model_source: str,
    model_id: str,
    *,
    num_replicas: int = 1,
    tensor_parallel_size: int = 1,
    max_model_len: int | None = None,
    trust_remote_code: bool = False,
):
    """An OpenAI-compatible Serve app serving ``model_source`` with vLLM via ``ray.serve.llm``."""
    reason = vllm_unavailable_reason()
    if reason is not None:
        raise UserError(f"the vLLM backend cannot run here: {reason}; use --backend transformers")
    from ray.serve.llm import LLMConfig, build_openai_app

    engine_kwargs: dict = {"tensor_parallel_size": tensor_parallel_size, "trust_remote_code": trust_remote_code}
    if max_model_len is not None:
        engine_kwargs["max_model_len"] = max_model_len
    config = LLMConfig(
        model_loading_config={"model_id": model_id, "model_source": model_source},
        deployment_config={"num_replicas": num_replicas},
        engine_kwargs=engine_kwargs,
    )
    return build_openai_app({"llm_configs": [config]})
