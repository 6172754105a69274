"""Command line of the VSE++ pipeline: extract -> train -> finetune -> eval, chainable in one invocation.

Every stage command is generated from its config dataclass (one option per field, help and defaults taken
from the field), so the CLI, the saved config JSON and `--config FILE` always speak the same names.
Values are layered: dataclass default < preset < artifact of an earlier stage in the chain < config file
< command line. This module is the only one that knows Click.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ablation.config import AblationConfig
from ablation.run import run_ablation
from common import distributed
from common.config import StageConfig, check_known_keys, normalize_keys, option_name
from demo.run import DemoConfig, DemoDataConfig, run_demo, run_generate
from extract.config import ExtractConfig
from extract.run import ExtractFailures, run_extract
from features.merge import MergeConfig, run_merge
from report.config import ReportConfig
from report.run import run_report
from retrieval.encode import EncodeConfig, run_encode
from retrieval.evaluate import EvalConfig, run_eval
from retrieval.export import ExportConfig, run_export
from retrieval.search import SearchConfig, run_search
from serve.config import ServeConfig
from serve.run import run_serve
from train.config import PRESETS, TrainConfig
from train.finetune.config import CHECKPOINT_FIELDS, FinetuneConfig
from train.finetune.run import run_finetune
from train.run import run_train

logger = logging.getLogger("pipeline")


def _no_artifacts(cfg: Any) -> dict[str, str]:
    return {}


def _run_outputs(cfg: TrainConfig) -> dict[str, str]:
    return {"checkpoint": str(Path(cfg.out_dir) / "best.pt"), "store": cfg.store}


@dataclass(frozen=True)
class Stage:
    """One command: its config, its stage function, and how it plugs into a chain."""

    config: type[StageConfig]
    run: Callable[[Any], Any]
    help: str
    consumes: dict[str, str] = field(default_factory=dict)  # config field -> chain artifact it defaults to
    produces: Callable[[Any], dict[str, str]] = _no_artifacts  # config -> artifacts left for later stages
    input_paths: tuple[str, ...] = ()  # fields naming files or folders that must exist before the run
    hidden: tuple[str, ...] = ()  # fields the command does not offer (taken from elsewhere)
    presets: dict[str, dict] = field(default_factory=dict)  # --preset name -> field values
    distributed: bool = False  # under torchrun every rank runs it; otherwise rank 0 alone, the others wait


STAGES: dict[str, Stage] = {
    "extract": Stage(
        ExtractConfig, run_extract, "Stage 1: CNN features (1C / 10C) of every image into an HDF5 feature store.",
        consumes={"dataset": "dataset", "image_root": "image_root"},
        produces=lambda cfg: {"store": cfg.out}, input_paths=("dataset", "image_root")),
    "train": Stage(
        TrainConfig, run_train, "Stage 2: train the caption encoder and projection heads on stored features.",
        consumes={"store": "store"}, produces=_run_outputs, input_paths=("store", "resume"), presets=PRESETS,
        distributed=True),
    "finetune": Stage(
        FinetuneConfig, run_finetune,
        "Stage 3: fine-tune the CNN end to end on random crops of the raw images. The model, loss and vocabulary "
        "options come from the train-stage checkpoint.",
        consumes={"checkpoint": "checkpoint", "store": "store"}, produces=_run_outputs,
        input_paths=("checkpoint", "store", "image_root", "resume"), hidden=CHECKPOINT_FIELDS, distributed=True),
    "eval": Stage(
        EvalConfig, run_eval, "Recall@K, median and mean rank in both directions (COCO 1K/5K, Flickr30K 1K).",
        consumes={"checkpoint": "checkpoint", "store": "store"}, input_paths=("checkpoint", "store", "image_root")),
    "encode": Stage(
        EncodeConfig, run_encode,
        "Embeddings of a store split, images (files or folders) or a text file of sentences into one HDF5 file, "
        "with the model's provenance; resumable.",
        consumes={"checkpoint": "checkpoint"}, produces=lambda cfg: {"embeddings": cfg.out},
        input_paths=("checkpoint", "store", "images", "texts", "image_root", "weights")),
    "search": Stage(
        SearchConfig, run_search,
        "Top-k images for sentences (--text) and top-k captions for images (--image), over an embeddings file or a "
        "store split; exact, or a saved faiss index.",
        consumes={"checkpoint": "checkpoint", "embeddings": "embeddings"},
        input_paths=("checkpoint", "embeddings", "store", "text_file", "image", "image_root", "weights")),
    "export": Stage(
        ExportConfig, run_export, "A weights-only model file of a checkpoint (no optimizer or RNG state) that "
        "eval, encode, search and the Python API load like the checkpoint.",
        consumes={"checkpoint": "checkpoint"}, produces=lambda cfg: {"checkpoint": cfg.out},
        input_paths=("checkpoint",)),
    "report": Stage(
        ReportConfig, run_report,
        "An HTML report of a run folder (RUN/report/index.html + PNGs, opens from disk): training curves, Recall@K "
        "K=1..50 with chance, the config, sampled test retrievals, the worst queries, the ablation chart.",
        consumes={"checkpoint": "checkpoint"},
        input_paths=("run_dir", "checkpoint", "store", "image_root", "ablation")),
    "serve": Stage(
        ServeConfig, run_serve,
        "A local search page (127.0.0.1 by default): a sentence -> images, an uploaded or picked image -> captions, "
        "over a store split embedded at start or an embeddings file of `encode`.",
        consumes={"checkpoint": "checkpoint", "embeddings": "embeddings"},
        input_paths=("checkpoint", "embeddings", "store", "image_root", "weights")),
    "demo": Stage(
        DemoConfig, run_demo, "Generate the synthetic demo dataset and run every stage on it (CPU, a few minutes)."),
    "demo-data": Stage(
        DemoDataConfig, run_generate, "Only render the synthetic demo dataset (Karpathy JSON + images) into --out-dir.",
        produces=lambda cfg: {"dataset": str(Path(cfg.out_dir) / "dataset_demo.json"), "image_root": cfg.out_dir}),
    "ablate": Stage(
        AblationConfig, run_ablation,
        "Grid of losses x image features x text pooling with one seed and budget; Markdown + JSON table.",
        consumes={"store": "store"}, input_paths=("store",)),
    "merge": Stage(
        MergeConfig, run_merge, "Join the stores written by `extract --shard i/n` into one store.",
        produces=lambda cfg: {"store": cfg.out}, input_paths=("shards",)),
}


# ---------------------------------------------------------------- options from dataclass fields

def _field_default(spec: dataclasses.Field) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _option_for(spec: dataclasses.Field, kind: Any) -> Callable:
    """The Click option of one config field; every option defaults to None = "not given"."""
    name = option_name(spec.name)
    default = _field_default(spec)
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


def _coerce(config_cls: type[StageConfig], values: dict[str, Any]) -> dict[str, Any]:
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


def _make_command(name: str, stage: Stage) -> click.Command:
    def callback(**given: Any) -> tuple[str, dict[str, Any]]:
        return name, {key: value for key, value in given.items() if value is not None}

    command = click.Command(name, callback=callback, help=stage.help)
    kinds = stage.config.field_types()
    for spec in dataclasses.fields(stage.config):  # options decorating a Command are appended in order
        if spec.name not in stage.hidden:
            command = _option_for(spec, kinds[spec.name])(command)
    if stage.presets:
        command = click.option("--preset", type=click.Choice(sorted(stage.presets)), default=None,
                               help="a named setting of the papers; explicit options win over it")(command)
    return command


# ---------------------------------------------------------------- the chain

def _read_config_file(path: str | None) -> dict[str, dict[str, Any]]:
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
    unknown = sorted(set(data) - set(STAGES))
    if unknown:
        raise ValueError(f"config file {path} names unknown stage(s) {unknown}; stages are {sorted(STAGES)}")
    return {stage: normalize_keys(table) for stage, table in data.items()}


def build_plan(steps: list[tuple[str, dict]], file_sections: dict[str, dict]) -> list[tuple[Stage, StageConfig]]:
    """Resolve and validate every stage's config, and check its input paths, before anything runs."""
    artifacts: dict[str, str] = {}
    produced: set[str] = set()
    plan = []
    for name, cli_values in steps:
        stage = STAGES[name]
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
        values.update(_coerce(stage.config, file_values))
        values.update(_coerce(stage.config, cli_values))
        cfg = stage.config(**values)
        cfg.validate()
        for field_name in stage.input_paths:
            for path in _paths_of(getattr(cfg, field_name, "")):
                if path not in produced and not Path(path).exists():
                    raise FileNotFoundError(f"{name}: {option_name(field_name)} {path} does not exist")
        outputs = stage.produces(cfg)
        artifacts.update(outputs)
        produced.update(outputs.values())
        plan.append((stage, cfg))
    return plan


