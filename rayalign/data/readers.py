"""Find and read preference files: local paths, folders, globs, buckets and hub ids.

Files are parsed here rather than by Arrow's JSON/CSV readers on purpose: those fail a
whole file on one row with a different type or broken UTF-8, while validation must
keep every row and say which one is bad. So a reader yields raw columnar batches of
Python values with the row's file and row number (``_file``, ``_row``); a line that does
not parse becomes a row with only ``_unparseable`` set. Row numbers are 0-based record
indices (for JSONL and CSV: the line index, counting blank lines; CSV excludes the header).
A leading byte-order mark is dropped (and UTF-16 text with one is read), see :mod:`rayalign.textio`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayalign.config import DataSource
from rayalign.data.schema import FILE_COL, ROW_COL, Batch
from rayalign.errors import UserError
from rayalign.textio import csv_records, utf8_without_bom

UNPARSEABLE_COL = "_unparseable"
DATA_EXTENSIONS = (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".csv", ".tsv")
_COMPRESSED = (".gz", ".bz2", ".zst")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


@dataclass(frozen=True)
class ResolvedSource:
    """Where a :class:`DataSource` lives, resolved once on the driver."""

    name: str
    kind: str  # "files" | "hub"
    files: tuple[str, ...] = ()
    filesystem: pafs.FileSystem | None = None
    hub_id: str = ""
    split: str = "train"
    revision: str | None = None
    fingerprint: str = field(default="", compare=False)


def _is_data_file(path: str) -> bool:
    lowered = path.lower()
    for ext in _COMPRESSED:
        if lowered.endswith(ext):
            lowered = lowered[: -len(ext)]
    return lowered.endswith(DATA_EXTENSIONS)


def _fingerprint(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _file_stats(fs: pafs.FileSystem, paths: list[str]) -> list[tuple[str, int, int]]:
    infos = fs.get_file_info(paths)
    return [(i.path, i.size or 0, i.mtime_ns or 0) for i in infos]


def _expand_on(fs: pafs.FileSystem, path: str, shown: str) -> list[str]:
    """Files under a path/folder/glob on a pyarrow filesystem, sorted."""
    if any(ch in path for ch in "*?["):
        base = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0] or "/"
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        import fnmatch

        files = [
            info.path
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File and fnmatch.fnmatch(info.path, path)
        ]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"{shown}: no such file or folder")
        if info.type == pafs.FileType.File:
            return [path]
        selector = pafs.FileSelector(path, recursive=True)
        files = [
            i.path
            for i in fs.get_file_info(selector)
            if i.type == pafs.FileType.File and _is_data_file(i.path)
        ]
    if not files:
        raise UserError(f"{shown}: matched no data files ({', '.join(DATA_EXTENSIONS)})")
    return sorted(files)


def resolve_source(source: DataSource) -> ResolvedSource:
    """Resolve a path, folder, glob, ``s3://``/``gs://`` URI, ``hf://`` / hub id or ``builtin:``."""
    spec = source.path.strip()
    if spec.startswith("builtin:"):
        return _resolve_builtin(spec, source)
    if spec.startswith("hf://"):
        return _hub_source(spec[len("hf://") :], source)
    if _URI.match(spec) and not spec.startswith("file://"):
        try:
            fs, path = pafs.FileSystem.from_uri(spec)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise UserError(f"{spec}: cannot open this URI with pyarrow ({exc})") from exc
        files = _expand_on(fs, path, spec)
        scheme = spec.split("://", 1)[0]
        shown = [f"{scheme}://{f}" for f in files]
        return ResolvedSource(
            name=source.name or Path(path).stem,
            kind="files",
            files=tuple(files),
            filesystem=fs,
            fingerprint=_fingerprint([shown, _file_stats(fs, files)]),
        )
    local = os.path.expanduser(spec.removeprefix("file://"))
    has_glob = any(ch in local for ch in "*?[")
    if not has_glob and not os.path.exists(local):
        if _HUB_ID.match(spec) and not _is_data_file(spec):
            return _hub_source(spec, source)
        raise UserError(f"{spec}: no such file or folder (and not a hub id like org/name)")
    if has_glob:
        files = sorted(p for p in glob.glob(local, recursive=True) if os.path.isfile(p))
        if not files:
            raise UserError(f"{spec}: the pattern matched no files")
    elif os.path.isdir(local):
        files = sorted(
            str(p) for p in Path(local).rglob("*") if p.is_file() and _is_data_file(p.name)
        )
        if not files:
            raise UserError(f"{spec}: folder holds no data files ({', '.join(DATA_EXTENSIONS)})")
    else:
        files = [local]
    files = [os.path.abspath(f) for f in files]
    fs = pafs.LocalFileSystem()
    return ResolvedSource(
        name=source.name or Path(files[0]).stem
        if len(files) == 1
        else source.name or Path(local).name,
        kind="files",
        files=tuple(files),
        filesystem=fs,
        fingerprint=_fingerprint([files, _file_stats(fs, files)]),
    )


