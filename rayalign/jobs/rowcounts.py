"""How many preference pairs a data source holds, without reading it through Ray.

``rayalign plan`` needs row counts for steps per epoch. Known hub data sets come from
a table of their published split sizes; local files are counted (JSONL lines, CSV
rows, Parquet metadata); anything else is unknown and the user passes ``--rows``.
"""

from __future__ import annotations

import csv
import glob
import json
from importlib import resources
from pathlib import Path

#: (lower-cased hub id, split) -> rows, as published on each data set's card.
KNOWN_ROWS: dict[tuple[str, str], int] = {
    ("pku-alignment/pku-saferlhf-30k", "train"): 26_874,
    ("pku-alignment/pku-saferlhf-30k", "test"): 2_989,
    ("pku-alignment/pku-saferlhf", "train"): 73_907,
    ("pku-alignment/pku-saferlhf", "test"): 8_211,
    ("huggingfaceh4/ultrafeedback_binarized", "train_prefs"): 61_135,
    ("huggingfaceh4/ultrafeedback_binarized", "test_prefs"): 2_000,
    ("anthropic/hh-rlhf", "train"): 160_800,
    ("anthropic/hh-rlhf", "test"): 8_552,
}


def count_file_rows(path: Path) -> int:
    """Rows in one local file: JSONL lines, CSV records, JSON array items, Parquet rows."""
    suffix = path.suffix
    if suffix in (".jsonl", ".ndjson"):
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return max(sum(1 for _ in csv.reader(fh)) - 1, 0)
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        return len(data) if isinstance(data, list) else 1
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    raise ValueError(f"{path}: cannot count rows of a {suffix or 'suffix-less'} file")


def _local_files(path: str) -> list[Path]:
    expanded = Path(path).expanduser()
    if expanded.is_dir():
        return sorted(p for p in expanded.rglob("*") if p.is_file() and not p.name.startswith("."))
    if any(ch in path for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(str(expanded), recursive=True))
    return [expanded] if expanded.is_file() else []


def builtin_demo_rows() -> int | None:
    """Pairs in the demo data shipped in the package (None until it is shipped)."""
    demo = resources.files("rayalign").joinpath("resources/demo/pairs.jsonl")
    if not demo.is_file():
        return None
    return sum(1 for line in demo.read_text(encoding="utf-8").splitlines() if line.strip())


def count_rows(path: str, split: str = "train") -> tuple[int | None, str]:
    """``(rows or None, where the number came from)`` for one data source."""
    if path == "builtin:demo":
        rows = builtin_demo_rows()
        return rows, "demo data in the package" if rows is not None else "demo data not shipped"
    files = _local_files(path)
    if files:
        try:
            return sum(count_file_rows(f) for f in files), f"counted {len(files)} local file(s)"
        except ValueError as exc:
            return None, str(exc)
    known = KNOWN_ROWS.get((path.lower(), split))
    if known is not None:
        return known, f"published size of {path} [{split}]"
    if path.startswith(("/", ".", "~")) or Path(path).suffix:
        return None, f"{path} not found (relative paths are read from the current folder, {Path.cwd()})"
    return None, f"{path} [{split}] not in the table of known data sets"
