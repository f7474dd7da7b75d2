"""A real Serve app on 127.0.0.1 with a tiny model: HTTP round trips, batching, bad input.

One Serve application for the whole module (started on a free port, so it never collides
with a server someone else runs on 8000), shut down at the end.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(ray_local, tiny_model_dir):
    from ray import serve

    from rayalign.serve.protocol import ServerLimits
    from rayalign.serve.server import free_port, serve_model

    # max_tokens up to 1800: the disconnect test needs a generation that outlasts its client.
    limits = ServerLimits(max_request_bytes=20_000, max_prompt_tokens=200, max_tokens=1800, default_max_tokens=8)
    served = serve_model(
        str(tiny_model_dir), app_name="test-serve", route_prefix="/", port=free_port(),
        backend="transformers", api_key=KEY, limits=limits, max_batch_size=8,
        batch_wait_timeout_s=0.25,  # generous, so concurrent requests surely meet in one batch
        num_cpus=0.5,
    )
    yield served
    serve.shutdown()


def post(server, path, body=None, *, headers=AUTH, data=None):
    return requests.post(server.url + path, json=body, data=data, headers=headers, timeout=120)


def test_binds_localhost_and_lists_the_model(server):
    assert server.url.startswith("http://127.0.0.1:")
    resp = requests.get(server.url + "/v1/models", headers=AUTH, timeout=30)
    assert resp.status_code == 200
    assert [m["id"] for m in resp.json()["data"]] == [server.model_id]


def test_completions_round_trip_and_greedy_is_deterministic(server):
    body = {"model": server.model_id, "prompt": "The quick brown fox", "max_tokens": 6, "temperature": 0}
    first, second = post(server, "/v1/completions", body), post(server, "/v1/completions", body)
    assert first.status_code == 200
    out = first.json()
    assert out["object"] == "text_completion" and out["choices"][0]["finish_reason"] in ("stop", "length")
    assert 0 < out["usage"]["completion_tokens"] <= 6
    assert out["choices"][0]["text"] == second.json()["choices"][0]["text"]


def test_chat_completions_round_trip_with_sampling(server):
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
            "max_tokens": 5, "temperature": 0.9, "top_p": 0.95, "seed": 3}
    resp = post(server, "/v1/chat/completions", body)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert out["usage"]["completion_tokens"] <= 5
    assert out["usage"]["prompt_tokens"] > 5  # the chat template was applied server-side


def test_concurrent_requests_are_batched(server):
    before = requests.get(server.url + "/v1/stats", headers=AUTH, timeout=30).json()

    def one(i):
        return post(server, "/v1/completions", {"prompt": f"Number {i}:", "max_tokens": 4, "temperature": 0})

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(one, range(8)))
    assert all(r.status_code == 200 for r in responses)
    after = requests.get(server.url + "/v1/stats", headers=AUTH, timeout=30).json()
    new_batches = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    assert after["requests"] - before["requests"] == 8
    assert max(size for size, count in new_batches.items() if count > 0) > 1


@pytest.mark.parametrize(
    ("path", "kwargs", "status"),
    [
        ("/v1/completions", {"data": b"{not json"}, 400),
        ("/v1/completions", {"body": {"max_tokens": 4}}, 400),  # no prompt
        ("/v1/chat/completions", {"body": {"messages": [{"role": "wizard", "content": "x"}]}}, 400),
        ("/v1/chat/completions", {"body": {"messages": "hello"}}, 400),
        ("/v1/completions", {"body": {"prompt": "hi", "temperature": -1}}, 400),
        ("/v1/completions", {"body": {"prompt": "hi", "n": 3}}, 400),
        ("/v1/completions", {"body": {"prompt": ""}}, 400),  # zero tokens
        ("/v1/completions", {"body": {"prompt": "hi", "model": "gpt-9"}}, 404),
        ("/v1/completions", {"body": {"prompt": "hi"}, "headers": {}}, 401),
        ("/v1/completions", {"body": {"prompt": "hi"}, "headers": {"Authorization": "Bearer wrong"}}, 401),
        # oversize: too many max_tokens, too many prompt tokens, too many bytes
        ("/v1/completions", {"body": {"prompt": "hi", "max_tokens": 10_000}}, 400),
        ("/v1/completions", {"body": {"prompt": "fox " * 500, "max_tokens": 4}}, 400),
        ("/v1/completions", {"body": {"prompt": "x" * 30_000}}, 413),
    ],
)
def test_bad_requests_get_json_errors(server, path, kwargs, status):
    body = kwargs.get("body")
    resp = post(server, path, body, data=kwargs.get("data"), headers=kwargs.get("headers", AUTH))
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["message"] and error["code"] == status


def test_api_key_guards_every_api_route(server):
    assert requests.get(server.url + "/v1/models", timeout=30).status_code == 401
    assert requests.get(server.url + "/v1/stats", timeout=30).status_code == 401
    assert requests.get(server.url + "/health", timeout=30).status_code == 200


def test_replica_survives_bad_input(server):
    for payload in (b"\xff\xfe garbage", json.dumps([1, 2, 3]).encode(), b"null"):
        assert post(server, "/v1/chat/completions", data=payload).status_code == 400
    resp = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "still there?"}],
                                                 "max_tokens": 3, "temperature": 0})
    assert resp.status_code == 200


def test_score_endpoint(server):
    resp = post(server, "/v1/score", {"messages": [{"role": "user", "content": "Capital of France?"}],
                                      "continuation": "Paris"})
    assert resp.status_code == 200
    assert resp.json()["tokens"] >= 1 and resp.json()["logprob"] < 0
    assert post(server, "/v1/score", {"continuation": "x"}).status_code == 400


def test_openai_client_streams_chat_and_completions(server):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    messages = [{"role": "user", "content": "Hello there"}]
    whole = client.chat.completions.create(model=server.model_id, messages=messages, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=server.model_id, messages=messages, max_tokens=12,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # token by token
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])

    plain = list(client.completions.create(model=server.model_id, prompt="The quick brown fox", max_tokens=6,
                                           temperature=0, stream=True))
    ref = client.completions.create(model=server.model_id, prompt="The quick brown fox", max_tokens=6, temperature=0)
    assert "".join(c.choices[0].text for c in plain) == ref.choices[0].text
    assert plain[-1].choices[0].finish_reason == ref.choices[0].finish_reason


def test_stream_errors_before_the_first_byte_are_json(server):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(BadRequestError, match="max_tokens"):
        client.completions.create(model=server.model_id, prompt="hi", max_tokens=10_000, stream=True)
    resp = post(server, "/v1/completions", {"prompt": ["a", "b"], "stream": True})
    assert resp.status_code == 400 and "single prompt" in resp.json()["error"]["message"]


def test_client_disconnecting_mid_stream_stops_generation_and_replica_keeps_serving(server):
    import time

    def stats():
        return requests.get(server.url + "/v1/stats", headers=AUTH, timeout=30).json()

    before = stats()
    body = {"messages": [{"role": "user", "content": "The quick brown fox"}], "max_tokens": 1800,
            "temperature": 0, "stream": True}  # greedy: this prompt runs the full 1800 tokens (seconds)
    with requests.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, stream=True, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        first = [next(lines) for _ in range(3)]
        assert first[0].startswith(b"data: {")
    # the connection is closed: Serve cancels the request and the replica stops generating
    deadline = time.monotonic() + 60
    while stats()["streams_cancelled"] == before["streams_cancelled"] and time.monotonic() < deadline:
        time.sleep(0.2)
    after = stats()
    assert after["streams_cancelled"] == before["streams_cancelled"] + 1
    assert after["streams_completed"] == before["streams_completed"]
    resp = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "still there?"}],
                                                 "max_tokens": 3, "temperature": 0})
    assert resp.status_code == 200
