import logging

import pytest

from common import progress as progress_module
from common.progress import Progress, duration


def test_off_a_terminal_progress_is_a_log_line_at_most_every_interval_and_at_the_end(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 12.5, 13.0])  # start, then one reading per update
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        with Progress("extract resnet18", 40, unit="img", logger=log, terminal=False) as progress:
            assert progress.bar.disable
            for _ in range(4):
                progress.update(10, loss="0.5")
    lines = [record.getMessage() for record in caplog.records]
    # 12.5 s after the start is the first reading past LOG_SECONDS; the last update is the end
    assert lines == ["extract resnet18: 30 of 40 img (75%), 2.40 img/s, 0:00:04 left, loss 0.5",
                     "extract resnet18: 40 of 40 img (100%), 3.08 img/s, 0:00:00 left, loss 0.5"]


def test_on_a_terminal_progress_is_the_bar_alone(caplog):
    with caplog.at_level(logging.INFO):
        with Progress("encode images", 3, unit="image", logger=logging.getLogger("t"), terminal=True) as progress:
            progress.update(3)
            assert not progress.bar.disable and progress.bar.n == 3
    assert caplog.records == []


@pytest.mark.parametrize("seconds, shown", [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05")])
def test_duration_is_hours_minutes_seconds(seconds: float, shown: str):
    assert duration(seconds) == shown
