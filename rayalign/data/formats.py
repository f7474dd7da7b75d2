"""Adapters from published preference data sets into the canonical pair record.

Each adapter maps a raw columnar batch (``dict[str, numpy.ndarray]`` of Python values,
as read from the file) to the five content columns of :mod:`rayalign.data.schema`.
Adapters never drop a row: a row they cannot map gets a :class:`Rejection` naming the
*original* column, and the schema rules check everything else.

Known formats (``DataSource.format``; ``auto`` detects from the columns):

========================  ==========================================================
``pku_saferlhf``          ``prompt, response_0, response_1, is_response_0_safe,
                          is_response_1_safe, better_response_id, safer_response_id``;
                          ``preference`` picks helpfulness or safety as the order
``bfpo_redteam``          ``prompt, modeloutput1, modeloutput2, better_modelout,
                          is_modelout1_safe, is_modelout2_safe`` (better = 1 or 2)
``safe_unsafe_pairs``     ``{prompt, response: [safe, unsafe]}``
``ultrafeedback_binarized`` ``prompt, chosen, rejected`` as message lists, plus
                          ``score_chosen, score_rejected``; no safety labels, so every
                          response is declared safe (as BFPO does)
``trl``                   ``prompt/chosen/rejected``, strings or conversational message
                          lists (prompt may be implicit), with optional ``chosen_safe`` /
                          ``rejected_safe`` (or ``is_chosen_safe``...) or ``all_safe``;
                          the canonical record itself is read with this adapter.
                          Multi-turn chosen/rejected keep every earlier turn as the
                          prompt conversation; their histories must agree
                          (``inconsistent_prompt``) and must not contradict a ``prompt``
                          column (``prompt_mismatch``)
========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayalign.data.schema import Batch, Rejection, encode_prompt
from rayalign.errors import UserError


@dataclass(frozen=True)
class AdapterOptions:
    all_safe: bool = False
    preference: str = "helpfulness"  # pku_saferlhf only: "helpfulness" | "safety"
    where: tuple[tuple[str, Any], ...] = ()  # (original column, required value) pairs

    @classmethod
    def from_source(cls, source: Any) -> AdapterOptions:
        """The options a ``DataSource`` asks for."""
        return cls(source.all_safe, source.preference, tuple(sorted(source.where.items())))


@dataclass
class Adapted:
    """An adapter's output: content columns, early rejections, and where each field came from."""

    content: Batch
    prior: list[Rejection | None]
    origin: dict[str, list[str]] = field(default_factory=dict)  # canonical field -> original column

    def original_field(self, row: int, canonical: str) -> str:
        names = self.origin.get(canonical)
        return names[row] if names is not None else canonical


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[set[str]], bool]
    adapt: Callable[[Batch, AdapterOptions], Adapted]
    description: str


def _column(batch: Batch, name: str) -> np.ndarray:
    n = len(next(iter(batch.values()))) if batch else 0
    if name in batch:
        return batch[name]
    return np.full(n, None, dtype=object)


def _num_rows(batch: Batch) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def _content(
    prompt: list, chosen: list, rejected: list, chosen_safe: list, rejected_safe: list
) -> Batch:
    def as_array(values: list) -> np.ndarray:
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    return {
        "prompt": as_array(prompt),
        "chosen": as_array(chosen),
        "rejected": as_array(rejected),
        "chosen_safe": as_array(chosen_safe),
        "rejected_safe": as_array(rejected_safe),
    }


