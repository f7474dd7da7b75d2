"""The preference-data pipeline as Ray Data stages, with a content-addressed cache.

read → adapt → validate ──(materialize; count; threshold; de-dup plan)──►
select (de-dup, source fractions, SafeDPO, train/eval split) → tokenize (tasks)
→ [seeded shuffle (one sort, ``data.shuffle``)] → [reference scoring (actor pool)]
→ Parquet under ``cache_dir/prepared/<key>/``.

The key hashes everything the output depends on (data fingerprint, adapter options,
length limits, split/transform settings, tokenizer identity incl. chat template, and
the reference model's fingerprint when scoring), so a second run, and every sweep
trial, reads the cached Parquet instead of recomputing. The cache folder is written to
a temporary name and renamed into place, so a crash never leaves a half cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayalign.atomic import write_json
from rayalign.config import Config, DataSource, ModelConfig
from rayalign.data.formats import AdapterOptions, resolve_source_format
from rayalign.data.readers import (
    ResolvedSource,
    arrow_to_raw_batch,
    display_path,
    file_columns,
    load_hub_dataset,
    read_file_batches,
    resolve_source,
)
from rayalign.data.safety import TransformCounts, safedpo_transform
from rayalign.data.schema import (
    CANONICAL_COLUMNS,
    FIELD_COL,
    FILE_COL,
    ORIGINAL_COL,
    REASON_COL,
    REJECTS_SCHEMA,
    ROW_COL,
    hash64,
    original_json,
    unit_interval,
)
from rayalign.data.tokenize import probe_template, tokenize_pairs, tokenizer_identity
from rayalign.data.validate import (
    SOURCE_INDEX_COL,
    STAGED_SCHEMA,
    ValidationSummary,
    adapt_and_validate,
    rejected_rows,
)
from rayalign.errors import UserError
from rayalign.ray_session import init_ray, thread_env

logger = logging.getLogger("rayalign.data")

# 2: multi-turn prompts, plain-text special tokens, identical_after_truncation; 3: rejects.parquet
# is a folder of Parquet parts; 4: rows in the sources' order (earlier caches hold the blocks in
# whichever order Ray Data's tasks finished); 5: rows in a seeded random order (data.shuffle).
PIPELINE_VERSION = "5"
SPLIT_COL = "split"
_ORDER_COL = "__order"
_TOKENIZE_BATCH_ROWS = 512

_TOKEN_LIST = pa.list_(pa.int32())
TOKENIZED_SCHEMA = pa.schema(
    [
        *[STAGED_SCHEMA.field(c) for c in CANONICAL_COLUMNS],
        (SPLIT_COL, pa.string()),
        ("chosen_input_ids", _TOKEN_LIST),
        ("chosen_labels", _TOKEN_LIST),
        ("rejected_input_ids", _TOKEN_LIST),
        ("rejected_labels", _TOKEN_LIST),
        ("prompt_length", pa.int32()),
        (SOURCE_INDEX_COL, pa.int32()),
        (FILE_COL, pa.string()),
        (ROW_COL, pa.int64()),
        (REASON_COL, pa.string()),
        (FIELD_COL, pa.string()),
        (ORIGINAL_COL, pa.string()),
    ]
)
OUTPUT_COLUMNS = (
    *CANONICAL_COLUMNS,
    SPLIT_COL,
    "chosen_input_ids",
    "chosen_labels",
    "rejected_input_ids",
    "rejected_labels",
    "prompt_length",
)


@dataclass
class PreparedData:
    """What training, sweeps and the demo consume (see the data contract)."""

    train: Any  # ray.data.Dataset
    eval: Any | None
    helpfulness: Any | None
    stats: dict[str, Any]
    path: Path  # the cached Parquet folder behind the datasets


@dataclass(frozen=True)
class _Source:
    index: int
    role: str  # "safety" | "helpfulness"
    spec: DataSource
    resolved: ResolvedSource
    format: str
    options: AdapterOptions


# --------------------------------------------------------------------------- Ray stages


def _read_files_stage(batch: pa.Table, *, source: _Source) -> Any:
    """One row per file in, every row of those files (adapted and validated) out."""
    from rayalign.data.formats import FORMATS

    fmt = FORMATS[source.format]
    for path in batch.column("path").to_pylist():
        shown = display_path(source.resolved, path)
        for raw in read_file_batches(path, source.resolved.filesystem, shown=shown):
            yield adapt_and_validate(raw, fmt, source.options, source.resolved.name, source.index)


def _adapt_arrow_stage(batch: pa.Table, *, source: _Source) -> pa.Table:
    """Hub rows (already Arrow) → adapted and validated rows."""
    from rayalign.data.formats import FORMATS

    shown = f"hf://{source.resolved.hub_id}:{source.resolved.split}"
    raw = arrow_to_raw_batch(batch, shown)
    return adapt_and_validate(
        raw, FORMATS[source.format], source.options, source.resolved.name, source.index
    )


def plan_rows(
    ids: np.ndarray,
    srcs: np.ndarray,
    keys: list[str],
    *,
    drop_keys: frozenset[str],
    fractions: dict[int, float],
    roles: dict[int, str],
    eval_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, split name) per valid row: de-dup, source fractions and split by id hash.

    Pure and deterministic, so the driver (for counts) and every Ray task agree.
    """
    keep = np.ones(len(ids), dtype=bool)
    if drop_keys:
        keep &= np.fromiter((k not in drop_keys for k in keys), dtype=bool, count=len(keys))
    limit = np.asarray([fractions[int(s)] for s in srcs], dtype=np.float64)
    if (limit < 1.0).any():
        keep &= unit_interval(ids, f"fraction:{seed}") < limit
    helpful = np.asarray([roles[int(s)] == "helpfulness" for s in srcs], dtype=bool)
    split = np.where(
        helpful,
        "helpfulness",
        np.where(unit_interval(ids, f"split:{seed}") < eval_fraction, "eval", "train"),
    )
    return keep, split


