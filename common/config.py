"""StageConfig: the base of every stage's config dataclass (choices checked, strict from_dict, atomic JSON)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from common.files import atomic_write_json

ConfigT = TypeVar("ConfigT", bound="StageConfig")


def field_base_type(annotation: Any) -> Any:
    """`int | None` -> int; `tuple[str, ...]` -> tuple; anything else unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return field_base_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin in (tuple, list):
        return tuple
    return annotation


def option_name(field_name: str) -> str:
    """The command-line spelling of a field: embed_dim -> --embed-dim."""
    return "--" + field_name.replace("_", "-")


class StageConfig:
    """Mixin for `@dataclass` stage configs.

    Field metadata: "help" (the option's help text, with the paper default), "choices" (allowed values,
    checked by validate for scalars and for every item of a tuple) and "required" (must not be empty once
    the command line, a config file and earlier stages of a chain have filled the config). Subclasses add their own checks by
    overriding `validate` and calling `super().validate()`. Saved as plain JSON; rebuilt with `from_dict`,
    which rejects unknown keys and accepts `embed-dim` as well as `embed_dim`.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # JSON and YAML give lists where the config holds tuples
            if isinstance(getattr(self, field.name), list):
                setattr(self, field.name, tuple(getattr(self, field.name)))

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Field name -> base type (bool, int, float, str or tuple)."""
        hints = typing.get_type_hints(cls)
        return {field.name: field_base_type(hints[field.name]) for field in dataclasses.fields(cls)}

    def validate(self) -> None:
        """Raise ValueError naming the first option outside its choices or of the wrong type."""
        types_ = self.field_types()
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), types_[field.name]
            if field.metadata.get("required") and value in ("", (), None):
                raise ValueError(f"{option_name(field.name)} is required: {field.metadata.get('help', '')}")
            if kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                if not (value is None and field.default is None):
                    raise ValueError(f"{option_name(field.name)} must be a number, got {value!r}")
            choices = field.metadata.get("choices")
            if choices is None:
                continue
            values = value if kind is tuple else (value,)
            bad = [item for item in values if item not in choices]
            if bad:
                raise ValueError(f"{option_name(field.name)} {', '.join(map(str, bad))} is not one of "
                                 f"{', '.join(map(str, choices))}")

    def check_at_least(self, minimum: float, *names: str) -> None:
        """ValueError naming the first of the fields `names` below `minimum` (an optional field left None passes)."""
        for name in names:
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"{option_name(name)} must be >= {minimum}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict[str, Any], *, source: str = "") -> ConfigT:
        """Rebuild from a dict (to_dict's, or a config file's table); unknown keys are a ValueError."""
        values = normalize_keys(data)
        check_known_keys(cls, values, source=source or cls.__name__)
        return cls(**values)

    def save_json(self, path: str | Path) -> Path:
        """Write the config as indented JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load_json(cls: type[ConfigT], path: str | Path) -> ConfigT:
        """Read a config written by save_json (FileNotFoundError when missing)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {str(path)!r}")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))


def normalize_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Keys spelled as options (`embed-dim`, `--embed-dim`) -> field names (`embed_dim`)."""
    return {str(key).lstrip("-").replace("-", "_"): value for key, value in data.items()}


def check_known_keys(cls: type, values: dict[str, Any], *, source: str, extra: tuple[str, ...] = ()) -> None:
    """ValueError naming each key that is not a field of `cls` (nor in `extra`), with the closest field."""
    known = [field.name for field in dataclasses.fields(cls)] + list(extra)
    unknown = sorted(set(values) - set(known))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{source}: unknown option(s) {', '.join(hints)}; see `pipeline.py <stage> --help`")
