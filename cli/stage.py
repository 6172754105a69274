"""A stage as the CLI sees it: its config, its function, what it consumes, produces and writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import StageConfig, option_name


def rerun_hint(cfg: Any) -> str:
    return "rerun the same command"


def no_artifacts(cfg: Any) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Output:
    """A file or folder a stage writes, checked for writability before any stage of the chain runs."""

    option: str  # the option that names it, e.g. "--out-dir"
    path: Path
    folder: bool  # a folder (run folder) or a file (store, results JSON)


def writes_file(name: str) -> Callable[[Any], list[Output]]:
    return lambda cfg: [Output(option_name(name), Path(getattr(cfg, name)), folder=False)]


def writes_folder(name: str) -> Callable[[Any], list[Output]]:
    return lambda cfg: [Output(option_name(name), Path(getattr(cfg, name)), folder=True)]


def no_outputs(cfg: Any) -> list[Output]:
    return []


@dataclass(frozen=True)
class Stage:
    """One command: its config, its stage function, and how it plugs into a chain."""

    config: type[StageConfig]
    run: Callable[[Any], Any]
    help: str
    consumes: dict[str, str] = field(default_factory=dict)  # config field -> chain artifact it defaults to
    produces: Callable[[Any], dict[str, str]] = no_artifacts  # config -> artifacts left for later stages
    input_paths: tuple[str, ...] = ()  # fields naming files or folders that must exist before the run
    hidden: tuple[str, ...] = ()  # fields the command does not offer (taken from elsewhere)
    presets: dict[str, dict] = field(default_factory=dict)  # --preset name -> field values
    distributed: bool = False  # under torchrun every rank runs it; otherwise rank 0 alone, the others wait
    writes: Callable[[Any], list[Output]] = no_outputs  # config -> what it writes (checked before the chain)
    resume_hint: Callable[[Any], str] = rerun_hint  # config -> how to go on after a full disk
    positional: str = ""  # a field also taken as the command's one optional argument (`report RUN_DIR`)
