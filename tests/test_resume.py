"""Resume guards that need no Ray: a checkpoint written by another number of workers is
refused before any worker starts, naming both counts (never a wrong data position)."""

from __future__ import annotations

import pytest

from rayalign.config import load_config
from rayalign.errors import UserError
from rayalign.train.checkpoint import STATE_FILE
from rayalign.train.trainer import check_resumable, latest_local_checkpoint


def _checkpoint(root, step: int, workers: int, complete: bool = True):
    folder = root / "run" / f"checkpoint_{step:06d}"
    folder.mkdir(parents=True)
    for rank in range(workers):
        (folder / f"worker_{rank}.pt").write_bytes(b"x")
    if complete:
        (folder / STATE_FILE).write_text("{}")
    return folder


def test_resume_on_another_number_of_workers_is_refused_by_name(tmp_path):
    cfg = load_config(None, [f"train.storage_path={tmp_path}", "train.name=run", "train.num_workers=1"])
    check_resumable(cfg)  # nothing to resume: fine
    _checkpoint(tmp_path, 10, workers=2)
    _checkpoint(tmp_path, 12, workers=1, complete=False)  # a save cut short: not the latest
    assert latest_local_checkpoint(cfg).name == "checkpoint_000010"
    with pytest.raises(UserError) as info:
        check_resumable(cfg)
    message = str(info.value)
    assert "written by 2 worker(s)" in message and "train.num_workers=1" in message
    assert "(2 -> 1) is not supported" in message and "new train.name" in message
    same = load_config(None, [f"train.storage_path={tmp_path}", "train.name=run", "train.num_workers=2"])
    check_resumable(same)  # the same number of workers resumes exactly
