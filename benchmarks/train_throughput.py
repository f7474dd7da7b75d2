"""Training throughput: rayalign's loop vs TRL's DPOTrainer on the same model, pairs and batch size.

Prints ONE JSON object. Each side runs in its own subprocess (clean peak-memory numbers,
no shared caches), fp32 on CPU, N optimizer steps of ``batch_size`` pairs, 1 epoch over
exactly N x batch_size pairs (real PKU-SafeRLHF safe/unsafe pairs from ../shared/data).

What is timed:
* ``*_pairs_per_s``: steady-state optimizer steps 2..N (step 1 pays one-off warm-up),
  reference log-probs computed on the fly on both sides (a frozen reference model).
  rayalign runs :func:`rayalign.train.loop.train` - the same code Ray Train workers run -
  in-process through a ``LocalRuntime`` (1 worker, DeepSpeed ZeRO-0, gloo), without Ray
  start-up; rows come from an in-memory shard with Ray Data's ``iter_batches`` shape.
* ``ratio_cached``: both sides with precomputed reference log-probs, precompute time
  included: pairs / (precompute seconds + N x steady step time). rayalign scores with
  :func:`rayalign.logprobs.sequence_logps` (what the data pipeline's reference scorer
  calls); TRL with ``precompute_ref_log_probs=True`` (its precompute is timed as the
  difference of trainer construction with and without it).
* ``loss_step1``: both losses on the SAME first batch and initial weights: rayalign's
  from its first training step, TRL's from ``compute_loss`` on that batch's pairs.

Token ids come from TRL's own tokenization of the pairs, so both sides see identical
sequences. Usage: ``python benchmarks/train_throughput.py [--quick] [--steps N]``.
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
BETA = 0.1
LR = 1e-5


# --------------------------------------------------------------------------- shared setup


def load_text_pairs(tokenizer, count: int, max_length: int, seed: int = 0) -> list[dict[str, str]]:
    """Chat-formatted prompt strings + safe (chosen) / unsafe (rejected) responses that fit."""
    records = json.loads(PKU.read_text())
    random.Random(seed).shuffle(records)
    pairs = []
    for rec in records:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": rec["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        chosen, rejected = rec["response"]
        longest = max(len(tokenizer(prompt + r)["input_ids"]) for r in (chosen, rejected)) + 1
        if longest <= max_length:
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        if len(pairs) == count:
            return pairs
    raise SystemExit(f"only {len(pairs)} pairs fit in {max_length} tokens")


def trl_trainer(model_path: str, pairs, args, *, precompute: bool, out: str):
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
        precompute_ref_log_probs=precompute, precompute_ref_batch_size=args.batch_size,
        optim="adamw_torch", disable_tqdm=True, max_grad_norm=1e9,
    )
    return DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                      processing_class=tokenizer)


def tokenized_rows(model_path: str, args) -> list[dict[str, Any]]:
    """Identical token ids for both sides: TRL's tokenization, in rayalign's row contract."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pairs = load_text_pairs(tokenizer, args.steps * args.batch_size, args.max_length)
    with tempfile.TemporaryDirectory() as out:
        trainer = trl_trainer(model_path, pairs, args, precompute=False, out=out)
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


def score_reference(model_path: str, rows, batch_size: int) -> float:
    """Precompute reference log-probs in place (length-sorted batches); returns seconds."""
    import torch

    from rayalign.config import ModelConfig
    from rayalign.logprobs import sequence_logps
    from rayalign.models import load_model
    from rayalign.train.collate import collate_pairs, pair_length

    model = load_model(ModelConfig(name_or_path=model_path, dtype="float32")).eval()
    start = time.perf_counter()
    order = sorted(range(len(rows)), key=lambda i: pair_length(rows[i]))
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            chunk = [rows[j] for j in order[i : i + batch_size]]
            batch = collate_pairs(chunk, pad_token_id=0)
            logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            half = len(chunk)
            for row, c, r in zip(chunk, logps[:half].tolist(), logps[half:].tolist(), strict=True):
                row["ref_chosen_logps"], row["ref_rejected_logps"] = c, r
    return time.perf_counter() - start


