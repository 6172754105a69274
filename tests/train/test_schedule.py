"""Schedules of train/schedule.py: the paper's learning rate and the SH -> MH warm-up."""

import pytest

from train.schedule import learning_rate, max_violation_for_epoch


@pytest.mark.parametrize("epoch, expected", [(0, 2e-4), (14, 2e-4), (15, 2e-5), (29, 2e-5), (30, 2e-6)])
def test_learning_rate_follows_the_paper(epoch, expected):
    assert learning_rate(epoch) == pytest.approx(expected, rel=1e-12)


def test_learning_rate_options():
    assert learning_rate(9, base_lr=1e-3, decay_epochs=10, decay_factor=0.5) == pytest.approx(1e-3)
    assert learning_rate(10, base_lr=1e-3, decay_epochs=10, decay_factor=0.5) == pytest.approx(5e-4)
    assert learning_rate(25, base_lr=1e-3, decay_epochs=10, decay_factor=0.5) == pytest.approx(2.5e-4)


@pytest.mark.parametrize("epoch, kwargs", [(-1, {}), (0, {"decay_epochs": 0}), (0, {"base_lr": 0.0}),
                                           (0, {"decay_factor": 0.0}), (0, {"decay_factor": 2.0})])
def test_learning_rate_rejects_bad_values(epoch, kwargs):
    with pytest.raises(ValueError):
        learning_rate(epoch, **kwargs)


def test_max_violation_after_the_warmup():
    assert [max_violation_for_epoch(epoch, 2) for epoch in range(4)] == [False, False, True, True]
    assert max_violation_for_epoch(0, 0)  # no warm-up: MH from the start (the paper)
    with pytest.raises(ValueError):
        max_violation_for_epoch(0, -1)
