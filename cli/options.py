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


POSITIONAL = "positional_value"


def take_positional(stage: Stage, given: dict[str, Any]) -> dict[str, Any]:
    """Move the positional argument's value into its field; refuse it twice, or a stage name taken for it (in a
    chain, `report eval ...` means report with no argument, then eval: Click would read `eval` as the argument)."""
    value = given.pop(POSITIONAL, None)
    if value is None:
        return given
    option, metavar = option_name(stage.positional), stage.positional.upper()
    if value in click.get_current_context().parent.command.commands:
        raise click.UsageError(f"{value!r} is a stage, not a {metavar}: give {option} before chaining another stage")
    if given.get(stage.positional) is not None:
        raise click.UsageError(f"{metavar} given twice (as an argument and as {option}): give it once")
    return {**given, stage.positional: value}


class PositionalCommand(click.Command):
    """A command with a positional argument whose options may also follow it (`report RUN_DIR --split val`).

    A chained group parses each command with interspersed options off, so an option after the argument would go
    to the next stage; that holds here only when another stage name follows in the arguments.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        stages = parent.command.commands if parent is not None else {}
        if not any(arg in stages for arg in args):
            extra["allow_interspersed_args"] = True
        return super().make_context(info_name, args, parent=parent, **extra)


def make_command(name: str, stage: Stage) -> click.Command:
    def callback(**given: Any) -> tuple[str, dict[str, Any]]:
        given = take_positional(stage, given) if stage.positional else given
        return name, {key: value for key, value in given.items() if value is not None}

    command_class = PositionalCommand if stage.positional else click.Command
    command = command_class(name, callback=callback, help=stage.help)
    if stage.positional:
        metavar = f"[{stage.positional.upper()}]"
        command = click.argument(POSITIONAL, required=False, metavar=metavar)(command)
    kinds = stage.config.field_types()
    for spec in dataclasses.fields(stage.config):  # options decorating a Command are appended in order
        if spec.name not in stage.hidden:
            command = option_for(spec, kinds[spec.name])(command)
    if stage.presets:
        command = click.option("--preset", type=click.Choice(sorted(stage.presets)), default=None,
                               help="a named setting of the papers; explicit options win over it")(command)
    return command
