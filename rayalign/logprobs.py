"""Sequence log-probabilities of responses under a causal LM: the one number every
preference loss needs.

Why not ``model(...).logits``: the vocabulary projection is by far the largest matmul
of a small model (SmolLM2-135M: 49k x 576 per token) and a DPO batch is mostly prompt
and padding. We run the transformer backbone once, keep only the hidden states at
positions that predict a response token, and project *those* through ``lm_head``;
the log-softmax is then one ``logsumexp`` and one ``gather`` over ``[N_response, V]``
instead of ``[B, T, V]``. The result is identical (up to float rounding) to the naive
full-logits computation, which :func:`sequence_logps_reference` keeps for tests and for
architectures whose head is not a plain projection.

Both reference scoring (Ray Data) and training call :func:`batch_logps`, so cached
reference log-probs and on-the-fly ones are computed by the same code.

Two batch layouts (``rayalign.train.collate``): *padded* (chosen and rejected stacked
``[2B, T]``, :func:`sequence_logps`) and *packed* (each pair once as
``[prompt | chosen | rejected]`` with a 4D mask, :func:`packed_sequence_logps`). Both
return the same ``[2B]`` numbers (tested within 1e-4 in fp32).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rayalign.data.schema import IGNORE_INDEX as IGNORE_INDEX  # re-exported

# HEAD_CHUNK_TOKENS: scored tokens whose logits exist at once in head_token_logps (a
# memory bound; defined torch-free so that `rayalign plan` sizes memory with it).
from rayalign.jobs.archs import HEAD_CHUNK_TOKENS

Tensor = torch.Tensor


def _unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DeepSpeed / DDP / PEFT wrappers.

    PEFT's LoRA layers live *inside* the base model, so unwrapping keeps the adapter
    active (and ``with peft_model.disable_adapter():`` still disables it).
    """
    while True:
        if hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()  # PeftModel
        elif hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module  # DeepSpeedEngine, DistributedDataParallel
        else:
            return model


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(backbone, lm_head)`` when the head is a plain projection, else ``None``."""
    base = getattr(model, "base_model", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if base is None or base is model or get_head is None:
        return None
    head = get_head()
    config = getattr(model, "config", None)
    # Heads that post-process logits (Gemma-2 soft-capping, Cohere logit scale) take the
    # reference path so the maths stays exactly the model's own.
    special = any(
        getattr(config, attr, None) not in (None, 1.0)
        for attr in ("final_logit_softcapping", "logit_scale")
    )
    if head is None or special:
        return None
    return base, head


def _shifted(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Targets for positions ``0..T-2`` (token t predicts label t+1) and their mask."""
    targets = labels[:, 1:]
    return targets, targets != IGNORE_INDEX


def _token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(logits)[target]`` in fp32 without materialising the full softmax."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)




