"""Chat-template tokenization of preference pairs with an exact prompt/response boundary.

The boundary is found on token ids, never by slicing rendered strings:

1. ``prompt_ids`` = tokens of the prompt rendered with the generation prompt;
2. ``full_ids``   = tokens of the prompt + assistant response rendered as one conversation;
3. ``full_ids[:len(prompt_ids)] == prompt_ids`` must hold, else the row is rejected
   (``prompt_not_prefix``): a template that re-renders earlier turns differently
   would otherwise train on a misaligned mask.

The rendered text is tokenized with ``add_special_tokens=False`` because the template
already writes the special tokens (Llama-3's template writes BOS *and* its tokenizer adds
one: the classic doubled BOS). If a tokenizer adds BOS but its template does not, BOS is
prepended once. The response ends with the template's end-of-turn token; anything the
template writes after it (ChatML's trailing newline) is not part of the target.

Message *content* is text, never markup: a special-token string inside a prompt or a
response (``<|im_end|>``, ``<|start_header_id|>``) is tokenized as the ordinary characters
it is, so data cannot end a turn early or inject a system turn; only the markers the
chat template itself writes become special ids. Rows without such strings take the plain
path (tokenize the rendered text); rows with them are tokenized piece by piece — template
text as usual, each such content with ``split_special_tokens=True``, where the template
itself places it (:func:`encode_plain_content`) — and must decode back to the rendered
text exactly, else the row is rejected (``special_token_in_text``).

Truncation (one policy, identical for chosen and rejected): the prompt keeps its *last*
``max_prompt_length`` tokens (left truncation, BOS kept), then each response keeps its
*first* ``max_length - len(prompt)`` tokens (right truncation; a cut response has no
end-of-turn token, so the model is not taught to stop mid-sentence). Labels are ``-100``
on prompt positions. A pair whose chosen and rejected token ids are equal after
truncation carries no preference (zero gradient, a constant loss) and is rejected
(``identical_after_truncation``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rayalign.data.schema import IGNORE_INDEX, Rejection, prompt_messages

_PROBES = ("Hello world.", "Bye!?", "x 1 2 3")


@dataclass(frozen=True)
class TemplateInfo:
    """What the pipeline needs to know about a tokenizer's chat template (probed once)."""

    end_of_turn_id: int
    bos_id: int | None
    add_bos: bool  # prepend BOS ourselves: the tokenizer wants one but the template omits it
    prompt_tail: int  # template tokens after the user's text in a generation prompt
    response_head: int  # template tokens before the assistant's text in a response


def _encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _render(
    tokenizer: Any, conversations: Sequence[list[dict[str, str]]], *, generation: bool
) -> list[str]:
    if not conversations:
        return []
    rendered = tokenizer.apply_chat_template(
        list(conversations), tokenize=False, add_generation_prompt=generation
    )
    return [rendered] if isinstance(rendered, str) else list(rendered)


def special_strings(tokenizer: Any) -> tuple[str, ...]:
    """The texts the tokenizer turns into special ids (longest first)."""
    found = set(getattr(tokenizer, "all_special_tokens", ()))
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(token, "special", False):
            found.add(str(token.content))
    return tuple(sorted((t for t in found if t), key=len, reverse=True))


def _has_special(text: Any, specials: Sequence[str]) -> bool:
    return isinstance(text, str) and any(s in text for s in specials)