def _choice(value: Any, allowed: dict[Any, int]) -> int | None:
    """Index (0/1) a preference marker names, or None."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        value = value.strip()
    return allowed.get(value)


def _pick_two(
    batch: Batch,
    responses: tuple[str, str],
    labels: tuple[str, str],
    marker: str,
    allowed: dict[Any, int],
) -> Adapted:
    """Shared body of the two-response formats (PKU-SafeRLHF, BFPO red-teaming)."""
    n = _num_rows(batch)
    prompt = list(_column(batch, "prompt"))
    resp = (_column(batch, responses[0]), _column(batch, responses[1]))
    safe = (_column(batch, labels[0]), _column(batch, labels[1]))
    marks = _column(batch, marker)
    chosen, rejected, chosen_safe, rejected_safe = [None] * n, [None] * n, [None] * n, [None] * n
    prior: list[Rejection | None] = [None] * n
    origin: dict[str, list[str]] = {
        f: [f] * n for f in ("chosen", "rejected", "chosen_safe", "rejected_safe")
    }
    for i in range(n):
        mark = marks[i]
        if mark is None:
            prior[i] = Rejection("missing_field", marker)
            continue
        k = _choice(mark, allowed)
        if k is None:
            prior[i] = Rejection("invalid_preference", marker)
            continue
        chosen[i], rejected[i] = resp[k][i], resp[1 - k][i]
        chosen_safe[i], rejected_safe[i] = safe[k][i], safe[1 - k][i]
        origin["chosen"][i], origin["rejected"][i] = responses[k], responses[1 - k]
        origin["chosen_safe"][i], origin["rejected_safe"][i] = labels[k], labels[1 - k]
    return Adapted(_content(prompt, chosen, rejected, chosen_safe, rejected_safe), prior, origin)


def adapt_pku_saferlhf(batch: Batch, options: AdapterOptions) -> Adapted:
    """PKU-SafeRLHF: ``better_response_id`` (helpfulness) or ``safer_response_id`` orders the pair."""
    marker = "better_response_id" if options.preference == "helpfulness" else "safer_response_id"
    out = _pick_two(
        batch,
        ("response_0", "response_1"),
        ("is_response_0_safe", "is_response_1_safe"),
        marker,
        {0: 0, 1: 1, "0": 0, "1": 1},
    )
    return _apply_all_safe(out, options)


def adapt_bfpo_redteam(batch: Batch, options: AdapterOptions) -> Adapted:
    """BFPO red-teaming JSON: ``better_modelout`` is 1 or 2 (or ``"modeloutput1"``/``"2"``)."""
    allowed: dict[Any, int] = {1: 0, 2: 1, "1": 0, "2": 1, "modeloutput1": 0, "modeloutput2": 1}
    out = _pick_two(
        batch,
        ("modeloutput1", "modeloutput2"),
        ("is_modelout1_safe", "is_modelout2_safe"),
        "better_modelout",
        allowed,
    )
    return _apply_all_safe(out, options)


def adapt_safe_unsafe_pairs(batch: Batch, options: AdapterOptions) -> Adapted:
    """``{prompt, response: [safe, unsafe]}``: the first response is safe and chosen."""
    n = _num_rows(batch)
    prompt = list(_column(batch, "prompt"))
    responses = _column(batch, "response")
    chosen, rejected = [None] * n, [None] * n
    prior: list[Rejection | None] = [None] * n
    for i in range(n):
        pair = responses[i]
        if pair is None:
            prior[i] = Rejection("missing_field", "response")
        elif not isinstance(pair, list | tuple | np.ndarray):
            prior[i] = Rejection("wrong_type", "response")
        elif len(pair) != 2:
            prior[i] = Rejection("invalid_preference", "response")
        else:
            chosen[i], rejected[i] = pair[0], pair[1]
    origin = {"chosen": ["response[0]"] * n, "rejected": ["response[1]"] * n}
    out = Adapted(_content(prompt, chosen, rejected, [True] * n, [False] * n), prior, origin)
    return _apply_all_safe(out, options)


_SAFETY_COLUMNS = (("chosen_safe", "rejected_safe"), ("is_chosen_safe", "is_rejected_safe"))


def _safety_columns(columns: Iterable[str]) -> tuple[str, str] | None:
    names = set(columns)
    for pair in _SAFETY_COLUMNS:
        if set(pair) <= names:
            return pair
    return None


def _messages(value: Any) -> list[dict[str, Any]] | None:
    """A list of chat messages (dicts with role and content), else None."""
    if isinstance(value, np.ndarray):
        value = list(value)
    if (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(m, dict) and "role" in m for m in value)
    ):
        return list(value)
    return None


def _conversational_response(value: Any) -> tuple[Any, list[dict[str, Any]], str | None]:
    """(assistant text, preceding turns, rejection reason) of a conversational response."""
    messages = _messages(value)
    if messages is None:
        return None, [], "wrong_type"
    last = messages[-1]
    if last.get("role") != "assistant":
        return None, [], "wrong_type"
    return last.get("content"), messages[:-1], None


def adapt_trl(batch: Batch, options: AdapterOptions) -> Adapted:
    """TRL ``prompt/chosen/rejected``, standard (strings) or conversational (message lists)."""
    n = _num_rows(batch)
    has_prompt = "prompt" in batch
    prompts = _column(batch, "prompt")
    chosen_col, rejected_col = _column(batch, "chosen"), _column(batch, "rejected")
    prompt, chosen, rejected = [None] * n, [None] * n, [None] * n
    prior: list[Rejection | None] = [None] * n
    for i in range(n):
        c, r = chosen_col[i], rejected_col[i]
        if isinstance(c, str) or isinstance(r, str) or c is None or r is None:
            prompt[i], chosen[i], rejected[i] = _prompt_text(prompts[i]), c, r
            continue
        c_text, c_turns, c_err = _conversational_response(c)
        r_text, r_turns, r_err = _conversational_response(r)
        if c_err or r_err:
            prior[i] = Rejection(c_err or r_err or "wrong_type", "chosen" if c_err else "rejected")
            continue
        chosen[i], rejected[i] = c_text, r_text
        if _strip_messages(c_turns) != _strip_messages(r_turns):
            prior[i] = Rejection("inconsistent_prompt", "rejected")
        elif has_prompt and prompts[i] is not None:
            history = _conversation_before(prompts[i], c_turns)
            if history is None:
                prior[i] = Rejection("prompt_mismatch", "prompt")
            else:
                prompt[i] = _prompt_text(history)
        elif not c_turns:
            prior[i] = Rejection("missing_field", "prompt")
        else:
            prompt[i] = _prompt_text(c_turns)
        if prompt[i] is _BAD_PROMPT:
            prompt[i], prior[i] = None, Rejection("wrong_type", "prompt")

    safety = _safety_columns(batch)
    if options.all_safe:
        chosen_safe, rejected_safe = [True] * n, [True] * n
    elif safety is None:  # no labels and none declared: every row lacks them
        chosen_safe, rejected_safe = [None] * n, [None] * n
    else:
        chosen_safe, rejected_safe = list(batch[safety[0]]), list(batch[safety[1]])
    origin = {}
    if safety is not None and not options.all_safe:
        origin = {"chosen_safe": [safety[0]] * n, "rejected_safe": [safety[1]] * n}
    return Adapted(_content(prompt, chosen, rejected, chosen_safe, rejected_safe), prior, origin)


def adapt_ultrafeedback_binarized(batch: Batch, options: AdapterOptions) -> Adapted:
    """UltraFeedback-binarized: conversational TRL rows; all responses declared safe."""
    return adapt_trl(batch, AdapterOptions(True, options.preference, options.where))


_BAD_PROMPT = object()


def _prompt_text(value: Any) -> Any:
    """Canonical prompt from a string or a message list ending with the user turn."""
    if value is None or isinstance(value, str):
        return value
    messages = _messages(value)
    if messages is None or messages[-1].get("role") != "user":
        return _BAD_PROMPT
    if not all(isinstance(m.get("content"), str) for m in messages):
        return _BAD_PROMPT
    return encode_prompt(messages)


def _strip_messages(messages: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
    return [
        (m.get("role"), c.strip() if isinstance(c := m.get("content"), str) else c)
        for m in messages
    ]


def _conversation_before(prompt: Any, turns: list[dict[str, Any]]) -> Any:
    """The whole conversation before the final assistant turns, from an explicit ``prompt``
    and the earlier ``turns`` of conversational chosen/rejected; ``None`` when they
    contradict each other.

    - no earlier turns: the prompt is the conversation (TRL's prompt + completion);
    - the turns continue the prompt (they start with an assistant turn): prompt + turns;
    - the turns repeat the prompt messages, or (a text prompt) hold it as one of their user
      turns, as in Anthropic-HH-style rows: the turns are the conversation, every turn kept.
    """
    if isinstance(prompt, str):
        asked: Any = [{"role": "user", "content": prompt}]
    else:
        asked = _messages(prompt)
        if asked is None:
            return prompt  # not messages: _prompt_text reports it as wrong_type
    if not turns:
        return asked
    if turns[0].get("role") == "assistant":
        return [*asked, *turns]
    if _strip_messages(turns[: len(asked)]) == _strip_messages(asked):
        return turns
    if isinstance(prompt, str) and ("user", prompt.strip()) in _strip_messages(turns):
        return turns
    return None


def _apply_all_safe(adapted: Adapted, options: AdapterOptions) -> Adapted:
    if options.all_safe:
        n = len(adapted.prior)
        adapted.content["chosen_safe"] = np.full(n, True, dtype=object)
        adapted.content["rejected_safe"] = np.full(n, True, dtype=object)
        adapted.origin.pop("chosen_safe", None)
        adapted.origin.pop("rejected_safe", None)
    return adapted


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format(
            "pku_saferlhf",
            lambda c: (
                {"response_0", "response_1"} <= c
                and bool({"better_response_id", "safer_response_id"} & c)
            ),
            adapt_pku_saferlhf,
            "PKU-SafeRLHF (response_0/1, is_response_*_safe, better/safer_response_id)",
        ),
        Format(
            "bfpo_redteam",
            lambda c: {"modeloutput1", "modeloutput2"} <= c,
            adapt_bfpo_redteam,
            "BFPO red-teaming JSON (modeloutput1/2, better_modelout, is_modelout*_safe)",
        ),
        Format(
            "safe_unsafe_pairs",
            lambda c: {"prompt", "response"} <= c and "chosen" not in c,
            adapt_safe_unsafe_pairs,
            "{prompt, response: [safe, unsafe]}",
        ),
        Format(
            "ultrafeedback_binarized",
            lambda c: {"chosen", "rejected", "score_chosen", "score_rejected"} <= c,
            adapt_ultrafeedback_binarized,
            "UltraFeedback-binarized (message lists + score_chosen/score_rejected)",
        ),
        Format(
            "trl",
            lambda c: {"chosen", "rejected"} <= c,
            adapt_trl,
            "TRL prompt/chosen/rejected (strings or messages), optional chosen_safe/rejected_safe",
        ),
    )
}
#: The canonical record is TRL-shaped with safety columns.
FORMATS["canonical"] = FORMATS["trl"]


def known_formats() -> str:
    return ", ".join(name for name in FORMATS if name != "canonical")


def detect_format(columns: Iterable[str]) -> str:
    """The first known format whose columns are present (most specific first)."""
    names = set(columns)
    for name, fmt in FORMATS.items():
        if fmt.detect(names):
            return name
    raise UserError(
        f"no known preference format matches the columns {sorted(names)}; "
        f"known formats: {known_formats()} (set the source's format explicitly if the "
        "columns are right)"
    )


def resolve_source_format(
    name: str,
    columns_by_file: Iterable[tuple[str, set[str]]],
    options: AdapterOptions,
    where: str,
) -> Format:
    """The adapter for a source from its files' head columns (``readers.file_columns``).

    With ``name`` "auto" every file is detected on its own, and a source whose files hold
    different formats (a folder with a PKU-SafeRLHF file and a TRL file) is refused,
    naming one file of each: one source has one format, so the files go in as separate
    sources or the format is set explicitly. A named format reads only as far as the first
    non-empty file and is checked as :func:`resolve_format` does. Raises :class:`UserError`.
    """
    if name != "auto":
        return resolve_format(name, next((c for _, c in columns_by_file if c), set()), options, where)
    first_file: dict[str, tuple[str, set[str]]] = {}  # format -> (its first file, columns)
    for shown, columns in columns_by_file:
        if columns:
            try:
                first_file.setdefault(detect_format(columns), (shown, columns))
            except UserError as exc:
                raise UserError(f"{shown}: {exc}") from None
    if not first_file:
        raise UserError(
            f"{where}: no records to detect a format from (the file is empty, or its first "
            "records could not be parsed as JSON/JSONL/CSV)"
        )
    if len(first_file) > 1:
        found = "; ".join(f"{shown}: {fmt}" for fmt, (shown, _) in first_file.items())
        raise UserError(
            f"{where}: its files hold different preference formats ({found}); one source "
            "has one format: list these files as separate sources, or set the format"
        )
    ((detected, (_, columns)),) = first_file.items()
    return resolve_format(detected, columns, options, where)


def resolve_format(
    name: str, columns: Iterable[str], options: AdapterOptions, where: str
) -> Format:
    """The adapter for a source, checked against the columns its first rows have."""
    names = set(columns)
    if name == "auto":
        try:
            name = detect_format(names)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
    if name not in FORMATS:
        raise UserError(f"{where}: unknown format {name!r}; known formats: {known_formats()}")
    # No columns at all (an empty file): nothing to check; reading it reports "no rows".
    if names and name in ("trl", "canonical") and not options.all_safe and _safety_columns(names) is None:
        other = detected_other_than(name, names)
        if other:
            raise UserError(f"{where}: format {name} has no safety labels, but {other}")
        raise UserError(
            f"{where}: format {name} has no safety labels (columns chosen_safe/rejected_safe "
            "or is_chosen_safe/is_rejected_safe); set all_safe: true (CLI: --all-safe) to "
            "declare every response safe, as BFPO does for helpfulness data"
        )
    return FORMATS[name]


def detected_other_than(name: str, columns: Iterable[str]) -> str | None:
    """A hint when ``columns`` look like another known format than the one set, else None."""
    try:
        detected = detect_format(set(columns))
    except UserError:
        return None
    if detected == name:
        return None
    return f"the columns look like format {detected!r} (what format auto picks): try --format {detected}"
