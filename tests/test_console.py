"""The quiet console: rayalign's lines on stdout, Ray's in the run's log file (no Ray started)."""

from __future__ import annotations

import logging

import pytest

from rayalign import console


@pytest.fixture()
def quiet_console():
    console.setup("testcmd", verbose=False)
    yield
    root = logging.getLogger()
    for handler in console._State.handlers:
        root.removeHandler(handler)
    console._State.active = False


def test_ray_lines_go_to_the_log_file_and_rayalign_lines_to_the_console(quiet_console, tmp_path, capsys):
    logging.getLogger("ray.data").info("logging_progress block before the folder is known")
    logging.getLogger("rayalign.eval").info("generating 40 prompts")
    path = console.log_to(tmp_path)
    logging.getLogger("ray.serve").info("Deploying new version of Deployment")
    logging.getLogger("ray.serve").error("a replica crashed")
    console._worker_lines({"pid": 12, "actor_name": "RayTrainWorker", "is_err": False,
                           "lines": ["[rayalign] step 2/4 loss 0.69", "Reporting training result 2: TrainingReport(...)"]})
    console._worker_lines({"pid": "autoscaler", "lines": ["======== Autoscaler status ========"]})

    out = capsys.readouterr().out.splitlines()
    assert out == [
        "[rayalign] generating 40 prompts",
        f"[rayalign] log file: {path} (Ray's output here; -v shows it on the console)",
        "[rayalign] error: a replica crashed",
        "[rayalign] step 2/4 loss 0.69",
    ]
    text = path.read_text()
    assert path.parent == tmp_path / "logs" and path.name.startswith("testcmd-")
    for line in ("logging_progress block before the folder is known", "Deploying new version",
                 "(RayTrainWorker pid=12) Reporting training result 2", "(RayTrainWorker pid=12) [rayalign] step 2/4"):
        assert line in text  # nothing lost, buffered records included
    assert "Autoscaler status" not in text


def test_verbose_shows_ray_lines(tmp_path, capsys):
    console.setup("testcmd", verbose=True)
    try:
        logging.getLogger("ray.serve").info("Deploying new version of Deployment")
        assert not console.quiet()
        assert "Deploying new version" in capsys.readouterr().out
    finally:
        for handler in console._State.handlers:
            logging.getLogger().removeHandler(handler)
        console._State.active = False


def test_worker_logging_prints_rayalign_lines_to_the_real_stdout_once(capfd):
    """Inside a Ray worker (no CLI), rayalign records reach the process's stdout as the
    ``[rayalign]`` lines the driver's console shows; installing twice adds nothing."""
    log = logging.getLogger("rayalign")
    before = (list(log.handlers), log.level, log.propagate)
    try:
        console.worker_logging()
        console.worker_logging()
        logging.getLogger("rayalign.train.loop").info("step 1/2 loss 0.69")
        logging.getLogger("rayalign.data").debug("not shown")
        assert capfd.readouterr().out.splitlines() == ["[rayalign] step 1/2 loss 0.69"]
    finally:
        log.handlers[:], log.level, log.propagate = before