def select_rows(table: pa.Table, *, safedpo: bool, **plan: Any) -> tuple[pa.Table, TransformCounts]:
    """Valid rows after :func:`plan_rows` and the SafeDPO transformation, with their split."""
    table = table.filter(pc.equal(table[REASON_COL], ""))
    if table.num_rows == 0:
        return _empty_selected(), TransformCounts()
    ids = np.asarray(table["id"].to_pylist(), dtype=object)
    keep, split = plan_rows(ids, table[SOURCE_INDEX_COL].to_numpy(), _row_keys(table), **plan)
    table = table.filter(pa.array(keep)).append_column(
        SPLIT_COL, pa.array(split[keep], pa.string())
    )
    keep_cols = [*CANONICAL_COLUMNS, SPLIT_COL, SOURCE_INDEX_COL, FILE_COL, ROW_COL]
    table = table.select(keep_cols)
    counts = TransformCounts()
    if safedpo and table.num_rows:
        batch = {name: table[name].to_numpy(zero_copy_only=False) for name in table.column_names}
        batch, counts = safedpo_transform(batch)
        table = pa.table({f.name: pa.array(batch[f.name], f.type) for f in table.schema})
    return table, counts


def _empty_selected() -> pa.Table:
    fields = [
        *(STAGED_SCHEMA.field(c) for c in CANONICAL_COLUMNS),
        pa.field(SPLIT_COL, pa.string()),
    ]
    fields += [STAGED_SCHEMA.field(c) for c in (SOURCE_INDEX_COL, FILE_COL, ROW_COL)]
    return pa.schema(fields).empty_table()


def _row_keys(table: pa.Table) -> list[str]:
    return [
        f"{s}\x1f{f}\x1f{r}"
        for s, f, r in zip(
            table[SOURCE_INDEX_COL].to_pylist(),
            table[FILE_COL].to_pylist(),
            table[ROW_COL].to_pylist(),
            strict=True,
        )
    ]


def _select_stage(table: pa.Table, **kwargs: Any) -> pa.Table:
    return select_rows(table, **kwargs)[0]


def _tokenize_stage(
    table: pa.Table, *, tokenizer: Any, max_length: int, max_prompt_length: int
) -> pa.Table:
    """Ray Data task: tokenize a block. Tasks, not actors: an actor would hold a CPU for the
    whole run and starve the upstream stage on a 1-CPU cluster; probing costs milliseconds."""
    info = probe_template(tokenizer)
    return tokenize_table(table, tokenizer, info, max_length, max_prompt_length)


