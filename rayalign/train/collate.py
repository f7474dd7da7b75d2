"""Turn tokenized preference rows into padded training batches.

Two choices keep the compute per pair low:

* **Pad to the longest sequence in the batch**, never to ``max_length``, with chosen
  and rejected rows stacked into one ``[2B, T]`` tensor so a single forward scores both.
* **Length grouping**: rows arrive from a Ray Data stream; we buffer a window of
  ``window`` batches, sort it by length, cut it into batches and shuffle the order of
  those batches. Similar lengths share a batch, so little padding is computed, while
  the order stays random at the batch level. Everything is a pure function of the
  stream order and ``seed``, which exact resume relies on (see ``train/checkpoint.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from rayalign.logprobs import IGNORE_INDEX

Row = dict[str, Any]

REQUIRED_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


def rows_from_batch(batch: dict[str, np.ndarray]) -> list[Row]:
    """A columnar Ray Data batch (``dict[str, ndarray]``) as a list of row dicts."""
    missing = [name for name in REQUIRED_COLUMNS if name not in batch]
    if missing:
        raise KeyError(
            f"training data lacks tokenized columns {missing}; got {sorted(batch)} "
            "(did the data pipeline tokenize the pairs?)"
        )
    names = list(batch)
    size = len(batch[names[0]])
    return [{name: batch[name][i] for name in names} for i in range(size)]


def pair_length(row: Row) -> int:
    """Tokens a pair costs in a concatenated batch: the longer of its two sequences."""
    return max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"]))


def group_by_length(rows: list[Row], batch_size: int, rng: random.Random) -> list[list[Row]]:
    """Sort ``rows`` by length, cut into batches of ``batch_size``, shuffle batch order.

    The trailing partial batch is dropped so every worker runs the same number of
    steps (a worker with one more batch would wait forever in a collective).
    """
    ordered = sorted(rows, key=pair_length)
    batches = [
        ordered[i : i + batch_size] for i in range(0, len(ordered) - batch_size + 1, batch_size)
    ]
    rng.shuffle(batches)
    return batches


def stream_batches(
    row_batches: Iterable[dict[str, np.ndarray]],
    batch_size: int,
    *,
    window: int,
    length_grouping: bool,
    seed: int,
) -> Iterator[list[Row]]:
    """Batches of ``batch_size`` rows from a stream of columnar blocks of ``window * batch_size``.

    Deterministic given the stream order and ``seed``: resuming replays the same
    sequence and skips the batches already trained on.
    """
    for index, block in enumerate(row_batches):
        rows = rows_from_batch(block)
        if length_grouping:
            yield from group_by_length(rows, batch_size, random.Random(f"{seed}:{index}"))
        else:
            for i in range(0, len(rows) - batch_size + 1, batch_size):
                yield rows[i : i + batch_size]


def _as_list(value: Any) -> list[int]:
    return value.tolist() if isinstance(value, np.ndarray) else list(value)


def _pad(seqs: list[list[int]], length: int, value: int) -> torch.Tensor:
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def _column(rows: list[Row], name: str, default: Any) -> list[Any]:
    return [row.get(name, default) if row.get(name) is not None else default for row in rows]


def collate_pairs(rows: list[Row], pad_token_id: int) -> dict[str, Any]:
    """Pad a list of tokenized pairs into one concatenated batch.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (``[2B, T]``, chosen rows
    first, right-padded to the longest of the 2B sequences), ``chosen_safe`` and
    ``rejected_safe`` (float ``[B]``; missing labels count as safe), the reference
    log-probs when every row carries them (else absent), ``ids``, and token counts
    for the padding metric.
    """
    seqs = [_as_list(r["chosen_input_ids"]) for r in rows] + [
        _as_list(r["rejected_input_ids"]) for r in rows
    ]
    labels = [_as_list(r["chosen_labels"]) for r in rows] + [
        _as_list(r["rejected_labels"]) for r in rows
    ]
    for seq, lab in zip(seqs, labels, strict=True):
        if len(seq) != len(lab):
            raise ValueError("input_ids and labels of a tokenized pair differ in length")
    length = max(len(s) for s in seqs)
    attention_mask = _pad([[1] * len(s) for s in seqs], length, 0)
    batch: dict[str, Any] = {
        "input_ids": _pad(seqs, length, pad_token_id),
        "attention_mask": attention_mask,
        "labels": _pad(labels, length, IGNORE_INDEX),
        "chosen_safe": torch.tensor(_column(rows, "chosen_safe", True), dtype=torch.float32),
        "rejected_safe": torch.tensor(_column(rows, "rejected_safe", True), dtype=torch.float32),
        "ids": [str(r.get("id", "")) for r in rows],
        "num_tokens": int(attention_mask.sum()),
        "num_slots": attention_mask.numel(),
        "num_sequences": len(seqs),
    }
    batch["label_counts"] = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
    _add_reference(batch, rows)
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """A collated batch (nested dicts of tensors and plain values) with tensors on ``device``."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def padding_fraction(num_tokens: int, num_slots: int) -> float:
    """Share of computed positions that were padding."""
    return 0.0 if num_slots == 0 else 1.0 - num_tokens / num_slots


