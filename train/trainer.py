"""Trainer shared by train and finetune: Adam, per-epoch lr, clipping, validation, checkpoints, exact resume.

The trainer owns the optimizer and the loop; the model only returns embeddings and the loss module
(train.losses.build_loss) turns them into the scalar. Batches come from any object with `steps_per_epoch`
and `epoch_batches(epoch, *, start_step, workers)` yielding train.data.Batch (finetune gives images instead
of features); validation is any callable model -> metrics dict holding "rsum".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common import distributed
from common.device import AMP_DTYPES
from eval.metrics import recall_metrics
from train import schedule
from train.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from train.config import LR_DECAY_FACTOR, TrainConfig
from train.data import Batch
from train.encode import encode_split, similarity_matrix
from train.losses import LossOutput, VSELoss
from train.model import VSEModel
from train.run_dir import BEST, LAST, METRICS_FILE
from train.text import Vocabulary

logger = logging.getLogger(__name__)

RUNNING_LOSS_DECAY = 0.9  # exponential moving average of the loss shown on the progress bar


class BatchSource(Protocol):
    """What the trainer needs from a batch provider (train.data.CaptionBatches, finetune's image batches)."""

    steps_per_epoch: int

    def epoch_batches(self, epoch: int, *, start_step: int = 0, workers: int = 0) -> Iterator[Batch]: ...


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


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[dict]:
    """Turn the first Ctrl-C into a flag checked at step boundaries (a second one interrupts at once)."""
    state = {"requested": False}
    if threading.current_thread() is not threading.main_thread():
        yield state  # signal handlers can only be installed from the main thread
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if state["requested"]:
            raise KeyboardInterrupt
        state["requested"] = True
        logger.warning("interrupt requested: saving last.pt after the current step (Ctrl-C again to abort now)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


class TrainingStep(nn.Module):
    """Model and loss as one module: batch -> LossOutput (what DistributedDataParallel wraps)."""

    def __init__(self, model: VSEModel, loss: VSELoss, *, autocast_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model, self.loss, self.autocast_dtype = model, loss, autocast_dtype

    def forward(self, batch: Batch, *, epoch: int, step: int) -> LossOutput:
        device_type = batch.images.device.type
        with torch.autocast(device_type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            image_emb, caption_emb = self.model(batch.images, batch.tokens, batch.lengths)
        return self.loss(image_emb.float(), caption_emb.float(), batch.image_ids, caption_ids=batch.caption_rows,
                         epoch=epoch, step=step)


def _sum_gradients(state, bucket):  # no annotations: DDP checks them, and this module's are strings
    """DDP comm hook: sum the ranks' gradients. Each rank's loss holds its share of the global batch's loss
    (train/losses/global_batch.py), so the shares' gradients add up to the single-process gradient."""
    work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda future: future.value()[0])


def distributed_step(step: TrainingStep, device: torch.device) -> nn.Module:
    """`step` wrapped in DistributedDataParallel (gradients summed, not averaged) when several ranks train."""
    if not distributed.current().enabled:
        return step
    wrapped = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    wrapped.register_comm_hook(None, _sum_gradients)
    return wrapped


class Trainer:
    """Runs epochs of steps on `batches`, validates, keeps last.pt/best.pt, resumes exactly.

    Under torch.distributed every rank runs the same loop on its share of each global batch; rank 0 alone
    validates (the result reaches every rank), writes checkpoints, metrics and the progress bar.
    """

    def __init__(self, model: VSEModel, loss: VSELoss, *, config: TrainConfig, batches: BatchSource,
                 validate: Callable[[VSEModel], dict[str, float]], out_dir: str | Path, vocab: Vocabulary,
                 model_spec: dict, kind: str = "train", param_groups: list[dict] | None = None,
                 device: torch.device | str = "cpu") -> None:
        """`param_groups` (Adam groups, each with its own base "lr") default to all trainable parameters of
        the model and the loss at config.lr; the schedule multiplies every group's base lr by the same factor
        each epoch."""
        self.config, self.batches, self.validate, self.vocab = config, batches, validate, vocab
        self.out_dir, self.model_spec, self.kind = Path(out_dir), model_spec, kind
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
        use_amp = config.amp != "none" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_amp and config.amp == "fp16" else None
        self.dist = distributed.current()
        self.step_module = distributed_step(
            TrainingStep(self.model, self.loss, autocast_dtype=AMP_DTYPES.get(config.amp) if use_amp else None),
            self.device)
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0  # where the next step starts; steps done
        self.best_rsum = -math.inf
        self._validated_step = -1
        self._running_loss: float | None = None

    # -- state ---------------------------------------------------------------------------------
    def resume(self, path: str | Path, *, checkpoint: dict | None = None) -> None:
        """Restore everything from the checkpoint at `path` (missing file -> FileNotFoundError).

        Pass `checkpoint` when the caller has already loaded that file (to check its config), so it is not
        read twice; tensors may be on the CPU, load_state_dict moves them to the model's device.
        """
        if checkpoint is None:
            checkpoint = load_checkpoint(path, map_location=self.device, expected_kind=self.kind)
        elif checkpoint["kind"] != self.kind:
            raise ValueError(f"{path} is a {checkpoint['kind']!r} checkpoint, expected {self.kind!r}")
        restore_training_state(checkpoint, model=self.model, loss=self.loss, optimizer=self.optimizer,
                               scaler=self.scaler)
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.step_in_epoch, self.best_rsum = checkpoint["step_in_epoch"], checkpoint["best_rsum"]
        logger.info("resumed from %s at epoch %d, step %d (%d into the epoch), best rsum %.2f", path,
                    self.epoch, self.step, self.step_in_epoch, self.best_rsum)

    def save(self, name: str) -> Path:
        """Atomically write the current state to out_dir/name (rank 0 only: one checkpoint per run)."""
        path = self.out_dir / name
        if not self.dist.is_main:
            return path
        save_checkpoint(path, model=self.model, loss=self.loss, optimizer=self.optimizer, scaler=self.scaler,
                        kind=self.kind,
                        epoch=self.epoch, step=self.step, step_in_epoch=self.step_in_epoch,
                        best_rsum=self.best_rsum, vocab=self.vocab.to_dict(), config=self.config.to_dict(),
                        model_spec=self.model_spec)
        return path

    def log(self, record: dict) -> None:
        """Append one JSON line to out_dir/metrics.jsonl (rank 0 only)."""
        if not self.dist.is_main:
            return
        with open(self.out_dir / METRICS_FILE, "a", encoding="utf-8") as metrics_file:
            metrics_file.write(json.dumps(record) + "\n")

    # -- steps ---------------------------------------------------------------------------------
    def apply_learning_rate(self) -> float:
        """Set every group's lr for the current epoch; return the first group's."""
        for group in self.optimizer.param_groups:
            group["lr"] = schedule.learning_rate(self.epoch, base_lr=group["base_lr"],
                                                 decay_epochs=self.config.lr_decay_epochs,
                                                 decay_factor=LR_DECAY_FACTOR)
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: Batch) -> tuple[float, dict[str, float]]:
        """One optimisation step on `batch` -> (loss value, what the loss logs, e.g. the group loss's k)."""
        batch = batch.to(self.device)
        self.model.train()
        loss, logs = self.step_module(batch, epoch=self.epoch, step=self.step_in_epoch)
        if not torch.isfinite(loss):  # the value is the global loss: every rank stops here together
            raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch}, step {self.step}; lower --lr "
                                     "or check the features for NaN")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return float(loss.item()), logs

    def validate_and_save(self) -> dict[str, float]:
        """Validate (rank 0; every rank gets the result), log, save best.pt on a new best rsum, and last.pt."""
        metrics = self.dist.broadcast(self.validate(self.model) if self.dist.is_main else None)
        self._validated_step = self.step
        improved = metrics["rsum"] > self.best_rsum
        self.best_rsum = max(self.best_rsum, metrics["rsum"])
        self.log({"event": "val", "step": self.step, "epoch": self.epoch, **metrics, "best_rsum": self.best_rsum})
        logger.info("validation at step %d: rsum %.2f (best %.2f)", self.step, metrics["rsum"], self.best_rsum)
        if improved:
            self.save(BEST)
        self.save(LAST)
        return metrics

    # -- loop ----------------------------------------------------------------------------------
    def budget_done(self) -> bool:
        """True once config.max_steps (if > 0) steps are done."""
        return 0 < self.config.max_steps <= self.step

    def fit(self) -> dict:
        """Train until config.epochs (or max_steps); Ctrl-C saves last.pt at a step boundary and re-raises."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        steps_per_epoch = self.batches.steps_per_epoch
        with deferred_interrupt() as interrupt:
            while self.epoch < self.config.epochs and not self.budget_done():
                lr = self.apply_learning_rate()
                bar = tqdm(total=steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch}",
                           unit="step", dynamic_ncols=True, disable=None if self.dist.is_main else True,
                           leave=False)
                window_start, window_steps = time.perf_counter(), 0
                for batch in self.batches.epoch_batches(self.epoch, start_step=self.step_in_epoch,
                                                        workers=self.config.workers):
                    epoch = self.epoch
                    loss, logs = self.train_step(batch)
                    self.step += 1
                    self.step_in_epoch += 1
                    window_steps += 1
                    self._running_loss = loss if self._running_loss is None else (
                        RUNNING_LOSS_DECAY * self._running_loss + (1 - RUNNING_LOSS_DECAY) * loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{self._running_loss:.4g}", refresh=False)
                    if self.step % max(self.config.log_every, 1) == 0:
                        elapsed = time.perf_counter() - window_start
                        self.log({"event": "step", "step": self.step, "epoch": epoch, "loss": loss, "lr": lr,
                                  **logs, "steps_per_s": window_steps / max(elapsed, 1e-9)})
                        window_start, window_steps = time.perf_counter(), 0
                    if self.step_in_epoch == steps_per_epoch:
                        self.epoch, self.step_in_epoch = self.epoch + 1, 0
                        self.validate_and_save()
                    elif self.config.val_every_steps and self.step % self.config.val_every_steps == 0:
                        self.validate_and_save()
                    if self.dist.any(interrupt["requested"]):  # all ranks stop at the same step
                        bar.close()
                        self.save(LAST)
                        logger.warning("interrupted: state at step %d saved to %s", self.step, self.out_dir / LAST)
                        raise KeyboardInterrupt
                    if self.budget_done():
                        break
                bar.close()
            if self._validated_step != self.step:
                self.validate_and_save()
        return {"best_rsum": self.best_rsum, "epoch": self.epoch, "step": self.step,
                "last": str(self.out_dir / LAST), "best": str(self.out_dir / BEST)}
