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
    }
    if all(r.get("ref_chosen_logps") is not None for r in rows) and all(
        r.get("ref_rejected_logps") is not None for r in rows
    ):
        batch["ref_chosen_logps"] = torch.tensor(
            [float(r["ref_chosen_logps"]) for r in rows], dtype=torch.float32
        )
        batch["ref_rejected_logps"] = torch.tensor(
            [float(r["ref_rejected_logps"]) for r in rows], dtype=torch.float32
        )
    return batch


def padding_fraction(num_tokens: int, num_slots: int) -> float:
    """Share of computed positions that were padding."""
    return 0.0 if num_slots == 0 else 1.0 - num_tokens / num_slots
