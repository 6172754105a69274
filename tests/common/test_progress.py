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


def test_the_rate_counts_from_when_the_work_began(caplog, monkeypatch):
    clock = iter([10.0])  # the one batch began at 6.5 s (`started`) and was counted at 10 s: 3.5 s, not ~0
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="test.rate"):
        with Progress("encode images", 39, unit="image", logger=logging.getLogger("test.rate"), terminal=False,
                      started=6.5) as progress:
            progress.update(39)
    assert caplog.records[0].getMessage().startswith("encode images: 39 of 39 image (100%), 11.14 image/s")


def test_report_logs_one_line_now_with_the_values_and_no_timed_lines(caplog, monkeypatch):
    clock = iter([0.0, 100.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    log = logging.getLogger("test.report")
    with caplog.at_level(logging.INFO, logger="test.report"):
        with Progress("epoch 3", 10, unit="step", done=2, logger=log, terminal=False, log_seconds=None) as progress:
            progress.update(2)  # no line: lines come from report alone
            progress.report(loss="1.5", grad_norm="0.3")
    assert [record.getMessage() for record in caplog.records] == [
        "epoch 3: 4 of 10 step (40%), 0.02 step/s, 0:05:00 left, loss 1.5, grad_norm 0.3"]


def test_log_records_are_written_through_the_bar_on_a_terminal(capsys):
    logger = logging.getLogger("test.through")
    handler = logging.StreamHandler()  # a console handler, as pipeline.py's logging.basicConfig installs
    logging.getLogger().addHandler(handler)
    try:
        with Progress("extract", 2, unit="img", logger=logger, terminal=True) as progress:
            progress.update(1)
            root_handlers = logging.getLogger().handlers
            assert handler not in root_handlers  # replaced by tqdm's, which writes above the bar
            logger.warning("validation at step 30")
        assert handler in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(handler)
