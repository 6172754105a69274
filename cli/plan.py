"""The chain: every stage's config resolved from defaults, presets, earlier stages, a config file and the command
line, validated, its inputs and outputs checked, before anything runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from cli.errors import StageOSError
from cli.options import coerce
from cli.stage import Stage
from common.config import StageConfig, check_known_keys, normalize_keys, option_name, shown, shown_text
from common.files import check_writable


MAX_CONFIG_BYTES = 1 << 20  # a config file holds a few tables of options; more is not a config file
MAX_YAML_ALIASES = 32  # `*name` references: enough to share a table, too few for an alias bomb's expansion
MAX_YAML_DEPTH = 20  # stage -> option -> list is 3 levels; 50K levels would exhaust the composer's recursion


def read_config_file(path: str | None, stages: dict[str, Stage]) -> dict[str, dict[str, Any]]:
    """{stage: {option: value}} from a JSON or YAML file, every value typed strictly by its field
    (StageConfig.coerce_field); option names may use dashes or underscores. ValueError naming the file, and
    the stage and option or the line, for anything else."""
    if path is None:
        return {}
    data = _parse_config_file(Path(path))
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"config file {path} must map stage names to option tables, e.g. "
                         "{'train': {'epochs': 30}}")
    unknown = sorted(shown(stage) for stage in set(data) - set(stages))
    if unknown:
        raise ValueError(f"config file {path} names unknown stage(s) {', '.join(unknown)}; stages are "
                         f"{', '.join(sorted(stages))}")
    sections = {}
    for stage, table in data.items():
        config = stages[stage].config
        known = {field.name for field in dataclasses.fields(config)}
        values = normalize_keys(table)
        for key, value in values.items():  # unknown keys are left to build_plan, which suggests the closest
            where = f"config file {path}: {stage}.{key}"
            if key in known:
                values[key] = config.coerce_field(key, value, where=where)
            elif key == "preset" and not isinstance(value, str):
                raise ValueError(f"{where} must be the name of a preset, got {shown(value)}")
        sections[stage] = values
    return sections


def _parse_config_file(path: Path) -> Any:
    """The JSON or YAML document of `path`, read within bounds; ValueError naming the file (and the line)."""
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"config file {path} is {size} bytes, over the {MAX_CONFIG_BYTES} a config file may have")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    if path.suffix in (".yaml", ".yml"):
        return _parse_yaml(text, path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") \
            from err
    except RecursionError as err:
        raise ValueError(f"config file {path}: nested too deeply (a config is stage -> option -> value)") from err


def _parse_yaml(text: str, path: Path) -> Any:
    """yaml.safe_load with the alias count and the nesting depth bounded (no tag runs code in a SafeLoader)."""
    import yaml  # pyyaml: only needed for YAML config files

    class BoundedLoader(yaml.SafeLoader):
        aliases, depth = 0, 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            mark = self.peek_event().start_mark
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise yaml.MarkedYAMLError(problem=f"more than {MAX_YAML_ALIASES} aliases (*name)",
                                               problem_mark=mark)
            self.depth += 1
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels", problem_mark=mark)
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"config file {path}: invalid YAML{where}: "
                         f"{shown_text(' '.join(filter(None, (err.context, err.problem))), 200)}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path}: invalid YAML: {shown_text(err, 200)}") from None
    finally:
        loader.dispose()


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
                raise ValueError(f"{name}: unknown preset {shown(preset)}; valid: {', '.join(sorted(stage.presets))}")
            values.update(stage.presets[preset])
        values.update({field_name: artifacts[art] for field_name, art in stage.consumes.items() if art in artifacts})
        values.update(file_values)  # typed by read_config_file
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
