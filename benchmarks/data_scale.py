"""Driver memory of ``rayalign data prepare`` at 100k and 1M rows (no reference scoring).

Generates TRL-style preference JSONL files (100k rows per file) with 2% malformed rows
(unparseable lines, identical chosen/rejected, empty prompts, non-boolean safety labels),
then runs ``rayalign data prepare`` once per size in a fresh process with its own local
Ray and reads that driver process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``: the
driver only, not Ray's workers). Prints ONE JSON object:

``rows_per_s_100k``, ``rows_per_s_1m`` (input rows / wall seconds of the whole command),
``driver_peak_rss_mb_100k``, ``driver_peak_rss_mb_1m``, ``rss_ratio`` (target ≤ 1.2), and
the rejected counts (which must equal the malformed rows written).

The 1M run is CPU-heavy (every row is parsed, validated and tokenized): run it niced.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/data_scale.py [--sizes 100000,1000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS_PER_FILE = 100_000
MALFORMED_EVERY = 50  # 2%

_DRIVER = """
import resource, sys
from rayalign.cli import main
try:
    code = main(sys.argv[1:])
finally:  # the peak so far, even when the command fails
    print("DRIVER_RSS_KB=" + str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss), flush=True)
sys.exit(code)
"""


def _row(i: int) -> str:
    """Row ``i`` as one JSONL line; every ``MALFORMED_EVERY``-th row is malformed."""
    if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
        kind = (i // MALFORMED_EVERY) % 4
        if kind == 0:
            return '{"prompt": "broken line'
        if kind == 1:
            return json.dumps({"prompt": f"Question {i}?", "chosen": "same", "rejected": "same",
                               "chosen_safe": True, "rejected_safe": True})
        if kind == 2:
            return json.dumps({"prompt": "", "chosen": f"Answer {i}.", "rejected": "No.",
                               "chosen_safe": True, "rejected_safe": False})
        return json.dumps({"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No.",
                           "chosen_safe": "maybe", "rejected_safe": False})
    return json.dumps({
        "prompt": f"How do I do task number {i} safely at home?",
        "chosen": f"Here is a careful way to do task {i}: plan first, then take small steps.",
        "rejected": f"Just do task {i} without thinking about it.",
        "chosen_safe": True,
        "rejected_safe": i % 3 != 0,
    })


def generate(folder: Path, rows: int) -> int:
    """Write ``rows`` rows as JSONL files of ``ROWS_PER_FILE``; return the malformed count."""
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, rows, ROWS_PER_FILE):
        path = folder / f"part-{start // ROWS_PER_FILE:04d}.jsonl"
        with path.open("w") as handle:
            handle.writelines(_row(i) + "\n" for i in range(start, min(rows, start + ROWS_PER_FILE)))
    return sum(1 for i in range(rows) if i % MALFORMED_EVERY == MALFORMED_EVERY - 1)


def prepare(folder: Path, workdir: Path, log: Path | None = None) -> dict:
    """Run ``rayalign data prepare`` on ``folder`` in a fresh process; time it, read its RSS."""
    out = workdir / f"out-{folder.name}"
    config = workdir / f"{folder.name}.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model": {"name_or_path": "tiny-random-llama"},
        "data": {"sources": [{"path": str(folder)}], "cache_dir": str(workdir / "cache"),
                 "precompute_ref_logps": False, "max_invalid_fraction": 0.05, "dedup": True,
                 "max_length": 128, "max_prompt_length": 64},
    }))
    args = ["data", "prepare", str(config), "--output-dir", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _DRIVER, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if log is not None:
        log.write_text(run.stdout + "\n" + run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"data prepare failed ({run.returncode}):\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}")
    rss_kb = int(next(line for line in run.stdout.splitlines() if line.startswith("DRIVER_RSS_KB="))
                 .split("=", 1)[1])
    validation = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("{")))
    return {"seconds": seconds, "rss_mb": rss_kb / 1024, "validation": validation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="row counts, small then large (ratio of the first two)")
    parser.add_argument("--workdir", default=None,
                        help="where the temporary folder goes (default: the system's); the logs stay there")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    labels = {100_000: "100k", 1_000_000: "1m"}
    with tempfile.TemporaryDirectory(prefix="rayalign-data-scale-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        report: dict = {}
        for rows in sizes:
            label = labels.get(rows, str(rows))
            malformed = generate(workdir / f"rows-{label}", rows)
            log = Path(args.workdir) / f"prepare-{label}.log" if args.workdir else None
            result = prepare(workdir / f"rows-{label}", workdir, log)
            report[f"rows_per_s_{label}"] = round(rows / result["seconds"], 1)
            report[f"driver_peak_rss_mb_{label}"] = round(result["rss_mb"], 1)
            report[f"seconds_{label}"] = round(result["seconds"], 1)
            report[f"rejected_{label}"] = result["validation"]["rejected"]
            report[f"malformed_written_{label}"] = malformed
            print(json.dumps({k: v for k, v in report.items() if k.endswith(label)}), file=sys.stderr, flush=True)
        if len(sizes) >= 2:
            small, large = (labels.get(s, str(s)) for s in sizes[:2])
            report["rss_ratio"] = round(report[f"driver_peak_rss_mb_{large}"] / report[f"driver_peak_rss_mb_{small}"], 3)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