def _resolve_builtin(spec: str, source: DataSource) -> ResolvedSource:
    name = spec.split(":", 1)[1]
    if name != "demo":
        raise UserError(f"{spec}: unknown built-in data set (known: builtin:demo)")
    path = demo_pairs_path()
    fs = pafs.LocalFileSystem()
    return ResolvedSource(
        name=source.name or "demo",
        kind="files",
        files=(path,),
        filesystem=fs,
        fingerprint=_fingerprint([[path], _file_stats(fs, [path])]),
    )


def demo_pairs_path() -> str:
    """Path of the shipped demo pairs (``rayalign/resources/demo/pairs.jsonl``)."""
    try:
        from rayalign import demo_data  # the demo-data engineer's helpers, when present

        getter = getattr(demo_data, "demo_pairs_path", None) or getattr(
            demo_data, "pairs_path", None
        )
        if getter is not None:
            return str(getter())
    except ImportError:
        pass
    from importlib import resources

    path = resources.files("rayalign") / "resources" / "demo" / "pairs.jsonl"
    if not path.is_file():
        raise UserError(
            "builtin:demo: the demo pairs are not installed (rayalign/resources/demo/pairs.jsonl)"
        )
    return str(path)


def _hub_source(hub_id: str, source: DataSource) -> ResolvedSource:
    return ResolvedSource(
        name=source.name or hub_id.rsplit("/", 1)[-1],
        kind="hub",
        hub_id=hub_id,
        split=source.split,
        revision=source.revision,
        fingerprint=_fingerprint(["hub", hub_id, source.split, source.revision]),
    )


# --------------------------------------------------------------------------- parsing


def _decode(data: bytes) -> str:
    # surrogateescape keeps undecodable bytes as lone surrogates: the row survives parsing
    # and validation reports it as undecodable_text instead of losing the whole file.
    return data.decode("utf-8", errors="surrogateescape")


def _records_to_batch(
    records: list[dict[str, Any] | None], rows: list[int], file: str, raw_lines: list[str | None]
) -> Batch:
    keys: dict[str, None] = {}
    for record in records:
        if record is not None:
            keys.update(dict.fromkeys(record))
    n = len(records)
    batch: Batch = {}
    for key in keys:
        column = np.empty(n, dtype=object)
        column[:] = [r.get(key) if r is not None else None for r in records]
        batch[key] = column
    batch[FILE_COL] = np.full(n, file, dtype=object)
    batch[ROW_COL] = np.asarray(rows, dtype=np.int64)
    unparseable = np.empty(n, dtype=object)
    unparseable[:] = raw_lines
    batch[UNPARSEABLE_COL] = unparseable
    return batch


def _chunks(
    records: list, rows: list[int], raw: list, file: str, batch_size: int
) -> Iterator[Batch]:
    for start in range(0, len(records), batch_size):
        end = start + batch_size
        yield _records_to_batch(records[start:end], rows[start:end], file, raw[start:end])


