"""The canonical preference pair and the rules every row must pass.

A canonical row is one preference pair:

- ``prompt`` (str): the conversation before the responses. A single user turn is stored
  as plain text; a longer conversation (system prompt, earlier user *and assistant*
  turns of a multi-turn chat) is stored as a JSON-encoded list of ``{"role", "content"}``
  messages ending with the user turn, so Arrow/Parquet keep one string column.
  :func:`prompt_messages` turns either form into chat messages, and tokenization renders
  them with the chat template (:mod:`rayalign.data.tokenize`).
- ``chosen`` / ``rejected`` (str): the assistant's preferred and dispreferred replies
  (for SafeDPO/BFPO, ``chosen`` is the *more helpful* one).
- ``chosen_safe`` / ``rejected_safe`` (bool): safety label of each reply.
- ``source`` (str): data set name; ``id`` (str): content hash, stable across runs.

The rules are pure functions over columnar batches (``dict[str, numpy.ndarray]``):
nothing is dropped silently; every failing row comes back with the *first* rule it
broke, the field, and its original values, so it can be written to a rejects file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

Batch = dict[str, np.ndarray]

CANONICAL_COLUMNS = ("id", "source", "prompt", "chosen", "rejected", "chosen_safe", "rejected_safe")
TEXT_FIELDS = ("prompt", "chosen", "rejected")
LABEL_FIELDS = ("chosen_safe", "rejected_safe")
TOKENIZED_COLUMNS = (
    "chosen_input_ids",
    "chosen_labels",
    "rejected_input_ids",
    "rejected_labels",
    "prompt_length",
)
SCORED_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
#: The label of a token that is not scored (prompt, padding): what ``*_labels`` hold outside
#: the response, and what PyTorch's cross-entropy ignores by default. The one definition.
IGNORE_INDEX = -100

#: Every reason a row can be rejected for, with what it means (docs and ``--help`` use it).
REASONS: dict[str, str] = {
    "unparseable_row": "the line/record could not be parsed (e.g. broken JSON)",
    "missing_field": "a required field is absent or null",
    "wrong_type": "a field has the wrong type (e.g. a number where text is expected)",
    "empty_field": "a text field is empty or only whitespace",
    "non_boolean_label": "a safety label is not a boolean (true/false, 1/0, yes/no)",
    "invalid_preference": "the preference marker does not name one of the two responses",
    "inconsistent_prompt": "conversational chosen/rejected do not share the same earlier turns",
    "prompt_mismatch": "the prompt column contradicts the conversation turns in chosen/rejected",
    "undecodable_text": "text is not valid UTF-8 (or holds U+FFFD replacement characters)",
    "identical_responses": "chosen and rejected are the same text",
    "empty_after_truncation": "nothing of the prompt or a response is left after truncation",
    "prompt_not_prefix": "the tokenized prompt is not an exact prefix of prompt+response",
    "missing_end_of_turn": "the tokenized response does not end with the end-of-turn token",
    "identical_after_truncation": "chosen and rejected have the same token ids once truncated "
    "to max_length (no preference left to learn)",
    "special_token_in_text": "message text holds a special-token string (e.g. <|im_end|>) that "
    "this tokenizer cannot keep as plain text exactly",
}

#: Internal bookkeeping columns carried through the pipeline next to the canonical ones.
FILE_COL, ROW_COL, REASON_COL, FIELD_COL, ORIGINAL_COL = (
    "_file",
    "_row",
    "_reason",
    "_field",
    "_original",
)

REJECTS_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("original", pa.string()),  # the row's original values as JSON
    ]
)


@dataclass(frozen=True)
class Rejection:
    reason: str
    field: str

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reject reason {self.reason!r}")


def pair_id(prompt: str, chosen: str, rejected: str, chosen_safe: bool, rejected_safe: bool) -> str:
    """Content hash of a pair: identical pairs from any file or source share one id.

    The source name is deliberately left out so that de-duplication works across a mixture.
    """
    text = "\x1f".join(
        (prompt, chosen, rejected, "1" if chosen_safe else "0", "1" if rejected_safe else "0")
    )
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def hash64(ids: np.ndarray, salt: str) -> np.ndarray:
    """A deterministic pseudo-random ``uint64`` per id, shape ``[len(ids)]``: BLAKE2b-64 of
    ``f"{salt}:{id}"`` (each id formatted with ``str``), big-endian."""
    out = np.empty(len(ids), dtype=np.uint64)
    for i, value in enumerate(ids):
        out[i] = int.from_bytes(hashlib.blake2b(f"{salt}:{value}".encode(), digest_size=8).digest(), "big")
    return out


def unit_interval(ids: np.ndarray, salt: str) -> np.ndarray:
    """A deterministic pseudo-uniform float64 per id (for splits and sampling):
    :func:`hash64` scaled by 2^-64, so it orders ids as ``hash64`` does, with ties where
    float64's 53 bits cannot tell two hashes apart. In [0, 1], not [0, 1): the 1,024
    largest hashes round to 1.0 (odds 2^-54 per id)."""
    return hash64(ids, salt) / 2.0**64


def prompt_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, str]]:
    """The chat messages a canonical ``prompt`` stands for (see the module docstring).

    A list of ``{"role", "content"}`` messages is taken as it is.
    """
    if isinstance(prompt, list):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    if prompt.startswith("[{"):
        try:
            messages = json.loads(prompt)
        except ValueError:
            messages = None
        if _is_message_list(messages):
            return [{"role": m["role"], "content": m["content"]} for m in messages]
    return [{"role": "user", "content": prompt}]


def encode_prompt(messages: list[dict[str, Any]]) -> str:
    """Canonical storage form of prompt messages: plain text for one user turn, else JSON."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return json.dumps(
        [{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False
    )


def _is_message_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )


