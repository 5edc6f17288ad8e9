"""Threshold calibration and score normalisation state, written to ``calibration.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspector.metrics import f1_curve
from inspector.normalization import CALIBRATED, is_anomalous, normalize


@dataclass
class Calibration:
    """Calibrated raw thresholds and the raw min/max used to normalise scores.

    ``method`` is ``f1`` (F1-optimal thresholds on validation data with anomalies), ``quantile`` (a quantile
    of the normal validation scores at the target false-reject rate ``target``) or ``none``.
    ``data`` describes what the calibration used (split, number of normal and anomalous images).
    """

    image_threshold: float
    pixel_threshold: float
    image_min: float
    image_max: float
    pixel_min: float
    pixel_max: float
    method: str
    target: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def normalize_image_scores(self, raw: np.ndarray) -> np.ndarray:
        """Normalised image scores: 0.5 at the image threshold."""
        return normalize(raw, self.image_threshold, self.image_min, self.image_max)

    def normalize_anomaly_maps(self, raw: np.ndarray) -> np.ndarray:
        """Normalised anomaly maps: 0.5 at the pixel threshold."""
        return normalize(raw, self.pixel_threshold, self.pixel_min, self.pixel_max)

    def flag_images(self, raw_scores: np.ndarray, threshold: float = CALIBRATED) -> np.ndarray:
        """Which raw image scores are anomalous at a normalised ``threshold`` (0.5: as calibrated)."""
        return is_anomalous(self.normalize_image_scores(raw_scores), threshold)

    def flag_pixels(self, raw_maps: np.ndarray, threshold: float = CALIBRATED) -> np.ndarray:
        """Which raw anomaly-map pixels are defect pixels at a normalised ``threshold``."""
        return is_anomalous(self.normalize_anomaly_maps(raw_maps), threshold)

    def to_dict(self) -> dict[str, Any]:
        return {key: _plain(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


CALIBRATION_METHODS = ("auto", "f1", "quantile")
# Above this many pixels the F1-optimal pixel threshold is searched on a fixed random subsample, which
# bounds memory; below it the search is exact (one sort, about a second for 16M pixels).
F1_PIXEL_LIMIT = 16_000_000


def f1_optimal_threshold(labels: Any, scores: Any) -> tuple[float, float]:
    """The raw threshold with the best F1 for the anomalous class, and that F1.

    The best set of flagged samples is ``score >= threshold``. The threshold sits halfway between the
    lowest flagged score and the highest unflagged one (rounded to the scores' precision), so no
    calibration sample lies on it and ``score > threshold`` (the runtime's test after normalisation)
    flags the same set. Among thresholds with equal F1, the highest is chosen (fewer false alarms).

    Raises:
        ValueError: no anomalous sample, labels not 0/1, or non-finite scores.

    Example:
        >>> f1_optimal_threshold([0, 0, 1, 1], [0.1, 0.2, 0.6, 0.8])
        (0.4, 1.0)
    """
    thresholds, f1, next_lower = f1_curve(labels, scores)
    best = int(np.argmax(f1))  # first maximum: the highest threshold
    dtype = np.asarray(scores).dtype
    return _cut_between(float(next_lower[best]), float(thresholds[best]), dtype), float(f1[best])


def quantile_threshold(normal_scores: Any, false_reject_rate: float) -> float:
    """A raw threshold that rejects at most ``false_reject_rate`` of normal parts, from normal scores only.

    With n normal scores the threshold is the k-th smallest, k = ceil((n + 1) * (1 - rate)), capped at n.
    On the calibration data at most ``rate`` of the normals score above it, and, the reason for the n + 1,
    a new normal part from the same process scores above it with probability at most ``rate`` (the
    conformal-prediction guarantee, for exchangeable scores). With too few samples to resolve the rate
    (rate < 1 / (n + 1)) no order statistic can promise it, so the threshold is the maximum normal score,
    never lower: the tightest threshold that rejects none of the normals seen.

    Raises:
        ValueError: no scores, non-finite scores, or a rate outside [0, 1].

    Example:
        >>> quantile_threshold([0.1, 0.2, 0.3, 0.4], false_reject_rate=0.01)  # 4 samples: the maximum
        0.4
    """
    if not 0.0 <= false_reject_rate <= 1.0:
        raise ValueError(f"false-reject rate must be in [0, 1], got {false_reject_rate}")
    scores = np.asarray(normal_scores).reshape(-1)
    if scores.size == 0:
        raise ValueError("quantile calibration needs normal scores; got none")
    if not np.all(np.isfinite(scores)):
        raise ValueError("normal scores contain NaN or infinity; check the detector's output")
    count = scores.size
    # the tolerance keeps e.g. 100 * 0.99 from rounding up past 99
    rank = int(np.ceil((count + 1) * (1.0 - false_reject_rate) - 1e-9))
    rank = min(max(rank, 1), count)
    return float(np.partition(scores, rank - 1)[rank - 1])


def promised_false_reject_rate(normal_count: int, false_reject_rate: float) -> float:
    """The false-reject rate a quantile threshold from ``normal_count`` normal scores can promise: the
    target, or ``1 / (n + 1)`` (the maximum's) when there are too few normals to resolve it."""
    return max(float(false_reject_rate), 1.0 / (normal_count + 1))


def normals_needed(false_reject_rate: float) -> int:
    """How many normal calibration images resolve ``false_reject_rate`` (n with 1 / (n + 1) <= rate)."""
    return int(np.ceil(1.0 / max(false_reject_rate, 1e-9) - 1.0 - 1e-9))


def too_few_normals(
    normal_count: int,
    false_reject_rate: float,
    hint: str = "a larger data.val_fraction or more good images",
) -> str | None:
    """A one-line warning when ``normal_count`` normals cannot resolve the target rate, else None.

    ``hint`` says where more normal images come from (training: the validation split; ``inspector
    calibrate``: the good folder)."""
    promised = promised_false_reject_rate(normal_count, false_reject_rate)
    if promised <= false_reject_rate:
        return None
    return (
        f"{normal_count} normal calibration images cannot resolve a {false_reject_rate:.2%} false-reject "
        f"rate: the threshold is their highest score, which promises {promised:.1%}; give "
        f"{normals_needed(false_reject_rate)} or more ({hint})"
    )


def calibrate(
    image_scores: Any,
    image_labels: Any,
    anomaly_maps: Any,
    masks: Any = None,
    method: str = "auto",
    false_reject_rate: float = 0.01,
    pixel_false_positive_rate: float = 0.001,
    data: dict[str, Any] | None = None,
) -> Calibration:
    """Calibrate image and pixel thresholds and the normalisation range on validation data.

    ``method="auto"`` uses ``f1`` when the labels hold anomalies, else ``quantile``.

    - ``f1``: the F1-optimal image threshold; the F1-optimal pixel threshold over the pixels of the
      given masks (without masks, or with no defect pixel in them, the pixel threshold falls back to the
      quantile rule and ``data["pixel_method"]`` says so).
    - ``quantile``: the image threshold from the normal images' scores at ``false_reject_rate``; the pixel
      threshold from all pixels of the normal images at ``pixel_false_positive_rate``
      (see :func:`quantile_threshold`).

    The normalisation range is the min and max of all calibration scores and maps.

    Args:
        image_scores: raw image scores ``[N]``.
        image_labels: ``[N]``, 0 normal, 1 anomalous.
        anomaly_maps: raw maps ``[N, H, W]`` or ``[N, 1, H, W]``.
        masks: ground-truth defect masks, bool, same shape as the maps, or ``None``.
        data: what the calibration used (e.g. ``{"split": "val"}``); the image counts are added.

    Raises:
        ValueError: empty or mismatched input, an unknown method, or a method the data cannot support.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(
            f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}"
        )
    scores = np.asarray(image_scores).reshape(-1)
    if scores.size == 0:
        raise ValueError("calibration needs at least one validation image; got no image scores")
    anomalous = _image_labels(image_labels, scores.size)
    maps = _maps(anomaly_maps, scores.size, "anomaly maps")
    defects = None if masks is None else _maps(masks, scores.size, "masks", maps.shape).astype(bool)
    if not (np.all(np.isfinite(scores)) and np.all(np.isfinite(maps))):
        raise ValueError("calibration scores or maps contain NaN or infinity; check the detector's output")
    n_anomalous = int(np.count_nonzero(anomalous))
    n_normal = scores.size - n_anomalous
    if method == "auto":
        method = "f1" if n_anomalous else "quantile"
    used = dict(data or {})
    used.update({"normal": n_normal, "anomalous": n_anomalous})

    if method == "f1":
        if n_anomalous == 0 or n_normal == 0:
            raise ValueError(
                f"F1 calibration needs normal and anomalous validation images; got {n_normal} normal and "
                f"{n_anomalous} anomalous (use the quantile method with normal images only)"
            )
        image_threshold, _ = f1_optimal_threshold(anomalous, scores)
        if defects is not None and defects.any() and not defects.all():
            pixel_threshold = _f1_pixel_threshold(defects, maps)
        else:
            pixel_threshold = _quantile_pixel_threshold(maps, anomalous, pixel_false_positive_rate)
            used["pixel_method"] = "quantile"
        target = None
    else:
        if n_normal == 0:
            raise ValueError("quantile calibration needs normal validation images; every image is anomalous")
        image_threshold = quantile_threshold(scores[~anomalous], false_reject_rate)
        pixel_threshold = _quantile_pixel_threshold(maps, anomalous, pixel_false_positive_rate)
        target = float(false_reject_rate)
        used["promised_false_reject_rate"] = promised_false_reject_rate(n_normal, false_reject_rate)
        warning = too_few_normals(n_normal, false_reject_rate)
        if warning:
            used["warning"] = warning

    return Calibration(
        image_threshold=float(image_threshold),
        pixel_threshold=float(pixel_threshold),
        image_min=float(scores.min()),
        image_max=float(scores.max()),
        pixel_min=float(maps.min()),
        pixel_max=float(maps.max()),
        method=method,
        target=target,
        data=used,
    )


def _f1_pixel_threshold(defects: np.ndarray, maps: np.ndarray) -> float:
    labels, values = defects.reshape(-1), maps.reshape(-1)
    if values.size > F1_PIXEL_LIMIT:
        # a fixed seed keeps calibration reproducible; Bernoulli sampling keeps the class ratio F1 depends on
        keep = np.random.default_rng(0).random(values.size, dtype=np.float32) < F1_PIXEL_LIMIT / values.size
        if labels[keep].any():
            labels, values = labels[keep], values[keep]
    return f1_optimal_threshold(labels, values)[0]


def _quantile_pixel_threshold(maps: np.ndarray, anomalous: np.ndarray, rate: float) -> float:
    if anomalous.all():
        raise ValueError(
            "no normal validation image to calibrate the pixel threshold on; give ground-truth masks or normal images"
        )
    return quantile_threshold(maps[~anomalous], rate)


def _cut_between(lower: float, upper: float, dtype: np.dtype) -> float:
    """A threshold in (lower, upper], exactly representable in the scores' float type, as central as possible."""
    float_type = dtype.type if np.issubdtype(dtype, np.floating) else np.float64
    if lower == -np.inf:
        return float(np.nextafter(float_type(upper), float_type(-np.inf)))
    middle = float(float_type((lower + upper) / 2.0))
    return middle if lower < middle <= upper else upper


def _image_labels(labels: Any, count: int) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.size != count:
        raise ValueError(f"calibration got {count} image scores but {labels.size} labels")
    if labels.dtype != bool and not np.all((labels == 0) | (labels == 1)):
        raise ValueError("image labels must be 0 (normal) or 1 (anomalous)")
    return labels.astype(bool)


def _maps(values: Any, count: int, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[0] != count:
        raise ValueError(
            f"{name} must be [N, H, W] with N = {count} images; got shape {np.asarray(values).shape}"
        )
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} {array.shape} do not match the anomaly maps {shape}")
    return array
