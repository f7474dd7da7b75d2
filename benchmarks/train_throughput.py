"""Training throughput: rayalign packed, rayalign padded and TRL's DPOTrainer, side by side.

Prints ONE JSON object. Every side runs in its own subprocess (clean peak-memory numbers,
no shared caches), one after another in the same run, fp32 on CPU, on the same model,
pairs, batch size and steps, on two data sets: the built-in demo pairs
(``rayalign/resources/demo/pairs.jsonl``) and 512 pairs of
``../shared/data/pku_saferlhf/pku_seferlhf_realign_dpo_5k.json`` (safe response chosen;
real prompt/response lengths). Each side trains ``--steps`` optimizer steps of
``--batch-size`` pairs on the first ``steps x batch_size`` pairs of the set.

What is timed:
* ``pairs_per_s``: steady-state optimizer steps 2..N (step 1 pays one-off warm-up),
  reference log-probs computed on the fly on both sides (a frozen reference model).
  rayalign runs :func:`rayalign.train.loop.train` - the same code Ray Train workers run -
  in-process through a ``LocalRuntime`` (1 worker, DeepSpeed ZeRO-0, gloo), without Ray
  start-up; rows come from an in-memory shard with Ray Data's ``iter_batches`` shape.
  Both sides step torch's fused AdamW (TRL's default optimizer under torch >= 2.8;
  rayalign's on CPU), so the optimizer costs the same on each.
  ``tokens_per_s``: the pairs' tokens (prompt + chosen + rejected, as TRL sees them) per
  second, so the three sides divide the same work by their own time.
* ``padding_fraction``: share of computed positions that were padding; for the packed
  side ``prompt_tokens_saved``: prompt tokens not computed a second time (share of the
  padded-pairs tokens).
* ``loss_step1``: each side's loss of its first step (same initial weights); the
  rayalign sides run the same pairs in the same order, so theirs agree to ~1e-6.
* ``position_ratio``: positions TRL runs through the backbone per pair (its padded
  ``[chosen; rejected]`` rows, prompt twice) over the packed layout's.
* ``flop_ratio``: TRL's matrix-multiply FLOPs per pair over packed rayalign's - the
  speed-up the two layouts allow at equal efficiency per FLOP. Per position the backbone
  costs ``2 x`` its linear weights, the LM head ``2 x vocab x hidden``; TRL's fused head
  scores every position on CPU (it compacts to the scored ones only on Triton devices),
  rayalign's only the scored response tokens. Attention's ``L^2`` term is left out (a few
  per cent at these lengths). ``ratio / flop_ratio`` is rayalign's efficiency per FLOP
  relative to TRL's.
* ``peak_rss_mb``: ``ru_maxrss`` of the side's subprocess.
* ``cpu_s_per_step`` and ``cpu_ratio*``: the same steady steps timed in process CPU
  seconds (``time.process_time``), a check on the wall-clock ratios when other jobs share
  the machine. ``load_average`` (1-minute, before and after the run, and per side at its
  end) says how shared it was; ``threads`` is each side's torch intra-op thread count.
  With 2+ threads, CPU seconds include OpenMP spin-waiting, so they are only comparable
  between sides that ran with the same thread count.
* ``--quick`` runs the tiny random model: its steps take milliseconds, so its ratios
  measure per-step overhead (optimizer, data, Python), not what the packed layout saves
  on a real model; the targets are stated for SmolLM2-135M (the default run).

Token ids come from TRL's own tokenization of the pairs, so all sides see identical
sequences. Usage: ``python benchmarks/train_throughput.py [--quick] [--steps N]``
(``--quick``: the tiny random model, a few steps, same keys).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAYALIGN_SHARED_DATA", REPO.parent / "shared" / "data"))
PKU = SHARED_DATA / "pku_saferlhf" / "pku_seferlhf_realign_dpo_5k.json"
DEMO = REPO / "rayalign" / "resources" / "demo" / "pairs.jsonl"
PKU_POOL = 512
BETA = 0.1
LR = 1e-5
SIDES = ("rayalign_packed", "rayalign_padded", "trl")


# --------------------------------------------------------------------------- shared setup


def text_records(dataset: str, seed: int = 0) -> list[dict[str, str]]:
    """``{prompt, chosen, rejected}`` texts: demo pairs as shipped; PKU: 512 shuffled pairs."""
    if dataset == "demo":
        rows = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
        return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    records = json.loads(PKU.read_text())
    random.Random(seed).shuffle(records)
    return [{"prompt": r["prompt"], "chosen": r["response"][0], "rejected": r["response"][1]}
            for r in records[:PKU_POOL]]


def load_text_pairs(tokenizer, dataset: str, count: int, max_length: int) -> list[dict[str, str]]:
    """Chat-formatted prompt strings + chosen / rejected responses that fit ``max_length``."""
    pairs = []
    for rec in text_records(dataset):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": rec["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        longest = max(len(tokenizer(prompt + rec[k])["input_ids"]) for k in ("chosen", "rejected")) + 1
        if longest <= max_length:
            pairs.append({"prompt": prompt, "chosen": rec["chosen"], "rejected": rec["rejected"]})
        if len(pairs) == count:
            return pairs
    raise SystemExit(f"{dataset}: only {len(pairs)} pairs fit in {max_length} tokens")


def trl_trainer(model_path: str, pairs, args, *, out: str):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    config = DPOConfig(
        output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, beta=BETA,
        loss_type=["sigmoid"], logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        bf16=False, fp16=False, dataloader_num_workers=0, max_length=None, seed=0,
        optim="adamw_torch_fused", disable_tqdm=True, max_grad_norm=1e9,
    )
    return DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                      processing_class=tokenizer)


def tokenized_rows(model_path: str, dataset: str, args) -> list[dict[str, Any]]:
    """Identical token ids for every side: TRL's tokenization, in rayalign's row contract."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pairs = load_text_pairs(tokenizer, dataset, args.steps * args.batch_size, args.max_length)
    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(model_path, pairs, args, out=out)
        rows = []
        for i, ex in enumerate(trainer.train_dataset):
            p = list(ex["prompt_ids"])
            row = {"id": f"pair{i:05d}", "chosen_safe": True, "rejected_safe": False,
                   "prompt": pairs[i]["prompt"], "chosen": pairs[i]["chosen"],
                   "rejected": pairs[i]["rejected"]}
            for name in ("chosen", "rejected"):
                r = list(ex[f"{name}_ids"])
                row[f"{name}_input_ids"] = p + r
                row[f"{name}_labels"] = [-100] * len(p) + r
            rows.append(row)
    return rows


