"""The plots of a run (``plots/``): loss curves, ROC, score histograms, sample grids, prior samples.

Figures are made with matplotlib's object API on the Agg canvas: no display, no global pyplot state.
Every function takes numpy arrays and an output path and returns the path (or None when the data cannot
make that plot, e.g. a ROC curve without anomalous images).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from inspector.metrics import roc_auc, roc_curve

NON_LOSS_COLUMNS = ("step", "epoch", "val_loss", "lr", "elapsed")


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return path


def _smooth(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // 50)
    if window == 1:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def plot_loss_curves(history_path: Path, out_path: Path) -> Path | None:
    """Training loss with the validation loss, the loss's parts, and the learning rate, from ``history.csv``.

    Per-step values are drawn faintly under a moving average; loss axes are logarithmic when positive.
    """
    if not history_path.is_file():
        return None
    with history_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    losses = [name for name in rows[0] if name not in NON_LOSS_COLUMNS]

    def column(name: str) -> tuple[np.ndarray, np.ndarray]:
        pairs = [(float(row["step"]), float(row[name])) for row in rows if row.get(name) not in (None, "")]
        return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])

    figure = Figure(figsize=(15, 4))
    figure.subplots_adjust(left=0.05, right=0.98, bottom=0.14, top=0.9, wspace=0.3)
    total_axis, parts_axis, rate_axis = (figure.add_subplot(1, 3, index) for index in (1, 2, 3))
    main = "loss" if "loss" in losses else losses[0]
    parts = [name for name in losses if name != main]
    for axis, names in ((total_axis, [main]), (parts_axis, parts)):
        for index, name in enumerate(names):
            steps, values = column(name)
            axis.plot(steps, values, color=f"C{index}", alpha=0.25, linewidth=0.8)
            axis.plot(steps, _smooth(values), color=f"C{index}", label=name)
    val_steps, val_values = column("val_loss")
    if len(val_steps):
        total_axis.plot(val_steps, val_values, "o-", color="C3", markersize=3, label="validation loss")
    for axis, title in ((total_axis, "training loss"), (parts_axis, "loss parts")):
        values = np.concatenate([np.asarray(line.get_ydata()) for line in axis.get_lines()] or [np.ones(1)])
        if np.all(values > 0):
            axis.set_yscale("log")
            # Plain numbers rather than 1.4x10^0: a loss axis often spans less than a decade.
            axis.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            axis.yaxis.set_minor_formatter(FormatStrFormatter("%.3g"))
        axis.set_title(title)
        axis.set_xlabel("step")
        if axis.get_lines():
            axis.legend(fontsize=7)
    steps, rates = column("lr")
    rate_axis.plot(steps, rates, color="C2")
    rate_axis.set_title("learning rate")
    rate_axis.set_xlabel("step")
    return _save(figure, out_path)


def plot_roc(labels: np.ndarray, scores: np.ndarray, out_path: Path) -> Path | None:
    """Image-level ROC curve with its AUROC; None without both normal and anomalous images."""
    labels = np.asarray(labels)
    if not (np.any(labels == 0) and np.any(labels == 1)):
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    figure = Figure(figsize=(4.5, 4.5))
    axis = figure.add_subplot()
    axis.plot(fpr, tpr, color="C0", label=f"AUROC {roc_auc(labels, scores):.3f}")
    axis.plot([0, 1], [0, 1], "--", color="0.6", linewidth=0.8)
    axis.set_xlabel("false positive rate (normal images flagged)")
    axis.set_ylabel("true positive rate (anomalies found)")
    axis.set_title("image ROC (test)")
    axis.legend(loc="lower right")
    return _save(figure, out_path)


def plot_score_histogram(
    labels: np.ndarray, scores: np.ndarray, threshold: float, out_path: Path
) -> Path | None:
    """Histograms of the raw image scores of normal and anomalous test images, with the threshold."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return None
    figure = Figure(figsize=(6, 3.5))
    figure.subplots_adjust(bottom=0.15)
    axis = figure.add_subplot()
    bins = np.histogram_bin_edges(np.append(scores, threshold), bins=30)
    for label, name, colour in ((0, "normal", "C0"), (1, "anomalous", "C3")):
        selected = scores[labels == label]
        if selected.size:
            axis.hist(selected, bins=bins, alpha=0.6, color=colour, label=f"{name} ({selected.size})")
    axis.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3g}")
    axis.set_xlabel("raw image score")
    axis.set_ylabel("images")
    axis.set_title("test scores")
    axis.legend(fontsize=8)
    return _save(figure, out_path)


def _displayable(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """``[C, H, W]`` or ``[H, W]`` in [0, 1] -> an array imshow draws, and the colormap for gray."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] == 3:
        return np.clip(image.transpose(1, 2, 0), 0, 1), None
    if image.ndim == 3:
        image = image[0]
    return np.clip(image, 0, 1), "gray"


def plot_sample_grid(
    images: np.ndarray, columns: dict[str, np.ndarray], titles: list[str], out_path: Path
) -> Path:
    """Rows of test images: input, then each column (reconstruction, anomaly map, ground truth...).

    ``images`` ``[N, C, H, W]`` in [0, 1]; each column ``[N, C, H, W]`` or ``[N, H, W]`` in [0, 1]. A column
    named ``anomaly map`` is drawn as a heatmap (normalised: 0.5 is the calibrated pixel threshold).
    """
    names = ["input", *columns]
    rows = len(images)
    figure = Figure(figsize=(1.2 + 2.2 * len(names), 0.5 + 2.3 * rows))
    figure.subplots_adjust(
        left=1.0 / (1.2 + 2.2 * len(names)),
        right=0.99,
        bottom=0.02,
        top=1 - 0.4 / (0.5 + 2.3 * rows),
        wspace=0.05,
        hspace=0.08,
    )
    for row in range(rows):
        for col, name in enumerate(names):
            axis = figure.add_subplot(rows, len(names), row * len(names) + col + 1)
            value = images[row] if name == "input" else columns[name][row]
            if name == "anomaly map":
                heat = value[0] if value.ndim == 3 else value
                axis.imshow(heat, cmap="jet", vmin=0.0, vmax=1.0)
            else:
                shown, cmap = _displayable(value)
                axis.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(name, fontsize=10)
            if col == 0:
                axis.set_ylabel(titles[row], fontsize=8)
    return _save(figure, out_path)


def plot_image_grid(images: np.ndarray, out_path: Path, title: str = "samples from the prior") -> Path:
    """A square grid of images ``[N, C, H, W]`` in [0, 1] (generative detectors' prior samples)."""
    count = len(images)
    side = int(np.ceil(np.sqrt(count)))
    figure = Figure(figsize=(1.6 * side, 1.6 * side + 0.4))
    figure.subplots_adjust(
        left=0.02, right=0.98, bottom=0.02, top=1 - 0.5 / (1.6 * side + 0.4), wspace=0.05, hspace=0.05
    )
    figure.suptitle(title)
    for index in range(count):
        axis = figure.add_subplot(side, side, index + 1)
        shown, cmap = _displayable(images[index])
        axis.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0)
        axis.axis("off")
    return _save(figure, out_path)
