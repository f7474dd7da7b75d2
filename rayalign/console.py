"""What a ``rayalign`` command shows on the console, and where everything else goes.

Library code logs through the ``rayalign`` logger hierarchy and never decides what is
shown; the CLI does, here. By default (quiet):

* ``rayalign.*`` records at INFO and above reach the console as ``[rayalign] message``;
  any other logger reaches it only at ERROR.
* Ray's own loggers (``ray``, ``ray.data``, ``ray.serve``, ``ray.train``, ``ray.tune``),
  Python warnings, and the output Ray forwards from workers and actors (Serve replicas,
  the Train controller's result dumps, Ray Data) go to a log file in the run's output
  folder, whose path is printed once (:func:`log_to`). Records logged before the folder is
  known are buffered and written there first, so nothing is lost.
* Worker lines that are rayalign's own progress (``[rayalign...]``, e.g. the training
  loop's step lines on rank 0) are still shown, without Ray's ``(pid=...)`` prefix.
* Ray Data's own progress bars are off; long rayalign stages show one tqdm bar each.

``-v/--verbose`` leaves Ray's console output as Ray makes it. Without a CLI (library use,
tests) nothing here is active.

Inside Ray workers and actors (the training loop, reference scoring), rayalign records go
to the process's real stdout as ``[rayalign] message`` (:func:`worker_logging`), which Ray
forwards to the driver, where the rule above decides.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune", "ray.air", "py.warnings")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Worker lines shown on the console (rayalign's own progress printed inside Ray workers).
SHOWN_WORKER_PREFIX = "[rayalign"


class _State:
    active = False
    verbose = False
    command = "rayalign"
    buffer: logging.handlers.MemoryHandler | None = None
    handlers: tuple[logging.Handler, ...] = ()
    log_path: Path | None = None
    exit_hook = False


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR and _State.verbose:
            message += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"[rayalign] {record.levelname.lower()}: {message}"
        return f"[rayalign] {message}"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (redirections, captured output)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _ConsoleFilter(logging.Filter):
    """rayalign's INFO+; everyone else's ERROR+ (everything when verbose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "rayalign" or record.name.startswith("rayalign."):
            return record.levelno >= logging.INFO
        return _State.verbose or record.levelno >= logging.ERROR


def setup(command: str, *, verbose: bool = False) -> None:
    """Configure logging for one CLI command (call once, before any Ray import matters)."""
    root = logging.getLogger()
    for handler in _State.handlers:  # a second command in one process (tests) starts afresh
        root.removeHandler(handler)
        handler.close()
    _State.active, _State.verbose, _State.command, _State.log_path = True, verbose, command, None
    root.setLevel(logging.INFO)
    console = _StdoutHandler()
    console.setFormatter(_ConsoleFormatter())
    console.addFilter(_ConsoleFilter())
    # Everything, for the log file: held until the command says where its outputs go.
    _State.buffer = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1)
    _State.buffer.setFormatter(logging.Formatter(FILE_FORMAT))
    _State.handlers = (console, _State.buffer)
    for handler in _State.handlers:
        root.addHandler(handler)
    logging.getLogger("rayalign").setLevel(logging.INFO)
    if not verbose:
        logging.captureWarnings(True)
        mute_ray()
    if not _State.exit_hook:
        atexit.register(_flush_unclaimed)
        _State.exit_hook = True


def quiet() -> bool:
    """True when a CLI command runs with the default (quiet) console."""
    return _State.active and not _State.verbose


def mute_ray() -> None:
    """Send Ray's loggers to the log file only (idempotent; Ray re-adds console handlers
    when it initialises components, so this runs again after ``ray.init`` and ``serve.start``)."""
    if not quiet():
        return
    try:  # first: importing Ray (Data) installs Ray's console handlers
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.enable_operator_progress_bars = False
    except ImportError:  # pragma: no cover - ray[data] is a core dependency
        pass
    for name in RAY_LOGGERS:
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                log.removeHandler(handler)
        log.propagate = True  # to the root's file handler; the console filter drops it


def route_worker_output() -> None:
    """Ray forwards workers' stdout/stderr to the driver; send it to the log file, except
    rayalign's own progress lines. Uses Ray's stdstream dispatcher (the hook ``ray.init``
    registers ``log_to_driver`` printing with); if that hook is missing, Ray's printing stays."""
    if not quiet():
        return
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # pragma: no cover - Ray moved its internals
        return
    if not any(name == "ray_print_logs" for name, _ in dispatcher.handlers):
        return
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("rayalign_console", _worker_lines)


_worker_log = logging.getLogger("ray.workers")


def _worker_lines(data: dict[str, Any]) -> None:
    if data.get("pid") == "autoscaler":  # Ray itself prints only its event lines
        data = {**data, "lines": [x for x in data.get("lines", []) if ":event_summary:" in x]}
    who = data.get("actor_name") or data.get("task_name") or ""
    prefix = f"({who} pid={data.get('pid')})" if who else f"(pid={data.get('pid')})"
    for line in data.get("lines", []):
        if line.lstrip().startswith(SHOWN_WORKER_PREFIX):
            print(line.strip(), flush=True)
        _worker_log.info("%s %s", prefix, line)


class _WorkerStdout(logging.StreamHandler):
    """rayalign records of a Ray worker as ``[rayalign] message`` on its real stdout."""


def worker_logging() -> None:
    """In a Ray worker or actor process: send the ``rayalign`` logger's INFO+ records to the
    process's real stdout (``sys.__stdout__``) as ``[rayalign] message`` lines, once.

    Ray forwards a worker's stdout to the driver, whose console shows ``[rayalign...]``
    lines (:func:`route_worker_output`) and logs the rest. The real stdout, because Ray
    Train 2.60 patches ``print`` on workers to both log and tee, which printed every line
    twice. Does nothing in a CLI process (there :func:`setup` decides) or when installed.
    """
    log = logging.getLogger("rayalign")
    if _State.active or any(isinstance(h, _WorkerStdout) for h in log.handlers):
        return
    handler = _WorkerStdout(sys.__stdout__)
    handler.setFormatter(_ConsoleFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the worker's own root handlers (if any) would repeat the line


def log_to(output_dir: str | Path, *, announce: bool = True) -> Path | None:
    """Write the log file under ``output_dir/logs/`` (the buffered records first) and say where."""
    if not _State.active or _State.buffer is None:
        return None
    if _State.log_path is not None:
        return _State.log_path
    folder = Path(output_dir).expanduser() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_State.command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    _attach(path)
    if announce:
        detail = "Ray's output here" if quiet() else "a copy of the output here"
        logging.getLogger("rayalign").info("log file: %s (%s; -v shows it on the console)", path, detail)
    return path


def _attach(path: Path) -> None:
    buffer = _State.buffer
    assert buffer is not None
    target = logging.FileHandler(path, encoding="utf-8")
    target.setFormatter(logging.Formatter(FILE_FORMAT))
    buffer.setTarget(target)
    buffer.flush()
    buffer.flushLevel = logging.NOTSET  # from now on every record goes straight to the file
    _State.log_path = path


def log_path() -> Path | None:
    return _State.log_path


def _flush_unclaimed() -> None:
    """A command that never named an output folder: its log goes to the cache root."""
    if _State.buffer is None or _State.log_path is not None or not _State.buffer.buffer:
        return
    from rayalign.cache import cache_root

    try:
        folder = cache_root() / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        _attach(folder / f"{_State.command}-{time.strftime('%Y%m%d-%H%M%S')}.log")
    except OSError:
        pass
