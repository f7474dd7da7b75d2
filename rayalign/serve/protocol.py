"""The OpenAI-compatible request/response shapes and the server's limits (pure, no Ray).

Requests are validated here, before anything reaches the model, so a malformed or
oversize request costs the replica one JSON error and nothing else. Unknown fields are
ignored (OpenAI clients send many), but fields whose meaning we cannot honour (``n > 1``)
are refused rather than silently dropped.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask for; anything beyond is a 4xx, never an OOM."""

    max_request_bytes: int = 1_000_000
    max_prompt_tokens: int = 2048
    max_tokens: int = 1024  # ceiling on a request's max_tokens
    default_max_tokens: int = 256
    max_prompts_per_request: int = 16
    max_messages: int = 64


class APIError(Exception):
    """A request the server refuses; becomes ``{"error": {...}}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]

    def requested_max_tokens(self, limits: ServerLimits) -> int:
        value = self.max_completion_tokens or self.max_tokens or limits.default_max_tokens
        if value > limits.max_tokens:
            raise APIError(
                400, f"max_tokens={value} exceeds this server's limit of {limits.max_tokens}",
                param="max_tokens",
            )
        return value


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False

    def prompts(self, limits: ServerLimits) -> list[str]:
        prompts = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if len(prompts) > limits.max_prompts_per_request:
            raise APIError(
                400, f"{len(prompts)} prompts in one request; the limit is {limits.max_prompts_per_request}",
                param="prompt",
            )
        return prompts


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)

    def message_dicts(self, limits: ServerLimits) -> list[dict[str, str]]:
        if len(self.messages) > limits.max_messages:
            raise APIError(400, f"more than {limits.max_messages} messages", param="messages")
        return [{"role": m.role, "content": m.content} for m in self.messages]


class ScoreRequest(BaseModel):
    """rayalign extension: log-likelihood of ``continuation`` after a prompt or chat."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    continuation: str = Field(min_length=1)


def validation_message(exc: Any) -> str:
    """A pydantic ``ValidationError`` as one readable line naming the fields."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def completion_response(model_id: str, results: list[Any], *, chat: bool) -> dict[str, Any]:
    """OpenAI response body from backend results (``text``, ``finish_reason``, token counts)."""
    choices = []
    for index, res in enumerate(results):
        if chat:
            choices.append({
                "index": index,
                "message": {"role": "assistant", "content": res.text},
                "finish_reason": res.finish_reason,
            })
        else:
            choices.append({"index": index, "text": res.text, "finish_reason": res.finish_reason, "logprobs": None})
    prompt_tokens = sum(r.prompt_tokens for r in results)
    completion_tokens = sum(len(r.token_ids) for r in results)
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event (``data: ...`` and a blank line), as OpenAI's streams send them."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


@dataclass(frozen=True)
class StreamChunks:
    """Builds the chunks of one streamed response in OpenAI's format.

    Chat: ``chat.completion.chunk`` objects whose first ``delta`` carries the role, then one
    ``delta.content`` per piece, then an empty delta with ``finish_reason``. Completions:
    ``text_completion`` objects with ``text``. With ``include_usage`` every chunk has
    ``"usage": null`` and a last chunk with no choices carries the token counts.
    """

    model_id: str
    chat: bool
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": ("chat" + self.id) if self.chat else self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created, "model": self.model_id, "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage
        return body

    def _choice(self, text: str | None, finish_reason: str | None, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}

    def start(self) -> dict[str, Any] | None:
        """The role-only first chunk (chat only)."""
        return self._chunk([self._choice(None, None, role=True)]) if self.chat else None

    def piece(self, text: str) -> dict[str, Any]:
        return self._chunk([self._choice(text, None)])

    def finish(self, finish_reason: str) -> dict[str, Any]:
        return self._chunk([self._choice(None, finish_reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return self._chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                "total_tokens": prompt_tokens + completion_tokens})
