"""Every adapter on real rows (../shared/data) or the published schemas' shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rayalign.config import DataSource
from rayalign.data.formats import AdapterOptions, detect_format, resolve_format
from rayalign.data.readers import first_columns, iter_source_batches, resolve_source
from rayalign.data.schema import prompt_messages
from rayalign.data.validate import adapt_and_validate, rejected_rows, valid_rows
from rayalign.errors import UserError


def batch_of(rows: list[dict]) -> dict[str, np.ndarray]:
    keys = dict.fromkeys(k for r in rows for k in r)
    out = {}
    for k in keys:
        col = np.empty(len(rows), dtype=object)
        col[:] = [r.get(k) for r in rows]
        out[k] = col
    out["_file"] = np.full(len(rows), "mem.jsonl", dtype=object)
    out["_row"] = np.arange(len(rows))
    out["_unparseable"] = np.full(len(rows), None, dtype=object)
    return out


def run(rows: list[dict], fmt: str = "auto", **options):
    opts = AdapterOptions(**options)
    batch = batch_of(rows)
    adapter = resolve_format(fmt, [k for k in batch if not k.startswith("_")], opts, "mem.jsonl")
    table = adapt_and_validate(batch, adapter, opts, "mem")
    return adapter.name, valid_rows(table).to_pylist(), rejected_rows(table).to_pylist()


def pku_rows(shared_data) -> list[dict]:
    path = shared_data / "pku_saferlhf" / "pku_saferlhf_alpaca7b_test_sample.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pku_saferlhf_real_rows_helpfulness_order(shared_data):
    rows = pku_rows(shared_data)
    name, valid, rejects = run(rows)
    assert name == "pku_saferlhf" and not rejects and len(valid) == 2
    explosives = valid[1]
    assert explosives["prompt"].startswith("Where can I find information on how to build")
    # better_response_id == 1: response_1 is chosen and it is the safe one.
    assert explosives["chosen"] == rows[1]["response_1"]
    assert explosives["chosen_safe"] is True and explosives["rejected_safe"] is False


def test_pku_saferlhf_preference_option_changes_the_order(shared_data):
    row = dict(pku_rows(shared_data)[1], better_response_id=0)  # helpfulness prefers the unsafe one
    _, helpful, _ = run([row], preference="helpfulness")
    _, safer, _ = run([row], preference="safety")
    assert helpful[0]["chosen"] == row["response_0"] and helpful[0]["chosen_safe"] is False
    assert safer[0]["chosen"] == row["response_1"] and safer[0]["chosen_safe"] is True


def test_pku_invalid_preference_names_the_original_column(shared_data):
    row = dict(pku_rows(shared_data)[0], better_response_id=2)
    _, valid, rejects = run([row])
    assert not valid and rejects[0]["reason"] == "invalid_preference"
    assert rejects[0]["field"] == "better_response_id"
    row = dict(pku_rows(shared_data)[0], is_response_1_safe="maybe")
    _, _, rejects = run([row])  # better_response_id == 1 → chosen_safe comes from response_1
    assert (rejects[0]["reason"], rejects[0]["field"]) == (
        "non_boolean_label",
        "is_response_1_safe",
    )


def test_safe_unsafe_pairs_real_file(shared_data):
    source = DataSource(path=str(shared_data / "pku_saferlhf" / "pku_seferlhf_realign_dpo_5k.json"))
    resolved = resolve_source(source)
    fmt = resolve_format("auto", first_columns(resolved), AdapterOptions(), source.path)
    assert fmt.name == "safe_unsafe_pairs"
    tables = [
        adapt_and_validate(b, fmt, AdapterOptions(), "realign")
        for b in iter_source_batches(resolved)
    ]
    valid = [row for t in tables for row in valid_rows(t).to_pylist()]
    assert len(valid) == 5135 and sum(rejected_rows(t).num_rows for t in tables) == 0
    assert all(r["chosen_safe"] and not r["rejected_safe"] for r in valid)
    raw = json.loads(Path(source.path).read_text())[0]
    assert valid[0]["chosen"] == raw["response"][0] and valid[0]["rejected"] == raw["response"][1]
    assert len({r["id"] for r in valid}) == 3590  # the file repeats pairs: ids are content hashes


def test_trl_standard_with_safety_columns_and_all_safe():
    rows = [
        {
            "prompt": "Hi",
            "chosen": "Hello!",
            "rejected": "Go away",
            "chosen_safe": True,
            "rejected_safe": 0,
        }
    ]
    name, valid, _ = run(rows)
    assert name == "trl" and valid[0]["rejected_safe"] is False
    plain = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away"}]
    with pytest.raises(UserError, match="all_safe"):
        run(plain)
    _, valid, _ = run(plain, all_safe=True)
    assert valid[0]["chosen_safe"] and valid[0]["rejected_safe"]


def test_trl_conversational_implicit_and_explicit_prompt():
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Name a colour."}
    rows = [
        {
            "chosen": [system, user, {"role": "assistant", "content": "Blue."}],
            "rejected": [system, user, {"role": "assistant", "content": "No."}],
            "is_chosen_safe": True,
            "is_rejected_safe": True,
        },
        {
            "prompt": [user],
            "chosen": [{"role": "assistant", "content": "Red."}],
            "rejected": [{"role": "assistant", "content": "Meh."}],
            "is_chosen_safe": True,
            "is_rejected_safe": True,
        },
        {
            "chosen": [user, {"role": "assistant", "content": "A"}],
            "rejected": [
                {"role": "user", "content": "other"},
                {"role": "assistant", "content": "B"},
            ],
            "is_chosen_safe": True,
            "is_rejected_safe": True,
        },
    ]
    _, valid, rejects = run(rows)
    assert prompt_messages(valid[0]["prompt"]) == [system, user] and valid[0]["chosen"] == "Blue."
    assert valid[1]["prompt"] == "Name a colour."  # one user turn is stored as plain text
    assert rejects[0]["reason"] == "inconsistent_prompt" and rejects[0]["row"] == 2


def test_ultrafeedback_binarized_schema_is_all_safe():
    prompt = "Write a haiku about rain."
    row = {
        "prompt": prompt,
        "prompt_id": "abc123",
        "chosen": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "Soft rain on tin roofs"},
        ],
        "rejected": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "Rain is wet."},
        ],
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "Soft rain on tin roofs"},
        ],
        "score_chosen": 8.5,
        "score_rejected": 4.0,
    }
    name, valid, _ = run([row])
    assert name == "ultrafeedback_binarized"
    assert valid[0]["prompt"] == prompt and valid[0]["chosen"] == "Soft rain on tin roofs"
    assert valid[0]["chosen_safe"] and valid[0]["rejected_safe"]


def test_bfpo_redteam_json():
    rows = [
        {
            "prompt": "How do I pick a lock?",
            "modeloutput1": "I can't help with that.",
            "modeloutput2": "Sure, first...",
            "better_modelout": 2,
            "is_modelout1_safe": True,
            "is_modelout2_safe": False,
        },
        {
            "prompt": "Tell me a joke",
            "modeloutput1": "Why did...",
            "modeloutput2": "No.",
            "better_modelout": "modeloutput1",
            "is_modelout1_safe": True,
            "is_modelout2_safe": True,
        },
        {
            "prompt": "x",
            "modeloutput1": "a",
            "modeloutput2": "b",
            "better_modelout": 3,
            "is_modelout1_safe": True,
            "is_modelout2_safe": True,
        },
    ]
    name, valid, rejects = run(rows)
    assert name == "bfpo_redteam"
    assert valid[0]["chosen"] == "Sure, first..." and valid[0]["chosen_safe"] is False
    assert valid[1]["chosen"] == "Why did..."
    assert (rejects[0]["reason"], rejects[0]["field"]) == ("invalid_preference", "better_modelout")


def test_detect_format_error_lists_columns_and_formats():
    with pytest.raises(UserError) as info:
        detect_format(["question", "answer"])
    message = str(info.value)
    assert "['answer', 'question']" in message and "pku_saferlhf" in message and "trl" in message
    with pytest.raises(UserError, match="unknown format 'nope'"):
        resolve_format("nope", ["prompt"], AdapterOptions(), "x.jsonl")
