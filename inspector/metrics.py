"""Image and pixel anomaly-detection metrics in numpy, shared by evaluation, benchmarks and calibration.

Anomalous is the positive class (label 1), higher scores mean more anomalous, and a sample is predicted
anomalous when ``score >= threshold``. Every value is exact, ties included (tied scores move together
along a curve, as in scikit-learn), and needs no O(n^2) memory: one plain sort of the scores, then work
proportional to the number of anomalous samples. Pixel metrics over a whole test set (hundreds of
256x256 maps) therefore take about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from inspector.normalization import is_anomalous

AUPRO_FPR_LIMIT = 0.3


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic at every distinct score (for plots).

    Returns ``(fpr, tpr, thresholds)`` with thresholds decreasing from ``inf`` (nothing flagged, the point
    (0, 0)) down to the lowest score (everything flagged, the point (1, 1)). A point is the rates of
    ``score >= threshold``. Same values as ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    Raises:
        ValueError: labels not binary, lengths differ, non-finite scores, or only one class present.

    Example:
        >>> fpr, tpr, _ = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        >>> fpr.tolist(), tpr.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    positives, scores = _check_pair(labels, scores)
    _require_both_classes(positives, "ROC")
    thresholds, true_pos, false_pos = _counts_at_every_score(scores, positives)
    tpr = np.concatenate([[0.0], true_pos / true_pos[-1]])
    fpr = np.concatenate([[0.0], false_pos / false_pos[-1]])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def precision_recall_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, in scikit-learn's layout (for plots).

    Returns ``(precision, recall, thresholds)``: thresholds increasing; precision and recall one longer,
    ending with the point (recall 0, precision 1) that has no threshold.

    Raises:
        ValueError: no anomalous sample (recall is undefined), or the input checks of :func:`roc_curve`.
    """
    positives, scores = _check_pair(labels, scores)
    _require_anomalies(positives, "precision and recall")
    thresholds, true_pos, false_pos = _counts_at_every_score(scores, positives)
    precision = true_pos / (true_pos + false_pos)
    recall = true_pos / true_pos[-1]
    return (
        np.concatenate([precision[::-1], [1.0]]),
        np.concatenate([recall[::-1], [0.0]]),
        thresholds[::-1],
    )


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (trapezoidal, so a tie between classes counts one half).

    Raises:
        ValueError: only one class present (AUROC is undefined), or the input checks of :func:`roc_curve`.

    Example:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4])
        1.0
    """
    positives, scores = _check_pair(labels, scores)
    _require_both_classes(positives, "ROC")
    return _Steps.of(scores, positives).roc_auc()


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision: sum over thresholds of (recall gained) x precision, without interpolation.

    The step-wise definition of ``sklearn.metrics.average_precision_score``.

    Raises:
        ValueError: no anomalous sample, or the input checks of :func:`roc_curve`.

    Example:
        >>> round(average_precision([0, 1, 0, 1], [0.1, 0.9, 0.8, 0.3]), 4)
        0.8333
    """
    positives, scores = _check_pair(labels, scores)
    _require_anomalies(positives, "average precision")
    return _Steps.of(scores, positives).average_precision()


def f1_at_threshold(labels: Any, scores: Any, threshold: float) -> float:
    """F1 of the anomalous class with the project's decision (:func:`inspector.normalization.is_anomalous`:
    ``score > threshold`` is anomalous); 0.0 when undefined.

    Example:
        >>> f1_at_threshold([0, 1, 1], [0.2, 0.6, 0.4], threshold=0.5)
        0.6666666666666666
    """
    positives, scores = _check_pair(labels, scores)
    # a float64 threshold keeps its exact value against float32 scores (a Python float would be rounded)
    predicted = is_anomalous(scores, np.float64(threshold))
    true_pos = int(np.count_nonzero(predicted & positives))
    denominator = int(np.count_nonzero(positives)) + int(np.count_nonzero(predicted))
    return 2.0 * true_pos / denominator if denominator else 0.0