def matmul_flops_per_position(model_path: str) -> tuple[float, float]:
    """``(backbone, lm_head)`` forward matmul FLOPs per position: ``2 x`` the weights of the
    backbone's linear layers and ``2 x vocab x hidden`` (a meta-device model: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    body = sum(m.weight.numel() for m in model.modules()
               if isinstance(m, torch.nn.Linear) and m is not head)
    return 2.0 * body, 2.0 * head.weight.numel()


def scored_tokens(row: dict[str, Any]) -> int:
    """Response tokens whose log-probs a pair scores (labels other than -100)."""
    return sum(int(t != -100) for name in ("chosen", "rejected") for t in row[f"{name}_labels"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steady(times: list[float]) -> float:
    """Mean seconds per step over steps 2..N."""
    return (times[-1] - times[0]) / (len(times) - 1)


# --------------------------------------------------------------------------- rayalign side


class MemoryShard:
    """In-memory stand-in for a Ray Data shard: ``iter_batches`` of columnar numpy blocks."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def iter_batches(self, *, batch_size: int, batch_format: str = "numpy", prefetch_batches: int = 0):
        import numpy as np

        for i in range(0, len(self.rows), batch_size):
            chunk = self.rows[i : i + batch_size]
            block = {}
            for key in chunk[0]:
                col = np.empty(len(chunk), dtype=object)
                col[:] = [r[key] for r in chunk]
                block[key] = col
            yield block


