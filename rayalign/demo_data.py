"""Locate and load the built-in demo data shipped in ``rayalign/resources/demo``.

Read through :mod:`importlib.resources` so the files are found the same way from a source
checkout, an editable install and an installed wheel. The pipeline reads the pairs by
path (Ray Data wants a file), so :func:`demo_pairs_path` returns a real filesystem path.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from rayalign.errors import UserError

DEMO_PACKAGE = "rayalign.resources.demo"
PAIRS_FILE = "pairs.jsonl"
EVAL_PROMPTS_FILE = "eval_prompts.jsonl"
VALIDATION_PROMPTS_FILE = "validation_prompts.jsonl"
EVAL_KINDS = ("harmful", "benign")


def _resource_path(name: str) -> Path:
    resource = files(DEMO_PACKAGE).joinpath(name)
    if not isinstance(resource, Path):  # e.g. a zipped install: no real file to hand to Ray
        raise UserError(f"rayalign's demo data {name} is not on the filesystem ({resource}); "
                        "install rayalign as a regular (unzipped) package")  # fmt: skip
    if not resource.is_file():
        raise UserError(f"rayalign's demo data file is missing: {resource}; reinstall rayalign")
    return resource


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def demo_pairs_path() -> Path:
    """Path of the demo preference pairs (canonical JSONL, ``chosen`` = more helpful)."""
    return _resource_path(PAIRS_FILE)


def demo_eval_prompts_path() -> Path:
    """Path of the held-out demo evaluation prompts (JSONL: prompt, kind, category)."""
    return _resource_path(EVAL_PROMPTS_FILE)


def demo_validation_prompts_path() -> Path:
    """Path of the demo validation prompts for model selection (JSONL: prompt, kind, category).

    Disjoint from the pairs, the held-out evaluation prompts and the public benchmarks
    (XSTest, AdvBench) that the demo reports on, so sweeps can select on them.
    """
    return _resource_path(VALIDATION_PROMPTS_FILE)


def load_demo_pairs() -> list[dict]:
    """All demo pairs as dicts with the canonical columns plus ``category`` and ``kind``."""
    return _read_jsonl(demo_pairs_path())


def _load_prompts(path: Path, kind: str | None) -> list[dict]:
    if kind is not None and kind not in EVAL_KINDS:
        raise ValueError(f"kind must be one of {EVAL_KINDS} or None, not {kind!r}")
    rows = _read_jsonl(path)
    return rows if kind is None else [r for r in rows if r["kind"] == kind]


def load_eval_prompts(kind: str | None = None) -> list[dict]:
    """Held-out evaluation prompts, all of them or only one ``kind`` ("harmful"/"benign")."""
    return _load_prompts(demo_eval_prompts_path(), kind)


def load_validation_prompts(kind: str | None = None) -> list[dict]:
    """Validation prompts (model selection), all of them or only one ``kind``.

    Rows are ``{"prompt", "kind", "category"}`` like :func:`load_eval_prompts`; raises
    ``ValueError`` for an unknown ``kind``.
    """
    return _load_prompts(demo_validation_prompts_path(), kind)