def f1_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F1 at every threshold where it can peak: each distinct score of an anomalous sample.

    Lowering a threshold past normal samples only adds false positives, so the best F1 over all
    thresholds is the best of these. Returns ``(thresholds, f1, next_lower)``, thresholds decreasing;
    ``next_lower`` is the highest score below each threshold (``-inf`` when none), so any cut in
    ``(next_lower, threshold]`` flags the same samples.

    Raises:
        ValueError: no anomalous sample, or the input checks of :func:`roc_curve`.
    """
    positives, scores = _check_pair(labels, scores)
    _require_anomalies(positives, "F1")
    steps = _Steps.of(scores, positives)
    f1 = 2.0 * steps.positives_at_or_above / (steps.positives + steps.flagged_at_or_above)
    return steps.thresholds, f1, steps.next_lower


def fpr_at_tpr(labels: Any, scores: Any, tpr: float = 0.95) -> float:
    """Lowest false-positive rate among thresholds that catch at least a ``tpr`` fraction of anomalies.

    Example:
        >>> fpr_at_tpr([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.6, 0.8], tpr=1.0)
        0.25
    """
    if not 0.0 <= tpr <= 1.0:
        raise ValueError(f"tpr must be in [0, 1], got {tpr}")
    positives, scores = _check_pair(labels, scores)
    _require_both_classes(positives, "ROC")
    if tpr == 0.0:
        return 0.0  # flagging nothing catches the required none
    steps = _Steps.of(scores, positives)
    caught = steps.positives_at_or_above / steps.positives
    # caught rises as the threshold falls, to 1.0; the tolerance keeps e.g. 19/20 >= 0.95 despite rounding
    first = min(int(np.searchsorted(caught, tpr - 1e-12, side="left")), len(caught) - 1)
    return float(steps.negatives_at_or_above[first] / steps.negatives)


def aupro(
    masks: Any,
    anomaly_maps: Any,
    fpr_limit: float = AUPRO_FPR_LIMIT,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD's AUPRO).

    Each connected defect region (8-connectivity) of each ground-truth mask counts equally, whatever its
    size: at a threshold, PRO is the mean over regions of the fraction of the region's pixels with
    ``map >= threshold``, and FPR is the fraction of defect-free pixels (over all images) at or above it.
    The PRO-vs-FPR curve, from (0, 0) to (1, 1), is integrated up to ``fpr_limit`` and divided by it, so a
    perfect map scores 1.0.

    Args:
        masks: ground truth, bool ``[N, H, W]`` (or ``[N, 1, H, W]``); true = defect.
        anomaly_maps: float ``[N, H, W]`` (or ``[N, 1, H, W]``), same size as the masks.
        fpr_limit: upper end of the integration, in (0, 1].
        num_thresholds: ``None`` for the exact curve; an integer to evaluate it only at that many evenly
            spaced thresholds from the map's min to max, as some other tools do (for comparison).

    Raises:
        ValueError: no defect region, no defect-free pixel, shapes that differ, or non-finite maps.
    """
    _check_fpr_limit(fpr_limit)
    masks, anomaly_maps = _check_maps(masks, anomaly_maps)
    defects = masks.reshape(-1)
    values = anomaly_maps.reshape(-1)
    _require_both_classes(defects, "AUPRO")
    if num_thresholds is not None:
        values = _snap_to_grid(values, num_thresholds)
    steps = _Steps.of(values, defects, _region_weights(masks))
    return steps.aupro(fpr_limit)


def image_metrics(labels: Any, scores: Any, threshold: float | None = None) -> dict[str, float]:
    """Image-level metrics under the keys of ``metrics.json``.

    Keys: ``image_auroc``, ``image_ap``, ``fpr_at_95_tpr`` and, with a raw ``threshold``, ``image_f1``.

    Raises:
        ValueError: the labels hold only one class (the metrics are undefined).
    """
    results = {
        "image_auroc": roc_auc(labels, scores),
        "image_ap": average_precision(labels, scores),
        "fpr_at_95_tpr": fpr_at_tpr(labels, scores, 0.95),
    }
    if threshold is not None:
        results["image_f1"] = f1_at_threshold(labels, scores, threshold)
    return results


def pixel_metrics(
    masks: Any,
    anomaly_maps: Any,
    threshold: float | None = None,
    fpr_limit: float = AUPRO_FPR_LIMIT,
) -> dict[str, float]:
    """Pixel-level metrics under the keys of ``metrics.json``, all exact, from one sort of the maps.

    Keys: ``pixel_auroc``, ``pixel_ap``, ``aupro`` and, with a raw pixel ``threshold``, ``pixel_f1``.
    Masks and maps as in :func:`aupro`.

    Raises:
        ValueError: the masks hold no defect pixel or no defect-free pixel, or shapes differ.
    """
    _check_fpr_limit(fpr_limit)
    masks, anomaly_maps = _check_maps(masks, anomaly_maps)
    defects = masks.reshape(-1)
    values = anomaly_maps.reshape(-1)
    _require_both_classes(defects, "pixel")
    steps = _Steps.of(values, defects, _region_weights(masks))
    results = {
        "pixel_auroc": steps.roc_auc(),
        "pixel_ap": steps.average_precision(),
        "aupro": steps.aupro(fpr_limit),
    }
    if threshold is not None:
        results["pixel_f1"] = f1_at_threshold(defects, values, threshold)
    return results