# --------------------------------------------------------------------------- packed layout
#
# One pair is laid out once as ``[prompt | chosen | rejected]``: the prompt tokens the two
# sequences share are computed once. Chosen tokens attend causally to the prompt and to
# the chosen tokens before them; rejected tokens to the prompt and the rejected tokens
# before them (never to chosen). Position ids run 0..p-1 over the prompt and restart at p
# for both responses, so every token sees exactly the positions and context it has in
# its own padded sequence. Pairs are concatenated into rows; attention never crosses pairs.

PROMPT, CHOSEN, REJECTED = 0, 1, 2


def shared_prompt_length(chosen_ids: list[int], rejected_ids: list[int],
                         chosen_labels: list[int], rejected_labels: list[int]) -> int:
    """Leading tokens the two sequences share and neither scores (the computed-once prompt).

    The longest common prefix of the two token lists, cut at the first position either
    side scores (``label != -100``), so a scored token is never in the shared part.
    """
    limit = min(len(chosen_ids), len(rejected_ids))
    for labels in (chosen_labels, rejected_labels):
        first = next((i for i, v in enumerate(labels) if v != IGNORE_INDEX), len(labels))
        limit = min(limit, first)
    shared = 0
    while shared < limit and chosen_ids[shared] == rejected_ids[shared]:
        shared += 1
    return shared


def packed_length(row: Row) -> int:
    """Tokens a pair costs in the packed layout: prompt once plus both responses."""
    chosen, rejected = _as_list(row["chosen_input_ids"]), _as_list(row["rejected_input_ids"])
    shared = shared_prompt_length(chosen, rejected, _as_list(row["chosen_labels"]),
                                  _as_list(row["rejected_labels"]))
    return len(chosen) + len(rejected) - shared


def pack_rows(lengths: list[int], row_tokens: int | None) -> list[list[int]]:
    """Assign pairs (by index) to rows: first-fit decreasing into rows of ``row_tokens``.

    ``None`` puts every pair in one row; a pair longer than ``row_tokens`` gets a row of
    its own. Deterministic (ties keep input order). Rows are listed longest first.
    """
    if row_tokens is None:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, total in enumerate(used):
            if total + lengths[i] <= row_tokens:
                rows[r].append(i)
                used[r] += lengths[i]
                break
        else:
            rows.append([i])
            used.append(lengths[i])
    return rows


def _pair_segment(chosen: list[int], rejected: list[int], c_labels: list[int],
                  r_labels: list[int], shared: int):
    """Tokens, position ids, scored (source offset, target, side) and sizes of one pair.

    Sizes are ``(prompt, chosen, rejected)`` token counts of ``[prompt | chosen | rejected]``.
    """
    c_tail, r_tail = chosen[shared:], rejected[shared:]
    tokens = chosen[:shared] + c_tail + r_tail
    positions = list(range(len(chosen))) + list(range(shared, len(rejected)))
    scored: list[tuple[int, int, int]] = []  # (offset of the predicting token, target, side)
    for side, labels, start in ((0, c_labels, shared), (1, r_labels, len(chosen))):
        for t in range(max(1, shared), len(labels)):
            if labels[t] == IGNORE_INDEX:
                continue
            source = t - 1 if t - 1 < shared else start + (t - 1 - shared)
            scored.append((source, int(labels[t]), side))
    return tokens, positions, scored, (shared, len(c_tail), len(r_tail))


