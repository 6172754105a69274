"""Click options from config dataclass fields: one option per field, help and defaults from the field."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from cli.stage import Stage
from common.config import StageConfig, option_name


def field_default(spec: dataclasses.Field) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def option_for(spec: dataclasses.Field, kind: Any) -> Callable:
    """The Click option of one config field; every option defaults to None = "not given"."""
    name = option_name(spec.name)
    default = field_default(spec)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    help_text = spec.metadata.get("help", "")
    if spec.metadata.get("required"):
        help_text += "  [required]"
    elif default not in ("", None, ()):
        help_text += f"  [default: {shown}]"
    common = dict(default=None, help=help_text, show_default=False)
    if kind is bool:
        return click.option(f"{name}/--no-{name[2:]}", spec.name, **common)
    if spec.metadata.get("multiple"):  # repeatable, each value whole (sentences hold commas); none given = None
        return click.option(name, spec.name, type=str, multiple=True, callback=lambda _, __, value: value or None,
                            **common)
    if kind is tuple:  # a comma-separated list; its items are checked against "choices" by validate()
        return click.option(name, spec.name, type=str, metavar="A,B,...", **common)
    if "choices" in spec.metadata:
        choice = click.Choice([str(c) for c in spec.metadata["choices"]])
        return click.option(name, spec.name, type=choice, **common)
    return click.option(name, spec.name, type={int: int, float: float}.get(kind, str), **common)


def coerce(config_cls: type[StageConfig], values: dict[str, Any]) -> dict[str, Any]:
    """Turn CLI / config-file values into the field types (comma lists -> tuples, "3" -> 3 for ints)."""
    kinds = config_cls.field_types()
    out = {}
    for key, value in values.items():
        kind = kinds[key]
        if kind is tuple and isinstance(value, str):
            value = tuple(item.strip() for item in value.split(",") if item.strip())
        elif kind is tuple and isinstance(value, list):
            value = tuple(value)
        elif kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        out[key] = value
    return out


def make_command(name: str, stage: Stage) -> click.Command:
    def callback(**given: Any) -> tuple[str, dict[str, Any]]:
        return name, {key: value for key, value in given.items() if value is not None}

    command = click.Command(name, callback=callback, help=stage.help)
    kinds = stage.config.field_types()
    for spec in dataclasses.fields(stage.config):  # options decorating a Command are appended in order
        if spec.name not in stage.hidden:
            command = option_for(spec, kinds[spec.name])(command)
    if stage.presets:
        command = click.option("--preset", type=click.Choice(sorted(stage.presets)), default=None,
                               help="a named setting of the papers; explicit options win over it")(command)
    return command
