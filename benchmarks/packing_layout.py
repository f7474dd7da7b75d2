"""Which packed layout is fastest: one micro-batch's policy forward+backward and reference forward.

Prints one JSON line per layout with the CPU seconds of one micro-batch (mean over
``--batches`` micro-batches after one warm-up; ``time.process_time``, so other jobs on a
shared machine inflate it less than wall time), computed positions and padding:

* ``padded``: chosen and rejected stacked ``[2B, T]`` (``collate_pairs``);
* ``packed``: every pair once as ``[prompt | chosen | rejected]`` in one row, no padding;
  SDPA models attend pair by pair from ``pair_layout`` (no ``[L, L]`` mask);
* ``packed-dense``: the same row with the dense 4D mask built and passed (what eager,
  flex and checkpointed models get);
* ``packed-rows-N``: rows of at most N tokens (first-fit decreasing, padded to the
  longest row; ``N=1``: one row per pair).

The same model serves as policy and reference (its weights are not updated; only the
work is timed). Pairs: the built-in demo pairs or PKU-SafeRLHF (``train_throughput``'s
sets), chat-formatted with the model's template, at most ``--max-length`` tokens.
Usage: ``python benchmarks/packing_layout.py [--model smollm2-135m-instruct] [--data pku]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import text_records


def tokenized(tokenizer, dataset: str, count: int, max_length: int) -> list[dict]:
    rows = []
    for rec in text_records(dataset):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": rec["prompt"]}],
                                               add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        row = {"id": str(len(rows)), "chosen_safe": True, "rejected_safe": False}
        for name in ("chosen", "rejected"):
            ids = tokenizer(rec[name], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            row[f"{name}_input_ids"] = prompt_ids + ids
            row[f"{name}_labels"] = [-100] * len(prompt_ids) + ids
        if max(len(row["chosen_input_ids"]), len(row["rejected_input_ids"])) <= max_length:
            rows.append(row)
        if len(rows) == count:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", choices=("demo", "pku"), default="pku")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--layouts", default="padded,packed,packed-dense,packed-rows-1")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rayalign.logprobs import batch_logps, packed_mask_options
    from rayalign.modeling.models import resolve_model_path
    from rayalign.train.collate import collate_packed, collate_pairs

    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    bs = args.batch_size
    rows = tokenized(tokenizer, args.data, bs * (args.batches + 1), args.max_length)
    groups = [rows[i : i + bs] for i in range(0, len(rows) - bs + 1, bs)]
    options = packed_mask_options(model)

    def collate(layout: str, group: list[dict]) -> dict:
        if layout == "padded":
            return collate_pairs(group, pad)
        if layout == "packed":
            return collate_packed(group, pad, **options)
        if layout == "packed-dense":
            return collate_packed(group, pad, **{**options, "dense_mask": True})
        return collate_packed(group, pad, row_tokens=int(layout.rsplit("-", 1)[1]), **options)

    def step(batch: dict) -> None:
        with torch.no_grad():
            reference = batch_logps(model, batch)
        (batch_logps(model, batch) - reference).sum().backward()
        model.zero_grad(set_to_none=True)

    for layout in args.layouts.split(","):
        step(collate(layout, groups[0]))  # warm-up
        cpu, tokens, slots = 0.0, 0, 0
        for group in groups[1:]:
            start = time.process_time()
            batch = collate(layout, group)
            step(batch)
            cpu += time.process_time() - start
            tokens, slots = tokens + batch["num_tokens"], slots + batch["num_slots"]
        print(json.dumps({
            "model": args.model, "data": args.data, "layout": layout, "threads": torch.get_num_threads(),
            "cpu_s_per_batch": round(cpu / (len(groups) - 1), 3), "tokens": tokens, "slots": slots,
            "padding_fraction": round(1 - tokens / slots, 4),
        }), flush=True)


if __name__ == "__main__":
    main()
