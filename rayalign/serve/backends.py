"""Generation backends behind the OpenAI-compatible server.

:class:`TransformersBackend` runs anywhere (CPU included): it takes a *batch* of already
tokenized requests (the Serve deployment collects them with ``@serve.batch``), left-pads
them into one tensor and calls ``generate`` once per group of identical sampling settings.
Each request keeps its own ``max_tokens`` and stop strings: the batch generates up to the
largest budget, and every row is cut at its own EOS / budget / stop afterwards.

vLLM is not a backend class here: on GPUs it is served by Ray's own ``ray.serve.llm``
application (:mod:`rayalign.serve.vllm_app`), which speaks the same HTTP API.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rayalign.config import ModelConfig


@dataclass(frozen=True)
class GenerationRequest:
    input_ids: list[int]
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int


@dataclass
class BatchStats:
    """What the server observed, so tests and benchmarks can see batching happen."""

    batch_sizes: dict[int, int] = field(default_factory=dict)  # size -> how many batches
    requests: int = 0
    generated_tokens: int = 0
    streams: int = 0  # streamed requests started
    streams_completed: int = 0  # ... that sent their last chunk
    streams_cancelled: int = 0  # ... whose client went away first (generation stopped)

    def record(self, size: int, tokens: int) -> None:
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1
        self.requests += size
        self.generated_tokens += tokens


def truncate_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; returns (text, whether one was found)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopScanner:
    """Stop strings on streamed text: emits text as soon as it cannot be the start of a stop
    string, holds back a tail that still could be, and cuts before the first match.

    ``feed(piece)`` returns the text safe to send now; ``flush()`` the held-back tail at the
    end of generation; ``stopped`` turns true at the first stop string (later pieces give "").
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        text, found = truncate_at_stop(self.buffer, self.stops)
        if found:
            self.stopped, self.buffer = True, ""
            return text
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buffer.endswith(s[:k])), default=0)
        out, self.buffer = self.buffer[: len(self.buffer) - hold], self.buffer[len(self.buffer) - hold:]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


def cut_generated(
    new_tokens: Sequence[int], eos_ids: set[int], max_tokens: int
) -> tuple[list[int], Literal["stop", "length"]]:
    """A row's generated ids up to (not including) its first EOS, within its own budget."""
    tokens: list[int] = []
    for token in new_tokens[:max_tokens]:
        if token in eos_ids:
            return tokens, "stop"
        tokens.append(int(token))
    return tokens, "length"


