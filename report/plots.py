"""The report's plots (matplotlib's Agg canvas, no pyplot state): training curves, Recall@K, the ablation bars."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from report.collect import Curves

DPI = 100
I2T_LABEL = "i2t: caption retrieval (image query)"
T2I_LABEL = "t2i: image retrieval (caption query)"
I2T_COLOR, T2I_COLOR = "tab:blue", "tab:orange"
R_STYLES = {"r1": "-", "r5": "--", "r10": ":"}  # line style per cutoff of the validation recall


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # the Agg canvas: PNGs without a display or pyplot's global state
    figure.savefig(path, dpi=DPI)
    return path


def _finite(steps: list[float], values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(y)
    return x[keep], y[keep]


# Training-line keys with a panel of their own: (title, y label); the loss's other logs get a generic panel.
STEP_PANELS = {"loss": ("Training loss", "loss"), "lr": ("Learning rate (Adam)", "learning rate (log scale)"),
               "k": ("Group loss: hard negatives k", "k (hard negatives per query)"),
               "logit_scale": ("InfoNCE: learned logit scale", "logit scale (1 / temperature)"),
               "grad_norm": ("Gradient norm before clipping", "gradient norm\n(mean of each logging window)")}
# Not a panel: counters, timings, and the loss's window columns (drawn as the loss per caption)
NOT_PLOTTED = ("step", "epoch", "steps_per_s", "data_s", "step_s", "loss_mean", "window_steps", "captions")
FEW_POINTS = 20  # a curve of fewer points is drawn with markers (a single validation is a visible dot)


def loss_curve(curves: Curves, *, summed_over: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(steps, loss per caption, y label) of the step lines, for a loss summed over its batch (`summed_over`, the
    batch size) or a mean (None). Lines with `loss_mean` (the mean of the window's step losses), `window_steps` and
    `captions` (captions trained in the window) give the window's loss per caption: loss_mean * window_steps /
    captions for a summed loss, loss_mean for a mean. Older lines hold one step's `loss` only: loss / batch size.
    Summed losses scale with the batch, and an epoch's short last batch would saw-tooth the curve."""
    count = len(curves.step.get("step", []))

    def column(key: str) -> np.ndarray:  # NaN where a line lacks the key
        return np.asarray(curves.step.get(key, [math.nan] * count), dtype=float)

    steps, loss_mean = column("step"), column("loss_mean")
    windowed = loss_mean * column("window_steps") / column("captions") if summed_over else loss_mean
    single = column("loss") / (summed_over or 1)
    values = np.where(np.isfinite(windowed), windowed, single)
    keep = np.isfinite(values)
    if np.isfinite(windowed[keep]).all():
        label = "loss per caption\n(mean of each logging window)"
    elif np.isfinite(windowed).any():
        label = "loss per caption\n(window means; one step's before)"
    else:
        label = "loss per caption\n(one step's, at each log line)"
    return steps[keep], values[keep], label


def training_panels(curves: Curves) -> list[str]:
    """The training panels metrics.jsonl has data for, in display order: loss, lr, what the loss logs (the
    group loss's k, InfoNCE's logit scale), validation recall, rsum."""
    logged = [key for key in curves.step if key not in NOT_PLOTTED and np.isfinite(curves.step[key]).any()]
    panels = [key for key in STEP_PANELS if key in logged] + [key for key in logged if key not in STEP_PANELS]
    if curves.val.get("step"):
        panels += ["val_recall", "rsum"]
    return panels


def plot_training(curves: Curves, path: Path, *, step_label: str, loss_title: str, summed_over: int | None,
                  markers: list[tuple[float, str]] = ()) -> Path | None:
    """training_figure saved to `path`; None when metrics.jsonl holds nothing to plot."""
    figure = training_figure(curves, step_label=step_label, loss_title=loss_title, summed_over=summed_over,
                             markers=markers)
    return None if figure is None else _save(figure, path)


