"""Packed ``[prompt | chosen | rejected]`` batches give the padded path's numbers.

Tiny random Llama-, Qwen2- and Gemma-shaped models built offline (fp32), a BOS-adding
tokenizer (llama3 template: the template writes BOS and the tokenizer is set to add
one) and multi-turn prompts: per-pair policy log-probs within 1e-4 and the gradients
of one DPO step within relative 1e-4.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rayalign.logprobs import batch_logps, packed_mask_options, packing_unsupported_reason
from rayalign.losses import preference_loss
from rayalign.modeling.models import build_tiny_model, enable_activation_checkpointing
from rayalign.train.collate import (
    collate_packed,
    collate_pairs,
    pack_rows,
    packed_length,
    shared_prompt_length,
)

TURNS = [
    [{"role": "user", "content": "how do I bake bread"}],
    [{"role": "system", "content": "Be safe."},
     {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "python list comprehension please"}],
    [{"role": "user", "content": "capital of France?"},
     {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "and numbers 0 1 2"}],
    [{"role": "user", "content": "write a polite email to my manager about the quick brown fox"}],
    [{"role": "user", "content": "x"}],
]
RESPONSES = [
    ("I'm sorry, but I can't help with that request.", "Sure! Here is a short answer."),
    ("Mix flour, water, salt and yeast.", "The quick brown fox jumps over the lazy dog. 0 1 2 3"),
    ("Paris", "Numbers: 4 5 6"),
    ("Safety matters: refuse harmful requests.", "ok"),
    ("Python is a programming language", "I cannot assist"),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tok"), chat_template="llama3")
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("a")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds BOS
    return tok


def _rows(tok) -> list[dict]:
    rows = []
    for i, (messages, (chosen, rejected)) in enumerate(zip(TURNS, RESPONSES, strict=True)):
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        row = {"id": f"r{i}", "chosen_safe": True, "rejected_safe": i % 2 == 0}
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            response = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            row[f"{name}_input_ids"] = prompt_ids + response
            row[f"{name}_labels"] = [-100] * len(prompt_ids) + response
        rows.append(row)
    return rows


def _model(kind: str, vocab: int):
    from transformers import GemmaConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    config = {
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        # layer 1 slides over 6 positions: the dense per-layer-type masks path
        "qwen2-sliding": lambda: Qwen2Config(**common, use_sliding_window=True, sliding_window=6,
                                             max_window_layers=1),
        "gemma": lambda: GemmaConfig(**common, head_dim=16),
    }[kind]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.train()  # dropout is 0: train mode computes the same numbers


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma", "qwen2-sliding"])
@pytest.mark.parametrize("row_tokens", [None, 48])
def test_packed_logps_and_gradients_match_padded(tokenizer, kind, row_tokens):
    rows = _rows(tokenizer)
    model = _model(kind, len(tokenizer))
    assert packing_unsupported_reason(model) is None
    padded = collate_pairs(rows, tokenizer.pad_token_id)
    packed = collate_packed(rows, tokenizer.pad_token_id, row_tokens=row_tokens,
                            **packed_mask_options(model))
    if kind == "qwen2-sliding":  # sliding layers: per-layer-type dense masks
        assert set(packed["attention_mask"]) == {"full_attention", "sliding_attention"}
    else:  # SDPA, full attention: pair by pair from pair_layout, no [L, L] mask at all
        assert packed["attention_mask"] is None
    assert packed["num_tokens"] < padded["num_tokens"]  # prompts computed once
    if row_tokens is None:
        assert packed["num_slots"] == packed["num_tokens"]  # one row: no padding at all
    assert torch.equal(packed["label_counts"], padded["label_counts"])

    def step(batch):
        model.zero_grad()
        logps = batch_logps(model, batch)
        n = len(rows)
        ref = logps.detach() - 0.3  # any fixed reference
        loss = preference_loss("dpo", logps[:n], logps[n:], ref[:n], ref[n:],
                               batch["chosen_safe"], batch["rejected_safe"], beta=0.1).mean()
        loss.backward()
        return logps.detach(), [p.grad.clone() for p in model.parameters()]

    want, want_grads = step(padded)
    got, got_grads = step(packed)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert (g - w).norm() <= 1e-4 * w.norm() + 1e-8


@pytest.mark.parametrize("kind", ["llama", "qwen2-sliding"])
def test_packed_batches_train_under_activation_checkpointing(tokenizer, kind):
    """Checkpointing recomputes each layer in the backward, outside the forward's pair
    attention: the packed path must save the same tensors both times (torch raises
    CheckpointError otherwise) and give the padded path's log-probs and gradients."""
    rows = _rows(tokenizer)
    model = _model(kind, len(tokenizer))
    model.train()  # transformers checkpoints only in training mode (dropout is 0 here)

    def step(batch):
        model.zero_grad()
        logps = batch_logps(model, batch)
        logps.sum().backward()
        return logps.detach(), [p.grad.clone() for p in model.parameters()]

    want, want_grads = step(collate_pairs(rows, tokenizer.pad_token_id))
    enable_activation_checkpointing(model)
    got, got_grads = step(collate_packed(rows, tokenizer.pad_token_id, **packed_mask_options(model)))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert (g - w).norm() <= 1e-4 * w.norm() + 1e-8