class TransformersBackend:
    """A Hugging Face causal LM with batched, left-padded generation."""

    def __init__(self, model_cfg: ModelConfig, *, device: str = "cpu"):
        import torch

        from rayalign.modeling.models import load_model, load_tokenizer

        self.device = device
        self.tokenizer = load_tokenizer(model_cfg)
        self.tokenizer.padding_side = "left"  # decoder-only batching: pad on the left
        self.model = load_model(model_cfg, device=device).eval()
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 4096) or 4096)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        self.pad_id = self.tokenizer.pad_token_id
        self._torch = torch

    # ----------------------------------------------------------------- tokenization
    def encode_text(self, prompt: str) -> list[int]:
        """Raw completion prompt: the tokenizer's own special tokens (e.g. BOS) are added."""
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Chat prompt: the model's chat template, rendered server-side; the template writes
        any BOS itself, so the tokenizer must not add another."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model has no chat template; use /v1/completions")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----------------------------------------------------------------- generation
    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for a batch; requests with equal sampling settings share one ``generate``."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[tuple[float, float], list[int]] = {}
        for index, req in enumerate(requests):
            key = (0.0, 1.0) if req.temperature == 0 else (req.temperature, req.top_p)
            groups.setdefault(key, []).append(index)
        for (temperature, top_p), indices in groups.items():
            batch = [requests[i] for i in indices]
            for i, res in zip(indices, self._generate_group(batch, temperature, top_p), strict=True):
                results[i] = res
        return [r for r in results if r is not None]

    def _generate_group(
        self, batch: list[GenerationRequest], temperature: float, top_p: float
    ) -> list[GenerationResult]:
        output, width = self._generate_ids(batch, temperature, top_p)
        results = []
        for row, req in enumerate(batch):
            tokens, reason = cut_generated(output[row, width:].tolist(), self.eos_ids, req.max_tokens)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if req.stop:
                text, stopped = truncate_at_stop(text, req.stop)
                reason = "stop" if stopped else reason
            results.append(GenerationResult(text, tokens, reason, len(req.input_ids)))
        return results

    def _generate_ids(
        self, batch: list[GenerationRequest], temperature: float, top_p: float, **extra: Any
    ) -> tuple[Any, int]:
        """One left-padded ``generate`` call -> (output ids ``[batch, width + new]``, width)."""
        torch = self._torch
        width = max(len(r.input_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, req in enumerate(batch):
            input_ids[row, width - len(req.input_ids):] = torch.tensor(req.input_ids)
            attention[row, width - len(req.input_ids):] = 1
        budget = max(r.max_tokens for r in batch)
        sampling = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
            seed = next((r.seed for r in batch if r.seed is not None), None)
            if seed is not None:
                torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=budget,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.pad_id,
                top_k=None,
                **sampling,
                **extra,
            )
        return output, width

    # ----------------------------------------------------------------- streaming
    async def stream(self, req: GenerationRequest, cancel: threading.Event) -> AsyncIterator[str | GenerationResult]:
        """Generate one request token by token: yields text pieces as they are decoded
        (transformers' ``AsyncTextIteratorStreamer``), then one :class:`GenerationResult`.

        ``generate`` runs in a worker thread; setting ``cancel`` (the caller does so when its
        client goes away, this method when a stop string appears) ends it at the next token.
        """
        from transformers import AsyncTextIteratorStreamer, StoppingCriteria, StoppingCriteriaList

        eos_ids, torch = self.eos_ids, self._torch

        class CountingStreamer(AsyncTextIteratorStreamer):
            tokens: list[int]
            saw_eos = False

            def put(self, value: Any) -> None:
                if not (self.skip_prompt and self.next_tokens_are_prompt):
                    for token in value.reshape(-1).tolist():
                        self.saw_eos = self.saw_eos or token in eos_ids
                        if not self.saw_eos:
                            self.tokens.append(int(token))
                super().put(value)

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool)

        streamer = CountingStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        streamer.tokens = []
        temperature, top_p = (0.0, 1.0) if req.temperature == 0 else (req.temperature, req.top_p)

        def run() -> None:
            try:
                self._generate_ids([req], temperature, top_p, streamer=streamer,
                                   stopping_criteria=StoppingCriteriaList([Cancelled()]))
            finally:
                streamer.end()  # wakes the reader even when generate raised

        worker = asyncio.ensure_future(asyncio.to_thread(run))
        scanner = StopScanner(req.stop)
        sent: list[str] = []
        try:
            async for piece in streamer:
                text = scanner.feed(piece)
                if text:
                    sent.append(text)
                    yield text
                if scanner.stopped:
                    cancel.set()
            tail = scanner.flush()
            if tail:
                sent.append(tail)
                yield tail
            await worker  # re-raises a failed generate
        finally:
            cancel.set()
        reason: Literal["stop", "length"] = "stop" if scanner.stopped or streamer.saw_eos else "length"
        tokens = streamer.tokens[: req.max_tokens]
        yield GenerationResult("".join(sent), tokens, reason, len(req.input_ids))

    # ----------------------------------------------------------------- scoring
    def score(self, prompt_ids: list[int], continuation: str) -> tuple[float, int]:
        """Sum of log p(continuation tokens | prompt) and their count (reference answers)."""
        from rayalign.logprobs import IGNORE_INDEX, sequence_logps

        torch = self._torch
        cont_ids = list(self.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([prompt_ids + cont_ids], device=self.device)
        labels = torch.tensor([[IGNORE_INDEX] * len(prompt_ids) + cont_ids], device=self.device)
        with torch.inference_mode():
            logp = sequence_logps(self.model, ids, torch.ones_like(ids), labels)
        return float(logp[0]), len(cont_ids)