def _dense_masks(layout_rows: list[list[tuple[int, int, int, int]]], width: int,
                 position_ids: torch.Tensor, sliding_window: int | None) -> dict[str, torch.Tensor]:
    """The packed layout as dense bool masks ``[R, 1, L, L]`` (True = may attend).

    Built per pair block: causal, the prompt visible to both responses, rejected never
    seeing chosen; padding tails attend to themselves only (no NaN rows).
    """
    allowed = torch.zeros((len(layout_rows), 1, width, width), dtype=torch.bool)
    window = torch.ones_like(allowed) if sliding_window is not None else None
    for r, pairs in enumerate(layout_rows):
        for start, p, c, n in pairs:
            size = p + c + n
            sl = slice(start, start + size)
            if c == n == 0:  # padding tail
                idx = torch.arange(start, start + size)
                allowed[r, 0, idx, idx] = True
                continue
            kind = torch.tensor([PROMPT] * p + [CHOSEN] * c + [REJECTED] * n)
            causal = torch.ones(size, size, dtype=torch.bool).tril()
            same_branch = (kind[None, :] == PROMPT) | (kind[None, :] == kind[:, None])
            allowed[r, 0, sl, sl] = causal & same_branch
            if window is not None:
                pos = position_ids[r, sl]
                window[r, 0, sl, sl] = (pos[:, None] - pos[None, :]) < sliding_window
    masks = {"full_attention": allowed}
    if window is not None:
        masks["sliding_attention"] = allowed & window
    return masks


def collate_packed(
    rows: list[Row], pad_token_id: int, *, row_tokens: int | None = None,
    sliding_window: int | None = None, float_mask_dtype: torch.dtype | None = None,
    dense_mask: bool = True,
) -> dict[str, Any]:
    """Pack pairs into rows ``[prompt | chosen | rejected][prompt | chosen | rejected]...``.

    Returns ``input_ids`` and ``position_ids`` (``[R, L]``, rows right-padded to the
    longest row: with ``row_tokens=None`` one row and no padding at all), ``pair_layout``
    (per row, one ``(start, prompt, chosen, rejected)`` token count tuple per pair, and
    ``(start, length, 0, 0)`` for a padding tail: all an attention that works pair by
    pair needs, see :func:`rayalign.logprobs.pair_segment_sdpa`), an ``attention_mask``
    (with ``dense_mask``: 4D ``[R, 1, L, L]``, bool, True = may attend, or additive
    floats in ``float_mask_dtype`` for eager attention; with ``sliding_window`` a dict
    ``{"full_attention": ..., "sliding_attention": ...}`` where the sliding one also
    requires ``position_q - position_k < sliding_window``; ``None`` without
    ``dense_mask``, for models that attend by ``pair_layout`` - no ``L^2`` mask is built),
    the scored tokens ``score_rows``/``score_positions``/``score_targets`` (``[N]``) and
    ``score_index`` (``[N]``: pair i's chosen sums into i, its rejected into B+i),
    ``label_counts`` (``[2B]`` scored tokens per sequence), ``num_sequences`` (2B), plus
    what :func:`collate_pairs` returns besides tensors of the padded layout. Padding
    tokens are never scored.
    """
    n = len(rows)
    segments = []
    for row in rows:
        c, r = _as_list(row["chosen_input_ids"]), _as_list(row["rejected_input_ids"])
        cl, rl = _as_list(row["chosen_labels"]), _as_list(row["rejected_labels"])
        if len(c) != len(cl) or len(r) != len(rl):
            raise ValueError("input_ids and labels of a tokenized pair differ in length")
        segments.append(_pair_segment(c, r, cl, rl, shared_prompt_length(c, r, cl, rl)))
    layout = pack_rows([len(s[0]) for s in segments], row_tokens)
    width = max(sum(len(segments[i][0]) for i in members) for members in layout)
    ids_rows: list[list[int]] = []
    pos_rows: list[list[int]] = []
    score_rows, score_pos, score_tgt, score_idx = [], [], [], []
    counts = [0] * (2 * n)
    tokens = 0
    layout_rows: list[list[tuple[int, int, int, int]]] = []
    for r, members in enumerate(layout):
        offset = 0
        ids: list[int] = []
        pos: list[int] = []
        pairs: list[tuple[int, int, int, int]] = []
        for i in members:
            toks, positions, scored, sizes = segments[i]
            ids += toks
            pos += positions
            for source, target, side in scored:
                score_rows.append(r)
                score_pos.append(offset + source)
                score_tgt.append(target)
                score_idx.append(i + side * n)
                counts[i + side * n] += 1
            pairs.append((offset, *sizes))
            offset += len(toks)
        tokens += offset
        if offset < width:
            pairs.append((offset, width - offset, 0, 0))
            ids += [pad_token_id] * (width - offset)
            pos += [0] * (width - offset)
        ids_rows.append(ids)
        pos_rows.append(pos)
        layout_rows.append(pairs)
    input_ids = torch.tensor(ids_rows, dtype=torch.long)
    position_ids = torch.tensor(pos_rows, dtype=torch.long)
    mask: Any = None
    if dense_mask:
        masks = _dense_masks(layout_rows, width, position_ids, sliding_window)
        if float_mask_dtype is not None:
            low = torch.finfo(float_mask_dtype).min
            masks = {k: torch.zeros(m.shape, dtype=float_mask_dtype).masked_fill_(~m, low)
                     for k, m in masks.items()}
        mask = masks if sliding_window is not None else masks["full_attention"]
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask,
        "score_rows": torch.tensor(score_rows, dtype=torch.long),
        "score_positions": torch.tensor(score_pos, dtype=torch.long),
        "score_targets": torch.tensor(score_tgt, dtype=torch.long),
        "score_index": torch.tensor(score_idx, dtype=torch.long),
        "label_counts": torch.tensor(counts, dtype=torch.long),
        "pair_layout": layout_rows,
        "num_sequences": 2 * n,
        "chosen_safe": torch.tensor(_column(rows, "chosen_safe", True), dtype=torch.float32),
        "rejected_safe": torch.tensor(_column(rows, "rejected_safe", True), dtype=torch.float32),
        "ids": [str(r.get("id", "")) for r in rows],
        "num_tokens": tokens,
        "num_slots": input_ids.numel(),
        "prompt_tokens_saved": sum(pair_length_padded(row) for row in rows) - tokens,
    }
    _add_reference(batch, rows)
    return batch


