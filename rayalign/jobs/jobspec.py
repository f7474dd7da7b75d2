"""From a job spec (a config file) to what the cluster runs: command, entrypoint, runtime_env.

Pure functions: ``rayalign submit`` wires them to Ray's Job Submission SDK and
``rayalign plan`` prints them, so both agree on what a spec will do.

Which sub-command runs a spec:
  1. ``job.command`` when the spec sets it (``train``, ``sweep``, ``eval``, ``toy``);
  2. otherwise ``sweep`` if the file has a ``sweep:`` section, ``eval`` if it has an
     ``eval:`` section and no ``train:``/``loss:`` section, else ``train``.
The entrypoint is ``python -m rayalign.cli COMMAND SPEC [--set ...] [job.args...]``
(``eval --config SPEC`` for eval)
with SPEC relative to the working directory, so the overrides given to ``submit``
are replayed verbatim on the cluster and the run saves the same resolved config.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayalign.config import Config
from rayalign.errors import UserError

#: Sub-commands a job spec can run, and how each takes the spec file: as its positional
#: argument, after an option, or not at all (the smoke-test ``toy`` reads no config).
JOB_COMMANDS: dict[str, list[str] | None] = {
    "train": [],
    "sweep": [],
    "eval": ["--config"],
    "toy": None,
}

#: Variables that carry cluster credentials: never shipped inside a runtime_env, where the
#: dashboard and `ray job list` would show them to everyone who can read job metadata.
SECRET_ENV_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def job_command(cfg: Config) -> str:
    """The sub-command a spec runs (see the module docstring for the rule)."""
    if cfg.job.command is not None:
        return cfg.job.command
    given = cfg.model_fields_set
    if "sweep" in given:
        return "sweep"
    if "eval" in given and not {"train", "loss"} & given:
        return "eval"
    return "train"


@dataclass(frozen=True)
class JobLaunch:
    """Everything the Job Submission SDK needs for one spec."""

    command: str
    entrypoint: str
    runtime_env: dict[str, Any]
    working_dir: Path
    spec_in_working_dir: str | None
    metadata: dict[str, str] = field(default_factory=dict)


def spec_relative_to(spec: Path, working_dir: Path) -> str:
    """The spec's path inside the working dir, which is what the cluster sees."""
    try:
        return spec.resolve().relative_to(working_dir.resolve()).as_posix()
    except ValueError:
        raise UserError(
            f"{spec}: the job spec must live inside the working directory "
            f"{working_dir} (job.working_dir) so it is shipped with the job"
        ) from None


def build_entrypoint(command: str, spec: str | None, overrides: list[str], args: list[str]) -> str:
    """A shell-safe entrypoint; ``python -m`` so the shipped rayalign source wins if present."""
    if command not in JOB_COMMANDS:
        raise UserError(f"job.command {command!r}: expected one of {', '.join(JOB_COMMANDS)}")
    parts = ["python", "-m", "rayalign.cli", command]
    spec_flag = JOB_COMMANDS[command]
    if spec_flag is not None:
        if spec is None:
            raise UserError(f"`rayalign {command}` needs the spec file")
        parts += [*spec_flag, spec]
        for item in overrides:
            parts += ["--set", item]
    elif overrides:
        raise UserError(f"`rayalign {command}` reads no config: --set has no effect on it")
    parts += args
    return shlex.join(parts)


def build_runtime_env(cfg: Config, working_dir: Path) -> dict[str, Any]:
    """The job's runtime_env: its code, extra pip packages and plain env vars (no secrets)."""
    leaked = sorted(set(cfg.job.env_vars) & set(SECRET_ENV_VARS))
    if leaked:
        raise UserError(
            f"job.env_vars sets {', '.join(leaked)}: credentials in a runtime_env are visible "
            "to anyone who can list jobs; set them on the cluster nodes instead"
        )
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(cfg.job.excludes)}
    if cfg.job.pip:
        env["pip"] = list(cfg.job.pip)
    if cfg.job.env_vars:
        env["env_vars"] = dict(cfg.job.env_vars)
    return env


def plan_launch(
    cfg: Config, spec: Path, overrides: list[str], *, cwd: Path | None = None
) -> JobLaunch:
    """Resolve a validated spec into its launch: command, entrypoint, runtime_env."""
    command = job_command(cfg)
    working_dir = (cwd or Path.cwd()) / os.path.expanduser(cfg.job.working_dir)
    if not working_dir.is_dir():
        raise UserError(f"job.working_dir {cfg.job.working_dir!r}: {working_dir} is not a folder")
    takes_spec = JOB_COMMANDS.get(command) is not None
    spec_rel = spec_relative_to(spec, working_dir) if takes_spec else None
    entrypoint = build_entrypoint(command, spec_rel, overrides, cfg.job.args)
    metadata = {"rayalign_command": command, "rayalign_spec": spec_rel or ""}
    if overrides:
        metadata["rayalign_overrides"] = " ".join(overrides)
    return JobLaunch(
        command=command,
        entrypoint=entrypoint,
        runtime_env=build_runtime_env(cfg, working_dir.resolve()),
        working_dir=working_dir.resolve(),
        spec_in_working_dir=spec_rel,
        metadata=metadata,
    )
