"""Atomic file writes: write a temporary sibling, then rename it over the target.

A reader (another process, a resumed run, the next command after a crash) sees the old
file or the new one, never a half-written one: ``os.replace`` is atomic on POSIX when
both names are on one file system, which a sibling in the same folder always is. The
temporary name is unique per writer (``.<name>.<random>.tmp``), so two processes writing
the same target never write into each other's file; the last rename wins.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write a file to; renamed onto ``path`` when the
    block ends normally, deleted when it raises. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any, **dumps: Any) -> Path:
    """Write ``json.dumps(data, **dumps)`` to ``path`` atomically (``indent=2`` by default)."""
    dumps.setdefault("indent", 2)
    return write_text(path, json.dumps(data, **dumps))


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]], *, fsync: bool = False) -> Path:
    """Write one JSON object per line to ``path`` atomically (``default=str`` for odd
    values); with ``fsync`` the data is on disk before the rename (journals)."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, default=str) + "\n")
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)