def tokenize_table(
    table: pa.Table, tokenizer: Any, info: Any, max_length: int, max_prompt_length: int
) -> pa.Table:
    """Selected rows → :data:`TOKENIZED_SCHEMA` (rows that fail tokenization carry a reason)."""
    if table.num_rows == 0:
        return TOKENIZED_SCHEMA.empty_table()
    prompts, chosen, rejected = (table[c].to_pylist() for c in ("prompt", "chosen", "rejected"))
    out = tokenize_pairs(
        prompts,
        chosen,
        rejected,
        tokenizer,
        info,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
    )
    ok = np.fromiter((r is None for r in out.rejections), dtype=bool, count=table.num_rows)
    order = np.concatenate([np.flatnonzero(ok), np.flatnonzero(~ok)])
    reordered = table.take(pa.array(order))
    bad = [out.rejections[i] for i in np.flatnonzero(~ok)]
    n_bad = len(bad)
    columns = {name: reordered[name] for name in table.column_names}
    empty: list[list[int]] = [[] for _ in range(n_bad)]
    columns["chosen_input_ids"] = pa.array(out.chosen_input_ids + empty, _TOKEN_LIST)
    columns["chosen_labels"] = pa.array(out.chosen_labels + empty, _TOKEN_LIST)
    columns["rejected_input_ids"] = pa.array(out.rejected_input_ids + empty, _TOKEN_LIST)
    columns["rejected_labels"] = pa.array(out.rejected_labels + empty, _TOKEN_LIST)
    columns["prompt_length"] = pa.array(out.prompt_length + [0] * n_bad, pa.int32())
    bad_rows = reordered.slice(int(ok.sum())).select(list(CANONICAL_COLUMNS)).to_pylist()
    columns[REASON_COL] = pa.array([""] * int(ok.sum()) + [r.reason for r in bad], pa.string())
    columns[FIELD_COL] = pa.array([""] * int(ok.sum()) + [r.field for r in bad], pa.string())
    columns[ORIGINAL_COL] = pa.array(
        [""] * int(ok.sum()) + [original_json(r) for r in bad_rows], pa.string()
    )
    return pa.table({f.name: columns[f.name] for f in TOKENIZED_SCHEMA}, schema=TOKENIZED_SCHEMA)


class RefScorer:
    """Ray Data callable class: the frozen reference model, loaded once per actor.

    Scores each block with the training loop's collate and log-prob code: packed
    ``[prompt | chosen | rejected]`` rows (each prompt computed once, no padding) unless
    ``packing`` is off or the model cannot take the packed mask (then padded pairs, with
    a one-line notice in the actor's log).
    """

    def __init__(self, model_cfg: dict[str, Any], use_gpu: bool, packing: bool = True,
                 row_tokens: int | None = None) -> None:
        import torch

        from rayalign.console import worker_logging
        from rayalign.modeling.models import load_model
        from rayalign.train.collate import make_collate

        worker_logging()
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load_model(ModelConfig.model_validate(model_cfg), device=self.device).eval()
        self.collate = make_collate(self.model, 0, packing=packing, row_tokens=row_tokens,
                                    notice=logger.info)

    def __call__(self, table: pa.Table) -> pa.Table:
        import torch

        from rayalign.logprobs import batch_logps
        from rayalign.train.collate import to_device

        n = table.num_rows
        columns = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
        data = {name: table[name].to_pylist() for name in columns}
        rows = [{name: data[name][i] for name in columns} for i in range(n)]
        with torch.inference_mode():
            batch = to_device(self.collate(rows), torch.device(self.device))
            logps = batch_logps(self.model, batch).float().cpu().numpy()
        table = table.append_column("ref_chosen_logps", pa.array(logps[:n], pa.float32()))
        return table.append_column("ref_rejected_logps", pa.array(logps[n:], pa.float32()))


# --------------------------------------------------------------------------- driver side


def _collect(ds: Any, schema: pa.Schema | None = None) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables, promote_options="default")


def _sources(cfg: Config) -> list[_Source]:
    out: list[_Source] = []
    for role, specs in (
        ("safety", cfg.data.sources),
        ("helpfulness", cfg.data.helpfulness_sources),
    ):
        for spec in specs:
            resolved = resolve_source(spec)
            options = AdapterOptions.from_source(spec)
            fmt = resolve_source_format(spec.format, file_columns(resolved), options, spec.path)
            out.append(_Source(len(out), role, spec, resolved, fmt.name, options))
    if not any(s.role == "safety" for s in out):
        raise UserError("data.sources is empty: name at least one preference data set")
    return out


def use_safedpo(cfg: Config) -> bool:
    """Whether SafeDPO's transformation runs (:meth:`Config.applies_safedpo_transform`)."""
    return cfg.applies_safedpo_transform()


