"""Turn images into inspections: shared preprocessing, the model, shared normalisation, labels and regions.

Thresholds here are *normalised*: 0.5 is the calibrated threshold stored in the model (see DESIGN.md), a
higher value flags fewer images, a lower one more. Raw scores are always reported alongside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.preprocess import prepare_batch, resize_map
from runtime.session import ModelSession

CALIBRATED = 0.5


@dataclass
class DefectRegion:
    """A connected group of defect pixels, in the original image's pixel coordinates."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height, "area": self.area,
                "peak": round(self.peak, 4)}


@dataclass
class Inspection:
    """The verdict on one image. Maps and masks are at the original image's resolution."""

    score: float
    raw_score: float
    anomalous: bool
    anomaly_map: np.ndarray
    defect_mask: np.ndarray
    defect_regions: list[DefectRegion] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "anomalous" if self.anomalous else "normal"


def check_threshold(value: float, name: str = "--threshold") -> float:
    """Validate a normalised threshold (0.5 = calibrated)."""
    if not 0.0 <= value <= 1.0:
        raise InspectorError(
            f"{name} {value} is outside [0, 1]: it is a normalised score, 0.5 = the model's calibrated threshold"
        )
    return float(value)


class Scorer:
    """Score RGB images with a :class:`ModelSession` through the shared preprocessing and normalisation.

    The three steps are separate so that a pipeline can run them on different threads: ``prepare``
    (images → model input), ``infer`` (model input → raw scores and maps), ``finish`` (one image's raw
    outputs → :class:`Inspection`).

    Example:
        >>> scorer = Scorer(load_model("model.onnx"), image_threshold=0.6)
        >>> inspection = scorer.score([read_image("part.png")])[0]
    """

    def __init__(self, session: ModelSession, image_threshold: float = CALIBRATED,
                 pixel_threshold: float = CALIBRATED):
        self.session = session
        self.calibration = session.calibration
        self.image_threshold = check_threshold(image_threshold, "--threshold")
        self.pixel_threshold = check_threshold(pixel_threshold, "--pixel-threshold")

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return prepare_batch(images, self.session.input_size, self.session.channels)

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.session.run(batch)

    def finish(self, image_shape: Sequence[int], raw_score: float, raw_map: np.ndarray) -> Inspection:
        """Normalise one image's raw outputs, bring the map to ``image_shape`` and find defect regions."""
        score = float(self.calibration.normalize_image_scores(np.float32(raw_score)))
        height, width = int(image_shape[0]), int(image_shape[1])
        # Normalising before the resize costs the small map, not the full-resolution one; both orders give
        # the same defect mask because normalisation is monotone and 0.5 lies inside the clip range.
        anomaly_map = resize_map(self.calibration.normalize_anomaly_maps(raw_map), height, width)
        defect_mask = anomaly_map > self.pixel_threshold
        return Inspection(
            score=score,
            raw_score=float(raw_score),
            anomalous=score > self.image_threshold,
            anomaly_map=anomaly_map,
            defect_mask=defect_mask,
            defect_regions=defect_regions(defect_mask, anomaly_map),
        )

    def score(self, images: Sequence[np.ndarray]) -> list[Inspection]:
        """Score RGB ``uint8`` images of any sizes in one batch."""
        if not images:
            return []
        raw_scores, raw_maps = self.infer(self.prepare(images))
        return [self.finish(image.shape, raw_scores[i], raw_maps[i]) for i, image in enumerate(images)]


def defect_regions(defect_mask: np.ndarray, anomaly_map: np.ndarray) -> list[DefectRegion]:
    """Connected components (8-connected) of a defect mask, largest first, with their peak map value."""
    if not defect_mask.any():
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(defect_mask.astype(np.uint8), connectivity=8)
    regions = []
    for index in range(1, count):
        x, y, width, height, area = (int(v) for v in stats[index])
        window = labels[y:y + height, x:x + width] == index
        peak = float(anomaly_map[y:y + height, x:x + width][window].max())
        regions.append(DefectRegion(x, y, width, height, area, peak))
    regions.sort(key=lambda region: region.area, reverse=True)
    return regions