def _compression(path: str) -> str | None:
    """pyarrow's codec name for a compressed file's extension (``gzip`` for ``.gz``), else None."""
    lowered = path.lower()
    extension = next((c for c in _COMPRESSED if lowered.endswith(c)), None)
    return {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", None: None}[extension]


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path, compression=_compression(path)) as stream:
        return stream.read()


def _base_extension(path: str) -> str:
    lowered = path.lower()
    for ext in _COMPRESSED:
        if lowered.endswith(ext):
            lowered = lowered[: -len(ext)]
    return os.path.splitext(lowered)[1]


def read_file_batches(
    path: str,
    filesystem: pafs.FileSystem | None = None,
    *,
    batch_size: int = 2048,
    shown: str | None = None,
) -> Iterator[Batch]:
    """Raw batches of one file (JSON, JSONL, Parquet, CSV/TSV; text formats may be gzipped)."""
    fs = filesystem or pafs.LocalFileSystem()
    shown = shown or path
    ext = _base_extension(path)
    try:
        if ext in (".parquet", ".pq"):
            yield from _read_parquet(fs, path, shown, batch_size)
            return
        data = utf8_without_bom(_read_bytes(fs, path))
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{shown}: cannot read ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{shown}: starts with a UTF-16/32 byte-order mark but is not ({exc})") from exc
    if ext in (".csv", ".tsv"):
        yield from _read_csv(data, shown, batch_size, delimiter="\t" if ext == ".tsv" else ",")
    elif ext == ".json" and data.lstrip()[:1] == b"[":
        yield from _read_json_array(data, shown, batch_size)
    elif ext in (".json", ".jsonl", ".ndjson"):
        yield from _read_json_lines(data, shown, batch_size)
    else:
        raise UserError(
            f"{shown}: unknown file type {ext!r} (use one of {', '.join(DATA_EXTENSIONS)})"
        )


def _read_json_lines(data: bytes, shown: str, batch_size: int) -> Iterator[Batch]:
    records: list[dict[str, Any] | None] = []
    rows: list[int] = []
    raw: list[str | None] = []
    for index, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        text = _decode(line)
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            records.append(None)
            raw.append(text)
        else:
            records.append(record)
            raw.append(None)
        rows.append(index)
        if len(records) >= batch_size:
            yield _records_to_batch(records, rows, shown, raw)
            records, rows, raw = [], [], []
    if records:
        yield _records_to_batch(records, rows, shown, raw)


def _read_json_array(data: bytes, shown: str, batch_size: int) -> Iterator[Batch]:
    try:
        items = json.loads(_decode(data))
    except ValueError as exc:
        raise UserError(f"{shown}: not valid JSON ({exc})") from exc
    records = [item if isinstance(item, dict) else None for item in items]
    raw = [None if isinstance(item, dict) else json.dumps(item, default=repr) for item in items]
    yield from _chunks(records, list(range(len(items))), raw, shown, batch_size)


def _read_csv(data: bytes, shown: str, batch_size: int, delimiter: str) -> Iterator[Batch]:
    """Records of a CSV/TSV file, read strictly (:func:`rayalign.textio.csv_records`). A row
    with more non-empty cells than the header is an ``unparseable_row`` reject: which cell
    belongs to which column would be a guess."""
    text = _decode(data)
    if not text.strip():
        raise UserError(f"{shown}: empty CSV file (no header row)")
    records: list[dict[str, Any] | None] = []
    raw: list[str | None] = []
    for _, record, extra in csv_records(text, delimiter, shown):
        records.append(None if extra else record)
        raw.append(json.dumps([*record.values(), *extra]) if extra else None)
    yield from _chunks(records, list(range(len(records))), raw, shown, batch_size)


def _read_parquet(fs: pafs.FileSystem, path: str, shown: str, batch_size: int) -> Iterator[Batch]:
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        offset = 0
        for record_batch in parquet.iter_batches(batch_size=batch_size):
            yield arrow_to_raw_batch(pa.Table.from_batches([record_batch]), shown, offset)
            offset += record_batch.num_rows


