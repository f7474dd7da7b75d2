"""Adapt + validate raw batches, and summarise what was rejected (losing nothing).

One function, :func:`adapt_and_validate`, turns a raw batch from a reader into one
Arrow table holding *every* input row: valid rows with their canonical columns, and
rejected rows with the reason, the field and their original values. Ray stages and the
``rayalign data validate`` command both call it; :class:`ValidationSummary` counts the
outcome and enforces ``max_invalid_fraction``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayalign.atomic import atomic_path
from rayalign.data.formats import AdapterOptions, Format
from rayalign.data.readers import UNPARSEABLE_COL
from rayalign.data.schema import (
    FIELD_COL,
    FILE_COL,
    ORIGINAL_COL,
    REASON_COL,
    REJECTS_SCHEMA,
    ROW_COL,
    Batch,
    Rejection,
    canonical_table,
    original_json,
    validate_rows,
)
from rayalign.errors import UserError

SOURCE_INDEX_COL = "_src"

#: Every row after adapt+validate: canonical columns (null on rejected rows) + bookkeeping.
STAGED_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("prompt", pa.string()),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("chosen_safe", pa.bool_()),
        ("rejected_safe", pa.bool_()),
        (SOURCE_INDEX_COL, pa.int32()),
        (FILE_COL, pa.string()),
        (ROW_COL, pa.int64()),
        (REASON_COL, pa.string()),  # "" on valid rows
        (FIELD_COL, pa.string()),
        (ORIGINAL_COL, pa.string()),
    ]
)


def adapt_and_validate(
    raw: Batch, fmt: Format, options: AdapterOptions, source: str, source_index: int = 0
) -> pa.Table:
    """Every row of ``raw`` as a :data:`STAGED_SCHEMA` table (valid and rejected together).

    Rows that ``options.where`` filters out are left out before adapting: they were not
    asked for, so they are neither valid nor rejected.
    """
    raw = select_where(raw, options.where, source)
    n = len(raw[ROW_COL])
    if n == 0:
        return STAGED_SCHEMA.empty_table()
    unparseable = raw[UNPARSEABLE_COL]
    adapted = fmt.adapt(raw, options)
    prior = [
        Rejection("unparseable_row", "") if unparseable[i] is not None else adapted.prior[i]
        for i in range(n)
    ]
    outcome = validate_rows(adapted.content, prior)
    ok = np.fromiter((r is None for r in outcome), dtype=bool, count=n)

    valid = canonical_table(adapted.content, source, ok)
    bad = np.flatnonzero(~ok)
    data_columns = [c for c in raw if not c.startswith("_")]
    originals = []
    for i in bad:
        if unparseable[i] is not None:
            originals.append(json.dumps({"line": unparseable[i]}, ensure_ascii=True))
        else:
            originals.append(original_json({c: _plain(raw[c][i]) for c in data_columns}))
    reject_fields = [
        adapted.original_field(i, outcome[i].field) if outcome[i].field else "" for i in bad
    ]
    n_valid, n_bad = int(ok.sum()), len(bad)
    columns: dict[str, list[Any]] = {
        name: valid[name] + [None] * n_bad
        for name in ("id", "prompt", "chosen", "rejected", "chosen_safe", "rejected_safe")
    }
    columns["source"] = [source] * (n_valid + n_bad)
    columns[SOURCE_INDEX_COL] = [source_index] * (n_valid + n_bad)
    files, rows = raw[FILE_COL], raw[ROW_COL]
    order = np.concatenate([np.flatnonzero(ok), bad])
    columns[FILE_COL] = [files[i] for i in order]
    columns[ROW_COL] = rows[order].tolist()
    columns[REASON_COL] = [""] * n_valid + [outcome[i].reason for i in bad]
    columns[FIELD_COL] = [""] * n_valid + reject_fields
    columns[ORIGINAL_COL] = [""] * n_valid + originals
    return pa.table(columns, schema=STAGED_SCHEMA)


def select_where(raw: Batch, where: tuple[tuple[str, Any], ...], source: str) -> Batch:
    """The rows of ``raw`` whose original columns equal every value in ``where``."""
    if not where:
        return raw
    n = len(raw[ROW_COL])
    keep = np.ones(n, dtype=bool)
    for column, wanted in where:
        if column not in raw:
            known = sorted(c for c in raw if not c.startswith("_"))
            raise UserError(
                f"{source}: where names column {column!r}, which the rows do not have "
                f"(columns: {', '.join(known)})"
            )
        values = raw[column]
        keep &= np.fromiter((_plain(v) == wanted for v in values), dtype=bool, count=n)
    return {name: _take(values, keep) for name, values in raw.items()}


def _take(values: Any, keep: np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values[keep]
    out = np.empty(int(keep.sum()), dtype=object)  # lists of lists stay one object per row
    out[:] = [v for v, k in zip(values, keep, strict=True) if k]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def valid_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.equal(table[REASON_COL], ""))


def rejected_rows(table: pa.Table) -> pa.Table:
    """Rejected rows in the rejects-file layout (:data:`REJECTS_SCHEMA`)."""
    bad = table.filter(pc.not_equal(table[REASON_COL], ""))
    return pa.table(
        {
            "source": bad["source"],
            "file": bad[FILE_COL],
            "row": bad[ROW_COL],
            "field": bad[FIELD_COL],
            "reason": bad[REASON_COL],
            "original": bad[ORIGINAL_COL],
        },
        schema=REJECTS_SCHEMA,
    )


@dataclass
class ValidationSummary:
    """Counts of one validation pass, and the first rejected row seen in each file."""

    rows: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    per_file: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def valid(self) -> int:
        return self.rows - self.rejected

    def add(self, rows: int, rejects: pa.Table) -> None:
        """Count a batch of ``rows`` rows of which ``rejects`` (REJECTS_SCHEMA) were rejected."""
        self.rows += rows
        self.rejected += rejects.num_rows
        for reason, file, row, fld in zip(
            rejects["reason"].to_pylist(),
            rejects["file"].to_pylist(),
            rejects["row"].to_pylist(),
            rejects["field"].to_pylist(),
            strict=True,
        ):
            self.reasons[reason] += 1
            entry = self.per_file.setdefault(
                file, {"rejected": 0, "sample_row": row, "field": fld, "reason": reason}
            )
            entry["rejected"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "valid": self.valid,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
        }

    def check_threshold(self, max_invalid_fraction: float, rejects_file: str | None = None) -> None:
        """Stop with an error naming the worst file, a sample row and the field."""
        if self.rows == 0:
            raise UserError("no rows were read from any data source")
        fraction = self.rejected / self.rows
        if fraction <= max_invalid_fraction:
            return
        worst_file, worst = max(self.per_file.items(), key=lambda item: item[1]["rejected"])
        reasons = ", ".join(f"{k}={v}" for k, v in self.reasons.most_common())
        where = f"; every rejected row is in {rejects_file}" if rejects_file else ""
        raise UserError(
            f"{self.rejected} of {self.rows} rows ({fraction:.1%}) are invalid, above "
            f"data.max_invalid_fraction={max_invalid_fraction}: e.g. {worst_file} row {worst['sample_row']} "
            f"field {worst['field']!r}: {worst['reason']} ({reasons}){where}"
        )


def tokenization_rejects(
    valid: pa.Table, tokenizer: Any, info: Any, max_length: int, max_prompt_length: int
) -> tuple[pa.Table, np.ndarray]:
    """The valid rows that tokenization would still reject (:data:`REJECTS_SCHEMA`), and a
    mask of the rows it keeps.

    The same :func:`~rayalign.data.tokenize.tokenize_pairs` as ``data prepare``:
    ``identical_after_truncation``, ``special_token_in_text``, ``empty_after_truncation``,
    ``prompt_not_prefix``, ``missing_end_of_turn``.
    """
    from rayalign.data.tokenize import tokenize_pairs

    if valid.num_rows == 0:
        return REJECTS_SCHEMA.empty_table(), np.ones(0, dtype=bool)
    out = tokenize_pairs(
        valid["prompt"].to_pylist(), valid["chosen"].to_pylist(), valid["rejected"].to_pylist(),
        tokenizer, info, max_length=max_length, max_prompt_length=max_prompt_length,
    )
    bad = [i for i, r in enumerate(out.rejections) if r is not None]
    rows = valid.take(pa.array(bad, pa.int64())) if bad else valid.slice(0, 0)
    content = rows.select(["id", "source", "prompt", "chosen", "rejected", "chosen_safe", "rejected_safe"])
    rejects = pa.table(
        {
            "source": rows["source"],
            "file": rows[FILE_COL],
            "row": rows[ROW_COL],
            "field": [out.rejections[i].field for i in bad],
            "reason": [out.rejections[i].reason for i in bad],
            "original": [original_json(r) for r in content.to_pylist()],
        },
        schema=REJECTS_SCHEMA,
    )
    return rejects, np.array([r is None for r in out.rejections], dtype=bool)


def validate_source(
    source: Any,
    rejects_path: str | Any,
    *,
    batch_size: int = 4096,
    tokenizer: Any = None,
    max_length: int = 512,
    max_prompt_length: int = 256,
) -> dict[str, Any]:
    """Validate one :class:`DataSource` without Ray; write its rejects; return the summary.

    With a ``tokenizer``, valid rows are also tokenized as ``data prepare`` would
    (``max_length``/``max_prompt_length``) and the rows tokenization rejects are counted
    and written too (``identical_after_truncation``, ``special_token_in_text``, ...).
    Raises :class:`UserError` only when the source cannot be read (or its format is unknown).
    """
    from pathlib import Path

    import pyarrow.parquet as pq

    from rayalign.data.formats import resolve_source_format
    from rayalign.data.readers import file_columns, iter_source_batches, resolve_source

    resolved = resolve_source(source)
    options = AdapterOptions.from_source(source)
    columns = list(file_columns(resolved))
    fmt = resolve_source_format(source.format, columns, options, source.path)
    summary = ValidationSummary()
    info = None
    if tokenizer is not None:
        from rayalign.data.tokenize import probe_template

        info = probe_template(tokenizer)
    seen: set[str] = set()
    duplicates = 0
    rejects_path = Path(rejects_path)

    def unwritable(exc: OSError) -> UserError:
        return UserError(f"{rejects_path}: cannot write the rejects file there ({exc})")

    try:
        rejects_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(exc) from exc
    with atomic_path(rejects_path) as tmp:
        try:
            writer = pq.ParquetWriter(tmp, REJECTS_SCHEMA)
        except OSError as exc:
            raise unwritable(exc) from exc
        with writer:
            for raw in iter_source_batches(resolved, batch_size=batch_size):
                staged = adapt_and_validate(raw, fmt, options, resolved.name)
                rejects = rejected_rows(staged)
                valid = valid_rows(staged)
                if info is not None:
                    late, keep = tokenization_rejects(
                        valid, tokenizer, info, max_length, max_prompt_length
                    )
                    rejects = pa.concat_tables([rejects, late])
                    valid = valid.filter(pa.array(keep))
                summary.add(staged.num_rows, rejects)
                writer.write_table(rejects)
                for row_id in valid["id"].to_pylist():
                    duplicates += row_id in seen
                    seen.add(row_id)
    result = {
        **summary.as_dict(),
        "duplicates": duplicates,
        "format": fmt.name,
        "files": len(resolved.files) or 1,
        "rejects_file": str(rejects_path),
        "tokenized": info is not None,
    }
    if summary.rows and not summary.valid and source.format != "auto":  # a wrong --format?
        from rayalign.data.formats import detected_other_than

        hint = detected_other_than(fmt.name, next((c for _, c in columns if c), set()))
        if hint:
            result["hint"] = hint
    return result
