"""Trainer shared by train and finetune: Adam, per-epoch lr, clipping, validation, checkpoints, exact resume.

The trainer owns the optimizer and the loop; the model only returns embeddings and the loss module
(train.losses.build_loss) turns them into the scalar. Batches come from any object with `steps_per_epoch`
and `epoch_batches(epoch, *, start_step, workers)` yielding train.data.Batch (finetune gives images instead
of features); validation is any callable model -> metrics dict holding "rsum".
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch

from common import distributed
from common.device import AMP_DTYPES
from common.progress import Progress
from eval.metrics import recall_metrics
from train import schedule
from train.checkpoint import PROGRESS_KEYS, load_checkpoint, restore_training_state, save_checkpoint
from train.config import LR_DECAY_FACTOR, TrainConfig
from train.data import Batch
from train.encode import encode_split, similarity_matrix
from train.losses import VSELoss
from train.model import VSEModel
from train.progress import MetricsLog, StepWindow, deferred_interrupt
from train.run_dir import BEST, LAST, METRICS_FILE
from train.step import TrainingStep, distributed_step
from train.tensorboard import TENSORBOARD_DIR, TensorBoardScalars
from train.text import Vocabulary

logger = logging.getLogger(__name__)


class BatchSource(Protocol):
    """What the trainer needs from a batch provider (train.data.CaptionBatches, finetune's image batches)."""

    steps_per_epoch: int

    def epoch_batches(self, epoch: int, *, start_step: int = 0, workers: int = 0,
                      pin_memory: bool = False) -> Iterator[Batch]: ...


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, after last.pt was saved; says how to continue."""

    def __init__(self, last: Path, *, resumed_from: str) -> None:
        how = ("rerun the same command" if resumed_from and Path(resumed_from).resolve() == last.resolve()
               else f"continue with the same command plus --resume {last}")
        super().__init__(f"training state saved to {last}; {how}")


def store_validator(store: object, *, config: TrainConfig, vocab: Vocabulary,
                    device: torch.device) -> Callable[[VSEModel], dict[str, float]]:
    """Validation on config.val_split of a feature store: encode, similarity as trained, recall metrics."""
    def validate(model: VSEModel) -> dict[str, float]:
        image_emb, caption_emb, caption_image_index, _ = encode_split(
            model, store, splits=[config.val_split], feature_mode=config.feature_mode, vocab=vocab,
            batch_size=max(config.batch_size, 256), device=device)
        return recall_metrics(similarity_matrix(image_emb, caption_emb, similarity=config.similarity),
                              caption_image_index)
    return validate


class Trainer:
    """Runs epochs of steps on `batches`, validates, keeps last.pt/best.pt, resumes exactly.

    Under torch.distributed every rank runs the same loop on its share of each global batch; rank 0 alone
    validates (the result reaches every rank), writes checkpoints, metrics and the progress report.
    """

    def __init__(self, model: VSEModel, loss: VSELoss, *, config: TrainConfig, batches: BatchSource,
                 validate: Callable[[VSEModel], dict[str, float]], out_dir: str | Path, vocab: Vocabulary,
                 model_spec: dict, kind: str = "train", param_groups: list[dict] | None = None,
                 device: torch.device | str = "cpu", data: dict | None = None) -> None:
        """`param_groups` (Adam groups, each with its own base "lr") default to all trainable parameters of
        the model and the loss at config.lr; the schedule multiplies every group's base lr by the same factor
        each epoch. `data` is the identity of the training data the checkpoints carry (features.identity)."""
        self.config, self.batches, self.validate, self.vocab = config, batches, validate, vocab
        self.out_dir, self.model_spec, self.kind, self.data = Path(out_dir), model_spec, kind, data
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.loss = loss.to(self.device)
        trainable = [p for module in (model, loss) for p in module.parameters() if p.requires_grad]
        groups = param_groups or [{"params": trainable, "lr": config.lr}]
        for group in groups:
            group["params"] = list(group["params"])
            if any(not p.requires_grad for p in group["params"]):
                raise ValueError("a parameter group holds frozen parameters; give the optimizer trainable ones only")
            group["base_lr"] = group["lr"]
        self.params = [p for group in groups for p in group["params"]]
        self.optimizer = torch.optim.Adam(groups)
        use_amp = config.amp != "none"  # the stage checked the device runs it (common.device.check_amp)
        self.scaler = torch.amp.GradScaler("cuda") if use_amp and config.amp == "fp16" else None
        self.dist = distributed.current()
        self.step_module = distributed_step(
            TrainingStep(self.model, self.loss, autocast_dtype=AMP_DTYPES.get(config.amp) if use_amp else None),
            self.device)
        tensorboard = config.tensorboard and self.dist.is_main
        mirror = TensorBoardScalars(self.out_dir / TENSORBOARD_DIR) if tensorboard else None
        self.metrics = MetricsLog(self.out_dir / METRICS_FILE, enabled=self.dist.is_main, mirror=mirror)
        self.window = StepWindow()  # the steps since the last log line
        # where the next step starts; steps done; the best validation so far; the last validation's step
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self.best_rsum, self.best_epoch, self.best_step = -math.inf, -1, -1
        self.validated_step = -1

    # -- state ---------------------------------------------------------------------------------
    def resume(self, path: str | Path, *, checkpoint: dict | None = None) -> None:
        """Restore everything from the checkpoint at `path` (missing file -> FileNotFoundError).

        Pass `checkpoint` when the caller has already loaded that file (to check its config), so it is not
        read twice; tensors may be on the CPU, load_state_dict moves them to the model's device. Lines that
        metrics.jsonl gained after this checkpoint are dropped: the resumed run writes them again.
        """
        if checkpoint is None:
            checkpoint = load_checkpoint(path, map_location=self.device, expected_kind=self.kind)
        elif checkpoint["kind"] != self.kind:
            raise ValueError(f"{path} is a {checkpoint['kind']!r} checkpoint, expected {self.kind!r}")
        restore_training_state(checkpoint, model=self.model, loss=self.loss, optimizer=self.optimizer,
                               scaler=self.scaler)
        for key in PROGRESS_KEYS:
            setattr(self, key, checkpoint[key])
        dropped = self.metrics.truncate_after(self.step)
        logger.info("resumed from %s at epoch %d, step %d (%d into the epoch), best rsum %.2f%s", path,
                    self.epoch, self.step, self.step_in_epoch, self.best_rsum,
                    f"; dropped {dropped} metrics line(s) written after it" if dropped else "")

    def save(self, name: str) -> Path:
        """Atomically write the current state to out_dir/name (rank 0 only: one checkpoint per run)."""
        path = self.out_dir / name
        if not self.dist.is_main:
            return path
        save_checkpoint(path, model=self.model, loss=self.loss, optimizer=self.optimizer, scaler=self.scaler,
                        kind=self.kind, progress={key: getattr(self, key) for key in PROGRESS_KEYS},
                        vocab=self.vocab.to_dict(), config=self.config.to_dict(), model_spec=self.model_spec,
                        data=self.data)
        return path

    # -- steps ---------------------------------------------------------------------------------
    def apply_learning_rate(self) -> float:
        """Set every group's lr for the current epoch; return the first group's."""
        for group in self.optimizer.param_groups:
            group["lr"] = schedule.learning_rate(self.epoch, base_lr=group["base_lr"],
                                                 decay_epochs=self.config.lr_decay_epochs,
                                                 decay_factor=LR_DECAY_FACTOR)
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: Batch) -> tuple[torch.Tensor, dict, torch.Tensor | None]:
        """One optimisation step on `batch` -> (the loss, what the loss logs, e.g. the group loss's k, and the
        gradient norm clip_grad_norm_ returned, None without clipping), as tensors: nothing waits for the device.

        A non-finite loss is found by the StepWindow check, at the latest at the next log step, validation or
        save; the run then stops with FloatingPointError naming the step (the steps after it changed only
        weights that are never saved).
        """
        batch = batch.to(self.device)
        self.model.train()
        loss, logs = self.step_module(batch, epoch=self.epoch, step=self.step_in_epoch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = None
        if self.config.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.detach(), logs, grad_norm

    def validate_and_save(self) -> dict[str, float]:
        """Validate (rank 0; every rank gets the result), log, save best.pt on a new best rsum, and last.pt."""
        self.window.check()  # never save weights a non-finite loss has changed
        metrics = self.dist.broadcast(self.validate(self.model) if self.dist.is_main else None)
        self.validated_step = self.step
        if metrics["rsum"] > self.best_rsum:
            self.best_rsum, self.best_epoch, self.best_step = metrics["rsum"], self.epoch, self.step
            self.save(BEST)
        self.metrics.append({"event": "val", "step": self.step, "epoch": self.epoch, **metrics,
                             "best_rsum": self.best_rsum})
        logger.info("validation at step %d: rsum %.2f (best %.2f)", self.step, metrics["rsum"], self.best_rsum)
        self.save(LAST)
        return metrics

    # -- loop ----------------------------------------------------------------------------------
    def budget_done(self) -> bool:
        """True once config.max_steps (if > 0) steps are done."""
        return 0 < self.config.max_steps <= self.step

    def finished(self) -> bool:
        """True when every epoch (or the step budget) is done and the last state was validated and saved."""
        return (self.epoch >= self.config.epochs or self.budget_done()) and self.validated_step == self.step

    def fit(self) -> dict:
        """Train until config.epochs (or max_steps); Ctrl-C saves last.pt at a step boundary (Interrupted).

        A resumed run that is already finished changes nothing and says so.
        """
        if self.finished():
            logger.info("the run in %s is already finished (epoch %d, step %d): nothing to do", self.out_dir,
                        self.epoch, self.step)
            return self.summary()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        with deferred_interrupt() as interrupt:
            while self.epoch < self.config.epochs and not self.budget_done():
                self._run_epoch(interrupt)
            if self.validated_step != self.step:
                self.validate_and_save()
        self.metrics.close()
        summary = self.summary()
        logger.info("finished after %d steps (%d epochs): best validation rsum %.2f at epoch %d, step %d, in %s",
                    self.step, self.epoch, self.best_rsum, self.best_epoch, self.best_step, summary["best"])
        return summary

    def _run_epoch(self, interrupt: dict) -> None:
        """Steps from the current position to the end of the epoch (or the budget, or a Ctrl-C)."""
        lr = self.apply_learning_rate()
        steps_per_epoch = self.batches.steps_per_epoch
        progress = Progress(f"epoch {self.epoch}", steps_per_epoch, unit="step", done=self.step_in_epoch,
                            logger=logger, log_seconds=None, device=self.device, enabled=self.dist.is_main)
        tick = time.perf_counter()
        try:
            for batch in self.batches.epoch_batches(self.epoch, start_step=self.step_in_epoch,
                                                    workers=self.config.workers,
                                                    pin_memory=self.device.type == "cuda"):
                fetched = time.perf_counter()
                place = (self.epoch, self.step)
                loss, logs, grad_norm = self.train_step(batch)
                self.window.add(loss, grad_norm=grad_norm, logs=logs, place=place,
                                captions=len(batch) * self.dist.world_size,  # the ranks' shares are equal
                                data_s=fetched - tick, step_s=time.perf_counter() - fetched)
                self.step += 1
                self.step_in_epoch += 1
                progress.update(1)
                if self.step % max(self.config.log_every, 1) == 0:
                    self._log_window(place[0], lr, progress)
                if self.step_in_epoch == steps_per_epoch:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                    self.validate_and_save()
                elif self.config.val_every_steps and self.step % self.config.val_every_steps == 0:
                    self.validate_and_save()
                if self.dist.any(interrupt["requested"]):  # all ranks stop at the same step
                    self.window.check()
                    last = self.save(LAST)
                    logger.warning("interrupted: state at step %d saved to %s", self.step, last)
                    raise Interrupted(last, resumed_from=self.config.resume)
                if self.budget_done():
                    break
                tick = time.perf_counter()
        finally:
            progress.close()

    def _log_window(self, epoch: int, lr: float, progress: Progress) -> None:
        """The steps since the last log line: read from the device (FloatingPointError on a non-finite loss),
        appended to metrics.jsonl and shown."""
        window = self.window.read()
        steps_per_s = 1.0 / max(window["data_s"] + window["step_s"], 1e-9)
        self.metrics.append({"event": "step", "step": self.step, "epoch": epoch, "lr": lr, **window,
                             "steps_per_s": steps_per_s})
        shown = {"loss": f"{window['loss_mean']:.4g}", "lr": f"{lr:.3g}"}
        if "grad_norm" in window:
            shown["grad_norm"] = f"{window['grad_norm']:.3g}"
        progress.report(**shown, data=f"{window['data_s']:.3f} s", step=f"{window['step_s']:.3f} s")

    def summary(self) -> dict:
        """Where the run stands and where its checkpoints are."""
        return {"best_rsum": self.best_rsum, "best_epoch": self.best_epoch, "best_step": self.best_step,
                "epoch": self.epoch, "step": self.step, "last": str(self.out_dir / LAST),
                "best": str(self.out_dir / BEST)}
