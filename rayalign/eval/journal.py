"""``generations.jsonl``: the evaluation's append-only journal, so a killed run resumes.

Line 1 is a header record with the settings that decide what a completion is
(``{"rayalign_generations": 1, "model": ..., "generation": {...}}``); each further line is
one generated row. Rows are appended as batches arrive, one ``write`` + ``fsync`` per batch,
so a crash loses at most the batch being written; a torn last line is dropped on reading.

Opening a journal whose header matches keeps its finished rows (no ``error``, same prompt),
so re-running the same command generates only the rest. A journal written with other
settings is moved aside (``generations.jsonl.<time>.old``, nothing deleted) and generation
starts over. When the evaluation ends, the journal is rewritten atomically with the judged
rows (the judge's fields added), still behind the same header.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rayalign.atomic import write_jsonl
from rayalign.errors import UserError

logger = logging.getLogger("rayalign.eval")

HEADER_KEY = "rayalign_generations"
VERSION = 1

Key = tuple[str, str]


def row_key(row: dict[str, Any]) -> Key:
    """Rows are matched by (benchmark, id): custom benchmarks may reuse another's ids."""
    return str(row.get("benchmark")), str(row.get("id"))


def make_header(model: str, generation: dict[str, Any], endpoint: str | None = None) -> dict[str, Any]:
    return {HEADER_KEY: VERSION, "model": model, "endpoint": endpoint, "generation": generation}


def read_journal(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(header or None, rows) of ``path``; a torn *last* line (a crash mid-write) is dropped.

    Raises :class:`UserError` naming the file and line for a corrupt line elsewhere.
    """
    if not path.exists():
        return None, []
    lines = path.read_text(encoding="utf-8").split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):  # the last line, with no newline after it
                logger.warning("%s: dropping the torn last line %d (the run stopped mid-write)", path, number)
                break
            raise UserError(f"{path}, line {number}: not valid JSON ({exc}); move the file away to start over") from exc
    if records and HEADER_KEY in records[0]:
        return records[0], records[1:]
    return None, records


def _atomic_write(path: Path, records: Iterable[dict[str, Any]]) -> None:
    write_jsonl(path, records, fsync=True)


class GenerationJournal:
    """Finished rows of an earlier run (``finished``, by :func:`row_key`) and an appender."""

    def __init__(self, path: str | Path, header: dict[str, Any]):
        self.path = Path(path)
        self.header = header
        old_header, rows = read_journal(self.path)
        self.finished: dict[Key, dict[str, Any]] = {}
        if old_header is not None and old_header == header:
            for row in rows:  # a later line for the same prompt (a retried error) wins
                self.finished[row_key(row)] = row
            self.finished = {k: r for k, r in self.finished.items() if not r.get("error")}
        elif self.path.exists():
            aside = self.path.with_name(f"{self.path.name}.{time.strftime('%Y%m%d-%H%M%S')}.old")
            self.path.replace(aside)
            logger.warning("%s was written with other settings (or by an older version); moved to %s, "
                           "generating from scratch", self.path, aside)
        # Rewrite cleanly (drops a torn line and failed rows) before appending.
        _atomic_write(self.path, [header, *self.finished.values()])

    def reusable(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The earlier row for ``record`` if it finished with the same prompt, else None."""
        row = self.finished.get(row_key(record))
        return row if row is not None and row.get("prompt") == record.get("prompt") else None

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append one batch: a single write, flushed and fsynced."""
        if not rows:
            return
        data = "".join(json.dumps(r, default=str) + "\n" for r in rows)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def finalize(self, rows: list[dict[str, Any]]) -> Path:
        """Replace the journal by the header and the final (judged) rows, atomically."""
        _atomic_write(self.path, [self.header, *rows])
        return self.path
