"""Every adapter on real rows (../shared/data) or the published schemas' shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rayalign.config import DataSource
from rayalign.data.formats import (
    AdapterOptions,
    detect_format,
    resolve_format,
    resolve_source_format,
)
from rayalign.data.readers import first_columns, iter_source_batches, resolve_source
from rayalign.data.schema import prompt_messages
from rayalign.data.validate import adapt_and_validate, rejected_rows, valid_rows, validate_source
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


# --------------------------------------------------------------------------- issue 13 (1)

GOLDFISH = "What is a good name for a goldfish?"


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


def _goldfish_row(prompt=GOLDFISH, chosen_history=None, **extra):
    history = [_u(GOLDFISH), _a("Bubbles is a popular choice."), _u("And for a turtle?")]
    return {
        "prompt": prompt,
        "chosen": [*(chosen_history or history), _a("Shelly or Tank both work well.")],
        "rejected": [*history, _a("No idea.")],
        "chosen_safe": True,
        "rejected_safe": True,
        **extra,
    }


def test_multi_turn_rows_keep_every_earlier_turn_as_the_prompt():
    history = [_u(GOLDFISH), _a("Bubbles is a popular choice."), _u("And for a turtle?")]
    rows = [
        _goldfish_row(),  # the row: prompt column = the first user turn
        {k: v for k, v in _goldfish_row().items() if k != "prompt"},  # implicit prompt
        _goldfish_row(prompt=history),  # prompt column = the whole history as messages
        _goldfish_row(prompt=[_u(GOLDFISH)]),  # prompt = the first turns; chosen repeats them
        {  # TRL prompt + multi-turn completions that continue it
            "prompt": [_u(GOLDFISH)],
            "chosen": [_a("Bubbles is a popular choice."), _u("And for a turtle?"), _a("Shelly.")],
            "rejected": [_a("Bubbles is a popular choice."), _u("And for a turtle?"), _a("No.")],
            "chosen_safe": True,
            "rejected_safe": True,
        },
    ]
    _, valid, rejects = run(rows)
    assert rejects == []
    for row in valid:
        assert prompt_messages(row["prompt"]) == history
    assert valid[0]["chosen"] == "Shelly or Tank both work well."
    assert valid[0]["rejected"] == "No idea."


def test_contradicting_prompt_and_differing_histories_are_quarantined():
    rows = [
        _goldfish_row(prompt="Tell me a joke."),  # appears nowhere in the turns
        _goldfish_row(chosen_history=[_u(GOLDFISH), _a("Goldie."), _u("And for a turtle?")]),
        _goldfish_row(prompt=[_u("Another question")]),
    ]
    _, valid, rejects = run(rows)
    assert valid == []
    by_row = {r["row"]: (r["reason"], r["field"]) for r in rejects}
    assert by_row == {
        0: ("prompt_mismatch", "prompt"),
        1: ("inconsistent_prompt", "rejected"),
        2: ("prompt_mismatch", "prompt"),
    }


def test_canonical_multi_turn_record_reads_back_unchanged(tmp_path):
    _, valid, _ = run([_goldfish_row()])
    path = tmp_path / "canonical.jsonl"
    path.write_text(json.dumps(valid[0]) + "\n")
    _, again, _ = run([json.loads(path.read_text())], fmt="canonical")
    assert again[0]["prompt"] == valid[0]["prompt"] and again[0]["id"] == valid[0]["id"]


# --------------------------------------------------------------------------- issue 13 (2)

BOM = "\ufeff"
TWO_ROWS = [
    {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away.", "chosen_safe": True, "rejected_safe": False},
    {"prompt": "Bye", "chosen": "See you!", "rejected": "Finally.", "chosen_safe": True, "rejected_safe": False},
]


def _write_bom_file(path: Path, kind: str) -> None:
    if kind == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in TWO_ROWS)
    elif kind == "json":
        text = json.dumps(TWO_ROWS)
    else:
        sep = "," if kind == "csv" else "\t"
        text = sep.join(TWO_ROWS[0]) + "\r\n" + "".join(
            sep.join(str(v).lower() if isinstance(v, bool) else v for v in r.values()) + "\r\n"
            for r in TWO_ROWS
        )
    path.write_bytes((BOM + text).encode("utf-8"))


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "tsv", "jsonl.gz", "utf16-csv"])
def test_a_byte_order_mark_is_read_away(tmp_path, kind):
    """Issue 13 (2): the same two valid rows with a BOM are two valid rows."""
    import gzip

    base = kind.split(".")[0].removeprefix("utf16-")
    path = tmp_path / f"pairs.{base}"
    _write_bom_file(path, base)
    if kind.endswith(".gz"):
        gz = tmp_path / f"pairs.{kind}"
        gz.write_bytes(gzip.compress(path.read_bytes()))
        path = gz
    if kind.startswith("utf16"):  # Excel's "Unicode text": UTF-16 with its BOM
        path.write_bytes(path.read_bytes().decode("utf-8-sig").encode("utf-16"))
    source = DataSource(path=str(path))
    resolved = resolve_source(source)
    assert first_columns(resolved) == set(TWO_ROWS[0])
    rows = [r for batch in iter_source_batches(resolved) for r in _valid_of(batch)]
    assert [r["prompt"] for r in rows] == ["Hi", "Bye"]
    assert rows[0]["chosen_safe"] is True and rows[0]["rejected_safe"] is False


def _valid_of(batch):
    opts = AdapterOptions()
    table = adapt_and_validate(batch, resolve_format("auto", batch, opts, "f"), opts, "f")
    assert rejected_rows(table).num_rows == 0, rejected_rows(table).to_pylist()
    return valid_rows(table).to_pylist()


def test_a_folder_mixing_formats_is_refused_naming_a_file_of_each(tmp_path, shared_data):
    """Found by a new user: a folder with a PKU-SafeRLHF file and a safe/unsafe-pairs file
    was read with the first file's format, rejecting every row of the second as
    ``missing_field``. Each file is now detected on its own."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    pku = shared_data / "pku_saferlhf" / "pku_saferlhf_alpaca7b_test_sample.jsonl"
    (folder / "a_pku.jsonl").write_bytes(pku.read_bytes())
    (folder / "b_trl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TWO_ROWS))
    with pytest.raises(UserError) as err:
        validate_source(DataSource(path=str(folder)), tmp_path / "rejects.parquet")
    message = str(err.value)
    assert "a_pku.jsonl: pku_saferlhf" in message and "b_trl.jsonl: trl" in message
    assert "separate sources" in message
    # one format named explicitly: read as the user says (rows that do not fit are rejects)
    summary = validate_source(
        DataSource(path=str(folder), format="pku_saferlhf"), tmp_path / "rejects.parquet"
    )
    assert summary["valid"] == 2 and summary["rejected"] == 2


def test_source_format_detection_is_per_file_and_skips_empty_files():
    trl = set(TWO_ROWS[0])
    fmt = resolve_source_format(
        "auto", [("empty.jsonl", set()), ("a.jsonl", trl), ("b.jsonl", trl)],
        AdapterOptions(), "folder",
    )
    assert fmt.name == "trl"
    with pytest.raises(UserError, match=r"empty\.jsonl: no records to detect a format from"):
        resolve_source_format("auto", [("x", set())], AdapterOptions(), "empty.jsonl")
    with pytest.raises(UserError, match=r"b.jsonl: no known preference format"):
        resolve_source_format(
            "auto", [("a.jsonl", trl), ("b.jsonl", {"question", "answer"})],
            AdapterOptions(), "folder",
        )