def arrow_to_raw_batch(table: pa.Table, file: str, first_row: int = 0) -> Batch:
    """Arrow rows as a raw batch of Python values (nested lists/structs become lists/dicts)."""
    batch: Batch = {}
    n = table.num_rows
    for name in table.column_names:
        column = np.empty(n, dtype=object)
        column[:] = table.column(name).to_pylist()
        batch[name] = column
    if FILE_COL not in batch:
        batch[FILE_COL] = np.full(n, file, dtype=object)
    if ROW_COL not in batch:
        batch[ROW_COL] = np.arange(first_row, first_row + n, dtype=np.int64)
    batch[UNPARSEABLE_COL] = np.full(n, None, dtype=object)
    return batch


# --------------------------------------------------------------------------- Hugging Face hub


def load_hub_dataset(hub_id: str, split: str, revision: str | None):
    """A hub data set split via ``datasets``; a plain :class:`UserError` when the hub is unreachable."""
    try:
        import datasets
    except ImportError as exc:
        raise UserError(
            f"hf://{hub_id}: reading hub data sets needs `pip install datasets`"
        ) from exc
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in (
        "1",
        "true",
        "yes",
    ) or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes")
    from rayalign.modeling.hub import hub_reachable

    shown = f"hf://{hub_id} (split {split!r}, revision {revision or 'main'})"
    if not offline and not hub_reachable():
        # Without this check `datasets` retries the network for minutes before failing.
        raise UserError(
            f"{shown}: the Hugging Face Hub cannot be reached from this machine; download the "
            "data set where it can be reached, or pass a local file path"
        )
    try:
        return datasets.load_dataset(hub_id, split=split, revision=revision)
    except Exception as exc:  # datasets raises many types for "no network" / "not found"
        if offline:
            why = (
                "the Hugging Face Hub is not reachable (offline mode: HF_HUB_OFFLINE or "
                "HF_DATASETS_OFFLINE is set) and it is not in the local cache"
            )
        else:
            why = "the hub refused it (check the id, split, revision and your access)"
        raise UserError(
            f"{shown}: cannot load: {why}; "
            f"download it where the hub is reachable or pass a local file path "
            f"[{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}]"
        ) from exc


def iter_source_batches(resolved: ResolvedSource, *, batch_size: int = 2048) -> Iterator[Batch]:
    """Raw batches of every file of a source, or of its hub split (no Ray; used by ``validate``)."""
    if resolved.kind == "hub":
        dataset = load_hub_dataset(resolved.hub_id, resolved.split, resolved.revision)
        shown = f"hf://{resolved.hub_id}:{resolved.split}"
        table = dataset.with_format("arrow")[:]
        for start in range(0, table.num_rows, batch_size):
            yield arrow_to_raw_batch(table.slice(start, batch_size), shown, start)
        return
    for path in resolved.files:
        yield from read_file_batches(
            path, resolved.filesystem, batch_size=batch_size, shown=display_path(resolved, path)
        )


def display_path(resolved: ResolvedSource, path: str) -> str:
    """How a file is named in messages and rejects (with its URI scheme for buckets)."""
    fs = resolved.filesystem
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return path
    return f"{fs.type_name}://{path}".replace("gcs://", "gs://")


#: Format detection reads at most this much of a text file's head (doubling up to the cap
#: while not even one record fits), never the whole file.
SAMPLE_BYTES = 1 << 20
_SAMPLE_CAP = 64 << 20
_SAMPLE_ROWS = 64


def _read_head(fs: pafs.FileSystem, path: str, size: int) -> tuple[bytes, bool]:
    """The first ``size`` (decompressed) bytes of a file and whether that is all of it."""
    with fs.open_input_stream(path, compression=_compression(path)) as stream:
        data = stream.read(size + 1)
    return data[:size], len(data) <= size


