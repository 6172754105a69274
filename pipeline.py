"""Command line of the VSE++ pipeline: extract -> train -> finetune -> eval, chainable in one invocation.

Every stage command is generated from its config dataclass (one option per field, help and defaults taken
from the field: cli/options.py), so the CLI, the saved config JSON and `--config FILE` always speak the same
names. Values are layered: dataclass default < preset < artifact of an earlier stage in the chain < config file
< command line (cli/plan.py). This module holds the table of stages and runs the chain; Click is known here and
in cli/ only.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import click

from ablation.config import AblationConfig
from ablation.run import run_ablation
from cli import plan
from cli.errors import StageOSError, describe_os_error
from cli.options import make_command
from cli.stage import Output, Stage, writes_file, writes_folder
from common import distributed
from common.config import StageConfig
from demo.run import DemoConfig, DemoDataConfig, run_demo, run_generate
from extract.config import ExtractConfig
from extract.run import ExtractFailures, run_extract
from features.importers.config import ImportConfig
from features.importers.run import run_import
from features.merge import MergeConfig, run_merge
from report.config import ReportConfig
from report.run import run_report
from retrieval.encode import EncodeConfig, run_encode
from retrieval.evaluate import EvalConfig, run_eval
from retrieval.export import ExportConfig, run_export
from retrieval.reference_import import ImportCheckpointConfig, run_import_checkpoint
from retrieval.search import SearchConfig, run_search
from serve.config import ServeConfig
from serve.run import run_serve
from train.config import PRESETS, TrainConfig
from train.finetune.config import CHECKPOINT_FIELDS, FinetuneConfig
from train.finetune.run import run_finetune
from train.run import run_train
from train.run_dir import BEST, LAST

logger = logging.getLogger("pipeline")


def _run_resume_hint(cfg: TrainConfig) -> str:
    """How a train or finetune run goes on after a failed save: from its newest checkpoint, if one was written."""
    saved = [Path(cfg.out_dir) / name for name in (LAST, BEST) if (Path(cfg.out_dir) / name).is_file()]
    return f"continue with --resume {saved[0]}" if saved else "rerun the same command"


def _run_outputs(cfg: TrainConfig) -> dict[str, str]:
    return {"checkpoint": str(Path(cfg.out_dir) / "best.pt"), "store": cfg.store}


STAGES: dict[str, Stage] = {
    "extract": Stage(
        ExtractConfig, run_extract, "Stage 1: CNN features (1C / 10C) of every image into an HDF5 feature store.",
        consumes={"dataset": "dataset", "image_root": "image_root"},
        produces=lambda cfg: {"store": cfg.out}, input_paths=("dataset", "image_root"), writes=writes_file("out"),
        resume_hint=lambda cfg: "rerun the same command to resume (finished rows are kept)", distributed=True),
    "train": Stage(
        TrainConfig, run_train, "Stage 2: train the caption encoder and projection heads on stored features.",
        consumes={"store": "store"}, produces=_run_outputs, input_paths=("store", "resume"), presets=PRESETS,
        distributed=True, writes=writes_folder("out_dir"), resume_hint=_run_resume_hint),
    "finetune": Stage(
        FinetuneConfig, run_finetune,
        "Stage 3: fine-tune the CNN end to end on random crops of the raw images. The model, loss and vocabulary "
        "options come from the train-stage checkpoint.",
        consumes={"checkpoint": "checkpoint", "store": "store"}, produces=_run_outputs,
        input_paths=("checkpoint", "store", "image_root", "resume"), hidden=CHECKPOINT_FIELDS, distributed=True,
        writes=writes_folder("out_dir"), resume_hint=_run_resume_hint),
    "eval": Stage(
        EvalConfig, run_eval, "Recall@K, median and mean rank in both directions (COCO 1K/5K, Flickr30K 1K).",
        consumes={"checkpoint": "checkpoint", "store": "store"}, input_paths=("checkpoint", "store", "image_root"),
        writes=lambda cfg: [Output("--out", cfg.results_path(), folder=False)]),
    "encode": Stage(
        EncodeConfig, run_encode,
        "Embeddings of a store split, images (files or folders) or a text file of sentences into one HDF5 file, "
        "with the model's provenance; resumable.",
        consumes={"checkpoint": "checkpoint"}, produces=lambda cfg: {"embeddings": cfg.out},
        input_paths=("checkpoint", "store", "images", "texts", "image_root", "weights"),
        writes=writes_file("out")),
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
        input_paths=("checkpoint",), writes=writes_file("out")),
    "import-checkpoint": Stage(
        ImportCheckpointConfig, run_import_checkpoint,
        "A released model of the reference VSE++ code (model_best.pth.tar + its vocabulary pickle, read without "
        "running any code they hold) as a model file that eval, encode, search, serve and the Python API load.",
        consumes={"store": "store"}, produces=lambda cfg: {"checkpoint": cfg.out},
        input_paths=("checkpoint", "vocab", "store"), writes=writes_file("out")),
    "report": Stage(
        ReportConfig, run_report,
        "An HTML report of a run folder (RUN/report/index.html + PNGs, opens from disk): training curves, Recall@K "
        "K=1..50 with chance, the config, sampled test retrievals, the worst queries, the ablation chart.",
        consumes={"checkpoint": "checkpoint"}, positional="run_dir",
        input_paths=("run_dir", "checkpoint", "store", "image_root", "ablation"),
        writes=lambda cfg: [Output("--out-dir", cfg.out_path, folder=True)]),
    "serve": Stage(
        ServeConfig, run_serve,
        "A local search page (127.0.0.1 by default): a sentence -> images, an uploaded or picked image -> captions, "
        "over a store split embedded at start or an embeddings file of `encode`.",
        consumes={"checkpoint": "checkpoint", "embeddings": "embeddings"},
        input_paths=("checkpoint", "embeddings", "store", "image_root", "weights")),
    "demo": Stage(
        DemoConfig, run_demo, "Generate the synthetic demo dataset and run every stage on it (CPU, a few minutes).",
        writes=writes_folder("out_dir")),
    "demo-data": Stage(
        DemoDataConfig, run_generate, "Only render the synthetic demo dataset (Karpathy JSON + images) into --out-dir.",
        produces=lambda cfg: {"dataset": str(Path(cfg.out_dir) / "dataset_demo.json"), "image_root": cfg.out_dir},
        writes=writes_folder("out_dir")),
    "ablate": Stage(
        AblationConfig, run_ablation,
        "Grid of losses x image features x text pooling with one seed and budget; Markdown + JSON table.",
        consumes={"store": "store"}, input_paths=("store",), writes=writes_folder("out_dir")),
    "merge": Stage(
        MergeConfig, run_merge, "Join the stores written by `extract --shard i/n` into one store.",
        produces=lambda cfg: {"store": cfg.out}, input_paths=("shards",), writes=writes_file("out")),
    "import-features": Stage(
        ImportConfig, run_import,
        "Released features into a feature store (no CNN, no images): a VSE++ precomp folder (coco/f8k/f30k/10crop), "
        "a SCAN/BUTD region folder, or a Karpathy JSON / TSV with a .npy / .npz matrix; resumable.",
        produces=lambda cfg: {"store": cfg.out}, input_paths=("source", "dataset", "image_root"),
        writes=writes_file("out"), resume_hint=lambda cfg: "rerun the same command to resume (finished rows are kept)"),
}


def build_plan(steps: list[tuple[str, dict]], file_sections: dict[str, dict]) -> list[tuple[Stage, StageConfig]]:
    """cli.plan.build_plan over this table of stages."""
    return plan.build_plan(steps, file_sections, STAGES)


def read_config_file(path: str | None) -> dict[str, dict[str, Any]]:
    """cli.plan.read_config_file over this table of stages."""
    return plan.read_config_file(path, STAGES)


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

    Under torchrun (`torchrun --nproc-per-node N pipeline.py train ...`) extract, train and finetune run on
    every rank (train and finetune with hard negatives over the global batch); other stages run on rank 0.
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
        stages = build_plan(steps, read_config_file(config_file))
    except (ValueError, OSError, TypeError, json.JSONDecodeError, StageOSError) as err:
        _fail(ctx, f"error: {err}", 2)
    context = distributed.init_from_environment(timeout_minutes=dist_timeout)
    finished = False
    try:
        for name, (stage, cfg) in zip([step for step, _ in steps], stages):
            _run_stage(ctx, name, stage, cfg, context)
        finished = True
    finally:
        distributed.shutdown(wait_for_others=finished)


def _run_stage(ctx: click.Context, name: str, stage: Stage, cfg: StageConfig,
               context: distributed.Distributed) -> None:
    try:
        if stage.distributed or context.is_main:
            stage.run(cfg)
        if not stage.distributed:
            context.barrier()  # the next stage may read what rank 0 just wrote
    except ValueError as err:
        _fail(ctx, f"error: {err}", 2)
    except OSError as err:  # FileNotFoundError of a stage's own checks, and the file system's errors
        _fail(ctx, f"error: {describe_os_error(name, stage, cfg, err)}", 2)
    except KeyboardInterrupt as interrupt:  # train/finetune say how to resume; extract resumes as it is
        _fail(ctx, f"interrupted: {str(interrupt) or 'rerun the same command to resume'}", 130)
    except ExtractFailures as err:  # --strict and some images could not be read
        _fail(ctx, f"error: {err}", 1)
    except RuntimeError as err:  # a failed collective (a timeout): name the ranks that did not arrive, if any
        absent = distributed.describe_failure(err) if context.enabled else None
        if absent is None:
            raise
        _fail(ctx, f"error: {absent}", 1)


for _name, _stage in STAGES.items():
    cli.add_command(make_command(_name, _stage))


def name_commands(name: str) -> None:
    """Help texts that show commands say them as this CLI was started (`vsepp train ...` for the console
    command), so that an example can be copied as it is."""
    def renamed(text: str | None) -> str | None:
        return text and text.replace("python pipeline.py", name).replace("`pipeline.py ", f"`{name} ")

    for command in [cli, *cli.commands.values()]:
        command.help = renamed(command.help)
        for param in command.params:
            if isinstance(param, click.Option):
                param.help = renamed(param.help)


def main() -> None:
    """Entry point of the `vsepp` console command (the same CLI as `python pipeline.py`)."""
    name_commands("vsepp")
    cli(prog_name="vsepp")


if __name__ == "__main__":
    main()
