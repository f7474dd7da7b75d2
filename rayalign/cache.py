"""One root for every rayalign cache: ``$RAYALIGN_CACHE``, default ``~/.cache/rayalign``.

Under it: ``models/`` (built-in models converted to safetensors) and ``prepared/`` (prepared
preference data: validated, transformed, tokenized pairs with their reference log-probs).
``data.cache_dir`` defaults to this root; a config that sets it moves only the prepared data.
``rayalign cache info`` shows what is there, ``rayalign cache clear`` frees it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

ENV = "RAYALIGN_CACHE"
DEFAULT = "~/.cache/rayalign"

#: The cache kinds under the root and what they hold.
KINDS = {
    "models": "built-in models converted to safetensors",
    "prepared": "prepared preference data (tokenized pairs, reference log-probs)",
}


def cache_root() -> Path:
    """``$RAYALIGN_CACHE`` if set, else ``~/.cache/rayalign`` (expanded, not created)."""
    return Path(os.environ.get(ENV) or DEFAULT).expanduser()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def kind_paths(data_cache_dir: str | None = None) -> dict[str, Path]:
    """Where each kind lives; ``data_cache_dir`` (a config's ``data.cache_dir``) moves ``prepared``."""
    root = cache_root()
    paths = {kind: root / kind for kind in KINDS}
    if data_cache_dir:
        paths["prepared"] = Path(data_cache_dir).expanduser() / "prepared"
    return paths


def cache_info(data_cache_dir: str | None = None) -> dict[str, Any]:
    """``{"root", "from_env", "kinds": {kind: {"path", "entries", "bytes", "holds"}}}``."""
    kinds = {}
    for kind, path in kind_paths(data_cache_dir).items():
        entries = sorted(path.iterdir()) if path.is_dir() else []
        kinds[kind] = {"path": str(path), "entries": len(entries), "bytes": sum(_size(e) for e in entries),
                       "holds": KINDS[kind]}
    return {"root": str(cache_root()), "from_env": ENV in os.environ, "kinds": kinds}


def clear_cache(kinds: list[str], data_cache_dir: str | None = None, *, dry_run: bool = False) -> dict[str, int]:
    """Remove the named kinds' folders; returns the bytes each held (freed unless ``dry_run``).

    Only the kind folders themselves (``<root>/models``, ``<root>/prepared``) are removed,
    never the root or anything else in it. Raises ``ValueError`` for an unknown kind.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown cache kind(s) {unknown}; choose from {sorted(KINDS)}")
    paths = kind_paths(data_cache_dir)
    freed = {}
    for kind in kinds:
        path = paths[kind]
        if not path.exists():
            freed[kind] = 0
            continue
        freed[kind] = _size(path)
        if not dry_run:
            shutil.rmtree(path)
    return freed