def test_shared_prompt_is_cut_at_the_first_scored_token():
    # identical first response token: still not shared, it is scored on both sides
    assert shared_prompt_length([1, 2, 3, 9], [1, 2, 3, 9, 8], [-100, -100, -100, 9],
                                [-100, -100, -100, 9, 8]) == 3
    assert shared_prompt_length([1, 2, 3], [1, 5, 3], [-100] * 3, [-100] * 3) == 1
    assert packed_length({"chosen_input_ids": [1, 2, 3, 4], "rejected_input_ids": [1, 2, 3, 5, 6],
                          "chosen_labels": [-100, -100, -100, 4],
                          "rejected_labels": [-100, -100, -100, 5, 6]}) == 6


def test_packed_mask_blocks_other_pairs_and_the_other_response(tokenizer):
    rows = _rows(tokenizer)[:2]
    batch = collate_packed(rows, tokenizer.pad_token_id)
    mask = batch["attention_mask"][0, 0]
    first = packed_length(rows[0])
    p = shared_prompt_length(rows[0]["chosen_input_ids"], rows[0]["rejected_input_ids"],
                             rows[0]["chosen_labels"], rows[0]["rejected_labels"])
    c_end = len(rows[0]["chosen_input_ids"])
    assert not mask[first:, :first].any() and not mask[:first, first:].any()  # across pairs
    assert not mask[c_end:first, p:c_end].any()  # rejected never sees chosen
    assert mask[c_end:first, :p].all()  # ... but sees the whole prompt
    assert not torch.triu(mask, 1).any()  # causal
    pos = batch["position_ids"][0]
    assert pos[c_end].item() == p and pos[first].item() == 0  # rejected restarts; next pair at 0


def test_pack_rows_first_fit_decreasing():
    assert pack_rows([5, 3, 4, 2], None) == [[0, 1, 2, 3]]
    assert pack_rows([5, 3, 4, 2], 7) == [[0, 3], [2, 1]]
    assert pack_rows([9, 1], 4) == [[0], [1]]  # an over-long pair gets its own row


def test_unsupported_attention_falls_back(tokenizer):
    model = _model("llama", len(tokenizer))
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in packing_unsupported_reason(model)


def test_chunked_head_matches_full_logits(monkeypatch):
    import rayalign.logprobs as lp

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    weights = torch.randn(37)
    monkeypatch.setattr(lp, "HEAD_CHUNK_TOKENS", 8)  # several chunks
    got = lp.head_token_logps(head, hidden, targets)
    (got * weights).sum().backward()
    grads = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = head.weight.grad = head.bias.grad = None
    want = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None])[:, 0]
    (want * weights).sum().backward()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    for g, w in zip(grads, [hidden.grad, head.weight.grad, head.bias.grad], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_sdpa_models_attend_per_pair_block_and_eager_takes_float_masks(tokenizer, monkeypatch):
    import rayalign.logprobs as lp

    rows = _rows(tokenizer)
    calls = []
    real = lp.pair_segment_sdpa

    def counting(*args, **kwargs):
        calls.append("pair_layout" in kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lp, "pair_segment_sdpa", counting)
    monkeypatch.setattr(lp, "_register_pair_attention", lambda: __import__(
        "transformers").AttentionInterface.register(lp.PAIR_ATTENTION, counting))
    model = _model("llama", len(tokenizer)).eval()
    want = batch_logps(model, collate_pairs(rows, tokenizer.pad_token_id))
    got = batch_logps(model, collate_packed(rows, tokenizer.pad_token_id))
    assert calls and all(calls)  # every layer ran per-pair SDPA
    assert model.config._attn_implementation == "sdpa"  # restored after the forward
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    model.set_attn_implementation("eager")
    packed = collate_packed(rows, tokenizer.pad_token_id, **packed_mask_options(model))
    assert packed["attention_mask"].dtype == torch.float32
    torch.testing.assert_close(batch_logps(model, packed), want, rtol=0, atol=1e-4)


def test_mask_free_batches_need_pair_attention_and_checkpointing_keeps_dense_masks(tokenizer):
    rows = _rows(tokenizer)[:2]
    model = _model("llama", len(tokenizer))
    assert packed_mask_options(model) == {"dense_mask": False}
    batch = collate_packed(rows, tokenizer.pad_token_id, dense_mask=False)
    assert batch["attention_mask"] is None
    assert batch["pair_layout"] == [[(0, *_sizes(rows[0])), (packed_length(rows[0]), *_sizes(rows[1]))]]
    model.set_attn_implementation("eager")  # cannot attend by pair_layout: refused, not wrong
    with pytest.raises(ValueError, match="no dense attention mask"):
        batch_logps(model, batch)
    model.set_attn_implementation("sdpa")
    # recomputation after the forward runs plain SDPA, which needs the dense mask
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the current name, not the deprecated one
        enable_activation_checkpointing(model)
    assert "dense_mask" not in packed_mask_options(model)


def _sizes(row) -> tuple[int, int, int]:
    p = shared_prompt_length(row["chosen_input_ids"], row["rejected_input_ids"],
                             row["chosen_labels"], row["rejected_labels"])
    return p, len(row["chosen_input_ids"]) - p, len(row["rejected_input_ids"]) - p