def cache_key(
    cfg: Config, sources: list[_Source], tokenizer: Any, ref_model_cfg: ModelConfig | None
) -> str:
    """Hash of everything the prepared data depends on (see the module docstring)."""
    from rayalign.modeling.models import model_fingerprint

    d = cfg.data
    parts = {
        "version": PIPELINE_VERSION,
        "sources": [
            [
                s.role,
                s.format,
                s.resolved.fingerprint,
                s.spec.model_dump(exclude={"name"}),
                s.resolved.name,
            ]
            for s in sources
        ],
        "limits": [d.max_length, d.max_prompt_length],
        "split": [d.eval_fraction, d.seed, d.dedup, use_safedpo(cfg), d.shuffle],
        "tokenizer": tokenizer_identity(tokenizer),
        "reference": model_fingerprint(ref_model_cfg) if ref_model_cfg is not None else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _staged_dataset(source: _Source) -> Any:
    import ray

    if source.resolved.kind == "hub":
        hf = load_hub_dataset(
            source.resolved.hub_id, source.resolved.split, source.resolved.revision
        )
        hf = hf.add_column(ROW_COL, list(range(len(hf))))
        return ray.data.from_huggingface(hf).map_batches(
            _adapt_arrow_stage, batch_format="pyarrow", fn_kwargs={"source": source}
        )
    files = [{"path": p} for p in source.resolved.files]
    return ray.data.from_items(files, override_num_blocks=len(files)).map_batches(
        _read_files_stage, batch_size=1, batch_format="pyarrow", fn_kwargs={"source": source}
    )


def _duplicate_keys(meta: pa.Table, roles: dict[int, str]) -> frozenset[str]:
    """Rows repeating an earlier (source, file, row order) row's id within the same role."""
    if meta.num_rows == 0:
        return frozenset()
    frame = meta.select(["id", SOURCE_INDEX_COL, FILE_COL, ROW_COL]).to_pandas()
    frame["role"] = frame[SOURCE_INDEX_COL].map(roles)
    frame = frame.sort_values([SOURCE_INDEX_COL, FILE_COL, ROW_COL], kind="stable")
    dups = frame[frame.duplicated(subset=["role", "id"], keep="first")]
    return frozenset(
        f"{s}\x1f{f}\x1f{r}"
        for s, f, r in zip(dups[SOURCE_INDEX_COL], dups[FILE_COL], dups[ROW_COL], strict=True)
    )


def _write_rejects_by_workers(rows: Any, folder: Path) -> None:
    """Ray Data tasks write the rejected rows of ``rows`` as Parquet parts into ``folder``
    (:data:`REJECTS_SCHEMA`; read it back with ``pyarrow.parquet.read_table(folder)``).
    An empty part is written by the driver when nothing was rejected, so the folder always
    has the schema."""
    rows.map_batches(rejected_rows, batch_format="pyarrow").write_parquet(str(folder))
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(REJECTS_SCHEMA.empty_table(), folder / "empty.parquet")


def _publish_rejects(folder: Path, path: Path) -> None:
    """Copy the rejects folder to ``path`` atomically (a temp name, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    shutil.copytree(folder, tmp)
    if path.is_dir():
        old = path.with_name(f".{path.name}.{uuid.uuid4().hex}.old")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if path.exists():
            path.unlink()  # a single-file rejects.parquet from an older version
        tmp.rename(path)


def _summary_row(summary: ValidationSummary, **extra: Any) -> pa.Table:
    return pa.table({
        "summary": [json.dumps({"rows": summary.rows, "rejected": summary.rejected,
                                "reasons": dict(summary.reasons), "per_file": summary.per_file})],
        **{k: [v] for k, v in extra.items()},
    })


def _validation_part(table: pa.Table) -> pa.Table:
    """Ray Data task: one row summarising a staged block's validation (counts only)."""
    part = ValidationSummary()
    part.add(table.num_rows, rejected_rows(table))
    return _summary_row(part)


def _selection_part(table: pa.Table, **kwargs: Any) -> pa.Table:
    """Ray Data task: rows kept by the plan and the SafeDPO counts of one staged block."""
    selected, counts = select_rows(table, **kwargs)
    return pa.table({"selected": [selected.num_rows], "counts": [json.dumps(counts.as_dict())]})


def _token_part(table: pa.Table) -> pa.Table:
    """Ray Data task: tokenization rejects summary + valid rows per split of one block."""
    part = ValidationSummary()
    part.add(0, rejected_rows(table))
    ok = table.filter(pc.equal(table[REASON_COL], ""))[SPLIT_COL].to_numpy(zero_copy_only=False)
    names, counts = np.unique(ok.astype(str), return_counts=True) if len(ok) else ([], [])
    return _summary_row(part, splits=json.dumps({str(k): int(v) for k, v in zip(names, counts, strict=True)}))


def _merge_into(total: ValidationSummary, part: ValidationSummary, *, rows: bool = True) -> None:
    if rows:
        total.rows += part.rows
    total.rejected += part.rejected
    total.reasons.update(part.reasons)
    for file, entry in part.per_file.items():
        if file in total.per_file:
            total.per_file[file]["rejected"] += entry["rejected"]
        else:
            total.per_file[file] = dict(entry)


def _merge_summaries(parts: pa.Table) -> ValidationSummary:
    """Sum the per-block summaries (block order kept: the first sample row per file wins)."""
    total = ValidationSummary()
    for text in parts["summary"].to_pylist() if parts.num_rows else []:
        data = json.loads(text)
        part = ValidationSummary(rows=data["rows"], rejected=data["rejected"],
                                 reasons=Counter(data["reasons"]), per_file=data["per_file"])
        _merge_into(total, part)
    return total


def _dedup_hashes(table: pa.Table, *, roles: dict[int, str]) -> pa.Table:
    """Ray Data task: a 64-bit hash of (role, id) per valid row."""
    import pandas as pd

    valid = table.filter(pc.equal(table[REASON_COL], ""))
    keys = np.asarray(
        [f"{roles[int(s)]}\x1f{i}" for s, i in zip(valid[SOURCE_INDEX_COL].to_pylist(),
                                                    valid["id"].to_pylist(), strict=True)],
        dtype=object,
    )
    return pa.table({"h": pa.array(pd.util.hash_array(keys) if len(keys) else np.zeros(0, np.uint64))})


def _rows_with_hashes(table: pa.Table, *, roles: dict[int, str], hashes: frozenset[int]) -> pa.Table:
    """Ray Data task: the (id, source, file, row) of valid rows whose hash is in ``hashes``."""
    valid = table.filter(pc.equal(table[REASON_COL], ""))
    mine = _dedup_hashes(valid, roles=roles)["h"].to_numpy()
    mask = np.fromiter((int(h) in hashes for h in mine), dtype=bool, count=len(mine))
    return valid.filter(pa.array(mask)).select(["id", SOURCE_INDEX_COL, FILE_COL, ROW_COL])


def _duplicate_keys_distributed(staged: Any, roles: dict[int, str]) -> frozenset[str]:
    """:func:`_duplicate_keys` without the rows on the driver: workers hash (role, id) of each
    valid row; the driver finds repeated hashes (8 bytes a row, the only per-row state it
    holds), then fetches just those rows to decide exactly (a hash collision is no dup)."""
    hashes = _collect(staged.map_batches(_dedup_hashes, batch_format="pyarrow",
                                         fn_kwargs={"roles": roles}))
    if not hashes.num_rows:
        return frozenset()
    values, counts = np.unique(hashes["h"].to_numpy(), return_counts=True)
    repeated = frozenset(int(h) for h in values[counts > 1])
    del hashes, values, counts
    if not repeated:
        return frozenset()
    candidates = _collect(staged.map_batches(
        _rows_with_hashes, batch_format="pyarrow", fn_kwargs={"roles": roles, "hashes": repeated}
    ))
    return _duplicate_keys(candidates, roles)


def _write_json(data: dict[str, Any], path: Path) -> None:
    write_json(path, data, sort_keys=True)


def _open_split(folder: Path, split: str, rows: int) -> Any | None:
    import ray

    if rows == 0:
        return None
    from ray.data.expressions import col

    parts = sorted(str(p) for p in (folder / "pairs").glob("*.parquet"))  # written in row order
    return ray.data.read_parquet(parts).filter(expr=col(SPLIT_COL) == split)


def prepare_datasets(
    cfg: Config,
    tokenizer: Any,
    *,
    output_dir: str | Path | None = None,
    ref_model_cfg: ModelConfig | None = None,
) -> PreparedData:
    """Read, validate, transform, tokenize (and reference-score) the configured data.

    Reference log-probs are computed when ``cfg.data.precompute_ref_logps`` is true and the
    loss uses a reference (:meth:`Config.scores_reference`), with ``ref_model_cfg``
    (default: ``cfg.model``). With ``output_dir``, the rejects Parquet
    and a summary JSON are also written there. Raises :class:`UserError` when more than
    ``cfg.data.max_invalid_fraction`` of the rows are invalid.
    """
    started = time.perf_counter()
    init_ray()
    sources = _sources(cfg)
    scoring = cfg.scores_reference()
    ref_cfg = (ref_model_cfg or cfg.model) if scoring else None
    key = cache_key(cfg, sources, tokenizer, ref_cfg)
    root = Path(cfg.data.cache_dir).expanduser() / "prepared"
    final = root / key
    if (final / "stats.json").is_file():
        stats = json.loads((final / "stats.json").read_text())
        stats["cache"] = "hit"
        stats["ref_cache"] = "hit" if scoring else "disabled"
    else:
        rejects_path = (
            Path(output_dir) / "rejects.parquet"
            if output_dir is not None
            else root / f"{key}.rejects.parquet"
        )
        with _rows_in_order():
            stats = _build(cfg, sources, tokenizer, ref_cfg, root, key, rejects_path)
        stats["cache"] = "miss"
        stats["ref_cache"] = "miss" if scoring else "disabled"
    stats["cache_dir"] = str(final)
    stats["seconds"] = round(time.perf_counter() - started, 3)
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "rejects.parquet").exists() or stats["cache"] == "hit":
            _publish_rejects(final / "rejects.parquet", out / "rejects.parquet")
        stats["rejects_file"] = str(out / "rejects.parquet")
        _write_json(stats, out / "data_summary.json")
    rows = stats["rows"]
    return PreparedData(
        train=_open_split(final, "train", rows["train"]),
        eval=_open_split(final, "eval", rows["eval"]),
        helpfulness=_open_split(final, "helpfulness", rows["helpfulness"]),
        stats=stats,
        path=final,
    )


