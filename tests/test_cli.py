"""The console command: help for every sub-command, clean errors, the toy experiment."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rayalign.cli import COMMANDS, build_parser, main

RAYALIGN = [sys.executable, "-m", "rayalign.cli"]


def test_help_lists_every_command():
    result = subprocess.run([*RAYALIGN, "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: rayalign" in capsys.readouterr().out


def test_toy_writes_table_plot_and_json(tmp_path):
    result = subprocess.run(
        [*RAYALIGN, "toy", "--steps", "300", "--seeds", "1", "--betas", "0.5", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    assert "bfpo" in result.stdout and "safedpo" in result.stdout
    assert (tmp_path / "toy_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = json.loads((tmp_path / "toy_results.json").read_text())["runs"]
    assert {r["method"] for r in runs} == {"dpo", "ipo", "bfpo", "safedpo"}


@pytest.mark.parametrize("args", [["--betas", "0.1,abc"], ["--betas=-1"], ["--seeds", "0"], ["--steps", "0"]])
def test_toy_arguments_are_checked_by_the_parser(args, capsys):
    """Found by a new user: these were tracebacks, or (--steps 0) a table of nothing learned."""
    from rayalign.cli import main

    with pytest.raises(SystemExit) as info:
        main(["toy", *args])
    assert info.value.code == 2
    assert "rayalign toy: error: argument --" in capsys.readouterr().err


def test_user_errors_are_one_line_and_exit_2(capsys, monkeypatch):
    from rayalign.errors import UserError

    def boom(args):
        raise UserError("data/x.jsonl row 3: field 'prompt' is empty")

    parser = build_parser()
    monkeypatch.setattr("rayalign.cli.build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["toy"].set_defaults(func=boom)
    assert main(["toy"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "rayalign toy: error: data/x.jsonl row 3: field 'prompt' is empty"


def test_one_cache_root_governs_models_and_prepared_data(tmp_path, monkeypatch, capsys):
    from rayalign.config import load_config
    from rayalign.modeling.models import cache_dir

    root = tmp_path / "cache-root"
    monkeypatch.setenv("RAYALIGN_CACHE", str(root))
    assert cache_dir() == root and load_config(None, []).data.cache_dir == str(root)
    assert load_config(None, ["data.cache_dir=/elsewhere"]).data.cache_dir == "/elsewhere"  # a field overrides
    (root / "prepared" / "abc").mkdir(parents=True)
    (root / "prepared" / "abc" / "pairs.parquet").write_bytes(b"x" * 2048)
    (root / "models" / "m").mkdir(parents=True)
    (root / "keep.txt").write_text("not a cache kind")

    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert f"cache root: {root}  ($RAYALIGN_CACHE)" in out and "prepared" in out and "1 entries" in out

    assert main(["cache", "clear", "prepared"]) == 0  # dry run without --yes
    assert "would free 0.0 MiB" in capsys.readouterr().out and (root / "prepared").exists()
    assert main(["cache", "clear", "--yes"]) == 0
    assert not (root / "prepared").exists() and not (root / "models").exists()
    assert (root / "keep.txt").exists()  # only the cache kinds' folders go
    assert main(["cache", "clear", "weights", "--yes"]) == 2
    assert "unknown cache kind" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "0"], "--limit 0: eval.limit: Input should be greater than 0"),
        (["--model", "/nope/model", "--benchmarks", "xstest"], "/nope/model: no such model folder"),
        # found by a later new user: "" evaluated the default benchmark, a typo only after Ray started
        (["--benchmarks", ""], "--benchmarks []: eval.benchmarks: List should have at least 1 item after validation, not 0"),
        (["--benchmarks", "demo,xtest"], "--benchmarks ['demo', 'xtest']: eval.benchmarks: unknown benchmark 'xtest'; "
         "choose from advbench, harmbench, xstest, beavertails, alert, alert_adversarial, realtoxicity, custom, demo, "
         "demo_validation (optionally NAME:PATH, and @N for a seeded subset of N prompts)"),
    ],
)
def test_eval_flag_and_model_errors_are_one_line_before_ray_starts(argv, message, capsys, tmp_path):
    """Found by a new user: both printed tracebacks (a pydantic one; a Serve deployment's)."""
    assert main(["eval", "--output-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"rayalign eval: error: {message}"


def test_data_prepare_says_where_valid_rows_went():
    """Found by a new user: 1,545 duplicates dropped from the PKU 5k file showed only in
    data_summary.json, not in the console line."""
    from rayalign.commands.data import removed_rows_text

    stats = {"duplicates": 1545, "sampled_out": 0, "transform": {"safedpo": {"dropped": 12}}}
    assert removed_rows_text(stats) == "1545 duplicates, 12 unsafe/unsafe pairs dropped (SafeDPO)"
    assert removed_rows_text({"duplicates": 0}) == ""