def run_rayalign(model_path: str, rows, args, *, packing: bool) -> dict[str, Any]:
    import torch

    from rayalign.config import Config
    from rayalign.train.loop import train
    from rayalign.train.runtime import LocalRuntime, init_local_process_group

    torch.manual_seed(0)
    cfg = Config.model_validate({
        "model": {"name_or_path": model_path, "dtype": "float32"},
        "loss": {"name": "dpo", "beta": BETA},
        "train": {"num_workers": 1, "zero_stage": 0, "batch_size": args.batch_size,
                  "learning_rate": LR, "warmup_ratio": 0.0, "lr_schedule": "constant",
                  "max_steps": args.steps, "max_grad_norm": 1e9, "checkpoint_every": 10**6,
                  "log_every": 1, "length_grouping": True, "seed": 0, "packing": packing},
    })
    times: list[float] = []
    cpu: list[float] = []
    runtime = LocalRuntime({"train": MemoryShard(rows)},
                           on_report=lambda m, _: (times.append(time.perf_counter()),
                                                   cpu.append(time.process_time())))
    init_local_process_group()
    train(cfg, runtime, steps_per_epoch=args.steps, export=False)
    reports = runtime.reports
    return {
        "threads": torch.get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),
        "step_s": steady(times),
        "cpu_step_s": steady(cpu),
        "loss_step1": reports[0]["loss"],
        "padding_fraction": sum(r["padding_fraction"] for r in reports) / len(reports),
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- TRL side


def run_trl(model_path: str, rows, args) -> dict[str, Any]:
    from transformers import TrainerCallback

    pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(model_path, pairs, args, out=out)
        times: list[float] = []
        cpu: list[float] = []
        stats = {"tokens": 0, "slots": 0, "pairs": 0}
        collate = trainer.data_collator

        def counting_collator(examples):
            batch = collate(examples)
            stats["tokens"] += int(batch["attention_mask"].sum())
            stats["slots"] += batch["attention_mask"].numel()
            stats["pairs"] += len(examples)
            return batch

        trainer.data_collator = counting_collator

        class StepTimes(TrainerCallback):
            def on_step_end(self, *_, **__):
                times.append(time.perf_counter())
                cpu.append(time.process_time())

        trainer.add_callback(StepTimes())
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "threads": __import__("torch").get_num_threads(),
        "load_average": round(os.getloadavg()[0], 2),
        "step_s": steady(times),
        "cpu_step_s": steady(cpu),
        "loss_step1": losses[0] if losses else None,
        "padding_fraction": 1 - stats["tokens"] / max(1, stats["slots"]),
        "positions_per_pair": stats["slots"] / max(1, stats["pairs"]),
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- orchestration


def worker(args) -> None:
    """One side in this subprocess; prints its JSON on the last line."""
    rows = json.loads(Path(args.rows).read_text())
    if args.side == "trl":
        result = run_trl(args.model, rows, args)
    else:
        result = run_rayalign(args.model, rows, args, packing=args.side == "rayalign_packed")
    print(json.dumps(result))