def training_figure(curves: Curves, *, step_label: str, loss_title: str, summed_over: int | None,
                    markers: list[tuple[float, str]] = ()) -> Figure | None:
    """Loss per caption (loss_curve; its title given), learning rate, the loss's own logs, validation R@1/5/10 and
    rsum against the step (integer ticks), with `markers` (step, label) as vertical lines on every panel (e.g. the
    end of the SH warm-up); None when metrics.jsonl holds nothing to plot."""
    panels = training_panels(curves)
    if not panels:
        return None
    columns = 2 if len(panels) <= 4 else 3
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5.2 * columns, 3.6 * rows), layout="constrained")
    first = None
    for number, name in enumerate(panels, start=1):
        axes = figure.add_subplot(rows, columns, number, sharex=first)  # one step axis: a lone validation is placed
        first = first or axes
        axes.set_xlabel(step_label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no tick at step 12.5
        axes.grid(alpha=0.3)
        for step, label in markers:
            axes.axvline(step, color="grey", linestyle="-.", linewidth=1, label=label)
        if name == "val_recall":
            _plot_val_recall(axes, curves)
        elif name == "rsum":
            x, y = _finite(curves.val["step"], curves.val["rsum"])
            axes.plot(x, y, marker="o", markersize=6 if len(x) < FEW_POINTS else 3, color="tab:purple",
                      label="validation rsum")
            best = int(np.argmax(y))
            axes.plot([x[best]], [y[best]], "*", markersize=12, color="tab:red", label=f"best {y[best]:.1f}")
            axes.set_ylabel("rsum (sum of six R@K, %; max 600)")
            axes.set_title("Validation rsum (selects best.pt)")
        else:
            title, ylabel = STEP_PANELS.get(name, (f"Logged by the loss: {name}", name))
            if name == "loss":
                x, y, ylabel = loss_curve(curves, summed_over=summed_over)
                title = loss_title
            else:
                x, y = _finite(curves.step["step"], curves.step[name])
            axes.plot(x, y, marker="o" if len(x) < FEW_POINTS else None, markersize=5, color="tab:green",
                      label=name)
            axes.set_ylabel(ylabel)
            axes.set_title(title)
            spread = len(y) and (y > 0).all() and y.max() / y.min() > 20  # e.g. the SH sum, then MH's max
            if (name == "lr" and len(y) and (y > 0).all()) or (name == "loss" and spread):
                axes.set_yscale("log")
                if name == "loss":
                    axes.set_ylabel(ylabel + ", log scale")
        low, high = axes.get_xlim()
        if high - low < 2:  # a lone step (one validation): whole-number ticks need a range of a few steps
            axes.set_xlim((low + high) / 2 - 1, (low + high) / 2 + 1)
        axes.legend(fontsize=8, loc="best")
    return figure


def _plot_val_recall(axes, curves: Curves) -> None:
    for direction, color in (("i2t", I2T_COLOR), ("t2i", T2I_COLOR)):
        for cutoff, style in R_STYLES.items():
            key = f"{direction}_{cutoff}"
            if key in curves.val:
                x, y = _finite(curves.val["step"], curves.val[key])
                axes.plot(x, y, style, marker="o", markersize=6 if len(x) < FEW_POINTS else 3, color=color,
                          label=f"{direction} R@{cutoff[1:]}")
    axes.set_ylabel("recall (%)")
    axes.set_ylim(0, 101)
    axes.set_title("Validation Recall@K (i2t blue, t2i orange)")


def plot_recall_at_k(path: Path, *, ks: np.ndarray, i2t: np.ndarray, t2i: np.ndarray, chance_i2t: np.ndarray,
                     chance_t2i: np.ndarray, title: str) -> Path:
    """recall_figure saved to `path`."""
    return _save(recall_figure(ks=ks, i2t=i2t, t2i=t2i, chance_i2t=chance_i2t, chance_t2i=chance_t2i, title=title),
                 path)


def recall_figure(*, ks: np.ndarray, i2t: np.ndarray, t2i: np.ndarray, chance_i2t: np.ndarray,
                  chance_t2i: np.ndarray, title: str) -> Figure:
    """Recall@K for K = 1..max in both directions, with the recall of a random ranking. Each direction stops where
    its chance curve reaches 100% (K = the gallery it ranks: the split's images for t2i, its captions less an
    image's own for i2t): a longer line would be flat, as if larger K were measured."""
    figure = Figure(figsize=(9, 4.8), layout="constrained")
    axes = figure.add_subplot()
    shown = {}
    for name, recall, chance, color, label in (("i2t", i2t, chance_i2t, I2T_COLOR, I2T_LABEL),
                                               ("t2i", t2i, chance_t2i, T2I_COLOR, T2I_LABEL)):
        count = gallery_end(chance)
        shown[name] = count
        axes.plot(ks[:count], recall[:count], color=color, linewidth=2, label=label,
                  marker="o" if count < FEW_POINTS else None, markersize=4)
        axes.plot(ks[:count], chance[:count], "--", color=color, alpha=0.7, label=f"{name} chance (random ranking)")
    last = ks[max(shown.values()) - 1]
    for k in (1, 5, 10):
        if k <= last:
            axes.axvline(k, color="grey", linewidth=0.6, alpha=0.5)
    axes.set_xlabel("K (results looked at)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel("Recall@K (% of queries with a right answer in the top K)")
    axes.set_xlim(1, max(last, 2))
    axes.set_ylim(0, 101)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=9)
    return figure


def gallery_end(chance: np.ndarray) -> int:
    """How many K of a chance curve to draw: up to the first K where a random ranking finds every right answer
    (100%), all of them when it never does."""
    full = np.flatnonzero(np.asarray(chance) >= 100.0 - 1e-9)
    return int(full[0]) + 1 if len(full) else len(chance)


def plot_ablation(table: dict, path: Path, *, highlight: str = "") -> Path:
    """Per run of the grid: R@1 and R@10 of both directions (left) and rsum (right), horizontal bars."""
    runs = table["runs"]
    names = [row["name"] for row in runs]
    height = max(2.8, 0.5 * len(runs) + 1.6)
    figure = Figure(figsize=(12, height), layout="constrained")
    recall, rsum = figure.subplots(1, 2, width_ratios=(3, 2), sharey=True)
    positions = np.arange(len(runs))
    bars = (("i2t_r1", "i2t R@1", I2T_COLOR, 1.0), ("i2t_r10", "i2t R@10", I2T_COLOR, 0.45),
            ("t2i_r1", "t2i R@1", T2I_COLOR, 1.0), ("t2i_r10", "t2i R@10", T2I_COLOR, 0.45))
    width = 0.8 / len(bars)
    for number, (key, label, color, alpha) in enumerate(bars):
        recall.barh(positions - 0.4 + width * (number + 0.5), [row[key] for row in runs], height=width, color=color,
                    alpha=alpha, label=label)
    recall.set_yticks(positions, names)
    recall.invert_yaxis()  # grid order, top to bottom
    recall.set_xlim(0, 100)
    recall.set_xlabel("recall on the test split (%)")
    recall.set_title("R@1 and R@10 per run")
    figure.legend(*recall.get_legend_handles_labels(), loc="outside lower left", ncol=4, fontsize=8)
    values = [row["rsum"] for row in runs]
    colors = ["tab:red" if name == highlight else "tab:purple" for name in names]
    rsum.barh(positions, values, color=colors, height=0.6)
    for position, value in zip(positions, values):
        rsum.text(value, position, f" {value:.1f}", va="center", fontsize=8)
    rsum.set_xlim(0, max(values) * 1.18 if max(values) > 0 else 1)
    rsum.set_xlabel("rsum (sum of six R@K, %; max 600)")
    rsum.set_title("rsum per run" + (f" (this run: {highlight}, red)" if highlight else ""))
    for axes in (recall, rsum):
        axes.grid(axis="x", alpha=0.3)
    for label in recall.get_yticklabels():
        if label.get_text() == highlight:
            label.set_fontweight("bold")
    return _save(figure, path)
