"""rayalign.textio.read_rows: the one reader of JSONL/CSV row files (benchmarks, labels)."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from rayalign.errors import UserError
from rayalign.textio import read_rows


def test_every_format_reads_to_the_same_rows(tmp_path: Path):
    rows = [{"prompt": "a", "label": "1"}, {"prompt": "b", "label": "0"}]
    files = {
        "r.jsonl": codecs.BOM_UTF8 + b'{"prompt": "a", "label": "1"}\n\n{"prompt": "b", "label": "0"}\n',
        "r.json": b'[{"prompt": "a", "label": "1"}, {"prompt": "b", "label": "0"}]',
        "r.csv": codecs.BOM_UTF8 + b"prompt,label\na,1\nb,0\n",
        "r.tsv": b"prompt\tlabel\na\t1\nb\t0\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert read_rows(tmp_path / name) == rows, name


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [("bad.jsonl", b'{"a": 1}\nnot json\n', r"bad.jsonl: row 2: not valid JSON"),
     ("list.jsonl", b'{"a": 1}\n[1]\n', r"list.jsonl: row 2: expected a JSON object"),
     ("rows.txt", b"a\n", r"rows.txt: unsupported file type"),
     ("latin.csv", b"prompt\ncaf\xe9\n", r"latin.csv: not UTF-8 text")],
)
def test_errors_name_the_file_and_row(tmp_path: Path, name: str, data: bytes, message: str):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError, match=message):
        read_rows(tmp_path / name)
    with pytest.raises(UserError, match=r"missing\.csv: file not found"):
        read_rows(tmp_path / "missing.csv")