def spawn(side: str, model: str, rows_file: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model", model, "--rows", rows_file,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length)]
    env = dict(os.environ, DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-4000:]}")
    print(f"[train_throughput] {side}: {proc.stdout.strip().splitlines()[-1]}", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(dataset: str, model_path: str, args) -> dict[str, Any]:
    from rayalign.train.collate import packed_length, pair_length_padded

    rows = tokenized_rows(model_path, dataset, args)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(rows, handle)
        rows_file = handle.name
    try:
        results = {side: spawn(side, model_path, rows_file, args) for side in SIDES}
    finally:
        os.unlink(rows_file)
    bs = args.batch_size
    tokens_per_pair = sum(pair_length_padded(r) for r in rows) / len(rows)
    packed_per_pair = sum(packed_length(r) for r in rows) / len(rows)
    out: dict[str, Any] = {"pairs": len(rows), "tokens_per_pair": round(tokens_per_pair, 1),
                           "prompt_tokens_saved": round(1 - packed_per_pair / tokens_per_pair, 4)}
    for side, res in results.items():
        pps = bs / res["step_s"]
        out[side] = {
            "pairs_per_s": round(pps, 3),
            "tokens_per_s": round(pps * tokens_per_pair, 1),
            "cpu_s_per_step": round(res["cpu_step_s"], 3),
            "padding_fraction": round(res["padding_fraction"], 4),
            "peak_rss_mb": round(res["peak_rss_mb"], 1),
            "loss_step1": res["loss_step1"],
            "threads": res["threads"],
            "load_average": res["load_average"],
        }
    trl = out["trl"]["pairs_per_s"]
    out["ratio_packed_vs_trl"] = round(out["rayalign_packed"]["pairs_per_s"] / trl, 3)
    out["ratio_padded_vs_trl"] = round(out["rayalign_padded"]["pairs_per_s"] / trl, 3)
    # What the layouts allow: positions through the backbone and matmul FLOPs per pair,
    # TRL's over packed rayalign's (see the docstring); ratio / flop_ratio is efficiency.
    out["trl"]["positions_per_pair"] = round(results["trl"]["positions_per_pair"], 1)
    out["rayalign_packed"]["positions_per_pair"] = round(packed_per_pair, 1)
    out["position_ratio_trl_vs_packed"] = round(results["trl"]["positions_per_pair"] / packed_per_pair, 3)
    body, head = matmul_flops_per_position(model_path)
    scored_per_pair = sum(scored_tokens(r) for r in rows) / len(rows)
    trl_flops = results["trl"]["positions_per_pair"] * (body + head)
    packed_flops = packed_per_pair * body + scored_per_pair * head
    out["flop_ratio_trl_vs_packed"] = round(trl_flops / packed_flops, 3)
    # the same by CPU seconds per step: robust to other load on a shared machine
    trl_cpu = out["trl"]["cpu_s_per_step"]
    out["cpu_ratio_packed_vs_trl"] = round(trl_cpu / out["rayalign_packed"]["cpu_s_per_step"], 3)
    out["cpu_ratio_padded_vs_trl"] = round(trl_cpu / out["rayalign_padded"]["cpu_s_per_step"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 steps (~2-5 min)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.side = args.worker
        worker(args)
        return
    args.steps = args.steps or (8 if args.quick else 6)
    # Libraries log to stdout (DeepSpeed's accelerator notice); keep stdout for the JSON.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    from rayalign.modeling.models import TINY_MODEL_NAME, resolve_model_path

    name = TINY_MODEL_NAME if args.quick else "smollm2-135m-instruct"
    model_path = resolve_model_path(name)
    started = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    demo = compare("demo", model_path, args)
    pku = compare("pku", model_path, args)
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
    print(json.dumps({
        "model": name,
        "ratio": demo["ratio_packed_vs_trl"],
        "ratio_pku": pku["ratio_packed_vs_trl"],
        "cpu_ratio": demo["cpu_ratio_packed_vs_trl"],
        "cpu_ratio_pku": pku["cpu_ratio_packed_vs_trl"],
        "padding_fraction": max(demo["rayalign_packed"]["padding_fraction"],
                                pku["rayalign_packed"]["padding_fraction"]),
        "prompt_tokens_saved": {"demo": demo["prompt_tokens_saved"], "pku": pku["prompt_tokens_saved"]},
        "position_ratio": {"demo": demo["position_ratio_trl_vs_packed"],
                           "pku": pku["position_ratio_trl_vs_packed"]},
        "flop_ratio": {"demo": demo["flop_ratio_trl_vs_packed"], "pku": pku["flop_ratio_trl_vs_packed"]},
        "rayalign_peak_rss_mb": max(demo["rayalign_packed"]["peak_rss_mb"],
                                    pku["rayalign_packed"]["peak_rss_mb"]),
        "trl_peak_rss_mb": max(demo["trl"]["peak_rss_mb"], pku["trl"]["peak_rss_mb"]),
        "rayalign_padded_peak_rss_mb": max(demo["rayalign_padded"]["peak_rss_mb"],
                                           pku["rayalign_padded"]["peak_rss_mb"]),
        "timed": "steady-state optimizer steps 2..N of each side's training loop (rayalign: "
                 "rayalign.train.loop.train in-process, 1 worker, DeepSpeed ZeRO-0, no Ray "
                 "start-up; TRL: DPOTrainer.train), fp32 CPU, reference on the fly",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": sorted({side["threads"] for data in (demo, pku) for side in
                           (data["rayalign_packed"], data["rayalign_padded"], data["trl"])}),
        "load_average": {"start": load_start, "end": round(os.getloadavg()[0], 2),
                         "cpus": os.cpu_count()},
        "note": ("tiny random model: ratios measure per-step overhead, not the packed "
                 "layout's savings on a real model" if args.quick else None),
        "demo": demo,
        "pku": pku,
        "seconds": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