class _ChunkedHeadLogps(torch.autograd.Function):
    """``log softmax(hidden @ W.T + b)[target]`` computed ``HEAD_CHUNK_TOKENS`` rows at a time.

    Only one ``[chunk, V]`` block of logits lives at a time, in forward and (recomputed)
    in backward, instead of the ``[N, V]`` logits plus their softmax gradient; for
    SmolLM2's 49k vocabulary that is 200 KB per token. The gradient is the analytic one
    (``(onehot - softmax) * g``), in fp32, with the softmax taken in place from the
    log-normaliser saved by the forward.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):  # type: ignore[override]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], HEAD_CHUNK_TOKENS):
            part = slice(start, start + HEAD_CHUNK_TOKENS)
            logits = F.linear(hidden[part], weight, bias).float()
            picked = logits.gather(-1, targets[part, None])[:, 0]
            top = logits.amax(-1, keepdim=True)  # logsumexp, in place on this chunk's logits
            lse[part] = logits.sub_(top).exp_().sum(-1).log_().add_(top[:, 0])
            out[part] = picked - lse[part]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = (
            torch.zeros_like(bias, dtype=torch.float32)
            if bias is not None and ctx.needs_input_grad[2] else None
        )
        for start in range(0, hidden.shape[0], HEAD_CHUNK_TOKENS):
            part = slice(start, start + HEAD_CHUNK_TOKENS)
            logits = F.linear(hidden[part], weight, bias).float()
            # softmax from the saved log-normaliser, in place: exp(logits - lse) * -g
            grad_logits = logits.sub_(lse[part, None]).exp_().mul_(-grad_out[part, None])
            grad_logits[torch.arange(logits.shape[0], device=logits.device), targets[part]] += grad_out[part]
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[part] = grad_logits @ weight
            if grad_weight is not None and grad_logits.dtype == grad_weight.dtype:
                grad_weight.addmm_(grad_logits.t(), hidden[part])
            elif grad_weight is not None:
                grad_weight += (grad_logits.t() @ hidden[part]).float()
            if grad_bias is not None:
                grad_bias += grad_logits.float().sum(0)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None


def head_token_logps(head: nn.Module, hidden: Tensor, targets: Tensor) -> Tensor:
    """Token log-probs ``[N]`` (fp32) of ``targets`` under ``head`` applied to ``hidden [N, H]``.

    A plain ``nn.Linear`` head whose weight is an ordinary tensor takes the chunked path
    (:class:`_ChunkedHeadLogps`); anything else (LoRA on the head, ZeRO-3 partitioned
    weights) calls the module and materialises ``[N, V]`` logits.
    """
    weight = getattr(head, "weight", None)
    plain = (
        type(head) is nn.Linear and isinstance(weight, torch.Tensor) and weight.dim() == 2
        and not hasattr(weight, "ds_id")
    )
    if not plain:
        return _token_logps(head(hidden), targets)
    return _ChunkedHeadLogps.apply(hidden, weight, head.bias, targets)


def sequence_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """Sum of ``log p(token)`` over response positions, shape ``[B]`` (fp32).

    ``labels`` are aligned with ``input_ids`` (``-100`` on prompt and padding); this
    function does the one-token shift. The vocabulary projection runs only on the
    positions that predict a response token.
    """
    inner = _unwrap(model)
    parts = _backbone_and_head(inner)
    if parts is None:
        return sequence_logps_reference(model, input_ids, attention_mask, labels)
    backbone, head = parts
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    targets, mask = _shifted(labels)
    rows = mask.nonzero(as_tuple=True)[0]
    selected = hidden[:, :-1][mask]  # [N, H]: only states that predict a response token
    token_logps = head_token_logps(head, selected, targets[mask])
    out = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, rows, token_logps)


def sequence_logps_reference(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> Tensor:
    """The naive computation from full ``[B, T, V]`` logits (tests, unusual heads)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    targets, mask = _shifted(labels)
    token_logps = _token_logps(logits[:, :-1], targets.clamp(min=0))
    return (token_logps * mask).sum(-1)


# --------------------------------------------------------------------------- packed layout

#: Attention implementations that take the packed layout's 4D mask, and the mask kind.
PACKED_MASK_KINDS = {"sdpa": "bool", "eager": "float", "flex_attention": "block"}


def packing_unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot run the packed layout exactly (``None`` when it can).

    Needs an attention implementation that takes an arbitrary 4D mask (SDPA, eager,
    flex) and layer types whose masks we can build exactly (full attention, and
    sliding-window layers of models that take a per-layer-type mask dict).
    """
    config = getattr(_unwrap(model), "config", None)
    if config is None:
        return "the model has no config"
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in PACKED_MASK_KINDS:
        return f"attention implementation {impl!r} takes no custom 4D mask"
    layer_types = set(getattr(config, "layer_types", None) or [])
    other = layer_types - {"full_attention", "sliding_attention"}
    if other:
        return f"layer types {sorted(other)} have no exact packed mask"
    if not layer_types and getattr(config, "sliding_window", None) and getattr(
        config, "use_sliding_window", True
    ):
        return "sliding-window attention without per-layer-type masks"
    return None


def packed_mask_options(model: nn.Module) -> dict[str, Any]:
    """``collate_packed`` keyword arguments this model needs (mask kind, sliding window).

    SDPA models with full-attention layers only attend pair by pair from the batch's
    ``pair_layout`` (:func:`pair_segment_sdpa`) and get no dense ``L^2`` mask
    (``dense_mask=False``), unless gradient checkpointing is on: its recomputation runs in
    the backward, outside the forward's pair attention, so both run plain SDPA over the
    dense mask (:class:`_pair_attention`).
    """
    inner = _unwrap(model)
    config = inner.config
    impl = getattr(config, "_attn_implementation", None) or "eager"
    options: dict[str, Any] = {}
    if PACKED_MASK_KINDS.get(impl) == "float":
        options["float_mask_dtype"] = getattr(config, "dtype", None) or torch.float32
        if isinstance(options["float_mask_dtype"], str):
            options["float_mask_dtype"] = getattr(torch, options["float_mask_dtype"])
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        options["sliding_window"] = int(config.sliding_window)
    elif impl == "sdpa" and not _checkpointing(inner):
        options["dense_mask"] = False
    return options


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on (transformers 5 renamed the flag)."""
    flag = getattr(model, "is_activation_checkpointing", None)
    return bool(getattr(model, "is_gradient_checkpointing", False) if flag is None else flag)


