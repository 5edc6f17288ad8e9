"""Test metrics at a calibration, and their summary lines: one code path for ``inspector eval RUN`` (torch,
``inspector.training.evaluate``) and ``inspector eval MODEL.onnx`` (onnxruntime, ``inspector.runtime.evaluate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inspector.calibration import Calibration
from inspector.metrics import image_metrics, pixel_metrics


@dataclass
class ScoredSplit:
    """Raw scores of a split, with its ground truth.

    ``scores`` ``[N]``, ``maps`` ``[N, H, W]`` (raw, at the model's input size), ``labels`` ``[N]``,
    ``masks`` ``[N, H, W]`` bool, ``pixel_truth`` ``[N]``: whether the sample's mask is ground truth (normal
    images, and anomalous images that have a mask).
    """

    scores: np.ndarray
    maps: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    pixel_truth: np.ndarray

    @classmethod
    def empty(cls, input_size: tuple[int, int]) -> ScoredSplit:
        """A split of no images at ``input_size`` (height, width)."""
        maps = np.zeros((0, int(input_size[0]), int(input_size[1])), np.float32)
        return cls(np.zeros(0, np.float32), maps, np.zeros(0, np.int64), maps.astype(bool), np.zeros(0, bool))


def measure_at_calibration(test: ScoredSplit, calibration: Calibration, notes: list[str]) -> dict[str, Any]:
    """The metrics of ``metrics.json`` on a scored test split at a calibration's thresholds.

    Keys: ``false_reject_rate`` (normal images flagged), ``detection_rate`` (anomalous images flagged),
    with both classes the image metrics of :func:`inspector.metrics.image_metrics`, and with defect masks
    the pixel metrics of :func:`inspector.metrics.pixel_metrics` (over the images whose masks are ground
    truth). What cannot be measured is said in ``notes``.
    """
    metrics: dict[str, Any] = {}
    normal, anomalous = test.labels == 0, test.labels == 1
    flagged = calibration.flag_images(test.scores)
    if normal.any():
        metrics["false_reject_rate"] = float(np.mean(flagged[normal]))
    if anomalous.any():
        metrics["detection_rate"] = float(np.mean(flagged[anomalous]))
    if normal.any() and anomalous.any():
        metrics.update(image_metrics(test.labels, test.scores, threshold=calibration.image_threshold))
    else:
        notes.append(
            "the test split needs normal and anomalous images for image AUROC, AP and F1; they were skipped"
        )
    truth = test.pixel_truth
    if truth.any() and test.masks[truth].any():
        metrics.update(
            pixel_metrics(test.masks[truth], test.maps[truth], threshold=calibration.pixel_threshold)
        )
    else:
        notes.append("the test split has no defect masks: pixel metrics were skipped")
    return metrics


def image_counts(test: ScoredSplit, calibration_images: int | None) -> dict[str, int | None]:
    """The ``images`` entry of ``metrics.json`` (``calibration``: None when unknown)."""
    return {
        "test": len(test.labels),
        "test_normal": int(np.sum(test.labels == 0)),
        "test_anomalous": int(np.sum(test.labels == 1)),
        "test_anomalous_with_masks": int(np.sum((test.labels == 1) & test.pixel_truth)),
        "calibration": None if calibration_images is None else int(calibration_images),
    }


def summary_lines(metrics: dict[str, Any], run_dir: str | Path | None = None) -> list[str]:
    """A few human-readable lines of ``metrics.json`` for the command line.

    The first line names the checkpoint (a run's metrics) or the model file (an exported model's).
    """
    images = metrics.get("images", {})
    lines = []

    def values(keys: list[tuple[str, str]]) -> str:
        return "  ".join(f"{label} {metrics[key]:.3f}" for key, label in keys if key in metrics)

    image_part = values(
        [("image_auroc", "AUROC"), ("image_ap", "AP"), ("image_f1", "F1"), ("fpr_at_95_tpr", "FPR@95TPR")]
    )
    pixel_part = values(
        [("pixel_auroc", "AUROC"), ("pixel_ap", "AP"), ("aupro", "AUPRO"), ("pixel_f1", "F1")]
    )
    scored_by = (
        f"model {metrics['model']}"
        if "model" in metrics
        else f"{metrics.get('checkpoint', 'best')} checkpoint at step {metrics.get('step')}"
    )
    lines.append(
        f"test: {images.get('test', 0)} images ({images.get('test_anomalous', 0)} anomalous), {scored_by}"
    )
    if image_part:
        lines.append(f"  image: {image_part}")
    if pixel_part:
        lines.append(f"  pixel: {pixel_part}")
    rates = values([("false_reject_rate", "false rejects"), ("detection_rate", "detected")])
    if rates:
        lines.append(f"  at the calibrated threshold: {rates}")
    calibration = metrics.get("calibration", {})
    target = calibration.get("target")
    target_text = f", target false-reject rate {target:g}" if target is not None else ""
    on_images = (
        f"{images['calibration']} {calibration.get('split')} images"
        if images.get("calibration") is not None
        else f"{calibration.get('split')} images"
    )
    lines.append(
        f"calibration: {calibration.get('method')} on {on_images}{target_text}: image threshold "
        f"{metrics.get('image_threshold', float('nan')):.4g}, pixel threshold "
        f"{metrics.get('pixel_threshold', float('nan')):.4g}"
    )
    for note in metrics.get("notes", []):
        lines.append(f"note: {note}")
    if run_dir is not None:
        lines.append(
            f"wrote {Path(run_dir) / 'metrics.json'}, {Path(run_dir) / 'calibration.json'}, {Path(run_dir) / 'plots'}/"
        )
    return lines