def pair_length_padded(row: Row) -> int:
    """Tokens a pair costs as two separate sequences (prompt computed twice)."""
    return len(row["chosen_input_ids"]) + len(row["rejected_input_ids"])


def _add_reference(batch: dict[str, Any], rows: list[Row]) -> None:
    if all(r.get("ref_chosen_logps") is not None for r in rows) and all(
        r.get("ref_rejected_logps") is not None for r in rows
    ):
        batch["ref_chosen_logps"] = torch.tensor(
            [float(r["ref_chosen_logps"]) for r in rows], dtype=torch.float32
        )
        batch["ref_rejected_logps"] = torch.tensor(
            [float(r["ref_rejected_logps"]) for r in rows], dtype=torch.float32
        )


def make_collate(
    model: Any, pad_token_id: int, *, packing: bool, row_tokens: int | None,
    notice: Any = None,
):
    """The collate function for ``model``: packed when asked for and exact, else padded.

    Falls back to padded pairs with a one-line ``notice`` (a print-like callable) when
    the model's attention or layer types cannot take the packed layout's mask exactly.
    """
    from functools import partial

    from rayalign.logprobs import packed_mask_options, packing_unsupported_reason

    if packing:
        reason = packing_unsupported_reason(model)
        if reason is None:
            return partial(collate_packed, pad_token_id=pad_token_id, row_tokens=row_tokens,
                           **packed_mask_options(model))
        if notice is not None:
            notice(f"packed batches are off for this model ({reason}); using padded pairs")
    return partial(collate_pairs, pad_token_id=pad_token_id)


def split_by_tokens(rows: list[Row], max_tokens: int, *, packed: bool) -> list[list[Row]]:
    """Cut ``rows`` (in order) into chunks of at most ``max_tokens`` computed tokens.

    Tokens are counted as the layout computes them: prompt once plus both responses
    (``packed``) or the two padded sequences (``2 x`` the longer one). A pair longer than
    the budget forms a chunk of its own. Deterministic, so resume replays the same chunks.
    """
    chunks: list[list[Row]] = []
    current: list[Row] = []
    width = 0  # padded: the longest pair so far sets every sequence's length
    total = 0
    for row in rows:
        if packed:
            new_total = total + packed_length(row)
        else:
            width_new = max(width, pair_length(row))
            new_total = 2 * width_new * (len(current) + 1)
        if current and new_total > max_tokens:
            chunks.append(current)
            current, width, total = [], 0, 0
            new_total = packed_length(row) if packed else 2 * pair_length(row)
        current.append(row)
        total = new_total
        if not packed:
            width = max(width, pair_length(row))
    if current:
        chunks.append(current)
    return chunks
