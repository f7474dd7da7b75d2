"""The transformers backend in-process: left-padded batches generate what single requests do."""

from __future__ import annotations

import pytest

from rayalign.config import ModelConfig
from rayalign.serve.backends import (
    GenerationRequest,
    GenerationResult,
    StopScanner,
    TransformersBackend,
)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TransformersBackend(ModelConfig(name_or_path=str(tiny_model_dir)))


def test_batched_greedy_equals_unbatched(backend):
    short = backend.encode_chat([{"role": "user", "content": "hi"}])
    long = backend.encode_chat([{"role": "user", "content": "How do I bake bread with flour and water?"}])
    assert len(long) > len(short)  # so the short one is left-padded in the batch
    alone = backend.generate([GenerationRequest(short, max_tokens=8)])[0]
    batched = backend.generate([GenerationRequest(long, max_tokens=8), GenerationRequest(short, max_tokens=8)])
    assert batched[1].token_ids == alone.token_ids
    assert alone.prompt_tokens == len(short)


def test_each_request_keeps_its_own_max_tokens(backend):
    ids = backend.encode_text("The quick brown fox")
    out = backend.generate([GenerationRequest(ids, max_tokens=3), GenerationRequest(ids, max_tokens=9)])
    assert len(out[0].token_ids) <= 3 and len(out[1].token_ids) <= 9
    assert out[1].token_ids[: len(out[0].token_ids)] == out[0].token_ids  # same greedy path, cut earlier


def test_generation_stops_at_eos(backend):
    ids = backend.encode_text("Safety matters")
    first = backend.generate([GenerationRequest(ids, max_tokens=4)])[0].token_ids[0]
    saved = set(backend.eos_ids)
    backend.eos_ids = saved | {first}  # make the model's first greedy token an end-of-sequence
    try:
        result = backend.generate([GenerationRequest(ids, max_tokens=4)])[0]
    finally:
        backend.eos_ids = saved
    assert result.token_ids == [] and result.finish_reason == "stop" and result.text == ""


def test_sampling_with_a_seed_is_reproducible_and_differs_from_greedy(backend):
    ids = backend.encode_chat([{"role": "user", "content": "Tell me something"}])
    req = GenerationRequest(ids, max_tokens=12, temperature=1.5, top_p=1.0, seed=7)
    a, b = backend.generate([req])[0], backend.generate([req])[0]
    greedy = backend.generate([GenerationRequest(ids, max_tokens=12)])[0]
    assert a.token_ids == b.token_ids
    assert a.token_ids != greedy.token_ids


def test_chat_template_is_applied_server_side(backend):
    ids = backend.encode_chat([{"role": "user", "content": "hi"}])
    assert backend.tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_score_reference(backend):
    logprob, count = backend.score(backend.encode_text("What is the capital of France?"), " Paris")
    assert count >= 1 and logprob < 0


def test_vllm_backend_is_guarded_with_a_clear_reason():
    from rayalign.errors import UserError
    from rayalign.serve.server import resolve_backend
    from rayalign.serve.vllm_app import build_vllm_app, vllm_unavailable_reason

    reason = vllm_unavailable_reason()
    assert reason is not None  # no vllm / no CUDA on this machine
    assert resolve_backend("auto") == "transformers"
    with pytest.raises(UserError, match="vLLM backend cannot run here"):
        build_vllm_app("some/model", "m")


def _collect(backend, req, cancel_after=None):
    import asyncio
    import threading

    async def run():
        cancel, pieces, result = threading.Event(), [], None
        async for item in backend.stream(req, cancel):
            if isinstance(item, GenerationResult):
                result = item
            else:
                pieces.append(item)
                if cancel_after and len(pieces) >= cancel_after:
                    cancel.set()
        return pieces, result

    return asyncio.run(run())


def test_stop_scanner_holds_back_what_may_start_a_stop_string():
    scanner = StopScanner(["END", "\n\n"])
    assert scanner.feed("hello E") == "hello "  # "E" may begin "END"
    assert scanner.feed("x") == "Ex"  # it did not
    assert scanner.feed("ab\n") == "ab"
    assert scanner.feed("\nmore") == "" and scanner.stopped
    assert scanner.feed("ignored") == "" and scanner.flush() == ""
    tail = StopScanner(["END"])
    assert tail.feed("fin EN") == "fin " and tail.flush() == "EN"


def test_stream_yields_what_batched_generation_returns(backend):
    ids = backend.encode_chat([{"role": "user", "content": "Hello there"}])
    pieces, result = _collect(backend, GenerationRequest(ids, max_tokens=40))
    whole = backend.generate([GenerationRequest(ids, max_tokens=40)])[0]
    assert len(pieces) > 1  # really incremental
    assert "".join(pieces) == result.text == whole.text
    assert result.token_ids == whole.token_ids and result.finish_reason == whole.finish_reason


def test_stream_cuts_at_a_stop_string_and_cancel_stops_generation(backend):
    ids = backend.encode_text("The quick brown fox")
    whole = backend.generate([GenerationRequest(ids, max_tokens=30)])[0].text
    stop = whole[len(whole) // 2: len(whole) // 2 + 3]
    pieces, result = _collect(backend, GenerationRequest(ids, max_tokens=30, stop=(stop,)))
    assert "".join(pieces) == whole[: whole.find(stop)] and result.finish_reason == "stop"
    pieces, result = _collect(backend, GenerationRequest(ids, max_tokens=1500), cancel_after=2)
    assert result.finish_reason == "length" and len(result.token_ids) < 50  # stopped long before 1500