def _build(
    cfg: Config,
    sources: list[_Source],
    tokenizer: Any,
    ref_cfg: ModelConfig | None,
    root: Path,
    key: str,
    rejects_path: Path,
) -> dict[str, Any]:
    """Build the cache folder ``root/key`` in six phases, each a function below: stage
    (read, adapt, validate), check the rejects, select (de-dup, fractions, SafeDPO, split),
    tokenize, order (``data.shuffle``), reference-score; then write it under a temporary name
    and rename it into place."""
    d = cfg.data
    work = root / f".{key}.{uuid.uuid4().hex}.tmp"
    work.mkdir(parents=True)
    rejects_dir = work / "rejects.parquet"
    try:
        staged = _stage(sources)
        summary = _check_rejects(staged, rejects_dir, rejects_path, d.max_invalid_fraction)
        select, duplicates = _selection_plan(cfg, sources, staged)
        selected, counts = _count_selection(staged, select)
        tokenized, split_rows = _tokenize(cfg, staged, select, tokenizer, summary, rejects_dir, rejects_path)
        _score_reference(cfg, _final_rows(cfg, tokenized, sources), ref_cfg).write_parquet(str(work / "pairs"))
        stats: dict[str, Any] = {
            "cache_key": key,
            "validation": summary.as_dict(),
            "formats": {s.resolved.name: s.format for s in sources},
            "duplicates": duplicates,
            "sampled_out": summary.valid - duplicates - selected,
            "transform": {"safedpo": counts.as_dict() if select["safedpo"] else None},
            "rows": {split: split_rows.get(split, 0) for split in ("train", "eval", "helpfulness")},
            "scored": ref_cfg is not None,
        }
        _write_json(stats, work / "stats.json")
        try:
            work.rename(root / key)
        except OSError:
            if not (root / key / "stats.json").is_file():  # lost a race to a finished twin: fine
                raise
            shutil.rmtree(work, ignore_errors=True)
        return stats
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)  # the rejects file stays at rejects_path
        raise