def _sample_records(data: bytes, complete: bool, ext: str) -> list[dict[str, Any]]:
    """Up to ``_SAMPLE_ROWS`` whole records from the head of a text file (a cut-off last
    record is dropped)."""
    try:
        data = utf8_without_bom(data)
    except UnicodeDecodeError:  # a UTF-16/32 head cut inside a character
        data = utf8_without_bom(data[: len(data) - len(data) % 4])
    text = _decode(data)
    if ext in (".csv", ".tsv"):
        lines = text.splitlines(keepends=True)
        if not complete and lines:
            lines = lines[:-1]
        reader = csv.DictReader(io.StringIO("".join(lines), newline=""), delimiter="\t" if ext == ".tsv" else ",")
        return [dict.fromkeys(reader.fieldnames or [])]
    stripped = text.lstrip()
    if ext == ".json" and stripped[:1] == "[":
        decoder, records, index = json.JSONDecoder(), [], 1
        while len(records) < _SAMPLE_ROWS:
            while index < len(stripped) and stripped[index] in " \t\r\n,":
                index += 1
            try:
                item, index = decoder.raw_decode(stripped, index)
            except ValueError:
                break
            if isinstance(item, dict):
                records.append(item)
        return records
    lines = text.split("\n")
    if not complete:
        lines = lines[:-1]
    records = []
    for line in lines:
        if len(records) >= _SAMPLE_ROWS:
            break
        try:
            record = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def sample_columns(path: str, filesystem: pafs.FileSystem | None = None, *, shown: str | None = None) -> set[str]:
    """Column names seen in the first rows of one file, reading only its head.

    Parquet: the schema from the footer. Text formats: the first ``SAMPLE_BYTES`` (more,
    up to 64 MiB, while not one whole record fits), so detection costs the driver the
    same at a thousand rows or a billion.
    """
    fs = filesystem or pafs.LocalFileSystem()
    shown = shown or path
    ext = _base_extension(path)
    try:
        if ext in (".parquet", ".pq"):
            with fs.open_input_file(path) as handle:
                return {c for c in pq.ParquetFile(handle).schema_arrow.names if not c.startswith("_")}
        if ext not in (".csv", ".tsv", ".json", ".jsonl", ".ndjson"):
            raise UserError(f"{shown}: unknown file type {ext!r} (use one of {', '.join(DATA_EXTENSIONS)})")
        size = SAMPLE_BYTES
        while True:
            data, complete = _read_head(fs, path, size)
            records = _sample_records(data, complete, ext)
            if records or complete or size >= _SAMPLE_CAP:
                break
            size *= 4
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"{shown}: cannot read ({exc})") from exc
    columns: set[str] = set()
    for record in records:
        columns.update(k for k in record if isinstance(k, str) and not k.startswith("_"))
    return columns


#: Format detection compares the heads of at most this many files of a folder or glob.
FORMAT_CHECK_FILES = 256


def file_columns(
    resolved: ResolvedSource, limit: int = FORMAT_CHECK_FILES
) -> Iterator[tuple[str, set[str]]]:
    """``(shown path, column names of its first rows)`` for each of the source's first
    ``limit`` files (a hub data set: one entry), read lazily; what
    :func:`rayalign.data.formats.resolve_source_format` detects formats from."""
    if resolved.kind == "hub":
        yield resolved.name, first_columns(resolved)
        return
    for path in resolved.files[:limit]:
        shown = display_path(resolved, path)
        yield shown, sample_columns(path, resolved.filesystem, shown=shown)


def first_columns(resolved: ResolvedSource) -> set[str]:
    """Column names of the source's first rows (for format detection on the driver);
    samples the head of the first non-empty file (see :func:`sample_columns`)."""
    if resolved.kind == "hub":
        dataset = load_hub_dataset(resolved.hub_id, resolved.split, resolved.revision)
        return set(dataset.column_names)
    for path in resolved.files:
        columns = sample_columns(path, resolved.filesystem, shown=display_path(resolved, path))
        if columns:
            return columns
    return set()