#: Attention implementations the packed path switches SDPA models to for its forward:
#: with a dense mask (transformers builds SDPA's mask for other batches), and without
#: one (no mask function registered, so transformers builds none).
PAIR_ATTENTION = "rayalign_pair_sdpa"
PAIR_ATTENTION_NO_MASK = "rayalign_pair_sdpa_nomask"


def _row_pieces(tensors: tuple[Tensor, ...], sizes_by_row: list[list[int]]):
    """Per row, each of ``tensors`` (``[R, heads, L, d]``) split along L into ``sizes``.

    ``split`` rather than slicing: autograd's backward of a split is one ``cat`` of the
    pieces' gradients, where each slice's backward writes into its own zero-filled
    full-size tensor and those are summed (measured ~3x slower for one layer's attention
    forward + backward on four demo pairs in one row).
    """
    by_row = [t.split(1, dim=0) if t.shape[0] > 1 else (t,) for t in tensors]
    for r, sizes in enumerate(sizes_by_row):
        yield tuple(rows[r].split(sizes, dim=2) for rows in by_row)


def _pair_blocks(query: Tensor, key: Tensor, value: Tensor, layout, dropout: float,
                 scaling: float | None) -> Tensor:
    """Attention over a packed batch ``[R, heads, L, d]`` pair by pair, without a row mask.

    Per pair ``(start, p, c, n)``: ``[prompt | chosen]`` is plain causal attention (SDPA
    ``is_causal``); rejected queries attend to the prompt and to rejected keys (a small
    ``[n, p + n]`` lower-right causal mask). Cost ``~(p + c)^2 / 2 + n (p + n)`` per pair
    instead of ``L^2`` over the row. Same numbers as SDPA with the dense packed mask.
    The pairs (and a padding tail, ``n = 0``) tile each row, so the pieces are a split.
    """
    sdpa = F.scaled_dot_product_attention
    sizes = [[size for _, p, c, n in pairs for size in ((p + c, n) if n else (p + c,))]
             for pairs in layout]
    rows = []
    for pairs, (qs, ks, vs) in zip(layout, _row_pieces((query, key, value), sizes), strict=True):
        pieces, i = [], 0
        for _, p, _, n in pairs:
            pieces.append(sdpa(qs[i], ks[i], vs[i], dropout_p=dropout, scale=scaling,
                               is_causal=True))
            if n:
                keys = torch.cat([ks[i][:, :, :p], ks[i + 1]], dim=2)
                values = torch.cat([vs[i][:, :, :p], vs[i + 1]], dim=2)
                mask = torch.ones(n, p + n, dtype=torch.bool, device=query.device).tril(p)
                pieces.append(sdpa(qs[i + 1], keys, values, attn_mask=mask,
                                   dropout_p=dropout, scale=scaling))
            i += 2 if n else 1
        rows.append(torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0])
    return torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]


