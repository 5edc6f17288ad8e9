"""Threshold calibration and score normalisation state, written to ``calibration.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inspector.normalization import normalize


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

    def to_dict(self) -> dict[str, Any]:
        return {key: _plain(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Calibration":
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
