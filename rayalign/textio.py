"""Decoding text files the way people save them: with or without a byte-order mark.

Excel, Notepad and many Windows tools start UTF-8 files with a byte-order mark (BOM,
``EF BB BF``) and "Unicode text" exports are UTF-16 with a BOM. Decoded naively, the mark
becomes a ``\\ufeff`` glued to the first JSON line or the first CSV header (``\\ufeffprompt``).
Every text input rayalign reads (preference files, benchmark and label files, configs and
job specs, prompt templates) goes through :func:`decode_text` / :func:`read_text`, which
drop a leading BOM and decode UTF-16 files that announce themselves with one.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any

from rayalign.errors import UserError

#: Leading marks and the codec of what follows (UTF-32 before UTF-16: FF FE 00 00 starts with FF FE).
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def utf8_without_bom(data: bytes) -> bytes:
    """``data`` as UTF-8 bytes without a leading BOM (UTF-16/32 with a BOM are transcoded).

    Bytes without a BOM are returned unchanged (assumed UTF-8; invalid bytes stay for the
    caller to report). Raises ``UnicodeDecodeError`` only for a UTF-16/32 file whose body
    does not decode.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            body = data[len(bom) :]
            return body if codec == "utf-8" else body.decode(codec).encode("utf-8")
    return data


def decode_text(data: bytes, errors: str = "strict") -> str:
    """Bytes of a text file -> ``str``, the BOM (if any) removed; UTF-8 unless a BOM says otherwise."""
    return utf8_without_bom(data).decode("utf-8", errors=errors)


def read_text(path: str | Path, errors: str = "strict") -> str:
    """A text file's content (newlines kept as written), without a leading BOM."""
    return decode_text(Path(path).read_bytes(), errors)


def csv_records(text: str, delimiter: str = ",", shown: str = "<text>"):
    """``(line, row, extra)`` for each record of CSV text (already decoded), read strictly:
    ``line`` is where the record starts, ``row`` is keyed by the header, ``extra`` holds the
    non-empty cells beyond the header (empty ones, a trailing delimiter, are dropped). A quote
    never closed, or text after a closing quote, raises :class:`UserError` naming ``shown``
    and the line: Python's lenient reader would read an unclosed quote as one cell to the
    end of the file. The one strict CSV reader (preference files, benchmarks, labels)."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    line = 1  # where the record being read starts (1 = the header)
    try:
        if reader.fieldnames is None:
            return
        line = reader.line_num + 1
        for row in reader:
            extra = [cell for cell in row.pop(None, None) or [] if str(cell).strip()]  # type: ignore[call-overload]
            yield line, row, extra
            line = reader.line_num + 1
    except csv.Error as exc:
        where = "the header (line 1)" if line == 1 else f"the record starting on line {line}"
        if "unexpected end of data" in str(exc):
            problem = "a quoted field opened there is never closed, so the rest of the file would be one cell"
        else:
            problem = f"malformed quoting ({exc})"
        raise UserError(
            f"{shown}: {where}: {problem}; close the quote, or write a quote inside a quoted "
            'field as two ("")'
        ) from exc


def csv_dict_rows(text: str, delimiter: str = ",", shown: str = "<text>") -> list[dict[str, str]]:
    """CSV text as rows keyed by the header (:func:`csv_records`); a row with more non-empty
    cells than the header raises :class:`UserError` naming the line."""
    rows = []
    for line, row, extra in csv_records(text, delimiter, shown):
        if extra:
            raise UserError(f"{shown}: line {line}: {len(extra)} more cell(s) than the header names")
        rows.append(row)
    return rows


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a small table file, as dicts: the one reader of JSONL/CSV row files
    (benchmarks, judge-calibration labels).

    ``.jsonl``/``.json``: one JSON object per line, or one JSON array of objects;
    ``.csv``/``.tsv``: rows keyed by the header; ``.parquet``. Text goes through
    :func:`read_text` (BOMs handled). Raises :class:`UserError` naming the file (and the
    row, numbered from 1) for a missing file, text that is not UTF-8, a line that is not
    JSON, a row that is not an object, or another extension.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise UserError(f"{path}: unsupported file type (use .csv, .tsv, .json, .jsonl or .parquet)")
    try:
        text = read_text(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc})") from exc
    if suffix in (".csv", ".tsv"):
        return csv_dict_rows(text, delimiter="\t" if suffix == ".tsv" else ",", shown=str(path))
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from exc
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON array of objects")
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: row {number}: not valid JSON ({exc.msg})") from exc
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {number}: expected a JSON object")
    return rows
