"""StageConfig: the base of every stage's config dataclass (choices checked, strict from_dict, atomic JSON)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from common.files import atomic_write_json

ConfigT = TypeVar("ConfigT", bound="StageConfig")
INT_LIMIT = 2**63  # an int field holds a count, a size or a seed: what int64 holds, no more
# A bad value is echoed cut short and at a bounded cost (a YAML alias bomb's lists are shared, not expanded).
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 1, 4, 4, 4
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def shown(value: Any) -> str:
    """repr(value) cut short: a message never echoes a huge value back."""
    return _SHORT.repr(value)


def shown_text(value: Any, limit: int = 60) -> str:
    """str(value) cut to `limit` characters."""
    text = str(value) if isinstance(value, (str, int, float)) else shown(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def coerce_value(annotation: Any, value: Any, *, where: str) -> Any:
    """`value` as the type `annotation` says, strictly: ValueError f"{where} must be ..." otherwise.

    A bool is only True/False; an int a whole number (not a bool, not 2.5 nor 1e30, |x| < 2**63); a float a
    finite number; a str a string; tuple[T, ...] a list (or a comma-separated string, as on the command line)
    of T; dict[K, V] a table of K to V; `X | None` None or X.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return coerce_value(next(a for a in args if a is not type(None)), value, where=where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false (a boolean, not a string or number), got {shown(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{where} must be a whole number, got {shown(value)}")
        if not -INT_LIMIT < value < INT_LIMIT:
            raise ValueError(f"{where} must be a whole number below 2**63 in size, got {shown(value)}")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{where} must be a number, got {shown(value)}")
        number = float(value) if abs(value) < 1e308 else math.inf  # a huge int would raise OverflowError
        if not math.isfinite(number):
            raise ValueError(f"{where} must be a finite number, got {shown(value)}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {shown(value)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {shown(value)}")
        element = args[0] if args else Any
        return origin(coerce_value(element, item, where=f"{where}[{number}]") for number, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a table of names to values, got {shown(value)}")
        key_type, value_type = args or (Any, Any)
        return {coerce_value(key_type, key, where=f"{where} key {shown(key)}"):
                coerce_value(value_type, item, where=f"{where}.{key}") for key, item in value.items()}
    return value  # Any, or a type no config file spells


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
    the command line, a config file and earlier stages of a chain have filled the config). validate also checks
    every value against its field's type (coerce_value: no "false" for a bool, no 2.5 for an int, no inf or
    nan for a float). Subclasses add their own checks by overriding `validate` and calling `super().validate()`.
    Saved as plain JSON; rebuilt with `from_dict`, which rejects unknown keys, types every value strictly and
    accepts `embed-dim` as well as `embed_dim`.
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # JSON and YAML give lists where the config holds tuples
            if isinstance(getattr(self, field.name), list):
                setattr(self, field.name, tuple(getattr(self, field.name)))

    @classmethod
    def field_annotations(cls) -> dict[str, Any]:
        """Field name -> its full type annotation (`tuple[str, ...]`, `int | None`, ...)."""
        hints = typing.get_type_hints(cls)
        return {field.name: hints[field.name] for field in dataclasses.fields(cls)}

    @classmethod
    def coerce_field(cls, name: str, value: Any, *, where: str) -> Any:
        """A config file's or a saved config's value of field `name`, strictly typed (see coerce_value);
        a repeatable option given one string holds that one string whole (sentences hold commas)."""
        spec = next(field for field in dataclasses.fields(cls) if field.name == name)
        if spec.metadata.get("multiple") and isinstance(value, str):
            value = (value,)
        return coerce_value(cls.field_annotations()[name], value, where=where)

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Field name -> base type (bool, int, float, str or tuple)."""
        hints = typing.get_type_hints(cls)
        return {field.name: field_base_type(hints[field.name]) for field in dataclasses.fields(cls)}

    def validate(self) -> None:
        """Raise ValueError naming the first option outside its choices or of the wrong type."""
        types_, annotations = self.field_types(), self.field_annotations()
        for field in dataclasses.fields(self):
            value, kind = getattr(self, field.name), types_[field.name]
            if field.metadata.get("required") and value in ("", (), None):
                raise ValueError(f"{option_name(field.name)} is required: {field.metadata.get('help', '')}")
            # the command line's `--lr inf` and a Python caller's `epochs=2.5` are refused as a file's are
            coerce_value(annotations[field.name], value, where=option_name(field.name))
            choices = field.metadata.get("choices")
            if choices is None:
                continue
            values = value if kind is tuple else (value,)
            bad = [item for item in values if item not in choices]
            if bad:
                raise ValueError(f"{option_name(field.name)} {', '.join(shown_text(item) for item in bad)} is not "
                                 f"one of {', '.join(map(str, choices))}")

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
        if not isinstance(data, dict):
            raise ValueError(f"{source or cls.__name__}: a config must be a table of options, got {shown(data)}")
        values = normalize_keys(data)
        source = source or cls.__name__
        check_known_keys(cls, values, source=source)
        return cls(**{key: cls.coerce_field(key, value, where=f"{source}: {option_name(key)}")
                      for key, value in values.items()})

    def save_json(self, path: str | Path) -> Path:
        """Write the config as indented JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load_json(cls: type[ConfigT], path: str | Path) -> ConfigT:
        """Read a config written by save_json (FileNotFoundError when missing)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {str(path)!r}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{path} is not a JSON config ({shown_text(err, 200)}); write it again") from err
        return cls.from_dict(data, source=str(path))


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
        hints.append(shown(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(f"{source}: unknown option(s) {', '.join(hints)}; see `pipeline.py <stage> --help`")