@contextlib.contextmanager
def _rows_in_order() -> Iterator[None]:
    """Ray Data keeps every stage's output in its input order while the cache is built.

    Without it a stage emits blocks as its tasks finish: two cold builds of the demo pairs
    wrote their two blocks in either order, so training saw other pairs from step 1 and,
    on 2026-12-01, the same settings refused XSTest's unsafe prompts 0.32 or 0.48 of the time.
    """
    from ray.data import DataContext

    options = DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before


def _stage(sources: list[_Source]) -> Any:
    """Phase 1: every source read, adapted and validated, as one materialized Ray Dataset."""
    parts = [_staged_dataset(s) for s in sources]
    staged = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    return staged.materialize()


def _check_rejects(staged: Any, rejects_dir: Path, rejects_path: Path, max_invalid: float) -> ValidationSummary:
    """Phase 2: the rejects written and published, the counts summed, the threshold checked.

    Driver memory stays flat with the data: workers write the rejects and send back one
    small summary row per block; the driver never holds the rows themselves.
    """
    _write_rejects_by_workers(staged, rejects_dir)
    summary = _merge_summaries(_collect(staged.map_batches(_validation_part, batch_format="pyarrow")))
    _publish_rejects(rejects_dir, rejects_path)  # there for the user even if we stop here
    summary.check_threshold(max_invalid, str(rejects_path))
    return summary