@dataclass
class _Steps:
    """Counts at each distinct score of a positive sample, highest first: where every curve can bend.

    Between two such scores only negatives are passed, so a curve runs flat there; knowing the counts just
    above and at or above each positive score is enough to rebuild any curve exactly.
    """

    thresholds: np.ndarray
    next_lower: np.ndarray
    positives: int
    negatives: int
    positives_at_or_above: np.ndarray
    positives_above: np.ndarray
    flagged_at_or_above: np.ndarray
    flagged_above: np.ndarray
    weight_at_or_above: np.ndarray | None
    weight_above: np.ndarray | None

    @property
    def negatives_at_or_above(self) -> np.ndarray:
        return self.flagged_at_or_above - self.positives_at_or_above

    @property
    def negatives_above(self) -> np.ndarray:
        return self.flagged_above - self.positives_above

    @classmethod
    def of(
        cls, scores: np.ndarray, positives: np.ndarray, positive_weights: np.ndarray | None = None
    ) -> _Steps:
        """Count with one plain sort of all scores (an argsort of every pixel is several times slower)."""
        ranked = np.sort(scores)
        positive_scores = scores[positives]
        order = np.argsort(positive_scores, kind="stable")[::-1]
        positive_scores = positive_scores[order]
        is_first = np.ones(positive_scores.shape, dtype=bool)
        np.not_equal(positive_scores[1:], positive_scores[:-1], out=is_first[1:])
        first = np.flatnonzero(is_first)
        thresholds = positive_scores[first]
        positives_at_or_above = np.append(first[1:], len(positive_scores)).astype(np.float64)
        below = np.searchsorted(ranked, thresholds, side="left")
        weight_at_or_above = weight_above = None
        if positive_weights is not None:
            cumulative = np.concatenate([[0.0], np.cumsum(positive_weights[order], dtype=np.float64)])
            weight_at_or_above = cumulative[np.append(first[1:], len(positive_scores))]
            weight_above = cumulative[first]
        return cls(
            thresholds=thresholds,
            next_lower=np.where(below > 0, ranked[np.maximum(below - 1, 0)], -np.inf),
            positives=len(positive_scores),
            negatives=len(scores) - len(positive_scores),
            positives_at_or_above=positives_at_or_above,
            positives_above=first.astype(np.float64),
            flagged_at_or_above=(len(ranked) - below).astype(np.float64),
            flagged_above=(len(ranked) - np.searchsorted(ranked, thresholds, side="right")).astype(
                np.float64
            ),
            weight_at_or_above=weight_at_or_above,
            weight_above=weight_above,
        )

    def curve(self, y_above: np.ndarray, y_at_or_above: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A curve of y against the false-positive rate, exact at every threshold.

        From (0, 0), for each threshold the point just above it then the point at it (ties of both
        classes are flagged together, so the curve moves diagonally between them), then (1, 1). Between
        thresholds only negatives are passed: the curve runs flat, as the trapezoid rule then assumes.
        """
        x_above = self.negatives_above / self.negatives
        x_at = self.negatives_at_or_above / self.negatives
        xs = np.concatenate([[0.0], np.stack([x_above, x_at], axis=1).reshape(-1), [1.0]])
        ys = np.concatenate([[0.0], np.stack([y_above, y_at_or_above], axis=1).reshape(-1), [1.0]])
        return xs, ys

    def roc_auc(self) -> float:
        fpr, tpr = self.curve(
            self.positives_above / self.positives, self.positives_at_or_above / self.positives
        )
        return float(np.trapezoid(tpr, fpr))

    def average_precision(self) -> float:
        recall_gained = (self.positives_at_or_above - self.positives_above) / self.positives
        precision = self.positives_at_or_above / self.flagged_at_or_above
        return float(np.sum(recall_gained * precision))

    def aupro(self, fpr_limit: float) -> float:
        if self.weight_above is None or self.weight_at_or_above is None:
            raise ValueError("AUPRO needs the region weight of every defect pixel")
        fpr, pro = self.curve(self.weight_above, self.weight_at_or_above)
        return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _counts_at_every_score(
    scores: np.ndarray, positives: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds (every distinct score, decreasing) and the true/false positives of ``score >= threshold``."""
    order = np.argsort(scores, kind="stable")[::-1]
    ranked = scores[order]
    last_of_value = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1)
    true_pos = np.cumsum(positives[order], dtype=np.float64)[last_of_value]
    return ranked[last_of_value], true_pos, (last_of_value + 1) - true_pos