def run_rayalign(model_path: str, rows, args, *, cached: bool) -> dict[str, Any]:
    import torch

    from rayalign.config import Config
    from rayalign.train.loop import train
    from rayalign.train.runtime import LocalRuntime, init_local_process_group

    torch.manual_seed(0)
    precompute_s = score_reference(model_path, rows, args.batch_size) if cached else 0.0
    cfg = Config.model_validate({
        "model": {"name_or_path": model_path, "dtype": "float32"},
        "loss": {"name": "dpo", "beta": BETA},
        "train": {"num_workers": 1, "zero_stage": 0, "batch_size": args.batch_size,
                  "learning_rate": LR, "warmup_ratio": 0.0, "lr_schedule": "constant",
                  "max_steps": args.steps, "max_grad_norm": 1e9, "checkpoint_every": 10**6,
                  "log_every": 1, "length_grouping": True, "seed": 0},
    })
    times: list[float] = []
    runtime = LocalRuntime({"train": MemoryShard(rows)},
                           on_report=lambda m, _: times.append(time.perf_counter()))
    init_local_process_group()
    train(cfg, runtime, steps_per_epoch=args.steps, export=False)
    reports = runtime.reports
    return {
        "step_s": steady(times),
        "precompute_s": precompute_s,
        "loss_step1": reports[0]["loss"],
        "padding_fraction": sum(r["padding_fraction"] for r in reports) / len(reports),
        "ref_logps": [[r.get("ref_chosen_logps"), r.get("ref_rejected_logps")] for r in rows],
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- TRL side


def run_trl(model_path: str, rows, args, *, cached: bool, first_batch: list[str]) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback

    pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    by_id = {r["id"]: i for i, r in enumerate(rows)}
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        trainer = trl_trainer(model_path, pairs, args, precompute=cached, out=out)
        init_s = time.perf_counter() - start
        loss_step1 = None
        if not cached:  # same maths check on rayalign's first batch, before any update
            examples = [trainer.train_dataset[by_id[i]] for i in first_batch]
            batch = trainer.data_collator(examples)
            trainer.model.train()
            with torch.no_grad():
                loss_step1 = float(trainer.compute_loss(trainer.model, batch))
        times: list[float] = []
        stats = {"tokens": 0, "slots": 0}
        collate = trainer.data_collator

        def counting_collator(examples):
            batch = collate(examples)
            stats["tokens"] += int(batch["attention_mask"].sum())
            stats["slots"] += batch["attention_mask"].numel()
            return batch

        trainer.data_collator = counting_collator

        class StepTimes(TrainerCallback):
            def on_step_end(self, *_, **__):
                times.append(time.perf_counter())

        trainer.add_callback(StepTimes())
        ref_logps = None
        if cached:
            data = trainer.train_dataset
            ref_logps = [[float(c), float(r)] for c, r in
                         zip(data["ref_chosen_logps"], data["ref_rejected_logps"], strict=True)]
        trainer.train()
    return {
        "step_s": steady(times),
        "init_s": init_s,
        "loss_step1": loss_step1,
        "padding_fraction": 1 - stats["tokens"] / max(1, stats["slots"]),
        "ref_logps": ref_logps,
        "peak_rss_mb": peak_rss_mb(),
    }


# --------------------------------------------------------------------------- orchestration


def worker(args) -> None:
    """One side in this subprocess; prints its JSON on the last line."""
    rows = json.loads(Path(args.rows).read_text())
    if args.side == "rayalign":
        result = run_rayalign(args.model, rows, args, cached=args.cached)
    else:
        result = run_trl(args.model, rows, args, cached=args.cached,
                         first_batch=json.loads(args.first_batch))
    print(json.dumps(result))


def first_batch_ids(rows, args) -> list[str]:
    """The pairs rayalign's loop puts in its first batch (same grouping code and seed)."""
    import numpy as np

    from rayalign.train.collate import stream_batches
    from rayalign.train.loop import LENGTH_GROUP_WINDOW

    shard = MemoryShard(rows)
    blocks = shard.iter_batches(batch_size=args.batch_size * LENGTH_GROUP_WINDOW)
    batches = stream_batches(blocks, args.batch_size, window=LENGTH_GROUP_WINDOW,
                             length_grouping=True, seed="0:0:0:train")
    del np
    return [str(r["id"]) for r in next(iter(batches))]


def spawn(side: str, model: str, rows_file: str, args, *, cached: bool, first_batch=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", side, "--model", model, "--rows", rows_file,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--max-length", str(args.max_length), "--first-batch", json.dumps(first_batch or [])]
    if cached:
        cmd.append("--cached")
    env = dict(os.environ, DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(name: str, model_path: str, args) -> dict[str, Any]:
    rows = tokenized_rows(model_path, args)
    pairs = len(rows)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(rows, handle)
        rows_file = handle.name
    try:
        first = first_batch_ids(rows, args)
        ra = spawn("rayalign", model_path, rows_file, args, cached=False)
        trl = spawn("trl", model_path, rows_file, args, cached=False, first_batch=first)
        ra_c = spawn("rayalign", model_path, rows_file, args, cached=True)
        trl_c = spawn("trl", model_path, rows_file, args, cached=True)
        trl_nocache_init = trl["init_s"]
    finally:
        os.unlink(rows_file)
    bs = args.batch_size
    tokens_per_pair = sum(len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows) / pairs
    ra_pps, trl_pps = bs / ra["step_s"], bs / trl["step_s"]
    trl_precompute = max(0.0, trl_c["init_s"] - trl_nocache_init)
    ra_c_pps = pairs / (ra_c["precompute_s"] + args.steps * ra_c["step_s"])
    trl_c_pps = pairs / (trl_precompute + args.steps * trl_c["step_s"])
    return {
        "model": name,
        "pairs": pairs,
        "rayalign_pairs_per_s": round(ra_pps, 3),
        "trl_pairs_per_s": round(trl_pps, 3),
        "ratio": round(ra_pps / trl_pps, 3),
        "rayalign_tokens_per_s": round(ra_pps * tokens_per_pair, 1),
        "trl_tokens_per_s": round(trl_pps * tokens_per_pair, 1),
        "rayalign_padding_fraction": round(ra["padding_fraction"], 4),
        "trl_padding_fraction": round(trl["padding_fraction"], 4),
        "rayalign_peak_rss_mb": round(ra["peak_rss_mb"], 1),
        "trl_peak_rss_mb": round(trl["peak_rss_mb"], 1),
        "rayalign_loss_step1": ra["loss_step1"],
        "trl_loss_step1": trl["loss_step1"],
        "loss_step1_abs_diff": abs(ra["loss_step1"] - trl["loss_step1"]),
        # same maths beyond step 1 (where policy == reference): both sides' precomputed
        # reference sequence log-probs of every pair
        "ref_logps_max_abs_diff": max(
            abs(a - b) for x, y in zip(ra_c["ref_logps"], trl_c["ref_logps"], strict=True)
            for a, b in zip(x, y, strict=True)
        ),
        "rayalign_cached_pairs_per_s": round(ra_c_pps, 3),
        "trl_cached_pairs_per_s": round(trl_c_pps, 3),
        "ratio_cached": round(ra_c_pps / trl_c_pps, 3),
        "rayalign_precompute_s": round(ra_c["precompute_s"], 2),
        "trl_precompute_s": round(trl_precompute, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only, few steps (~1 min)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--worker", choices=["rayalign", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first-batch", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.side = args.worker
        worker(args)
        return
    args.steps = args.steps or (6 if args.quick else 12)
    # Libraries log to stdout (DeepSpeed's accelerator notice); keep stdout for the JSON.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    from rayalign.models import TINY_MODEL_NAME, resolve_model_path

    models = {"tiny-random-llama": resolve_model_path(TINY_MODEL_NAME)}
    if not args.quick:
        models["smollm2-135m-instruct"] = resolve_model_path("smollm2-135m-instruct")
    started = time.perf_counter()
    results = {name: compare(name, path, args) for name, path in models.items()}
    headline = results["smollm2-135m-instruct" if not args.quick else "tiny-random-llama"]
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
    print(json.dumps({
        **{k: v for k, v in headline.items()},
        "timed": "steady-state optimizer steps 2..N of each side's training loop (rayalign: "
                 "rayalign.train.loop.train in-process, 1 worker, DeepSpeed ZeRO-0, no Ray "
                 "start-up; TRL: DPOTrainer.train), fp32 CPU; cached: + reference precompute",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": __import__("torch").get_num_threads(),
        "models": results,
        "seconds": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    main()
