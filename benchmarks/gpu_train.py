"""One-GPU training throughput without Ray: packed vs padded preference batches.

Runs rayalign's training maths (``rayalign.train.collate``, ``rayalign.logprobs``,
``rayalign.losses``: the code Ray Train workers run) in a plain loop on one CUDA GPU in
bf16, on a ~1.1B-parameter Llama-shaped model built from a config (random weights, no
hub) with a frozen reference copy, on synthetic pairs with chat-like lengths (shared
prompt 64-512 tokens, responses 32-256). The optimizer is DeepSpeed ZeRO-2 when
``deepspeed`` imports (single process, world size 1), else ``torch.optim.AdamW``. Needs
only torch and transformers (and optionally deepspeed): no Ray, no data files.

Prints one JSON object: for ``packed`` and ``padded`` the steady-state ``tokens_per_s``
(tokens actually in the pairs, prompt counted once for packed and twice for padded, as
each layout must compute it), ``pairs_per_s``, ``peak_gpu_mem_gb``, ``padding_fraction``
and ``mfu`` = (6 N + 2 N) x computed tokens / s / the GPU's dense bf16 peak (policy
forward+backward, reference forward; ``N`` = parameters), plus ``speedup`` (packed pairs/s
over padded). Attention: flex attention with a ``BlockMask`` when available on CUDA,
else SDPA with the 4D boolean mask.

``--dry-run``: the same loop on a tiny model, fp32, on CPU, two steps (CI runs this).

Usage: ``python benchmarks/gpu_train.py [--steps 12] [--batch-size 16] [--dry-run]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Dense bf16 tensor-core peak (FLOP/s) by device-name fragment; ``--peak-tflops`` overrides.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10G": 125e12, "A10": 125e12, "V100": 125e12, "4090": 165e12}


def synthetic_pairs(n: int, vocab: int, *, seed: int, scale: float = 1.0) -> list[dict[str, Any]]:
    """Pairs with a shared prompt and two responses of chat-like lengths (token ids only)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        p = max(4, int(rng.randint(64, 512) * scale))
        prompt = [rng.randrange(3, vocab) for _ in range(p)]
        row: dict[str, Any] = {"id": f"s{i}", "chosen_safe": True, "rejected_safe": False}
        for name in ("chosen", "rejected"):
            r = [rng.randrange(3, vocab) for _ in range(max(2, int(rng.randint(32, 256) * scale)))]
            row[f"{name}_input_ids"] = prompt + r
            row[f"{name}_labels"] = [-100] * p + r
        rows.append(row)
    return rows


def build_model(dry: bool, attn: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if dry:
        config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    else:  # TinyLlama-1.1B shape
        config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                             num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                             max_position_embeddings=4096)
    config._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def make_optimizer(model, dry: bool, lr: float):
    """``(step_fn, name)``: DeepSpeed ZeRO-2 on GPU when importable, else torch AdamW."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if not dry:
        try:
            import deepspeed
        except Exception:  # any import failure means: not usable here
            deepspeed = None
        if deepspeed is not None:
            for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511", "RANK": "0",
                               "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
                os.environ.setdefault(key, value)
            deepspeed.init_distributed(dist_backend="nccl")
            engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config={
                "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
                "bf16": {"enabled": True}, "gradient_clipping": 1.0,
                "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": 0.0}},
                "steps_per_print": 10**9,
            })
            return engine, "deepspeed-zero2"
    optimizer = torch.optim.AdamW(params, lr=lr, fused=torch.cuda.is_available() and not dry)
    return optimizer, "torch-adamw"


def run(layout: str, args, rows: list[dict[str, Any]], device: str, dtype) -> dict[str, Any]:
    import torch

    from rayalign.logprobs import batch_logps, packed_mask_options, packing_unsupported_reason
    from rayalign.losses import preference_loss
    from rayalign.train.collate import collate_packed, collate_pairs, to_device

    attn = args.attn
    model = build_model(args.dry_run, attn).to(device=device, dtype=dtype).train()
    reference = build_model(args.dry_run, attn).to(device=device, dtype=dtype).eval()
    reference.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    opt, opt_name = make_optimizer(model, args.dry_run, 1e-6)
    engine = opt if opt_name == "deepspeed-zero2" else None
    if layout == "packed" and packing_unsupported_reason(model):
        raise SystemExit(f"packed layout unsupported: {packing_unsupported_reason(model)}")

    options = packed_mask_options(model)

    def collate(batch_rows):
        if layout == "packed":
            return collate_packed(batch_rows, 0, **options)
        return collate_pairs(batch_rows, 0)

    bs = args.batch_size
    batches = [collate(rows[i : i + bs]) for i in range(0, args.steps * bs, bs)]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, tokens, slots, losses = [], 0, 0, []
    for step, cpu_batch in enumerate(batches):
        batch = to_device(cpu_batch, torch.device(device))
        with torch.no_grad():
            ref = batch_logps(reference, batch)
        policy = batch_logps(engine.module if engine is not None else model, batch)
        half = policy.shape[0] // 2
        loss = preference_loss("dpo", policy[:half], policy[half:], ref[:half], ref[half:],
                               batch["chosen_safe"], batch["rejected_safe"], beta=0.1).mean()
        if engine is not None:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter())
        if step >= 1:
            tokens += cpu_batch["num_tokens"]
            slots += cpu_batch["num_slots"]
    seconds = times[-1] - times[0]
    tokens_per_s = tokens / seconds
    pairs_per_s = bs * (len(times) - 1) / seconds
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if peak is None and device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    result = {
        "tokens_per_s": round(tokens_per_s, 1),
        "pairs_per_s": round(pairs_per_s, 3),
        "padding_fraction": round(1 - tokens / slots, 4) if slots else 0.0,
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device.startswith("cuda") else None,
        "mfu": round(8 * n_params * tokens_per_s / peak, 4) if peak else None,
        "loss_step1": losses[0],
        "params": n_params,
        "optimizer": opt_name,
    }
    del model, reference, opt, engine
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps (step 1 untimed)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--attn", default=None, help="sdpa | flex_attention | eager (default: "
                        "flex_attention on CUDA when available, else sdpa)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, fp32, CPU, 2 steps")
    args = parser.parse_args()
    import torch

    if args.dry_run:
        device, dtype = "cpu", torch.float32
        args.steps, args.batch_size = 2, 4
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU here; use --dry-run for the CPU check")
        device, dtype = "cuda", torch.bfloat16
    if args.attn is None:
        has_flex = False
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

            has_flex = device == "cuda"
        except ImportError:
            pass
        args.attn = "flex_attention" if has_flex else "sdpa"
    vocab = 512 if args.dry_run else 32000
    rows = synthetic_pairs(args.steps * args.batch_size, vocab, seed=0,
                           scale=0.1 if args.dry_run else 1.0)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                           "dtype": str(dtype).removeprefix("torch."), "attn": args.attn,
                           "steps": args.steps, "batch_size": args.batch_size}
    for layout in ("packed", "padded"):
        try:
            out[layout] = run(layout, args, rows, device, dtype)
        except Exception as exc:  # flex unusable here: say so and measure the SDPA path
            if args.attn != "flex_attention" or layout != "packed":
                raise
            print(f"[gpu_train] flex attention failed ({exc!r}); using sdpa", file=sys.stderr)
            args.attn = out["attn"] = "sdpa"
            out[layout] = run(layout, args, rows, device, dtype)
    out["speedup"] = round(out["packed"]["pairs_per_s"] / out["padded"]["pairs_per_s"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
