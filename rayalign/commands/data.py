"""``rayalign data validate|prepare``: check preference files, or run the whole data pipeline."""

from __future__ import annotations

import argparse
import json
import sys

from rayalign.commands.common import add_overrides
from rayalign.data.schema import REASONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="validate preference files or prepare (tokenize, reference-score) a data set",
        description="Preference data: `validate` checks one source and writes its rejects; "
        "`prepare` runs the Ray Data pipeline of a config.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    validate = verbs.add_parser(
        "validate",
        help="check every row of a file/folder/glob/hub id; print one JSON summary",
        description="Prints {rows, valid, rejected, reasons, duplicates, format, rejects_file} as "
        "one JSON object and writes every rejected row (file, row, field, reason, original "
        "values) to a Parquet file. Exit status: 0 when some rows are valid (rejected rows are "
        "quarantined, not fatal), 1 when no row is valid or there are none (or, with --strict, "
        "when any row is rejected), 2 when the input cannot be read.",
        epilog="reasons: " + "; ".join(f"{k}: {v}" for k, v in REASONS.items()),
    )
    validate.add_argument(
        "path", nargs="+",  # one; several only to explain an unquoted glob the shell expanded
        help="file, folder, glob (quoted: 'data/*.jsonl'), s3:// or gs:// URI, hf://org/name or builtin:demo",
    )
    validate.add_argument(
        "--format", default="auto", help="adapter name (default: detect from the columns)"
    )
    validate.add_argument("--split", default="train", help="hub split (default train)")
    validate.add_argument("--revision", default=None, help="hub revision")
    validate.add_argument("--all-safe", action="store_true", help="declare every response safe")
    validate.add_argument(
        "--preference",
        choices=("helpfulness", "safety"),
        default="helpfulness",
        help="PKU-SafeRLHF order",
    )
    validate.add_argument(
        "--rejects", default="outputs/data/rejects.parquet", help="where to write rejected rows"
    )
    validate.add_argument(
        "--tokenizer",
        default=None,
        help="also tokenize valid rows with this model's tokenizer and chat template, as "
        "`data prepare` does, and report what tokenization rejects",
    )
    validate.add_argument(
        "--strict", action="store_true",
        help="exit 1 when any row is rejected (for CI checks of a data set)",
    )
    validate.add_argument("--max-length", type=int, default=None, help="with --tokenizer (default 512)")
    validate.add_argument("--max-prompt-length", type=int, default=None, help="with --tokenizer (default 256)")
    validate.set_defaults(func=run_validate)

    prepare = verbs.add_parser(
        "prepare",
        help="run the pipeline of a config: validate, transform, tokenize, reference-score",
        description="Writes train/eval(/helpfulness) Parquet, rejects.parquet and data_summary.json "
        "to --output-dir; the prepared data set is also cached under data.cache_dir.",
    )
    prepare.add_argument("config", help="YAML config file")
    add_overrides(prepare, "data.max_length=512")
    prepare.add_argument("--output-dir", default="outputs/data", help="default outputs/data")
    prepare.set_defaults(func=run_prepare)


def run_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rayalign.config import DataSource
    from rayalign.data.validate import validate_source
    from rayalign.errors import UserError

    if len(args.path) > 1:
        raise UserError(
            f"one source at a time, got {len(args.path)} paths ({', '.join(args.path[:2])}"
            f"{', ...' if len(args.path) > 2 else ''}); "
            "for several files quote the glob so rayalign expands it, not the shell: 'data/*.jsonl'"
        )
    source = DataSource(
        path=args.path[0],
        format=args.format,
        split=args.split,
        revision=args.revision,
        all_safe=args.all_safe,
        preference=args.preference,
    )
    rejects = Path(args.rejects).expanduser()
    if rejects.is_dir() or rejects.suffix not in (".parquet", ".pq"):
        raise UserError(f"--rejects {args.rejects}: name a Parquet file to write, e.g. outputs/data/rejects.parquet")
    lengths = {k: v for k, v in (("max_length", args.max_length), ("max_prompt_length", args.max_prompt_length)) if v is not None}
    if lengths and not args.tokenizer:
        raise UserError("--max-length and --max-prompt-length apply only with --tokenizer (rows are tokenized then)")
    tokenizer = None
    if args.tokenizer:
        from pydantic import ValidationError

        from rayalign.config import DataConfig, error_message

        try:  # the same bounds as a config's data section
            limits = DataConfig(**lengths)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = f"{err['loc'][0]!s}: " if err["loc"] else ""
            flags = f"{where}{error_message(err)}".replace("max_prompt_length", "--max-prompt-length")
            raise UserError(flags.replace("max_length", "--max-length")) from None
        args.max_length, args.max_prompt_length = limits.max_length, limits.max_prompt_length
        from rayalign.config import ModelConfig
        from rayalign.modeling.models import load_tokenizer

        tokenizer = load_tokenizer(ModelConfig(name_or_path=args.tokenizer))
    summary = validate_source(
        source, rejects, tokenizer=tokenizer, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length,
    )
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return _validate_status(summary, strict=args.strict)


def _validate_status(summary: dict, *, strict: bool) -> int:
    """``data validate``'s exit status, with a one-line reason on stderr when it is 1."""
    rows, valid, rejected = summary["rows"], summary["valid"], summary["rejected"]
    where = f"; the rejected rows are in {summary['rejects_file']}" if summary.get("rejects_file") else ""
    if not rows:
        print("rayalign data validate: no rows: the input holds no records", file=sys.stderr)
        return 1
    if not valid:
        hint = f"; {summary['hint']}" if summary.get("hint") else ""
        print(f"rayalign data validate: no valid rows ({rows} rejected){where}{hint}", file=sys.stderr)
        return 1
    if strict and rejected:
        print(f"rayalign data validate: {rejected} of {rows} rows rejected (--strict){where}", file=sys.stderr)
        return 1
    return 0


def removed_rows_text(stats: dict) -> str:
    """Where valid rows went between validation and the splits, for the console line
    (``data_summary.json`` has every count): "" when none were removed."""
    removed = {
        "duplicates": stats.get("duplicates", 0),
        "sampled out (fraction)": stats.get("sampled_out", 0),
        "unsafe/unsafe pairs dropped (SafeDPO)": stats.get("transform", {})
        .get("safedpo", {})
        .get("dropped", 0),
    }
    return ", ".join(f"{n} {what}" for what, n in removed.items() if n)


def run_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rayalign.config import load_config
    from rayalign.data.pipeline import prepare_datasets
    from rayalign.modeling.models import load_tokenizer
    from rayalign.ray_session import data_need, init_ray

    cfg = load_config(args.config, args.overrides)
    init_ray(need=data_need(cfg.data, scores_reference=cfg.scores_reference()))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from rayalign.console import log_to

    log_to(out)
    cfg.save(out / "config.yaml")
    prepared = prepare_datasets(cfg, load_tokenizer(cfg.model), output_dir=out)
    for split in ("train", "eval", "helpfulness"):
        dataset = getattr(prepared, split)
        if dataset is not None:
            dataset.write_parquet(str(out / split))
    stats = prepared.stats
    rows = stats["rows"]
    print(json.dumps(stats["validation"]))
    removed_text = removed_rows_text(stats)
    print(
        f"prepared {rows['train']} train / {rows['eval']} eval / {rows['helpfulness']} helpfulness pairs "
        f"({'removed: ' + removed_text + '; ' if removed_text else ''}"
        f"cache {stats['cache']}, reference log-probs {stats['ref_cache']}); outputs in {out}"
    )
    return 0