def _selection_plan(cfg: Config, sources: list[_Source], staged: Any) -> tuple[dict[str, Any], int]:
    """Phase 3a: the keyword arguments of :func:`select_rows` (duplicates to drop, source
    fractions, roles, split, SafeDPO) and the number of duplicates."""
    d = cfg.data
    roles = {s.index: s.role for s in sources}
    drop = _duplicate_keys_distributed(staged, roles) if d.dedup else frozenset()
    select = {
        "drop_keys": drop,
        "fractions": {s.index: s.spec.fraction for s in sources},
        "roles": roles,
        "eval_fraction": d.eval_fraction,
        "seed": d.seed,
        "safedpo": use_safedpo(cfg),
    }
    return select, len(drop)


def _count_selection(staged: Any, select: dict[str, Any]) -> tuple[int, TransformCounts]:
    """Phase 3b: rows kept and the SafeDPO counts, computed by the workers block by block."""
    parts = _collect(staged.map_batches(_selection_part, batch_format="pyarrow", fn_kwargs=select))
    selected = int(pc.sum(parts["selected"]).as_py() or 0) if parts.num_rows else 0
    counts = TransformCounts()
    for text in parts["counts"].to_pylist() if parts.num_rows else []:
        counts += TransformCounts(**json.loads(text))
    return selected, counts


def _tokenize(
    cfg: Config, staged: Any, select: dict[str, Any], tokenizer: Any, summary: ValidationSummary,
    rejects_dir: Path, rejects_path: Path,
) -> tuple[Any, dict[str, int]]:
    """Phase 4: select and tokenize (Ray Data tasks); tokenization rejects join the
    rejects file and the threshold; returns the tokenized rows and the rows per split."""
    d = cfg.data
    tokenized = (
        _spread_over_cpus(staged)
        .map_batches(_select_stage, batch_format="pyarrow", fn_kwargs=select)
        .map_batches(
            _tokenize_stage,
            batch_format="pyarrow",
            batch_size=_TOKENIZE_BATCH_ROWS,
            fn_kwargs={
                "tokenizer": tokenizer,
                "max_length": d.max_length,
                "max_prompt_length": d.max_prompt_length,
            },
            **_task_pool(d.tokenize_concurrency),
        )
        .materialize()
    )
    token_parts = _collect(
        tokenized.select_columns(["source", FILE_COL, ROW_COL, FIELD_COL, REASON_COL, ORIGINAL_COL, SPLIT_COL])
        .map_batches(_token_part, batch_format="pyarrow")
    )
    token_summary = _merge_summaries(token_parts)
    if token_summary.rejected:
        _write_rejects_by_workers(tokenized.select_columns(
            ["source", FILE_COL, ROW_COL, FIELD_COL, REASON_COL, ORIGINAL_COL]
        ), rejects_dir)
        _merge_into(summary, token_summary, rows=False)
        _publish_rejects(rejects_dir, rejects_path)
        summary.check_threshold(d.max_invalid_fraction, str(rejects_path))
    split_rows = {split: 0 for split in ("train", "eval", "helpfulness")}
    for text in token_parts["splits"].to_pylist() if token_parts.num_rows else []:
        for split, n in json.loads(text).items():
            split_rows[split] = split_rows.get(split, 0) + n
    return tokenized, split_rows