def pair_segment_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      is_causal=None, **kwargs):
    """SDPA pair by pair over a packed batch (``pair_layout`` kwarg, see ``collate_packed``).

    Attention never crosses pairs, so the blocks of a row off each pair's diagonal are
    all masked; full-attention layers run :func:`_pair_blocks` (no row mask needed),
    sliding-window layers SDPA per pair block with that block's slice of the dense mask.
    Same result as one SDPA over the whole masked row at ``sum(len^2)`` instead of
    ``row_len^2`` cost (measured: docs/training.md). Without ``pair_layout`` it is
    transformers' SDPA; a batch without a dense mask and without a layout is refused.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    layout = kwargs.pop("pair_layout", None)
    sliding = kwargs.get("sliding_window") is not None
    if layout is None:
        if attention_mask is None and getattr(getattr(module, "config", None), "_attn_implementation",
                                              None) == PAIR_ATTENTION_NO_MASK:
            raise ValueError("a packed batch without a dense mask needs its pair_layout")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    if sliding and not isinstance(attention_mask, torch.Tensor):
        raise ValueError("sliding-window layers need the packed batch's dense mask")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    if not sliding:
        return _pair_blocks(query, key, value, layout, dropout, scaling).transpose(1, 2).contiguous(), None
    sizes = [[p + c + n for _, p, c, n in pairs] for pairs in layout]
    rows = []
    for r, (pairs, (qs, ks, vs)) in enumerate(zip(layout, _row_pieces((query, key, value), sizes), strict=True)):
        rows.append(torch.cat([
            F.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask[r : r + 1, :, s : s + p + c + n, s : s + p + c + n],
                dropout_p=dropout, scale=scaling,
            )
            for q, k, v, (s, p, c, n) in zip(qs, ks, vs, pairs, strict=True)
        ], dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _register_pair_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(PAIR_ATTENTION, pair_segment_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PAIR_ATTENTION, sdpa_mask)
    # no mask function for PAIR_ATTENTION_NO_MASK: transformers then passes mask=None
    AttentionInterface.register(PAIR_ATTENTION_NO_MASK, pair_segment_sdpa)


class _pair_attention:
    """Context: an SDPA model runs :func:`pair_segment_sdpa` (restored on exit).

    ``dense``: whether the batch carries a dense mask; without one the model runs
    :data:`PAIR_ATTENTION_NO_MASK` so transformers builds no ``L^2`` mask either.
    Inactive under gradient checkpointing: its recomputation runs in the backward, after
    the context closed, and torch's checkpoint refuses a recomputation that saves other
    tensors than the forward did (``CheckpointError``), so such models run plain SDPA over
    the packed batch's dense mask in both (:func:`packed_mask_options` keeps it).
    """

    def __init__(self, model: nn.Module, dense: bool = True) -> None:
        inner = _unwrap(model)
        self.config = getattr(inner, "config", None)
        self.active = getattr(self.config, "_attn_implementation", None) == "sdpa" and not _checkpointing(inner)
        self.impl = PAIR_ATTENTION if dense else PAIR_ATTENTION_NO_MASK

    def __enter__(self) -> bool:
        if self.active:
            _register_pair_attention()
            self.config._attn_implementation = self.impl
        return self.active

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.config._attn_implementation = "sdpa"


def _block_mask(mask: Tensor) -> Any:
    """A dense bool ``[R, 1, L, L]`` mask as a flex-attention ``BlockMask``."""
    from torch.nn.attention.flex_attention import create_block_mask

    dense = mask[:, 0]

    def mask_mod(b, h, q, k):
        return dense[b, q, k]

    rows, length = dense.shape[0], dense.shape[-1]
    return create_block_mask(mask_mod, rows, None, length, length, device=str(mask.device))


def _model_mask(model: nn.Module, mask: Any) -> Any:
    impl = getattr(_unwrap(model).config, "_attn_implementation", None)
    if impl == "flex_attention":
        if isinstance(mask, dict):
            return {k: _block_mask(v) for k, v in mask.items()}
        return _block_mask(mask)
    return mask


def packed_sequence_logps(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """Response log-probs ``[2B]`` (chosen then rejected, fp32) from a packed batch.

    ``batch`` is what :func:`rayalign.train.collate.collate_packed` returns. One forward
    over the packed rows; the head runs only on the hidden states that predict a scored
    token (``score_rows``, ``score_positions``), and each token's log-prob is summed into
    its sequence (``score_index``).
    """
    inner = _unwrap(model)
    parts = _backbone_and_head(inner)
    kwargs = dict(
        input_ids=batch["input_ids"], attention_mask=_model_mask(inner, batch["attention_mask"]),
        position_ids=batch["position_ids"], use_cache=False,
    )
    rows, positions = batch["score_rows"], batch["score_positions"]
    dense = batch["attention_mask"] is not None
    with _pair_attention(inner, dense) as by_pair:
        if by_pair and "pair_layout" in batch:
            kwargs["pair_layout"] = batch["pair_layout"]
        elif not dense:
            raise ValueError(
                "this packed batch has no dense attention mask (collated for an SDPA model "
                f"that attends pair by pair); {type(inner).__name__} with attention "
                f"{getattr(inner.config, '_attn_implementation', None)!r} cannot run it"
            )
        if parts is None:
            logits = model(**kwargs).logits[rows, positions]
            token_logps = _token_logps(logits, batch["score_targets"])
        else:
            backbone, head = parts
            hidden = backbone(**kwargs)[0]
            token_logps = head_token_logps(head, hidden[rows, positions], batch["score_targets"])
    out = torch.zeros(batch["num_sequences"], dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, batch["score_index"], token_logps)


def batch_logps(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """``[2B]`` response log-probs of a padded or packed batch (chosen rows first)."""
    if "score_index" in batch:
        return packed_sequence_logps(model, batch)
    return sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])


def mean_token_logps(logps: torch.Tensor, token_counts: torch.Tensor) -> torch.Tensor:
    """Summed response log-probs ``[B]`` divided by their scored token counts ``[B]``.

    ``loss.average_logps``: the per-token (length-normalised) log-probability that TRL's
    DPO trainer uses for IPO (Azar et al., arXiv 2310.12036) and SimPO (arXiv 2405.14734,
    eq. 4) uses throughout. A count of 0 (a response truncated away) is treated as 1.
    """
    return logps / token_counts.clamp(min=1).to(device=logps.device, dtype=logps.dtype)
