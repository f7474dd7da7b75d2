"""A small OpenAI-compatible HTTP client with retries: the only place eval code does HTTP.

Retries cover what a healthy server can recover from (connection errors, timeouts, 429,
5xx) with exponential backoff; a 4xx is the caller's mistake and fails at once with the
server's own message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from rayalign.errors import UserError

RETRY_STATUS = {429, 500, 502, 503, 504}


class RequestRejected(UserError):
    """The server answered 4xx: retrying would not help."""


@dataclass(frozen=True)
class Endpoint:
    """Where a served model answers (picklable, so Ray Data actors can rebuild a client)."""

    url: str  # base URL; requests go to url + "/v1/..."
    model: str | None = None
    api_key: str | None = None
    timeout_s: float = 300.0
    retries: int = 4
    backoff_s: float = 0.5


class OpenAIClient:
    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.session = requests.Session()
        if endpoint.api_key:
            self.session.headers["Authorization"] = f"Bearer {endpoint.api_key}"

    def _request(self, method: str, path: str, payload: dict | None = None) -> dict[str, Any]:
        url = self.endpoint.url.rstrip("/") + path
        last = ""
        for attempt in range(self.endpoint.retries + 1):
            try:
                resp = self.session.request(method, url, json=payload, timeout=self.endpoint.timeout_s)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 400:
                    return resp.json()
                message = _error_message(resp)
                if resp.status_code not in RETRY_STATUS:
                    raise RequestRejected(f"{url}: HTTP {resp.status_code}: {message}")
                last = f"HTTP {resp.status_code}: {message}"
            if attempt < self.endpoint.retries:
                time.sleep(self.endpoint.backoff_s * 2**attempt)
        raise UserError(f"{url}: failed after {self.endpoint.retries + 1} attempts ({last})")

    def models(self) -> list[str]:
        return [card["id"] for card in self._request("GET", "/v1/models").get("data", [])]

    def _model_field(self) -> dict[str, str]:
        return {"model": self.endpoint.model} if self.endpoint.model else {}

    def chat(self, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
        """One chat completion -> ``{"text", "finish_reason", "completion_tokens"}``."""
        body = self._request("POST", "/v1/chat/completions", {**self._model_field(), "messages": messages, **params})
        choice = body["choices"][0]
        return {
            "text": choice["message"]["content"] or "",
            "finish_reason": choice.get("finish_reason"),
            "completion_tokens": body.get("usage", {}).get("completion_tokens"),
        }

    def complete(self, prompt: str, **params: Any) -> dict[str, Any]:
        """One raw-text completion (continuation benchmarks, classifier judges)."""
        body = self._request("POST", "/v1/completions", {**self._model_field(), "prompt": prompt, **params})
        choice = body["choices"][0]
        return {
            "text": choice.get("text") or "",
            "finish_reason": choice.get("finish_reason"),
            "completion_tokens": body.get("usage", {}).get("completion_tokens"),
        }

    def score(self, continuation: str, *, messages: list[dict[str, str]] | None = None, prompt: str | None = None) -> dict:
        """rayalign extension ``/v1/score``: log-likelihood of ``continuation``."""
        payload: dict[str, Any] = {"continuation": continuation}
        payload.update({"messages": messages} if messages is not None else {"prompt": prompt or ""})
        return self._request("POST", "/v1/score", payload)

    def complete_many(
        self, prompts: Sequence[str], *, max_tokens: int, temperature: float = 0.0, concurrency: int = 8
    ) -> list[str]:
        """Concurrent completions (the server batches them); order preserved."""
        def one(prompt: str) -> str:
            return self.complete(prompt, max_tokens=max_tokens, temperature=temperature)["text"]

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(one, prompts))


def _error_message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    return str(body)[:200]


def completer(endpoint: Endpoint, *, max_tokens: int, concurrency: int = 8):
    """A ``complete(prompts) -> texts`` callable for :class:`rayalign.eval.judges.PromptedJudge`."""
    client = OpenAIClient(endpoint)

    def complete(prompts: list[str]) -> list[str]:
        return client.complete_many(prompts, max_tokens=max_tokens, concurrency=concurrency)

    return complete
