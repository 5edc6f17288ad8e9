"""Turn images into inspections: shared preprocessing, the model, shared normalisation, labels and regions.

Thresholds here are *normalised*: 0.5 is the calibrated threshold stored in the model (see docs/architecture.md, section 4), a
higher value flags fewer images, a lower one more. Raw scores are always reported alongside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.normalization import CALIBRATED, is_anomalous
from inspector.preprocess import prepare_batch, resize_map
from inspector.runtime.session import ModelSession
from inspector.runtime.tiling import TileBatch, infer_tiles, prepare_tiles

# Regions of larger images are found on a grid of at most this many pixels (scaled back to original
# pixels): still many times finer than the model's map, and a 24 MP photo costs milliseconds, not seconds.
MAX_GRID_PIXELS = 1 << 20


@dataclass
class DefectRegion:
    """A connected group of defect pixels: bounding box and area in the original image's pixels."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "x": self.x,
            "y": self.y,
            "width": self.width,
            "height": self.height,
            "area": self.area,
            "peak": round(self.peak, 4),
        }


@dataclass
class RegionGrid:
    """The normalised map and defect mask on the working grid, with the scale from grid to original pixels.

    The grid is the original resolution, or for images above ``MAX_GRID_PIXELS`` a proportionally smaller one.
    ``min_area`` is the smallest region kept, in grid pixels; :meth:`regions` drops smaller ones from the mask.
    """

    anomaly_map: np.ndarray
    mask: np.ndarray
    scale_x: float
    scale_y: float
    image_size: tuple[int, int]
    min_area: float = 0.0

    @classmethod
    def build(
        cls,
        anomaly_map: np.ndarray,
        image_size: tuple[int, int],
        pixel_threshold: float,
        min_region_area: int = 0,
    ) -> RegionGrid:
        """The grid of an ``anomaly_map`` (normalised, at the model's resolution) laid onto an image of
        ``image_size``; ``min_region_area`` is in the model map's pixels (the metadata's unit)."""
        height, width = image_size
        shrink = min(1.0, math.sqrt(MAX_GRID_PIXELS / float(height * width)))
        grid_height, grid_width = max(1, round(height * shrink)), max(1, round(width * shrink))
        grid_map = resize_map(anomaly_map, grid_height, grid_width)
        min_area = min_region_area * (grid_height * grid_width) / float(anomaly_map.size)
        return cls(
            grid_map,
            is_anomalous(grid_map, pixel_threshold),
            width / grid_width,
            height / grid_height,
            image_size,
            min_area,
        )

    def regions(self) -> list[DefectRegion]:
        """Connected components (8-connected) of the mask of at least ``min_area``, largest first, in
        original pixels. Smaller components are removed from the mask, so contours show what is listed."""
        if not self.mask.any():
            return []
        # Label only the box around the defect pixels: the cost then follows the defects, not the image.
        mask = self.mask.view(np.uint8)  # bool and uint8 share a layout: no copy
        box_x, box_y, box_w, box_h = cv2.boundingRect(mask)
        window = (slice(box_y, box_y + box_h), slice(box_x, box_x + box_w))
        # BBDT gives the same components as the default (Spaghetti) and, with statistics, 1.5-3x faster
        # (benchmarks/inspect_stages.py times both).
        count, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(
            mask[window], 8, cv2.CV_32S, cv2.CCL_BBDT
        )
        box_map = self.anomaly_map[window]
        height, width = self.image_size
        regions = []
        for index in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[index])
            if area < self.min_area:
                self.mask[window][labels == index] = False
                continue
            # The peak inside the component's own box: far cheaper than a scatter-max over the whole grid.
            inside = labels[y : y + h, x : x + w] == index
            peak = float(box_map[y : y + h, x : x + w][inside].max())
            x, y = x + box_x, y + box_y
            left, top = math.floor(x * self.scale_x), math.floor(y * self.scale_y)
            right = min(width, math.ceil((x + w) * self.scale_x))
            bottom = min(height, math.ceil((y + h) * self.scale_y))
            regions.append(
                DefectRegion(
                    left, top, right - left, bottom - top, round(area * self.scale_x * self.scale_y), peak
                )
            )
        regions.sort(key=lambda region: region.area, reverse=True)
        return regions

    def contours(self) -> list[np.ndarray]:
        """Outlines of the mask as int32 point arrays in original pixel coordinates."""
        found, _ = cv2.findContours(self.mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if self.scale_x == 1.0 and self.scale_y == 1.0:
            return list(found)
        scale = np.array([self.scale_x, self.scale_y], np.float32)
        return [np.round((points + 0.5) * scale - 0.5).astype(np.int32) for points in found]


@dataclass
class Inspection:
    """The verdict on one image.

    ``anomaly_map`` is the normalised map at the model's resolution (a tiled model's: the stitched map at
    its tiling's ``image_size``); :meth:`full_anomaly_map` lays it onto the original image (``image_size`` =
    height, width) pixel for pixel: the model saw the whole image resized (a tiled model: resized, then
    cut into tiles that cover it), never cropped. ``defect_regions`` are in original pixels.
    """

    score: float
    raw_score: float
    anomalous: bool
    anomaly_map: np.ndarray
    image_size: tuple[int, int]
    pixel_threshold: float
    defect_regions: list[DefectRegion] = field(default_factory=list)
    grid: RegionGrid | None = field(default=None, repr=False)
    _full_map: np.ndarray | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return "anomalous" if self.anomalous else "normal"

    def full_anomaly_map(self) -> np.ndarray:
        """The normalised anomaly map on the original image: float32 ``[H, W]``."""
        if self._full_map is None:
            self._full_map = resize_map(self.anomaly_map, *self.image_size)
        return self._full_map

    def map_window(self, above: float) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
        """The part of the full-resolution map that can exceed ``above``: its window (x, y, width, height)
        in original pixels and the map's values there, or None when no value exceeds it.

        The values equal :meth:`full_anomaly_map` cropped to the window (same bilinear sampling), without
        resizing the whole map: on a large photo with a small defect that is most of the overlay's cost.
        """
        high = self.anomaly_map > above
        if not high.any():
            return None
        height, width = self.image_size
        map_height, map_width = self.anomaly_map.shape
        scale_x, scale_y = width / map_width, height / map_height
        # A bilinear sample only mixes the two nearest map cells, so one cell of margin holds every sample
        # that can exceed ``above``.
        x, y, w, h = cv2.boundingRect(high.view(np.uint8))
        left, top = max(0, math.floor((x - 1) * scale_x)), max(0, math.floor((y - 1) * scale_y))
        right = min(width, math.ceil((x + w + 1) * scale_x))
        bottom = min(height, math.ceil((y + h + 1) * scale_y))
        window = (left, top, right - left, bottom - top)
        if self._full_map is not None:
            return window, self._full_map[top:bottom, left:right]
        # The affine map of cv2.resize's INTER_LINEAR sampling (pixel centres), offset to the window.
        to_map = np.float32(
            [[1 / scale_x, 0, (left + 0.5) / scale_x - 0.5], [0, 1 / scale_y, (top + 0.5) / scale_y - 0.5]]
        )
        values = cv2.warpAffine(
            self.anomaly_map,
            to_map,
            (right - left, bottom - top),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return window, values

    def defect_mask(self) -> np.ndarray:
        """Defect pixels of the original image: bool ``[H, W]``, the full map above the pixel threshold."""
        return self.full_anomaly_map() > self.pixel_threshold

    def defect_contours(self) -> list[np.ndarray]:
        """Outlines of the defect regions as int32 point arrays in original pixel coordinates."""
        return self.grid.contours() if self.grid is not None and self.defect_regions else []


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

    A model with a ``tiling`` in its metadata (``inspector export --tile``) is run tile by tile:
    ``prepare`` resizes each image to the tiling's ``image_size`` and cuts it into tiles (a
    :class:`~inspector.runtime.tiling.TileBatch`), ``infer`` runs the tiles and returns per image the
    stitched map and the score recomputed from it (:mod:`inspector.runtime.tiling`); ``finish`` is the same.

    Example:
        >>> scorer = Scorer(load_model("model.onnx"), image_threshold=0.6)
        >>> inspection = scorer.score([read_image("part.png")])[0]
    """

    def __init__(
        self, session: ModelSession, image_threshold: float = CALIBRATED, pixel_threshold: float = CALIBRATED
    ):
        self.session = session
        self.calibration = session.calibration
        self.image_threshold = check_threshold(image_threshold, "--threshold")
        self.pixel_threshold = check_threshold(pixel_threshold, "--pixel-threshold")
        self.min_region_area = session.metadata.min_region_area
        self.tiling = session.tiling

    def prepare(self, images: Sequence[np.ndarray]) -> np.ndarray | TileBatch:
        """Model input for RGB ``uint8`` images of any sizes (a tiled model: their tiles)."""
        if self.tiling is not None:
            return prepare_tiles(images, self.tiling, self.session.channels)
        return prepare_batch(images, self.session.input_size, self.session.channels)

    def infer(self, batch: np.ndarray | TileBatch) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores ``[N]`` and raw maps ``[N, h, w]`` of :meth:`prepare`'s output."""
        if isinstance(batch, TileBatch):
            if self.tiling is None:
                raise ValueError("tiles were given to a model without tiling")
            return infer_tiles(self.session, batch, self.tiling)
        return self.session.run(batch)

    def finish(self, image_shape: Sequence[int], raw_score: float, raw_map: np.ndarray) -> Inspection:
        """Normalise one image's raw outputs and find its defect regions on the original image."""
        score = float(self.calibration.normalize_image_scores(np.float32(raw_score)))
        image_size = (int(image_shape[0]), int(image_shape[1]))
        # Normalising the small map before any resize gives the same mask as normalising after it:
        # normalisation is monotone and the threshold lies inside its clip range.
        anomaly_map = self.calibration.normalize_anomaly_maps(raw_map)
        grid = RegionGrid.build(anomaly_map, image_size, self.pixel_threshold, self.min_region_area)
        anomalous = bool(is_anomalous(score, self.image_threshold))
        return Inspection(
            score=score,
            raw_score=float(raw_score),
            anomalous=anomalous,
            anomaly_map=anomaly_map,
            image_size=image_size,
            pixel_threshold=self.pixel_threshold,
            # Regions say where an anomalous image's defect is: a normal image lists none, so the verdict
            # and the regions never disagree.
            defect_regions=grid.regions() if anomalous else [],
            grid=grid,
            _full_map=grid.anomaly_map if grid.anomaly_map.shape == image_size else None,
        )

    def score(self, images: Sequence[np.ndarray]) -> list[Inspection]:
        """Score RGB ``uint8`` images of any sizes in one batch."""
        if not images:
            return []
        raw_scores, raw_maps = self.infer(self.prepare(images))
        return [self.finish(image.shape, raw_scores[i], raw_maps[i]) for i, image in enumerate(images)]
