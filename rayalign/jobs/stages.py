"""Multi-stage training: each stage trains from the model the previous stage exported.

A spec with ``job.stages`` (e.g. SACPO's stepwise alignment, Wachi et al. 2024,
arXiv:2404.03889: DPO on helpfulness, then DPO on safety starting from that model) runs
one training per stage, in order, under ``rayalign train``. :func:`stage_configs` turns
the spec into one validated :class:`~rayalign.config.Config` per stage:

* the stage's ``overrides`` are merged over the spec (mappings key by key, other
  values replace);
* ``train.name`` becomes ``<train.name>-<stage name>``, so each stage has its own
  outputs, checkpoints and resume;
* from the second stage on, ``model.name_or_path`` is the previous stage's exported
  model folder (``<train.output_dir>/<its train.name>/model``), which therefore also is
  that stage's reference model. A stage may not set ``model.name_or_path`` itself, and
  the stage before it must export a full model (no LoRA, or LoRA with
  ``merge_on_export``).

Pure functions (no Ray, no torch): the CLI runs the stages.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rayalign.config import Config, ConfigError, config_from_mapping, output_dir_for

#: Where a training run exports its full model, under its output folder (also
#: ``rayalign.train.export.MODEL_DIR``; defined here because the export module imports torch).
EXPORTED_MODEL_DIR = "model"


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: nested mappings key by key, others replaced."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def exported_model_dir(cfg: Config) -> Path:
    """The full model a finished run of ``cfg`` exports; raises ``ConfigError`` when it
    exports only a LoRA adapter (a later stage could not load it as its model)."""
    lora = cfg.model.lora
    if lora is not None and not lora.merge_on_export:
        raise ConfigError(
            f"stage {cfg.train.name!r} trains a LoRA adapter without model.lora.merge_on_export: "
            "the next stage needs a full model to start from; set merge_on_export: true"
        )
    return output_dir_for(cfg) / EXPORTED_MODEL_DIR


def stage_configs(cfg: Config, *, source: str = "config") -> list[Config]:
    """One validated config per stage of ``cfg.job.stages`` (``[cfg]`` when it has none).

    Raises :class:`ConfigError` naming the stage when a stage's config is invalid or sets
    ``model.name_or_path`` after the first stage.
    """
    if not cfg.job.stages:
        return [cfg]
    base = cfg.model_dump(mode="json")
    base["job"]["stages"] = []
    configs: list[Config] = []
    for index, stage in enumerate(cfg.job.stages):
        raw = merge(base, stage.overrides)
        where = f"{source}: job.stages[{index}] ({stage.name})"
        if configs:
            if "name_or_path" in stage.overrides.get("model", {}):
                raise ConfigError(
                    f"{where}: model.name_or_path is set by the stage before "
                    "(its exported model); remove it from the stage's overrides"
                )
            raw["model"]["name_or_path"] = str(exported_model_dir(configs[-1]))
        if "name" not in stage.overrides.get("train", {}):
            raw["train"]["name"] = f"{cfg.train.name}-{stage.name}"
        configs.append(config_from_mapping(raw, source=where))
    return configs


def stage_finished(cfg: Config) -> bool:
    """Whether a run of ``cfg`` already finished with these settings: its summary, its
    exported model and an unchanged saved config are all there (re-running a staged job
    then skips it instead of resuming a finished run)."""
    out = output_dir_for(cfg)
    saved = out / "config.yaml"
    return (
        (out / "summary.json").is_file()
        and (out / EXPORTED_MODEL_DIR).is_dir()
        and saved.is_file()
        and not cfg.changed_fields(saved.read_text())
    )