def _snap_to_grid(values: np.ndarray, num_thresholds: int) -> np.ndarray:
    """Lower each value to the highest of ``num_thresholds`` evenly spaced thresholds it reaches."""
    if num_thresholds < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    grid = np.unique(np.linspace(values.min(), values.max(), int(num_thresholds), dtype=values.dtype))
    return grid[np.searchsorted(grid, values, side="right") - 1]


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Weight of each defect pixel (in ``masks[masks]`` order): 1 / (its region's size x number of regions).

    Summed over the flagged defect pixels it is the per-region overlap (PRO).
    """
    region_of_pixel = []
    sizes: list[np.ndarray] = []
    regions_so_far = 0
    for mask in masks:
        if not mask.any():
            continue
        count, regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        region_of_pixel.append(regions[mask] - 1 + regions_so_far)
        sizes.append(np.bincount(regions.reshape(-1), minlength=count)[1:])
        regions_so_far += count - 1
    if not sizes:
        raise ValueError("AUPRO needs at least one defect region; every ground-truth mask is empty")
    region_sizes = np.concatenate(sizes).astype(np.float64)
    return (1.0 / (region_sizes * len(region_sizes)))[np.concatenate(region_of_pixel)]


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoidal area under y(x) from x=0 to ``limit``; x non-decreasing, y interpolated at the cut."""
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    if inside < len(x) and xs[-1] < limit:
        # the segment crossing the limit is cut there, at its linearly interpolated height
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs = np.append(xs, limit)
        ys = np.append(ys, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    return float(np.trapezoid(ys, xs))


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _check_pair(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    positives = _binary(labels, "labels").reshape(-1)
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    scores = scores.reshape(-1)
    if positives.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {positives.size} labels, {scores.size} scores")
    if positives.size == 0:
        raise ValueError("no samples: labels and scores are empty")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity; check the detector's output")
    return positives, scores


def _check_maps(masks: Any, anomaly_maps: Any) -> tuple[np.ndarray, np.ndarray]:
    masks = _binary(masks, "masks")
    anomaly_maps = np.asarray(anomaly_maps)
    masks, anomaly_maps = _squeeze_channel(masks), _squeeze_channel(anomaly_maps)
    if masks.shape != anomaly_maps.shape or masks.ndim != 3:
        raise ValueError(
            f"masks {masks.shape} and anomaly maps {anomaly_maps.shape} must both be [N, H, W] of the same size"
        )
    if masks.size == 0:
        raise ValueError("no pixels: masks and anomaly maps are empty")
    if not np.all(np.isfinite(anomaly_maps)):
        raise ValueError("anomaly maps contain NaN or infinity; check the detector's output")
    return masks, anomaly_maps


def _squeeze_channel(array: np.ndarray) -> np.ndarray:
    return array[:, 0] if array.ndim == 4 and array.shape[1] == 1 else array


def _binary(values: Any, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype == bool:
        return values
    if values.size and not np.all((values == 0) | (values == 1)):
        raise ValueError(
            f"{name} must be 0 (normal) or 1 (anomalous), got values {np.unique(values)[:5].tolist()}"
        )
    return values.astype(bool)


def _require_anomalies(positives: np.ndarray, what: str) -> None:
    if not positives.any():
        raise ValueError(
            f"{what} need at least one anomalous sample (label 1); all {positives.size} are normal"
        )


def _require_both_classes(positives: np.ndarray, what: str) -> None:
    anomalous = int(np.count_nonzero(positives))
    if anomalous == 0 or anomalous == positives.size:
        present = "anomalous" if anomalous else "normal"
        raise ValueError(
            f"{what} metrics need both normal and anomalous samples; all {positives.size} are {present}"
        )
