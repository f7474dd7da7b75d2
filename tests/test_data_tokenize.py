"""Tokenization invariants on two chat templates (ChatML and Llama-3) and SmolLM2's real one."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from rayalign.data.tokenize import IGNORE_INDEX, probe_template, tokenize_pairs, tokenizer_identity

PROMPTS = [
    "How do I bake bread?",
    '[{"role": "system", "content": "Be safe."}, {"role": "user", "content": "What is the capital of France?"}]',
]
CHOSEN = ["Mix flour, water, salt and yeast, then let it rise.", "Paris is the capital of France."]
REJECTED = ["I cannot help.", "No."]


@pytest.fixture(scope="module", params=["chatml", "llama3"])
def tokenizer(request, tiny_model_dir, tiny_llama3_model_dir):
    path = tiny_model_dir if request.param == "chatml" else tiny_llama3_model_dir
    return AutoTokenizer.from_pretrained(path)


def check_invariants(tok, out, info, max_length, max_prompt_length):
    for side in ("chosen", "rejected"):
        for ids, labels, plen in zip(
            getattr(out, f"{side}_input_ids"),
            getattr(out, f"{side}_labels"),
            out.prompt_length,
            strict=True,
        ):
            assert len(ids) == len(labels) <= max_length and plen <= max_prompt_length
            assert labels[:plen] == [IGNORE_INDEX] * plen  # the prompt is masked
            assert labels[plen:] == ids[plen:] and len(ids) > plen  # the response is trained on
            bos = tok.bos_token_id
            assert bos is None or ids[:2] != [bos, bos]  # never a doubled BOS
            assert ids.count(info.end_of_turn_id) >= 1
    # chosen and rejected share the exact same prompt tokens
    for c, r, plen in zip(
        out.chosen_input_ids, out.rejected_input_ids, out.prompt_length, strict=True
    ):
        assert c[:plen] == r[:plen]


def test_prompt_is_exact_prefix_and_response_ends_with_end_of_turn(tokenizer):
    info = probe_template(tokenizer)
    assert info.end_of_turn_id == tokenizer.eos_token_id  # <|im_end|> / <|eot_id|>
    out = tokenize_pairs(
        PROMPTS, CHOSEN, REJECTED, tokenizer, info, max_length=256, max_prompt_length=128
    )
    assert out.rejections == [None, None]
    check_invariants(tokenizer, out, info, 256, 128)
    if tokenizer.bos_token == "<|begin_of_text|>":  # template writes BOS and the tokenizer adds one
        assert all(ids.count(tokenizer.bos_token_id) == 1 for ids in out.chosen_input_ids)
    for ids, plen, text in zip(out.chosen_input_ids, out.prompt_length, CHOSEN, strict=True):
        assert ids[-1] == info.end_of_turn_id  # untruncated responses end with end-of-turn
        assert tokenizer.decode(ids[plen:], skip_special_tokens=True).strip() == text
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[0]}], tokenize=False, add_generation_prompt=True
    )
    assert tokenizer.decode(out.chosen_input_ids[0][: out.prompt_length[0]]) == rendered


def test_truncation_policy_is_identical_for_both_sides(tokenizer):
    info = probe_template(tokenizer)
    long_prompt = "Tell me about bread. " * 30
    long_answer = "Bread is flour and water. " * 40
    out = tokenize_pairs(
        [long_prompt],
        [long_answer],
        [long_answer + " Extra."],
        tokenizer,
        info,
        max_length=60,
        max_prompt_length=30,
    )
    check_invariants(tokenizer, out, info, 60, 30)
    assert out.prompt_length == [30]  # truncated from the left to max_prompt_length
    assert len(out.chosen_input_ids[0]) == len(out.rejected_input_ids[0]) == 60
    assert out.chosen_input_ids[0] == out.rejected_input_ids[0]  # same prefix of the same text
    full = tokenize_pairs(
        [long_prompt], ["x"], ["y"], tokenizer, info, max_length=10_000, max_prompt_length=9_999
    )
    untruncated = full.chosen_input_ids[0][: full.prompt_length[0]]
    kept_bos = 1 if tokenizer.bos_token_id is not None else 0  # BOS survives left truncation
    assert out.chosen_input_ids[0][kept_bos:30] == untruncated[-(30 - kept_bos) :]


def test_empty_after_truncation_is_a_rejection(tokenizer):
    info = probe_template(tokenizer)
    out = tokenize_pairs(
        ["word " * 50, "Hi"],
        ["a b", "Hello"],
        ["c d", "Bye"],
        tokenizer,
        info,
        max_length=info.prompt_tail + 5,
        max_prompt_length=info.prompt_tail,
    )
    assert (
        out.rejections[0].reason == "empty_after_truncation" and out.rejections[0].field == "prompt"
    )
    assert out.rejections[1] is None or out.rejections[1].reason == "empty_after_truncation"
    assert len(out.chosen_input_ids) == sum(r is None for r in out.rejections)


def test_prompt_not_prefix_is_detected(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # A template whose generation prompt differs from how it renders the assistant turn.
    tok.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\nThink.' }}{% endif %}"
    )
    info = probe_template(tok)
    out = tokenize_pairs(["Hi"], ["Hello"], ["Bye"], tok, info, max_length=64, max_prompt_length=32)
    assert out.rejections[0].reason == "prompt_not_prefix" and out.chosen_input_ids == []


def test_tokenizer_identity_tracks_the_chat_template(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = tokenizer_identity(tok)
    assert before == tokenizer_identity(AutoTokenizer.from_pretrained(tiny_model_dir))
    tok.chat_template = tok.chat_template + " "
    assert tokenizer_identity(tok) != before


@pytest.mark.slow
def test_smollm2_real_tokenizer():
    from rayalign.config import ModelConfig
    from rayalign.models import load_tokenizer

    tok = load_tokenizer(ModelConfig())
    info = probe_template(tok)
    assert tok.convert_ids_to_tokens(info.end_of_turn_id) == "<|im_end|>"
    out = tokenize_pairs(
        PROMPTS, CHOSEN, REJECTED, tok, info, max_length=256, max_prompt_length=128
    )
    assert out.rejections == [None, None]
    check_invariants(tok, out, info, 256, 128)
