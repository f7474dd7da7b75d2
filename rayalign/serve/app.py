"""The Ray Serve generation deployment: an OpenAI-compatible FastAPI ingress over a backend.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
plus two rayalign extensions: ``POST /v1/score`` (log-likelihood of a reference answer)
and ``GET /v1/stats`` (observed batch sizes). ``GET /health`` needs no key.

``"stream": true`` answers with server-sent events in OpenAI's chunk format (usage in a
last chunk when ``stream_options.include_usage``); a streamed request runs on its own (not
batched), token by token, and stops generating when its client disconnects.

Concurrent requests are merged by ``@serve.batch`` into one left-padded ``generate`` call;
the model runs in a worker thread so the event loop keeps answering (and refusing) other
requests meanwhile. Every request is authorised, size-checked, parsed and tokenized
*before* it can join a batch, so bad input never reaches the model and never takes the
replica down: it gets a 4xx JSON error and the replica moves on.
"""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` type on
# the route methods after Serve pickles the class; string annotations make it a 422.

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve

from rayalign.config import ModelConfig
from rayalign.ray_session import thread_env
from rayalign.serve.backends import BatchStats, GenerationRequest, GenerationResult
from rayalign.serve.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    ScoreRequest,
    ServerLimits,
    StreamChunks,
    completion_response,
    sse,
    validation_message,
)

logger = logging.getLogger("rayalign.serve")


@dataclass(frozen=True)
class ServeSettings:
    """Everything a generation replica needs; picklable, so Serve ships it to replicas."""

    model: ModelConfig
    model_id: str
    api_key: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.02
    num_replicas: int = 1
    num_cpus: float = 1.0
    torch_threads: int | None = None
    num_gpus: float = 0.0
    max_ongoing_requests: int = 64
    #: One log line per request; evaluation turns it off (hundreds of internal requests).
    access_log: bool = True


fastapi_app = FastAPI(title="rayalign generation server", docs_url=None, redoc_url=None)


def _error(exc: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


@serve.deployment(name="generator")
@serve.ingress(fastapi_app)
class GenerationServer:
    def __init__(self, settings: ServeSettings):
        from rayalign.serve.backends import TransformersBackend

        self.settings = settings
        self.limits = settings.limits
        device = "cuda" if settings.num_gpus > 0 else "cpu"
        self.backend = TransformersBackend(settings.model, device=device)
        self.stats = BatchStats()
        self._generate_batch.set_max_batch_size(settings.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.created = int(time.time())

    # ----------------------------------------------------------------- plumbing
    def _authorize(self, request: Request) -> None:
        key = self.settings.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or invalid API key (Authorization: Bearer KEY)", "authentication_error")

    async def _read_json(self, request: Request) -> Any:
        limit = self.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit}")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise APIError(413, f"request body exceeds the limit of {limit} bytes")
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise APIError(400, f"body is not valid JSON: {exc}") from exc

    def _check_model(self, name: str | None) -> None:
        if name and name != self.settings.model_id:
            raise APIError(404, f"model {name!r} not found; this server serves {self.settings.model_id!r}", param="model")

    def _prepare(self, input_ids: list[int], max_tokens: int, req: Any) -> GenerationRequest:
        n = len(input_ids)
        if n == 0:
            raise APIError(400, "the prompt is empty (0 tokens)", param="prompt")
        if n > self.limits.max_prompt_tokens:
            raise APIError(400, f"prompt has {n} tokens; the limit is {self.limits.max_prompt_tokens}", param="prompt")
        if n + max_tokens > self.backend.max_context:
            raise APIError(
                400, f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds the model's context of "
                f"{self.backend.max_context}", param="max_tokens",
            )
        return GenerationRequest(
            input_ids=input_ids, max_tokens=max_tokens, temperature=req.temperature,
            top_p=req.top_p, stop=tuple(req.stop_list()), seed=req.seed,
        )

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = await asyncio.to_thread(self.backend.generate, requests)
        self.stats.record(len(requests), sum(len(r.token_ids) for r in results))
        return results

    async def _stream(self, prepared: GenerationRequest, chunks: StreamChunks) -> AsyncIterator[str]:
        """Server-sent events for one request. When the client goes away Serve cancels this
        generator; ``finally`` then stops the model at its next token."""
        cancel = threading.Event()
        self.stats.streams += 1
        done = False
        try:
            first = chunks.start()
            if first is not None:
                yield sse(first)
            result = None
            async for item in self.backend.stream(prepared, cancel):
                if isinstance(item, GenerationResult):
                    result = item
                else:
                    yield sse(chunks.piece(item))
            assert result is not None
            yield sse(chunks.finish(result.finish_reason))
            if chunks.include_usage:
                yield sse(chunks.usage(result.prompt_tokens, len(result.token_ids)))
            yield sse("[DONE]")
            done = True
            self.stats.streams_completed += 1
        except Exception as exc:  # headers are sent: report in-band, keep the replica alive
            logger.exception("streamed generation failed")
            done = True
            yield sse(APIError(500, f"internal error: {type(exc).__name__}", "server_error").body())
        finally:
            cancel.set()
            if not done:
                self.stats.streams_cancelled += 1
                logger.info("stream cancelled by the client; generation stopped")

    async def _run(self, request: Request, *, chat: bool) -> Response:
        try:
            self._authorize(request)
            payload = await self._read_json(request)
            model_cls = ChatCompletionRequest if chat else CompletionRequest
            try:
                req = model_cls.model_validate(payload)
            except ValidationError as exc:
                raise APIError(400, validation_message(exc)) from exc
            self._check_model(req.model)
            max_tokens = req.requested_max_tokens(self.limits)
            try:
                if chat:
                    encoded = [self.backend.encode_chat(req.message_dicts(self.limits))]
                else:
                    encoded = [self.backend.encode_text(p) for p in req.prompts(self.limits)]
            except ValueError as exc:  # e.g. no chat template, template rejects the roles
                raise APIError(400, str(exc)) from exc
            prepared = [self._prepare(ids, max_tokens, req) for ids in encoded]
            if req.stream:
                if len(prepared) > 1:
                    raise APIError(400, "stream=true takes a single prompt", param="prompt")
                chunks = StreamChunks(self.settings.model_id, chat=chat, include_usage=req.include_usage)
                return StreamingResponse(self._stream(prepared[0], chunks), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            results = await asyncio.gather(*(self._generate_batch(p) for p in prepared))
            return JSONResponse(completion_response(self.settings.model_id, results, chat=chat))
        except APIError as exc:
            return _error(exc)
        except Exception as exc:  # a bug or backend failure: answer 500, keep the replica alive
            logger.exception("generation failed")
            return _error(APIError(500, f"internal error: {type(exc).__name__}", "server_error"))

    # ----------------------------------------------------------------- routes
    @fastapi_app.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @fastapi_app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except APIError as exc:
            return _error(exc)
        card = {"id": self.settings.model_id, "object": "model", "created": self.created, "owned_by": "rayalign"}
        return JSONResponse({"object": "list", "data": [card]})

    @fastapi_app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._run(request, chat=False)

    @fastapi_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._run(request, chat=True)

    @fastapi_app.post("/v1/score")
    async def score(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
            payload = await self._read_json(request)
            try:
                req = ScoreRequest.model_validate(payload)
            except ValidationError as exc:
                raise APIError(400, validation_message(exc)) from exc
            if (req.prompt is None) == (req.messages is None):
                raise APIError(400, "give exactly one of prompt or messages")
            if req.messages is not None:
                ids = self.backend.encode_chat([{"role": m.role, "content": m.content} for m in req.messages])
            else:
                ids = self.backend.encode_text(req.prompt or "")
            if len(ids) > self.limits.max_prompt_tokens:
                raise APIError(400, f"prompt has {len(ids)} tokens; the limit is {self.limits.max_prompt_tokens}")
            logprob, count = await asyncio.to_thread(self.backend.score, ids, req.continuation)
            return JSONResponse({"logprob": logprob, "tokens": count, "mean_logprob": logprob / max(count, 1)})
        except APIError as exc:
            return _error(exc)
        except Exception as exc:
            logger.exception("scoring failed")
            return _error(APIError(500, f"internal error: {type(exc).__name__}", "server_error"))

    @fastapi_app.get("/v1/stats")
    async def batch_stats(self, request: Request) -> JSONResponse:
        try:
            self._authorize(request)
        except APIError as exc:
            return _error(exc)
        return JSONResponse({
            "batch_sizes": {str(k): v for k, v in sorted(self.stats.batch_sizes.items())},
            "requests": self.stats.requests,
            "generated_tokens": self.stats.generated_tokens,
            "streams": self.stats.streams,
            "streams_completed": self.stats.streams_completed,
            "streams_cancelled": self.stats.streams_cancelled,
            "max_batch_size": self.settings.max_batch_size,
        })


def build_generation_app(settings: ServeSettings):
    """The Serve application for ``settings`` (transformers backend)."""
    return GenerationServer.options(
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        logging_config={"enable_access_log": settings.access_log},
        ray_actor_options={
            "num_cpus": settings.num_cpus,
            "num_gpus": settings.num_gpus,
            "runtime_env": {"env_vars": thread_env(settings.torch_threads)},
        },
    ).bind(settings)
