"""Trainer shared by train and finetune: Adam, per-epoch lr, clipping, validation, checkpoints, exact resume.

The trainer owns the optimizer and the loop; the model only returns embeddings and the loss is chosen
by `compute_loss` from the config. Batches come from any object with `steps_per_epoch` and
`epoch_batches(epoch, *, start_step, workers)` yielding train.data.Batch (finetune gives images instead of
features); validation is any callable model -> metrics dict holding "rsum".
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

import numpy as np
import torch
from tqdm import tqdm

from eval.metrics import recall_metrics
from extract.device import AMP_DTYPES
from train import group_loss, losses, schedule
from train.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from train.config import LR_DECAY_FACTOR, TrainConfig
from train.data import Batch
from train.encode import encode_split, similarity_matrix
from train.model import VSEModel
from train.text import Vocabulary

logger = logging.getLogger(__name__)

LAST, BEST, METRICS = "last.pt", "best.pt", "metrics.jsonl"
HINGE_LOSSES = ("sh", "mh", "order", "lseh")  # the losses a --warmup-epochs SH phase applies to
RUNNING_LOSS_DECAY = 0.9  # exponential moving average of the loss shown on the progress bar
GROUP_K_STREAM = 2  # keeps the group-k "random" stream apart from the data streams


class BatchSource(Protocol):
    """What the trainer needs from a batch provider (train.data.CaptionBatches, finetune's image batches)."""

    steps_per_epoch: int

    def epoch_batches(self, epoch: int, *, start_step: int = 0, workers: int = 0) -> Iterator[Batch]: ...


def compute_loss(config: TrainConfig, *, image_emb: torch.Tensor, caption_emb: torch.Tensor,
                 image_ids: torch.Tensor, epoch: int, model: VSEModel, semantic_sim: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, int | None]:
    """Loss of one batch as configured -> (scalar loss, k of the group loss or None).

    image_emb/caption_emb [B, E], row b of each from caption b; image_ids [B] give the positives.
    sh/mh/order/lseh are hinge losses: during the first `warmup_epochs` they use SH (sum of hinges),
    then MH ("sh" stays SH). order uses the order similarity, lseh adds semantic margins from
    semantic_sim [B, B] (caption-caption similarity of the LSEH vectors).
    """
    pos_mask = losses.positive_mask(image_ids, image_ids)
    sims = (losses.order_sim(image_emb, caption_emb) if config.loss == "order"
            else losses.cosine_sim(image_emb, caption_emb))
    if config.loss in HINGE_LOSSES:
        max_violation = config.loss != "sh" and schedule.max_violation_for_epoch(epoch, config.warmup_epochs)
        margin: float | torch.Tensor = config.margin
        if config.loss == "lseh":
            if semantic_sim is None:
                raise ValueError("loss 'lseh' needs the semantic similarity of the batch's captions")
            margin = losses.lseh_margins(semantic_sim.to(sims.dtype), pos_mask, alpha=config.lseh_alpha,
                                         lam=config.lseh_lambda)
        loss = losses.contrastive_loss(sims, pos_mask, margin=margin, max_violation=max_violation,
                                       reduction=config.reduction)
        return loss, None
    if config.loss == "group":
        if sims.shape[0] < 2:  # a last batch of one caption has no negative: nothing to learn
            return sims.sum() * 0.0, 0
        k = group_loss.select_k(config.group_k_mode, sims.detach(), pos_mask, k=config.group_k,
                                gamma=config.group_gamma, generator=generator)
        loss = group_loss.group_hard_negative_loss(sims, pos_mask, k=k, temperature=config.group_temperature,
                                                   margin=config.margin)
        return loss, int(k)
    if config.loss == "infonce":
        return losses.info_nce_loss(sims, pos_mask, logit_scale=model.infonce_scale()), None
    raise ValueError(f"unknown loss {config.loss!r}")


def store_validator(store: object, *, config: TrainConfig, vocab: Vocabulary,
                    device: torch.device) -> Callable[[VSEModel], dict[str, float]]:
    """Validation on config.val_split of a feature store: encode, similarity as trained, recall metrics."""
    def validate(model: VSEModel) -> dict[str, float]:
        image_emb, caption_emb, caption_image_index, _ = encode_split(
            model, store, splits=[config.val_split], feature_mode=config.feature_mode, vocab=vocab,
            batch_size=max(config.batch_size, 256), device=device)
        return recall_metrics(similarity_matrix(image_emb, caption_emb, loss=config.loss), caption_image_index)
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


class Trainer:
    """Runs epochs of steps on `batches`, validates, keeps last.pt/best.pt, resumes exactly."""

    def __init__(self, model: VSEModel, *, config: TrainConfig, batches: BatchSource,
                 validate: Callable[[VSEModel], dict[str, float]], out_dir: str | Path, vocab: Vocabulary,
                 model_spec: dict, kind: str = "train", param_groups: list[dict] | None = None,
                 semantic_vectors: np.ndarray | None = None, device: torch.device | str = "cpu") -> None:
        """`param_groups` (Adam groups, each with its own base "lr") default to all trainable parameters at
        config.lr; the schedule multiplies every group's base lr by the same factor each epoch."""
        self.config, self.batches, self.validate, self.vocab = config, batches, validate, vocab
        self.out_dir, self.model_spec, self.kind = Path(out_dir), model_spec, kind
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.semantic_vectors = semantic_vectors
        groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad], "lr": config.lr}]
        for group in groups:
            group["params"] = list(group["params"])
            if any(not p.requires_grad for p in group["params"]):
                raise ValueError("a parameter group holds frozen parameters; give the optimizer trainable ones only")
            group["base_lr"] = group["lr"]
        self.params = [p for group in groups for p in group["params"]]
        self.optimizer = torch.optim.Adam(groups)
        use_amp = config.amp != "none" and self.device.type == "cuda"
        self.autocast_dtype = AMP_DTYPES.get(config.amp) if use_amp else None
        self.scaler = torch.amp.GradScaler("cuda") if use_amp and config.amp == "fp16" else None
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
        restore_training_state(checkpoint, model=self.model, optimizer=self.optimizer, scaler=self.scaler)
        self.epoch, self.step = checkpoint["epoch"], checkpoint["step"]
        self.step_in_epoch, self.best_rsum = checkpoint["step_in_epoch"], checkpoint["best_rsum"]
        logger.info("resumed from %s at epoch %d, step %d (%d into the epoch), best rsum %.2f", path,
                    self.epoch, self.step, self.step_in_epoch, self.best_rsum)

    def save(self, name: str) -> Path:
        """Atomically write the current state to out_dir/name."""
        path = self.out_dir / name
        save_checkpoint(path, model=self.model, optimizer=self.optimizer, scaler=self.scaler, kind=self.kind,
                        epoch=self.epoch, step=self.step, step_in_epoch=self.step_in_epoch,
                        best_rsum=self.best_rsum, vocab=self.vocab.to_dict(), config=self.config.to_dict(),
                        model_spec=self.model_spec)
        return path

    def log(self, record: dict) -> None:
        """Append one JSON line to out_dir/metrics.jsonl."""
        with open(self.out_dir / METRICS, "a", encoding="utf-8") as metrics_file:
            metrics_file.write(json.dumps(record) + "\n")

    # -- steps ---------------------------------------------------------------------------------
    def apply_learning_rate(self) -> float:
        """Set every group's lr for the current epoch; return the first group's."""
        for group in self.optimizer.param_groups:
            group["lr"] = schedule.learning_rate(self.epoch, base_lr=group["base_lr"],
                                                 decay_epochs=self.config.lr_decay_epochs,
                                                 decay_factor=LR_DECAY_FACTOR)
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: Batch) -> tuple[float, int | None]:
        """One optimisation step on `batch` -> (loss value, group k or None)."""
        batch = batch.to(self.device)
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            image_emb, caption_emb = self.model(batch.images, batch.tokens, batch.lengths)
        semantic_sim = None
        if self.semantic_vectors is not None:
            vectors = torch.from_numpy(self.semantic_vectors[batch.caption_rows.numpy()]).to(self.device)
            semantic_sim = vectors @ vectors.T
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([self.config.seed, self.epoch, self.step_in_epoch,
                                        GROUP_K_STREAM]).generate_state(1)[0]))
        loss, k = compute_loss(self.config, image_emb=image_emb.float(), caption_emb=caption_emb.float(),
                               image_ids=batch.image_ids, epoch=self.epoch, model=self.model,
                               semantic_sim=semantic_sim, generator=generator)
        if not torch.isfinite(loss):
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
        return float(loss.item()), k

    def validate_and_save(self) -> dict[str, float]:
        """Validate, log, save best.pt on a new best rsum, and last.pt."""
        metrics = self.validate(self.model)
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
                           unit="step", dynamic_ncols=True, disable=None, leave=False)
                window_start, window_steps = time.perf_counter(), 0
                for batch in self.batches.epoch_batches(self.epoch, start_step=self.step_in_epoch,
                                                        workers=self.config.workers):
                    epoch = self.epoch
                    loss, k = self.train_step(batch)
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
                                  "k": k, "steps_per_s": window_steps / max(elapsed, 1e-9)})
                        window_start, window_steps = time.perf_counter(), 0
                    if self.step_in_epoch == steps_per_epoch:
                        self.epoch, self.step_in_epoch = self.epoch + 1, 0
                        self.validate_and_save()
                    elif self.config.val_every_steps and self.step % self.config.val_every_steps == 0:
                        self.validate_and_save()
                    if interrupt["requested"]:
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