# --------------------------------------------------------------------------- field rules


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _undecodable(text: str) -> bool:
    if "\ufffd" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from bytes that were not UTF-8
        return True
    return False


def check_text(value: Any) -> str | None:
    """The reason a text field is invalid, or ``None``."""
    if _is_missing(value):
        return "missing_field"
    if not isinstance(value, str):
        return "wrong_type"
    if not value.strip():
        return "empty_field"
    if _undecodable(value):
        return "undecodable_text"
    return None


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def coerce_label(value: Any) -> bool | None:
    """A safety label as bool; ``None`` when it is not unambiguously boolean.

    Accepts bools, the integers/floats 0 and 1 (pandas and CSV often store labels so), and
    the strings true/false/1/0/yes/no (any case). Anything else is a labelling error.
    """
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer | float | np.floating) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return None


def check_label(value: Any) -> str | None:
    if _is_missing(value):
        return "missing_field"
    return None if coerce_label(value) is not None else "non_boolean_label"


def validate_rows(
    batch: Batch, prior: list[Rejection | None] | None = None
) -> list[Rejection | None]:
    """The first rule each row breaks (or ``None``), checking fields in a fixed order.

    ``batch`` holds the five content columns as the adapter produced them (any Python
    values). ``prior`` are rejections already found by the reader or adapter; they win.
    """
    n = len(batch["prompt"])
    result: list[Rejection | None] = list(prior) if prior is not None else [None] * n
    for field in TEXT_FIELDS:
        column = batch[field]
        for i in range(n):
            if result[i] is None and (reason := check_text(column[i])) is not None:
                result[i] = Rejection(reason, field)
    for field in LABEL_FIELDS:
        column = batch[field]
        for i in range(n):
            if result[i] is None and (reason := check_label(column[i])) is not None:
                result[i] = Rejection(reason, field)
    chosen, rejected = batch["chosen"], batch["rejected"]
    for i in range(n):
        if result[i] is None and chosen[i].strip() == rejected[i].strip():
            result[i] = Rejection("identical_responses", "rejected")
    return result


def canonical_table(batch: Batch, source: str, ok: np.ndarray) -> dict[str, list[Any]]:
    """Canonical columns (with ids) for the rows where ``ok`` is true."""
    idx = np.flatnonzero(ok)
    prompt = [batch["prompt"][i] for i in idx]
    chosen = [batch["chosen"][i] for i in idx]
    rejected = [batch["rejected"][i] for i in idx]
    chosen_safe = [coerce_label(batch["chosen_safe"][i]) for i in idx]
    rejected_safe = [coerce_label(batch["rejected_safe"][i]) for i in idx]
    ids = [
        pair_id(p, c, r, cs, rs)
        for p, c, r, cs, rs in zip(
            prompt, chosen, rejected, chosen_safe, rejected_safe, strict=True
        )
    ]
    return {
        "id": ids,
        "source": [source] * len(idx),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "chosen_safe": chosen_safe,
        "rejected_safe": rejected_safe,
    }


def original_json(raw_row: dict[str, Any]) -> str:
    """A rejected row's original values, JSON-encoded so any value (even broken text) fits."""
    return json.dumps(raw_row, ensure_ascii=True, default=repr)
