"""The chain: every stage's config resolved from defaults, presets, earlier stages, a config file and the command
line, validated, its inputs and outputs checked, before anything runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli.errors import StageOSError
from cli.options import coerce
from cli.stage import Stage
from common.config import StageConfig, check_known_keys, normalize_keys, option_name
from common.files import check_writable


def read_config_file(path: str | None, stages: dict[str, Stage]) -> dict[str, dict[str, Any]]:
    """{stage: {option: value}} from a JSON or YAML file; option names may use dashes or underscores."""
    if path is None:
        return {}
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml  # pyyaml: only needed for YAML config files

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"config file {path} must map stage names to option tables, e.g. {{'train': {{'epochs': 30}}}}")
    unknown = sorted(set(data) - set(stages))
    if unknown:
        raise ValueError(f"config file {path} names unknown stage(s) {unknown}; stages are {sorted(stages)}")
    return {stage: normalize_keys(table) for stage, table in data.items()}


def build_plan(steps: list[tuple[str, dict]], file_sections: dict[str, dict],
               stages: dict[str, Stage]) -> list[tuple[Stage, StageConfig]]:
    """Resolve and validate every stage's config, and check its input paths, before anything runs."""
    artifacts: dict[str, str] = {}
    produced: set[str] = set()
    plan = []
    for name, cli_values in steps:
        stage = stages[name]
        file_values = dict(file_sections.get(name, {}))
        check_known_keys(stage.config, file_values, source=f"config file section '{name}'", extra=("preset",))
        cli_values = dict(cli_values)
        values: dict[str, Any] = {}
        preset = cli_values.pop("preset", None) or file_values.pop("preset", None)
        if preset:
            if preset not in stage.presets:
                raise ValueError(f"{name}: unknown preset {preset!r}; valid: {', '.join(sorted(stage.presets))}")
            values.update(stage.presets[preset])
        values.update({field_name: artifacts[art] for field_name, art in stage.consumes.items() if art in artifacts})
        values.update(coerce(stage.config, file_values))
        values.update(coerce(stage.config, cli_values))
        cfg = stage.config(**values)
        cfg.validate()
        for field_name in stage.input_paths:
            for path in _paths_of(getattr(cfg, field_name, "")):
                if path not in produced and not Path(path).exists():
                    raise FileNotFoundError(f"{name}: {option_name(field_name)} {path} does not exist")
        for output in stage.writes(cfg):
            try:
                check_writable(output.path, folder=output.folder)
            except OSError as err:
                raise StageOSError(name, stage, cfg, err) from err
        outputs = stage.produces(cfg)
        artifacts.update(outputs)
        produced.update(outputs.values())
        plan.append((stage, cfg))
    return plan


def _paths_of(value: Any) -> list[str]:
    if not value or value == "none":
        return []
    return [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
