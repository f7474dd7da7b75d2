"""rayalign.atomic: a target is the old file or the new one, never half of one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayalign.atomic import atomic_path, write_json, write_jsonl, write_text


def test_writes_create_folders_and_leave_no_temporary_files(tmp_path: Path):
    target = tmp_path / "a" / "b" / "out.json"
    assert write_json(target, {"x": 1}, sort_keys=True) == target
    assert json.loads(target.read_text()) == {"x": 1}
    write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"b": Path("p")}], fsync=True)
    assert (tmp_path / "rows.jsonl").read_text().splitlines() == ['{"a": 1}', '{"b": "p"}']
    write_text(target, "replaced")
    assert target.read_text() == "replaced"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path: Path):
    target = tmp_path / "state.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
