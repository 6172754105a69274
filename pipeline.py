"""Command line of the VSE++ pipeline: extract -> train -> finetune -> eval, chainable in one invocation.

Every stage command is generated from its config dataclass (one option per field, help and defaults taken
from the field), so the CLI, the saved config JSON and `--config FILE` always speak the same names.
Values are layered: dataclass default < artifact of an earlier stage in the chain < config file < command line.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

logger = logging.getLogger("pipeline")


@dataclass(frozen=True)
class StageSpec:
    """How one stage plugs into the chain."""

    config: str  # "module:Class" of the stage's config dataclass
    run: str  # "module:function" taking the config
    consumes: dict[str, str]  # config field -> chain artifact it defaults to
    produces: Callable[[Any], dict[str, str]]  # config -> artifacts this stage leaves for the next ones
    input_paths: tuple[str, ...]  # config fields naming files or folders that must exist before the run
    help: str
    required: tuple[str, ...] = ()  # fields that must be non-empty once defaults, chain and file are applied
    hidden: str = ""  # "module:NAME" of a tuple of fields the command does not offer (taken from elsewhere)
    checks: tuple[str, ...] = ()  # "module:function"s that validate the config without touching the disk


def _train_outputs(cfg: Any) -> dict[str, str]:
    return {"checkpoint": str(Path(cfg.out_dir) / "best.pt"), "store": cfg.store}


STAGES: dict[str, StageSpec] = {
    "extract": StageSpec(
        config="extract.config:ExtractConfig", run="extract.run:run_extract",
        consumes={"dataset": "dataset", "image_root": "image_root"},
        produces=lambda cfg: {"store": cfg.out}, input_paths=("dataset", "image_root"),
        help="Stage 1: CNN features (1C / 10C) of every image into an HDF5 feature store.",
    ),
    "train": StageSpec(
        config="train.config:TrainConfig", run="train.run:run_train", consumes={"store": "store"},
        produces=_train_outputs, input_paths=("store", "resume"),
        help="Stage 2: train the caption encoder and projection heads on stored features.",
        required=("store",), checks=("train.run:validate_options",),
    ),
    "finetune": StageSpec(
        config="train.config:FinetuneConfig", run="train.finetune:run_finetune",
        consumes={"checkpoint": "checkpoint", "store": "store"},
        produces=_train_outputs, input_paths=("checkpoint", "store", "image_root", "resume"),
        help="Stage 3: fine-tune the CNN end to end on random crops of the raw images. The model, loss and "
             "vocabulary options come from the train-stage checkpoint.",
        required=("checkpoint",), hidden="train.config:CHECKPOINT_FIELDS",
        checks=("train.finetune:validate_finetune_options", "train.run:validate_options"),
    ),
    "eval": StageSpec(
        config="eval.config:EvalConfig", run="eval.run:run_eval",
        consumes={"checkpoint": "checkpoint", "store": "store"},
        produces=lambda cfg: {}, input_paths=("checkpoint", "store", "image_root"),
        help="Recall@K, median and mean rank in both directions (COCO 1K/5K, Flickr30K 1K).",
        required=("checkpoint",),
    ),
    "demo": StageSpec(
        config="demo.run:DemoConfig", run="demo.run:run_demo", consumes={},
        produces=lambda cfg: {}, input_paths=(),
        help="Generate the synthetic demo dataset and run every stage on it (CPU, a few minutes).",
    ),
    "demo-data": StageSpec(
        config="demo.run:DemoDataConfig", run="demo.run:run_generate", consumes={},
        produces=lambda cfg: {"dataset": str(Path(cfg.out_dir) / "dataset_demo.json"), "image_root": cfg.out_dir},
        input_paths=(),
        help="Only render the synthetic demo dataset (Karpathy JSON + images) into --out-dir.",
    ),
    "ablate": StageSpec(
        config="train.ablation:AblationConfig", run="train.ablation:run_ablation", consumes={"store": "store"},
        produces=lambda cfg: {}, input_paths=("store",),
        help="Grid of losses x image features x text pooling with one seed and budget; Markdown + JSON table.",
        required=("store",),
    ),
    "merge": StageSpec(
        config="features.merge:MergeConfig", run="features.merge:run_merge", consumes={},
        produces=lambda cfg: {"store": cfg.out}, input_paths=("shards",),
        help="Join the stores written by `extract --shard i/n` into one store.",
    ),
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------- options from dataclass fields

def _base_type(annotation: Any) -> Any:
    """`int | None` -> int; `tuple[str, ...]` -> tuple; anything else unchanged."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (tuple, list):
        return tuple
    return annotation


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _option_for(field: dataclasses.Field, annotation: Any) -> Callable:
    name = field.name.replace("_", "-")
    kind = _base_type(annotation)
    default = _field_default(field)
    required = default is None and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
    help_text = field.metadata.get("help", "")
    if required:
        help_text += "  [required]"
    elif default not in ("", None):
        help_text += f"  [default: {shown}]"
    common = dict(default=None, help=help_text, show_default=False)
    if kind is bool:
        return click.option(f"--{name}/--no-{name}", field.name, **common)
    if kind is tuple:  # a comma-separated list; its items are checked against "choices" in _coerce
        return click.option(f"--{name}", field.name, type=str, metavar="A,B,...", **common)
    if "choices" in field.metadata:
        choice = click.Choice([str(c) for c in field.metadata["choices"]])
        return click.option(f"--{name}", field.name, type=choice, **common)
    click_type = {int: int, float: float}.get(kind, str)
    return click.option(f"--{name}", field.name, type=click_type, **common)


