"""report.plots and report.page as a reader sees them: the loss per caption (windowed or one step's), markers on
short curves, whole-number step ticks, Recall@K drawn only as far as the split goes, bidi-isolated texts."""

from __future__ import annotations

import math
import re

import numpy as np

from eval.metrics import chance_curve
from report.collect import Curves
from report.examples import Example, Hit
from report.page import ReportPage
from report.plots import gallery_end, loss_curve, recall_figure, training_figure, training_panels


def old_curves() -> Curves:
    """Old step lines: one step's summed loss, some of them the epoch's short last batch (the saw-tooth)."""
    return Curves(step={"step": [1.0, 2.0, 3.0], "epoch": [0.0, 0.0, 1.0], "loss": [256.0, 64.0, 128.0],
                        "lr": [2e-4] * 3},
                  val={"step": [2.0], "epoch": [1.0], "rsum": [120.0], "i2t_r1": [10.0], "t2i_r1": [12.0]})


def test_old_lines_are_drawn_per_caption_and_say_they_are_one_step_s():
    steps, values, label = loss_curve(old_curves(), summed_over=128)
    np.testing.assert_allclose(steps, [1, 2, 3])
    np.testing.assert_allclose(values, [2.0, 0.5, 1.0])
    assert label == "loss per caption\n(one step's, at each log line)"
    assert loss_curve(old_curves(), summed_over=None)[1][0] == 256.0  # a mean loss is already per caption


def test_new_lines_draw_the_window_mean_per_caption_and_old_ones_beside_them():
    curves = old_curves()  # a run resumed by the new trainer: its first line is an old one
    curves.step.update({"loss_mean": [math.nan, 96.0, 120.0], "window_steps": [math.nan, 2.0, 1.0],
                        "captions": [math.nan, 192.0, 100.0], "data_s": [0.1] * 3, "step_s": [0.2] * 3})
    steps, values, label = loss_curve(curves, summed_over=128)
    np.testing.assert_allclose(values, [2.0, 1.0, 1.2])  # 96 * 2 / 192, 120 * 1 / 100 (a short last batch)
    assert "window means" in label
    steps, values, label = loss_curve(curves, summed_over=None)  # a mean loss: loss_mean is per caption
    np.testing.assert_allclose(values, [256.0, 96.0, 120.0])
    for column in curves.step.values():
        column[0] = 1.0
    assert loss_curve(curves, summed_over=128)[2] == "loss per caption\n(mean of each logging window)"
    assert training_panels(curves) == ["loss", "lr", "val_recall", "rsum"]


def test_the_training_figure_marks_a_lone_validation_and_ticks_whole_steps():
    figure = training_figure(old_curves(), step_label="training step", loss_title="Training loss: SH",
                             summed_over=128)
    axes = {ax.get_title(): ax for ax in figure.axes}
    loss = axes["Training loss: SH"]
    assert loss.get_ylabel().startswith("loss per caption")
    np.testing.assert_allclose(loss.lines[0].get_ydata(), [2.0, 0.5, 1.0])
    for ax in figure.axes:
        ticks = [tick for tick in ax.get_xticks() if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]]
        assert all(float(tick).is_integer() for tick in ticks), (ax.get_title(), ticks)
    rsum = axes["Validation rsum (selects best.pt)"]
    assert rsum.lines[0].get_marker() == "o" and rsum.lines[0].get_markersize() >= 6


def test_recall_at_k_stops_at_the_split_s_size():
    counts = np.full(6, 5)  # 6 images, 30 captions
    ks = np.arange(1, 51)
    chance_i2t, chance_t2i = chance_curve(counts, ks=ks)
    assert gallery_end(chance_t2i) == 6 and gallery_end(chance_i2t) == 26  # 30 captions less an image's 5, plus 1
    figure = recall_figure(ks=ks, i2t=np.minimum(100, ks * 10.0), t2i=np.minimum(100, ks * 20.0),
                           chance_i2t=chance_i2t, chance_t2i=chance_t2i, title="Recall@K")
    axes = figure.axes[0]
    lengths = sorted(len(line.get_xdata()) for line in axes.lines if len(line.get_xdata()) > 2)
    assert lengths == [6, 6, 26, 26] and axes.get_xlim()[1] == 26


def test_every_caption_and_path_of_the_report_is_bidi_isolated():
    evil = "\u202ea red circle"
    page = ReportPage(title="Report: run", meta=["run folder: /x/\u202erun"], summary=[], config={"note": evil},
                      image_labels=["\u202eimg.jpg"], caption_texts=[evil, "plain"], thumb=lambda row: "t.jpg",
                      recall_png="r.png", sampled_captions=[Example(0, "caption", [Hit(0, 0.5, True)], 1, 0, 0.5)],
                      sampled_images=[Example(0, "image", [Hit(0, 0.5, True), Hit(1, 0.25, False)], 1, 0, 0.5)])
    html = re.sub(r'="[^"]*"', '=""', page.render())  # attributes (alt, title) are not laid out in the text
    assert html.count("\u202e") >= 5
    for start in [i for i in range(len(html)) if html[i] == "\u202e"]:
        assert html.rfind("<bdi>", 0, start) > html.rfind("</bdi>", 0, start), html[max(0, start - 60):start + 20]