def _paths_of(value: Any) -> list[str]:
    if not value or value == "none":
        return []
    return [str(v) for v in value] if isinstance(value, tuple) else [str(value)]


@click.group(chain=True, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="JSON or YAML file with one table of options per stage, e.g. {train: {epochs: 30}}; "
                   "command-line options win over it.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), help="Logging verbosity.")
@click.option("--dist-timeout", default=distributed.DEFAULT_TIMEOUT_MINUTES, show_default=True, type=float,
              help="Under torchrun: minutes a rank waits for the others in a collective before the job fails.")
def cli(config_file: str | None, log_level: str, dist_timeout: float) -> None:
    """VSE++ image-caption retrieval: extract -> train -> finetune -> eval.

    Stages can be chained; each one's output becomes the next one's input:

        python pipeline.py extract --dataset D.json --image-root IMG --out feats.h5 train --out-dir runs/a eval

    Under torchrun (`torchrun --nproc-per-node N pipeline.py train ...`) train and finetune run on every
    rank with hard negatives over the global batch; other stages run on rank 0.
    """
    rank = int(os.environ.get("RANK", "0"))  # torchrun's; only rank 0 logs below warnings
    logging.basicConfig(level=log_level if rank == 0 else "WARNING", force=True,
                        format=f"%(asctime)s %(levelname)s {f'rank {rank} ' if rank else ''}%(name)s: %(message)s")


def _fail(ctx: click.Context, message: str, code: int) -> None:
    rank = distributed.current().rank
    click.echo(f"{f'rank {rank}: ' if rank else ''}{message}", err=True)
    ctx.exit(code)


@cli.result_callback()
@click.pass_context
def _run_chain(ctx: click.Context, steps: list[tuple[str, dict]], config_file: str | None, log_level: str,
               dist_timeout: float) -> None:
    try:
        plan = build_plan(steps, _read_config_file(config_file))
    except (ValueError, FileNotFoundError, TypeError, json.JSONDecodeError) as err:
        _fail(ctx, f"error: {err}", 2)
    context = distributed.init_from_environment(timeout_minutes=dist_timeout)
    for stage, cfg in plan:
        try:
            if stage.distributed or context.is_main:
                stage.run(cfg)
            if not stage.distributed:
                context.barrier()  # the next stage may read what rank 0 just wrote
        except (ValueError, FileNotFoundError) as err:
            _fail(ctx, f"error: {err}", 2)
        except KeyboardInterrupt as interrupt:  # train/finetune say how to resume; extract resumes as it is
            _fail(ctx, f"interrupted: {interrupt or 'rerun the same command to resume'}", 130)
        except ExtractFailures as err:  # --strict and some images could not be read
            _fail(ctx, f"error: {err}", 1)


for _name, _stage in STAGES.items():
    cli.add_command(_make_command(_name, _stage))


def main() -> None:
    """Entry point of the `vsepp` console command (the same CLI as `python pipeline.py`)."""
    cli()


if __name__ == "__main__":
    main()
