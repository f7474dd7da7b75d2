"""The demo's effect, as one JSON object: harmless ratio and benign compliance before and
after alignment, and the wall-clock seconds of the whole run (not asserted in CI).

    python benchmarks/demo_effect.py [--method safedpo|bfpo|dpo] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["safedpo", "bfpo", "dpo"], default="safedpo")
    parser.add_argument("--output-dir", default="outputs/bench_demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from rayalign.demo import demo_config, run_demo

    result = run_demo(demo_config(args.method, args.overrides, args.output_dir), method=args.method)
    print(json.dumps({"method": args.method, **result.as_json()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