def _final_rows(cfg: Config, tokenized: Any, sources: list[_Source]) -> Any:
    """Phase 5: the valid rows, sorted into ``data.shuffle``'s seeded order when it is on
    (one distributed sort by :func:`shuffle_keys`; the cache is built under
    ``preserve_order``, so the later stages and the write keep that order)."""
    d = cfg.data
    if not d.shuffle:
        return tokenized.map_batches(_keep_valid_output, batch_format="pyarrow")
    return (
        tokenized.map_batches(_keep_valid_output, batch_format="pyarrow",
                              fn_kwargs={"order_seed": d.seed, "file_ordinals": _file_ordinals(sources)})
        .sort(_ORDER_COL)
        .drop_columns([_ORDER_COL])
    )


def _score_reference(cfg: Config, final: Any, ref_cfg: ModelConfig | None) -> Any:
    """Phase 6: the final rows, with reference log-probs from an actor pool when scoring."""
    import ray

    d = cfg.data
    if ref_cfg is None:
        return final
    return final.map_batches(
        RefScorer,
        batch_format="pyarrow",
        batch_size=d.ref_batch_size,
        fn_constructor_kwargs={
            "model_cfg": ref_cfg.model_dump(),
            "use_gpu": d.ref_gpus_per_actor > 0,
            "packing": cfg.train.packing,
            "row_tokens": cfg.train.pack_row_tokens,
        },
        compute=ray.data.ActorPoolStrategy(size=d.ref_num_actors),
        runtime_env={"env_vars": thread_env(d.ref_torch_threads)},
        num_gpus=d.ref_gpus_per_actor,
    ).materialize()  # frees the scoring actors before the write tasks need a CPU


def _spread_over_cpus(staged: Any) -> Any:
    """Enough blocks for every CPU to tokenize (one big file reads as one block).

    Blocks stay large otherwise: a streaming repartition into small blocks made Ray Data
    2.60 run the tokenize tasks one at a time on a 2-CPU node.
    """
    import ray

    wanted = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    return staged if staged.num_blocks() >= wanted else staged.repartition(wanted)


def _task_pool(size: int | None) -> dict[str, Any]:
    """``compute=`` for a bounded task pool (``concurrency=`` is deprecated since Ray 2.51)."""
    import ray

    return {} if size is None else {"compute": ray.data.TaskPoolStrategy(size=size)}


def _keep_valid_output(
    table: pa.Table, order_seed: int | None = None, file_ordinals: dict[tuple[int, str], int] | None = None
) -> pa.Table:
    """The valid rows' output columns; with ``order_seed``, also each row's place in the
    shuffled order (:func:`shuffle_keys`)."""
    table = table.filter(pc.equal(table[REASON_COL], ""))
    out = table.select(list(OUTPUT_COLUMNS))
    if order_seed is None:
        return out
    ordinals = file_ordinals or {}
    where = [
        f"{s}\x1f{ordinals.get((s, f), 0)}\x1f{r}\x1f{i}"  # hub rows: one "file", ordinal 0
        for s, f, r, i in zip(table[SOURCE_INDEX_COL].to_pylist(), table[FILE_COL].to_pylist(),
                              table[ROW_COL].to_pylist(), table["id"].to_pylist(), strict=True)
    ]
    return out.append_column(_ORDER_COL, pa.array(shuffle_keys(where, seed=order_seed)))


def _file_ordinals(sources: list[_Source]) -> dict[tuple[int, str], int]:
    """``(source index, file name as rows carry it)`` -> the file's place in that source's
    sorted file list: the shuffle must not depend on where a data set is stored."""
    return {
        (s.index, display_path(s.resolved, path)): i
        for s in sources for i, path in enumerate(s.resolved.files)
    }


def shuffle_keys(where: list[str], *, seed: int) -> np.ndarray:
    """Sort keys (``uint64``), one per row, that put the pairs in a random order seeded by ``seed``.

    ``where`` names each row's origin: source index, the file's place in its source, row
    number and id, never a path, so the order is the same on every machine, wherever the
    files live, and for every block layout. Sorting the prepared rows by these keys is
    ``data.shuffle``, done once when the cache is built, so a resumed run reads the same
    order. The keys are whole 64-bit hashes, not floats in [0, 1): float64 would tie rows
    whose hashes differ only in their last bits (up to 11; about 3e-5 odds at a million
    rows), leaving their order to the sort; the order is otherwise the same as the floats'.
    """
    return hash64(np.asarray(where, dtype=object), f"order:{seed}")
