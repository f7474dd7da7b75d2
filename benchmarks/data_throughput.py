"""Rows/s of read + validate + tokenize (the Ray Data pipeline without reference scoring).

The shipped demo pairs are replicated to ``--rows`` rows (each copy's prompt gets a
suffix so de-duplication keeps every row) and written as 8 JSONL shards; the pipeline
then runs on a fresh local Ray with 1 CPU and with 2 CPUs, each in its own subprocess,
and one JSON object compares them side by side. Tokenizer: a tiny ChatML BPE tokenizer
built offline (``--tokenizer builtin`` uses SmolLM2's real one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARDS = 8


def make_data(folder: Path, rows: int) -> None:
    from rayalign.demo_data import load_demo_pairs

    pairs = load_demo_pairs()
    handles = [(folder / f"part-{i:02d}.jsonl").open("w") for i in range(SHARDS)]
    for i in range(rows):
        pair = dict(pairs[i % len(pairs)])
        pair["prompt"] = f"{pair['prompt']} (#{i // len(pairs)})"
        pair.pop("id", None)
        handles[i % SHARDS].write(json.dumps(pair) + "\n")
    for handle in handles:
        handle.close()


def worker(args: argparse.Namespace) -> None:
    import ray
    from transformers import AutoTokenizer

    from rayalign.config import load_config
    from rayalign.data.pipeline import prepare_datasets

    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_dir)
    cfg = load_config(
        None,
        [
            f"data.sources=[{{path: '{args.data}'}}]",
            f"data.cache_dir={args.cache}",
            "data.precompute_ref_logps=false",
            f"data.tokenize_concurrency={args.cpus}",
            "data.eval_fraction=0.0",
        ],
    )
    started = time.perf_counter()
    prepared = prepare_datasets(cfg, tokenizer)
    seconds = time.perf_counter() - started
    rows = prepared.stats["validation"]["rows"]
    print(
        json.dumps(
            {
                "cpus": args.cpus,
                "rows": rows,
                "seconds": round(seconds, 2),
                "rows_per_s": round(rows / seconds, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10k rows")
    parser.add_argument("--tokenizer", choices=("tiny", "builtin"), default="tiny")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpus", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = 10_000 if args.quick else args.rows
    with tempfile.TemporaryDirectory(prefix="rayalign-bench-") as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        data.mkdir()
        make_data(data, rows)
        if args.tokenizer == "builtin":
            from rayalign.config import ModelConfig
            from rayalign.modeling.models import resolve_model_path

            tokenizer_dir = resolve_model_path(ModelConfig().name_or_path)
        else:
            from rayalign.modeling.models import build_tiny_model

            tokenizer_dir = str(build_tiny_model(tmp_path / "tiny", chat_template="chatml"))
        results = {}
        for cpus in (1, 2):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    f"--cpus={cpus}",
                    f"--data={data}",
                    f"--cache={tmp_path / f'cache{cpus}'}",
                    f"--tokenizer-dir={tokenizer_dir}",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[cpus] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "benchmark": "data_throughput (read+validate+tokenize)",
                "rows": rows,
                "tokenizer": args.tokenizer,
                "cpus_1": results[1],
                "cpus_2": results[2],
                "speedup_2_vs_1": round(results[2]["rows_per_s"] / results[1]["rows_per_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
