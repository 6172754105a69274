"""Training schedules as pure functions of the (0-based) epoch: learning rate, SH -> MH warm-up."""

from __future__ import annotations

from train.config import LEARNING_RATE, LR_DECAY_EPOCHS, LR_DECAY_FACTOR


def learning_rate(epoch: int, *, base_lr: float = LEARNING_RATE, decay_epochs: int = LR_DECAY_EPOCHS,
                  decay_factor: float = LR_DECAY_FACTOR) -> float:
    """Step decay: base_lr * decay_factor ** (epoch // decay_epochs), epoch counted from 0.

    The paper (and the reference code's adjust_learning_rate): 2e-4 for epochs 0-14, then 2e-5 for
    epochs 15-29 (30 epochs in all); a longer run keeps decaying every decay_epochs epochs.
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if decay_epochs < 1:
        raise ValueError(f"decay_epochs must be >= 1, got {decay_epochs}")
    if base_lr <= 0 or not 0 < decay_factor <= 1:
        raise ValueError(f"need base_lr > 0 and 0 < decay_factor <= 1, got {base_lr} and {decay_factor}")
    return base_lr * decay_factor ** (epoch // decay_epochs)


def max_violation_for_epoch(epoch: int, warmup_epochs: int) -> bool:
    """Whether a run configured for the max of hinges (MH, LSEH, Order++) uses it at this epoch.

    False (sum of hinges, SH) for epochs 0 .. warmup_epochs - 1, True afterwards; warmup_epochs = 0
    means MH from the start (the paper). A run configured for SH stays SH whatever this returns.
    """
    if epoch < 0 or warmup_epochs < 0:
        raise ValueError(f"epoch and warmup_epochs must be >= 0, got {epoch} and {warmup_epochs}")
    return epoch >= warmup_epochs
