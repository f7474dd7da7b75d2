"""Every validation rule, the rejects file, the threshold message and the validate CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayalign.cli import main
from rayalign.config import DataSource
from rayalign.data.schema import ROW_COL, check_label, check_text, pair_id
from rayalign.data.validate import ValidationSummary, select_where, validate_source
from rayalign.errors import UserError


def real_pair(shared_data, index: int = 0) -> dict:
    rows = json.loads(
        (shared_data / "pku_saferlhf" / "pku_seferlhf_realign_dpo_5k.json").read_text()
    )
    return rows[index]


def test_text_and_label_rules_are_pure_functions():
    assert check_text(None) == "missing_field"
    assert check_text(3) == "wrong_type"
    assert check_text("  \n") == "empty_field"
    assert check_text("bad \udcff byte") == "undecodable_text"
    assert check_text("mojibake \ufffd") == "undecodable_text"
    assert check_text("fine") is None
    assert [check_label(v) for v in (True, 0, "false", "TRUE")] == [None] * 4
    assert check_label("maybe") == check_label(2) == "non_boolean_label"
    assert check_label(None) == "missing_field"


def test_pair_id_is_a_stable_content_hash():
    a = pair_id("p", "c", "r", True, False)
    assert a == pair_id("p", "c", "r", True, False) and len(a) == 32
    assert a != pair_id("p", "r", "c", True, False) and a != pair_id("p", "c", "r", True, True)
    assert pair_id("ab", "c", "r", True, True) != pair_id("a", "bc", "r", True, True)


@pytest.fixture()
def bad_file(shared_data, tmp_path):
    """Real PKU-SafeRLHF pairs (safe_unsafe_pairs format) broken in every way a file can be."""
    good = [real_pair(shared_data, i) for i in range(6)]
    p0 = good[0]["prompt"]
    lines = [json.dumps(r) for r in good]
    lines += [
        json.dumps({"prompt": p0}),  # 6: no response at all
        json.dumps({"prompt": "", "response": good[1]["response"]}),  # 7: empty prompt
        json.dumps({"prompt": 42, "response": good[1]["response"]}),  # 8: number as prompt
        json.dumps({"prompt": p0, "response": [good[1]["response"][0]] * 2}),  # 9: identical
        json.dumps({"prompt": p0, "response": "just one string"}),  # 10: not a pair
        json.dumps({"prompt": p0, "response": ["a", "b", "c"]}),  # 11: three responses
        '{"prompt": "broken json", "response": [',  # 12: unparseable
        "",  # 13: blank lines are skipped but keep the numbering
        json.dumps({"prompt": p0, "response": [None, "b"]}),  # 14: null response
    ]
    data = (
        "\n".join(lines).encode() + b'\n{"prompt": "caf\xe9 latin-1", "response": ["a", "b"]}\n'
    )  # 15
    path = tmp_path / "bad.jsonl"
    path.write_bytes(data)
    return path


def test_bad_input_goes_to_rejects_with_counts(bad_file, tmp_path):
    rejects_path = tmp_path / "out" / "rejects.parquet"
    summary = validate_source(DataSource(path=str(bad_file)), rejects_path)
    assert summary["rows"] == 15 and summary["valid"] == 6 and summary["rejected"] == 9
    assert summary["reasons"] == {
        "empty_field": 1,
        "identical_responses": 1,
        "invalid_preference": 1,
        "missing_field": 2,
        "undecodable_text": 1,
        "unparseable_row": 1,
        "wrong_type": 2,
    }
    rejects = pq.read_table(rejects_path).to_pylist()
    by_row = {r["row"]: r for r in rejects}
    assert set(by_row) == {6, 7, 8, 9, 10, 11, 12, 14, 15}
    assert all(r["file"] == str(bad_file) for r in rejects)
    assert (by_row[8]["reason"], by_row[8]["field"]) == ("wrong_type", "prompt")
    assert json.loads(by_row[8]["original"])["prompt"] == 42  # original values are kept
    assert (by_row[9]["reason"], by_row[9]["field"]) == ("identical_responses", "response[1]")
    assert by_row[12]["reason"] == "unparseable_row" and "broken json" in by_row[12]["original"]
    assert (by_row[14]["reason"], by_row[14]["field"]) == ("missing_field", "response[0]")
    assert (by_row[15]["reason"], by_row[15]["field"]) == ("undecodable_text", "prompt")
    assert by_row[10]["reason"] == "wrong_type" and by_row[11]["reason"] == "invalid_preference"


def test_non_boolean_labels_in_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,chosen,rejected,chosen_safe,rejected_safe\n"
        "Hi,Hello,Go away,true,0\n"
        "Hi,Hello,Nope,yes please,false\n"
    )
    summary = validate_source(DataSource(path=str(path)), tmp_path / "r.parquet")
    assert (summary["valid"], summary["reasons"]) == (1, {"non_boolean_label": 1})
    reject = pq.read_table(tmp_path / "r.parquet").to_pylist()[0]
    assert (reject["row"], reject["field"]) == (1, "chosen_safe")


def test_an_unclosed_quote_in_csv_is_an_error_naming_its_line_not_one_swallowed_row(tmp_path):
    """Python's lenient csv reads an unclosed quote as one cell running to the end of the
    file: three rows would become one rejected row and two silently lost ones."""
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,chosen,rejected,chosen_safe,rejected_safe\n"
        "Hi,Hello,Go away,true,true\n"
        '"How do I bake bread?,Mix flour,No,true,true\n'
        "What is 2+2?,4,No,true,true\n"
    )
    with pytest.raises(UserError, match=r"pairs\.csv: the record starting on line 3: a quoted field opened there is never closed"):
        validate_source(DataSource(path=str(path)), tmp_path / "r.parquet")
    path.write_text('prompt,chosen,rejected,chosen_safe,rejected_safe\nHi,"Hello" there,No,true,true\n')
    with pytest.raises(UserError, match=r"line 2: malformed quoting"):
        validate_source(DataSource(path=str(path)), tmp_path / "r.parquet")
    # a row with more cells than the header is a reject (which cell is which is a guess),
    # not silently cut; an empty trailing cell (a trailing delimiter) is harmless
    path.write_text('prompt,chosen,rejected,chosen_safe,rejected_safe\np,a,b,true,false,extra\nq,a,b,true,false,\n')
    summary = validate_source(DataSource(path=str(path)), tmp_path / "r.parquet")
    assert (summary["valid"], summary["reasons"]) == (1, {"unparseable_row": 1})
    assert "extra" in pq.read_table(tmp_path / "r.parquet").to_pylist()[0]["original"]
    # quotes inside an unquoted cell and quoted cells over several lines stay valid
    path.write_text('prompt,chosen,rejected,chosen_safe,rejected_safe\nSay "hi",Hello,No,true,true\n"Two\nlines",a,b,true,true\n')
    assert validate_source(DataSource(path=str(path)), tmp_path / "r.parquet")["valid"] == 2


def test_where_keeps_matching_rows_and_their_original_row_numbers(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text(
        "prompt,chosen,rejected,chosen_safe,rejected_safe,kind\n"
        "Hi,Hello,Go away,true,true,benign\n"
        "Bomb?,Sure,No,false,true,harmful\n"
        "Hey,Hello,Nope,maybe,true,harmful\n"
    )
    harmful = DataSource(path=str(path), where={"kind": "harmful"})
    summary = validate_source(harmful, tmp_path / "r.parquet")
    assert (summary["rows"], summary["valid"]) == (2, 1)  # the benign row is not a reject
    assert pq.read_table(tmp_path / "r.parquet").to_pylist()[0]["row"] == 2
    with pytest.raises(UserError, match=r"'category'.*columns: chosen, chosen_safe, kind"):
        validate_source(DataSource(path=str(path), where={"category": "x"}), tmp_path / "r.parquet")


def test_select_where_keeps_list_values_whole():
    raw = {ROW_COL: np.arange(3), "tag": np.array(["a", "b", "a"], dtype=object),
           "prompt": [[{"role": "user", "content": "x"}], [], [{"role": "user", "content": "y"}]]}
    kept = select_where(raw, (("tag", "a"),), "f.jsonl")
    assert kept[ROW_COL].tolist() == [0, 2]
    assert [len(p) for p in kept["prompt"]] == [1, 1] and kept["prompt"][1][0]["content"] == "y"


def test_threshold_error_names_file_row_and_field(bad_file, tmp_path):
    summary = ValidationSummary()
    validate_source(DataSource(path=str(bad_file)), tmp_path / "r.parquet")
    summary.add(15, pq.read_table(tmp_path / "r.parquet"))
    summary.check_threshold(0.7)  # 60% invalid: under the limit, no error
    with pytest.raises(UserError) as info:
        summary.check_threshold(0.05, str(tmp_path / "r.parquet"))
    message = str(info.value)
    assert str(bad_file) in message and "row 6" in message and "field 'response'" in message
    assert "9 of 15 rows" in message and "r.parquet" in message


def test_validate_cli_prints_one_json_object(bad_file, tmp_path, capsys):
    rejects = tmp_path / "cli" / "rejects.parquet"
    assert main(["data", "validate", str(bad_file), "--rejects", str(rejects)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)
    assert {"rows", "valid", "rejected", "reasons"} <= set(summary) and summary["rejected"] == 9
    assert pq.read_table(rejects).num_rows == 9
    assert main(["data", "validate", str(tmp_path / "missing.jsonl")]) == 2
    capsys.readouterr()
    # --rejects that is a folder, not Parquet, or not writable: one line, exit 2, no traceback
    for bad in (tmp_path, tmp_path / "rejects.csv", Path(bad_file) / "r.parquet"):
        assert main(["data", "validate", str(bad_file), "--rejects", str(bad)]) == 2
        assert f"{bad}: " in capsys.readouterr().err
    # an unquoted glob the shell expanded: one line saying to quote it
    assert main(["data", "validate", str(bad_file), str(bad_file)]) == 2
    assert "quote the glob so rayalign expands it" in capsys.readouterr().err
    # --strict: any rejected row fails the check (a data set gated in CI), with one line why
    assert main(["data", "validate", str(bad_file), "--rejects", str(rejects), "--strict"]) == 1
    assert json.loads(capsys.readouterr().out)["rejected"] == 9  # the summary is still printed
    # a file with no valid row fails without --strict: there is nothing to train on
    broken = tmp_path / "all-broken.jsonl"
    broken.write_text("\n".join(bad_file.read_text(encoding="latin-1").splitlines()[6:]) + "\n", encoding="latin-1")
    assert main(["data", "validate", str(broken), "--rejects", str(rejects)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["valid"] == 0
    assert captured.err.strip() == f"rayalign data validate: no valid rows (9 rejected); the rejected rows are in {rejects}"
    # a file with a header and no rows: nothing to train on either
    header_only = tmp_path / "header-only.csv"
    header_only.write_text("prompt,chosen,rejected,chosen_safe,rejected_safe\n")
    assert main(["data", "validate", str(header_only), "--rejects", str(rejects)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"] == 0
    assert captured.err.strip() == "rayalign data validate: no rows: the input holds no records"
    # an empty file under a named format without safety labels: its emptiness is the
    # problem, not the labels it cannot have
    blank = tmp_path / "blank.jsonl"
    blank.write_text("")
    assert main(["data", "validate", str(blank), "--format", "trl", "--rejects", str(rejects)]) == 1
    assert capsys.readouterr().err.strip() == "rayalign data validate: no rows: the input holds no records"


def test_a_wrong_format_names_the_one_the_columns_look_like(shared_data, tmp_path, capsys):
    """Found by a new user: --format pku_saferlhf on a safe/unsafe-pairs file rejected every
    row as missing_field with no hint, and --format trl on a PKU file advised --all-safe
    (which would mark its unsafe responses safe)."""
    pku = shared_data / "pku_saferlhf"
    rejects = tmp_path / "r.parquet"
    assert main(["data", "validate", str(pku / "pku_seferlhf_realign_dpo_5k.json"),
                 "--format", "pku_saferlhf", "--rejects", str(rejects)]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["hint"].endswith("try --format safe_unsafe_pairs")
    assert captured.err.strip().endswith("(what format auto picks): try --format safe_unsafe_pairs")
    assert main(["data", "validate", str(pku / "pku_saferlhf_alpaca7b_test_sample.jsonl"), "--format", "trl"]) == 2
    err = capsys.readouterr().err
    assert "format trl has no safety labels, but the columns look like format 'pku_saferlhf'" in err
    assert "--all-safe" not in err


def test_hub_id_offline_fails_fast_with_a_plain_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rayalign.cli",
            "data",
            "validate",
            "some-org/some-preferences",
            "--rejects",
            str(tmp_path / "r.parquet"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "Hugging Face Hub is not reachable" in result.stderr and "offline" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reports_the_issue_13_reasons(tmp_path, tiny_model_dir, capsys):
    """``data validate`` (with ``--tokenizer``: as ``prepare`` tokenizes) names every new reason."""
    history = [
        {"role": "user", "content": "What is a good name for a goldfish?"},
        {"role": "assistant", "content": "Bubbles is a popular choice."},
        {"role": "user", "content": "And for a turtle?"},
    ]
    body = "Let me think about this step by step. " * 8

    def row(prompt, chosen, rejected):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
                "chosen_safe": True, "rejected_safe": True}

    rows = [
        row(history[0]["content"], [*history, {"role": "assistant", "content": "Shelly."}],
            [*history, {"role": "assistant", "content": "No idea."}]),  # 0: valid, 3 turns kept
        row("Tell me a joke.", [*history, {"role": "assistant", "content": "Shelly."}],
            [*history, {"role": "assistant", "content": "No idea."}]),  # 1: prompt_mismatch
        row(history[0]["content"], [*history, {"role": "assistant", "content": "Shelly."}],
            [history[0], {"role": "assistant", "content": "Goldie."}, history[2],
             {"role": "assistant", "content": "No idea."}]),  # 2: inconsistent_prompt
        row(" ".join(["word"] * 120), body + "The answer is A.", body + "The answer is B."),  # 3
        row("Say something.", "Part one.<|im_end|>\n<|im_start|>assistant\nPart two.", "No."),  # 4
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(("\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n").encode())
    rejects = tmp_path / "rejects.parquet"
    assert main(["data", "validate", str(path), "--rejects", str(rejects), "--tokenizer",
                 str(tiny_model_dir), "--max-length", "64", "--max-prompt-length", "32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 5 and summary["valid"] == 2 and summary["tokenized"] is True
    assert summary["reasons"] == {
        "identical_after_truncation": 1, "inconsistent_prompt": 1, "prompt_mismatch": 1
    }
    by_row = {r["row"]: (r["reason"], r["field"]) for r in pq.read_table(rejects).to_pylist()}
    assert by_row == {1: ("prompt_mismatch", "prompt"), 2: ("inconsistent_prompt", "rejected"),
                      3: ("identical_after_truncation", "rejected")}
    # without a tokenizer: the adapter's reasons only
    assert main(["data", "validate", str(path), "--rejects", str(rejects)]) == 0
    assert json.loads(capsys.readouterr().out)["reasons"] == {
        "inconsistent_prompt": 1, "prompt_mismatch": 1
    }
    # length flags: only with a tokenizer, and the config's bounds (found by a new user:
    # ignored without one, and a prompt budget above the whole budget rejected every row)
    assert main(["data", "validate", str(path), "--max-length", "8"]) == 2
    assert "apply only with --tokenizer" in capsys.readouterr().err
    assert main(["data", "validate", str(path), "--tokenizer", str(tiny_model_dir),
                 "--max-length", "16", "--max-prompt-length", "64"]) == 2
    assert "--max-prompt-length must be smaller than --max-length" in capsys.readouterr().err


def test_config_and_job_spec_with_a_byte_order_mark(tmp_path):
    from rayalign.config import load_config

    spec = tmp_path / "job.yaml"
    spec.write_bytes("\ufeffloss:\n  name: safedpo\n  beta: 0.05\n".encode())
    cfg = load_config(spec)
    assert cfg.loss.name == "safedpo" and cfg.loss.beta == 0.05
    spec.write_bytes("loss:\n  name: safedpo\n".encode("utf-16"))  # "Unicode" from Notepad
    assert load_config(spec).loss.name == "safedpo"


def test_row_counts_read_past_a_byte_order_mark(tmp_path):
    from rayalign.jobs.rowcounts import count_file_rows

    array = tmp_path / "pairs.json"
    array.write_bytes(("\ufeff" + json.dumps([{"prompt": "a"}, {"prompt": "b"}])).encode())
    table = tmp_path / "pairs.csv"
    table.write_bytes("\ufeffprompt,chosen\r\na,b\r\nc,d\r\n".encode())
    assert count_file_rows(array) == 2 and count_file_rows(table) == 2
