"""The evaluation journal (generations.jsonl) and the error-share check: files only, no Ray."""

from __future__ import annotations

import json

import pytest

from rayalign.errors import UserError
from rayalign.eval.journal import GenerationJournal, make_header, read_journal
from rayalign.eval.runner import check_errors

HEADER = make_header("tiny", {"max_tokens": 8, "temperature": 0.0})


def row(i, error=None, prompt=None):
    return {"id": str(i), "benchmark": "b", "prompt": prompt or f"p{i}", "completion": f"c{i}", "error": error}


def test_appended_batches_are_reused_and_failed_rows_are_not(tmp_path):
    path = tmp_path / "m" / "generations.jsonl"
    journal = GenerationJournal(path, HEADER)
    journal.append([row(0), row(1, error="HTTP 500")])
    journal.append([row(2)])
    again = GenerationJournal(path, HEADER)
    assert again.reusable(row(0))["completion"] == "c0" and again.reusable(row(2)) is not None
    assert again.reusable(row(1)) is None  # failed: generated again
    assert again.reusable(row(0, prompt="another prompt")) is None  # same id, other text
    header, rows = read_journal(path)
    assert header == HEADER and [r["id"] for r in rows] == ["0", "2"]  # rewritten without the failure


def test_a_torn_last_line_is_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "generations.jsonl"
    GenerationJournal(path, HEADER).append([row(0), row(1)])
    with path.open("a") as handle:
        handle.write('{"id": "2", "benchmark": "b", "prom')  # SIGKILL mid-write
    journal = GenerationJournal(path, HEADER)
    assert set(journal.finished) == {("b", "0"), ("b", "1")}
    journal.append([row(2)])
    assert [r["id"] for r in read_journal(path)[1]] == ["0", "1", "2"]


def test_a_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "generations.jsonl"
    path.write_text(json.dumps(HEADER) + "\n{oops\n" + json.dumps(row(0)) + "\n")
    with pytest.raises(UserError, match=r"generations.jsonl, line 2"):
        GenerationJournal(path, HEADER)


def test_other_settings_move_the_old_journal_aside(tmp_path):
    path = tmp_path / "generations.jsonl"
    GenerationJournal(path, HEADER).append([row(0)])
    journal = GenerationJournal(path, make_header("tiny", {"max_tokens": 16, "temperature": 0.0}))
    assert journal.finished == {}
    old = list(tmp_path.glob("generations.jsonl.*.old"))
    assert len(old) == 1 and read_journal(old[0])[1][0]["id"] == "0"  # nothing lost


def test_error_share_above_the_limit_fails_with_the_first_errors():
    rows = [row(0), row(1, error="ConnectionError: refused"), row(2, error="HTTP 503")]
    check_errors("tiny", rows, 0.7)  # 2/3 <= 0.7
    with pytest.raises(UserError, match=r"2 of 3 generations failed.*\n  b/1: ConnectionError: refused"):
        check_errors("tiny", rows, 0.5)
    with pytest.raises(UserError, match="3 of 3"):
        check_errors("tiny", [row(i, error="x") for i in range(3)], 0.99)