def _coerce(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Turn CLI / config-file values into the field types (comma lists -> tuples, "3" -> 3 for ints)."""
    hints = typing.get_type_hints(config_cls)
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(config_cls)}
    out = {}
    for key, value in values.items():
        kind = _base_type(hints[key])
        if kind is tuple and isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        elif kind is tuple and isinstance(value, list):
            value = tuple(value)
        if kind is tuple and choices[key]:
            bad = [v for v in value if v not in choices[key]]
            if bad:
                raise ValueError(f"--{key.replace('_', '-')}: {bad} not among {list(choices[key])}")
        elif kind is int and isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        out[key] = value
    return out


def _make_command(stage: str, spec: StageSpec) -> click.Command:
    config_cls = _load(spec.config)
    hints = typing.get_type_hints(config_cls)

    def callback(**given: Any) -> tuple[str, dict[str, Any]]:
        return stage, {k: v for k, v in given.items() if v is not None}

    command = click.Command(stage, callback=callback, help=spec.help)
    hidden = set(_load(spec.hidden)) if spec.hidden else set()
    for field in dataclasses.fields(config_cls):  # options decorating a Command are appended in order
        if field.name not in hidden:
            command = _option_for(field, hints[field.name])(command)
    presets = _presets_of(spec)
    if presets:
        command = click.option("--preset", type=click.Choice(sorted(presets)), default=None,
                               help="a named setting of the papers; explicit options win over it")(command)
    return command


def _presets_of(spec: StageSpec) -> dict[str, dict]:
    """PRESETS (name -> field overrides) of the module that defines the stage's config, if any."""
    return getattr(importlib.import_module(spec.config.split(":")[0]), "PRESETS", {})


# ---------------------------------------------------------------- the chain

def _read_config_file(path: str | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    text = Path(path).read_text()
    if path.endswith((".yaml", ".yml")):
        import yaml  # only needed for YAML config files

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"config file {path} must map stage names to option tables, e.g. {{'train': {{'epochs': 30}}}}")
    unknown = sorted(set(data) - set(STAGES))
    if unknown:
        raise ValueError(f"config file {path} names unknown stage(s) {unknown}; stages are {sorted(STAGES)}")
    return data


def _build_configs(steps: list[tuple[str, dict]], file_sections: dict[str, dict]) -> list[tuple[StageSpec, Any]]:
    """Resolve every stage's config and check its inputs before anything runs."""
    artifacts: dict[str, str] = {}
    produced: set[str] = set()
    plan = []
    for stage, cli_values in steps:
        spec = STAGES[stage]
        config_cls = _load(spec.config)
        names = {f.name for f in dataclasses.fields(config_cls)}
        file_values = dict(file_sections.get(stage, {}))
        unknown = sorted(set(file_values) - names - {"preset"})
        if unknown:
            raise ValueError(f"config file section '{stage}' has unknown option(s) {unknown}")
        values = {field: artifacts[art] for field, art in spec.consumes.items() if art in artifacts}
        cli_values = dict(cli_values)
        preset = cli_values.pop("preset", None) or file_values.pop("preset", None)
        if preset:
            values.update(_presets_of(spec)[preset])
        values.update(_coerce(config_cls, file_values))
        values.update(_coerce(config_cls, cli_values))
        missing = [f.name for f in dataclasses.fields(config_cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in values]
        missing += [name for name in spec.required if not values.get(name)]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-") for m in missing)
            raise ValueError(f"{stage}: missing required option(s) {flags}")
        cfg = config_cls(**values)
        if hasattr(cfg, "validate"):
            cfg.validate()
        for check in spec.checks:
            _load(check)(cfg)
        for field in spec.input_paths:
            for path in _paths_of(getattr(cfg, field, "")):
                if path not in produced and not Path(path).exists():
                    raise FileNotFoundError(f"{stage}: --{field.replace('_', '-')} {path} does not exist")
        outputs = spec.produces(cfg)
        artifacts.update(outputs)
        produced.update(outputs.values())
        plan.append((spec, cfg))
    return plan


def _paths_of(value: Any) -> list[str]:
    if not value or value == "none":
        return []
    return [str(v) for v in value] if isinstance(value, (tuple, list)) else [str(value)]


@click.group(chain=True, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON or YAML file with one table of options per stage, e.g. {train: {epochs: 30}}; "
                   "command-line options win over it.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), help="Logging verbosity.")
def cli(config_file: str | None, log_level: str) -> None:
    """VSE++ image-caption retrieval: extract -> train -> finetune -> eval.

    Stages can be chained; each one's output becomes the next one's input:

        python pipeline.py extract --dataset D.json --image-root IMG --out feats.h5 train --out-dir runs/a eval
    """
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


@cli.result_callback()
@click.pass_context
def _run_chain(ctx: click.Context, steps: list[tuple[str, dict]], config_file: str | None, log_level: str) -> None:
    try:
        plan = _build_configs(steps, _read_config_file(config_file))
    except (ValueError, FileNotFoundError, TypeError, json.JSONDecodeError) as err:
        click.echo(f"error: {err}", err=True)
        ctx.exit(2)
    for spec, cfg in plan:
        try:
            _load(spec.run)(cfg)
        except (ValueError, FileNotFoundError) as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted: rerun the same command to resume", err=True)
            ctx.exit(130)
        except _load("extract.run:ExtractFailures") as err:  # --strict and some images could not be read
            click.echo(f"error: {err}", err=True)
            ctx.exit(1)


for _stage, _spec in STAGES.items():
    cli.add_command(_make_command(_stage, _spec))


if __name__ == "__main__":
    cli()