def encode_plain_content(
    tokenizer: Any,
    messages: list[dict[str, str]],
    rendered: str,
    specials: Sequence[str],
    *,
    generation: bool,
) -> list[int] | None:
    """Token ids of ``rendered`` (the template's rendering of ``messages``) with every
    message content that holds a special-token string tokenized as plain text.

    Where each content sits is asked of the template itself: it renders the conversation
    with a placeholder per message, and ``rendered`` must be the placeholders' template
    text with the contents put back (as written, or stripped as Llama-3's template does).
    Template text keeps its special tokens; those contents are tokenized with
    ``split_special_tokens=True``. ``None`` when the template transforms a content or the
    pieces do not decode back to ``rendered`` exactly (a tokenizer whose pieces change at
    the seams): the caller rejects the row rather than guess.
    """
    slots = [f"RAYALIGNSLOT{k}X" for k in range(len(messages))]
    skeleton = _render(
        tokenizer,
        [[{"role": m["role"], "content": slot} for m, slot in zip(messages, slots, strict=True)]],
        generation=generation,
    )[0]
    pieces: list[str] = []
    rest = skeleton
    for slot in slots:
        before, found, rest = rest.partition(slot)
        if not found or slot in rest:
            return None
        pieces.append(before)
    pieces.append(rest)
    for strip in (False, True):
        contents = [m["content"].strip() if strip else m["content"] for m in messages]
        text = "".join(p + c for p, c in zip(pieces, [*contents, ""], strict=True))
        if text == rendered:
            break
    else:
        return None
    ids: list[int] = []
    plain = ""  # template text and harmless contents, tokenized together
    for piece, content in zip(pieces, [*contents, ""], strict=True):
        plain += piece
        if not _has_special(content, specials):
            plain += content
            continue
        if plain:
            ids += tokenizer(plain, add_special_tokens=False)["input_ids"]
        ids += tokenizer(content, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        plain = ""
    if plain:
        ids += tokenizer(plain, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids, clean_up_tokenization_spaces=False) != rendered:
        return None
    return ids


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return ids


def _common_prefix(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs, strict=False):
        if len(set(column)) != 1:
            break
        n += 1
    return n


def _common_suffix(seqs: list[list[int]]) -> int:
    return _common_prefix([list(reversed(s)) for s in seqs])


def probe_template(tokenizer: Any) -> TemplateInfo:
    """Find the end-of-turn token and the template's fixed head/tail lengths by rendering probes."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; set one before tokenizing pairs")
    user = [[{"role": "user", "content": p}] for p in _PROBES]
    prompts = _encode(tokenizer, _render(tokenizer, user, generation=True))
    fulls = _encode(
        tokenizer,
        _render(
            tokenizer,
            [[*u, {"role": "assistant", "content": p}] for u, p in zip(user, _PROBES, strict=True)],
            generation=False,
        ),
    )
    responses = [f[len(p) :] for p, f in zip(prompts, fulls, strict=True)]
    special = _special_ids(tokenizer)
    eot = next((t for t in reversed(responses[0]) if t in special), tokenizer.eos_token_id)
    if eot is None:
        raise ValueError("cannot find the chat template's end-of-turn token")
    bos = tokenizer.bos_token_id
    wants_bos = bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [
        bos
    ]
    return TemplateInfo(
        end_of_turn_id=int(eot),
        bos_id=bos,
        add_bos=bool(wants_bos and prompts[0][:1] != [bos]),
        prompt_tail=_common_suffix(prompts),
        response_head=_common_prefix(responses),
    )


def tokenizer_identity(tokenizer: Any) -> str:
    """A hash of everything that changes token ids: vocabulary, merges, template, specials."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(
        backend.to_str().encode()
        if backend is not None
        else json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()
    )
    digest.update(str(getattr(tokenizer, "chat_template", "")).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update(type(tokenizer).__name__.encode())
    return digest.hexdigest()[:24]


@dataclass
class TokenizedPairs:
    """Token columns for the rows that tokenized cleanly, and a rejection (or None) per input row."""

    chosen_input_ids: list[list[int]]
    chosen_labels: list[list[int]]
    rejected_input_ids: list[list[int]]
    rejected_labels: list[list[int]]
    prompt_length: list[int]
    rejections: list[Rejection | None]


def _response(
    prompt_ids: list[int], full_ids: list[int], info: TemplateInfo, field: str
) -> tuple[list[int] | None, Rejection | None]:
    if full_ids[: len(prompt_ids)] != prompt_ids:
        return None, Rejection("prompt_not_prefix", field)
    response = full_ids[len(prompt_ids) :]
    try:
        end = len(response) - 1 - response[::-1].index(info.end_of_turn_id)
    except ValueError:
        return None, Rejection("missing_end_of_turn", field)
    return response[: end + 1], None


def tokenize_pairs(
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    tokenizer: Any,
    info: TemplateInfo,
    *,
    max_length: int,
    max_prompt_length: int,
) -> TokenizedPairs:
    """Tokenize a batch of canonical pairs (see the module docstring for every rule).

    ``prompts`` are canonical prompts (text, or a JSON list of messages) or message lists.
    """
    conversations = [prompt_messages(p) for p in prompts]
    n = len(conversations)
    prompt_texts = _render(tokenizer, conversations, generation=True)
    chosen_texts = _render(
        tokenizer,
        [
            [*c, {"role": "assistant", "content": r}]
            for c, r in zip(conversations, chosen, strict=True)
        ],
        generation=False,
    )
    rejected_texts = _render(
        tokenizer,
        [
            [*c, {"role": "assistant", "content": r}]
            for c, r in zip(conversations, rejected, strict=True)
        ],
        generation=False,
    )
    encoded = _encode(tokenizer, [*prompt_texts, *chosen_texts, *rejected_texts])
    prompt_ids, chosen_full, rejected_full = encoded[:n], encoded[n : 2 * n], encoded[2 * n :]
    bos = [info.bos_id] if info.add_bos else []
    specials = special_strings(tokenizer)
    plain_failed: dict[int, Rejection] = {}
    for i in range(n):
        history = [m["content"] for m in conversations[i]]
        fields = [*(["prompt"] * len(history)), "chosen", "rejected"]
        flagged = [f for f, t in zip(fields, [*history, chosen[i], rejected[i]], strict=True)
                   if _has_special(t, specials)]
        if not flagged:
            continue
        conversation = conversations[i]
        redone = (
            encode_plain_content(
                tokenizer, conversation, prompt_texts[i], specials, generation=True
            ),
            *(
                encode_plain_content(
                    tokenizer, [*conversation, {"role": "assistant", "content": response}],
                    text, specials, generation=False,
                )
                for response, text in ((chosen[i], chosen_texts[i]), (rejected[i], rejected_texts[i]))
            ),
        )
        if any(ids is None for ids in redone):
            plain_failed[i] = Rejection("special_token_in_text", flagged[0])
        else:
            prompt_ids[i], chosen_full[i], rejected_full[i] = redone

    out = TokenizedPairs([], [], [], [], [], [])
    for i in range(n):
        p = bos + prompt_ids[i]
        c_resp, c_err = _response(prompt_ids[i], chosen_full[i], info, "chosen")
        r_resp, r_err = _response(prompt_ids[i], rejected_full[i], info, "rejected")
        rejection = plain_failed.get(i) or c_err or r_err
        if rejection is None:
            p, rejection = _truncate_prompt(p, info, max_prompt_length)
        if rejection is None:
            budget = max_length - len(p)
            if budget <= info.response_head:
                rejection = Rejection("empty_after_truncation", "chosen")
        if rejection is None:
            c_resp, r_resp = c_resp[:budget], r_resp[:budget]
            if c_resp == r_resp:  # no preference left to learn from
                rejection = Rejection("identical_after_truncation", "rejected")
        out.rejections.append(rejection)
        if rejection is not None:
            continue
        mask = [IGNORE_INDEX] * len(p)
        out.chosen_input_ids.append(p + c_resp)
        out.chosen_labels.append(mask + c_resp)
        out.rejected_input_ids.append(p + r_resp)
        out.rejected_labels.append(mask + r_resp)
        out.prompt_length.append(len(p))
    return out


def _truncate_prompt(
    ids: list[int], info: TemplateInfo, max_prompt_length: int
) -> tuple[list[int], Rejection | None]:
    """Keep the last ``max_prompt_length`` tokens (and a leading BOS)."""
    if len(ids) <= max_prompt_length:
        return ids, None
    keep_bos = info.bos_id is not None and ids[:1] == [info.bos_id]
    room = max_prompt_length - (1 if keep_bos else 0)
    if room <= info.prompt_tail:  # only template tokens would be left
        return ids, Rejection("empty_after_truncation", "prompt")
    return ([info.bos_id] if keep_bos else []) + ids[-room:], None

