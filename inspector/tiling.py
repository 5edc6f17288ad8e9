"""Tiled scoring for large images: the tile grid, the stitching of tile maps and the image score.

A model exported with ``inspector export RUN --tile`` was trained on random crops of images read at the
run's ``input_size`` (``crop_size``). Its graph takes one crop-sized tile; the ``tiling`` object of its
metadata (docs/architecture.md, section 4) says how a frame of any size is scored at the scale the model
learned:

1. resize the whole frame to ``image_size`` (the run's ``input_size``: the preprocessing training used),
2. cut it into ``tile``-sized tiles, at most ``stride`` apart, spread evenly so that the first and the
   last tile lie flush with the image's edges (every pixel is covered, edges included),
3. run the graph on the tiles and stitch their maps into one map at ``image_size`` (:func:`stitch`),
4. recompute the image score from the stitched map as the detector defines it (``score``: the maximum
   of the map's ``window`` x ``window`` mean, DRAEM's ``mean_filtered_max``), so that it does not depend on
   where the tiles fell.

The thresholds in a tiled model's metadata were calibrated on scores and maps computed exactly this way
(the export recalibrates the run's validation images tiled). ``min_region_area`` counts pixels of the
stitched map (at ``image_size``), as it counted pixels of the whole-image map at ``input_size`` before.

This module is numpy only: the runtime (onnxruntime) and the export (torch) both stitch through it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

#: How tile maps are combined where tiles overlap (the only method; see :func:`stitch`).
STITCH_METHOD = "weighted_mean"
#: How the image score is computed from the stitched map (the only method; see :func:`mean_filtered_max`).
SCORE_METHOD = "mean_filtered_max"
#: The default overlap of neighbouring tiles, as a fraction of the tile's side.
DEFAULT_OVERLAP = 0.25


@dataclass(frozen=True)
class Tiling:
    """How a tiled model scores an image: the ``tiling`` object of its metadata.

    ``tile`` equals the graph's input (height, width); ``image_size`` is the size a frame is resized to
    before it is cut (the scale the model was trained at); ``stride`` the largest step between tiles
    (overlap = tile - stride); ``score_window`` the mean filter's side of the image score.
    """

    tile: tuple[int, int]
    image_size: tuple[int, int]
    stride: tuple[int, int]
    score_window: int

    def __post_init__(self) -> None:
        for name in ("tile", "image_size", "stride"):
            value = getattr(self, name)
            if not (
                isinstance(value, (tuple, list))
                and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            ):
                raise ValueError(f"{name} must be [height, width] of positive integers, got {value!r}")
        if any(tile > image for tile, image in zip(self.tile, self.image_size)):
            raise ValueError(f"tile {list(self.tile)} is larger than image_size {list(self.image_size)}")
        if any(stride > tile for stride, tile in zip(self.stride, self.tile)):
            raise ValueError(f"stride {list(self.stride)} is larger than the tile {list(self.tile)}: gaps")
        window = self.score_window
        if not (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
            raise ValueError(f"score window must be a positive integer, got {window!r}")

    @classmethod
    def with_overlap(
        cls,
        tile: int | Sequence[int],
        image_size: Sequence[int],
        score_window: int,
        overlap: float = DEFAULT_OVERLAP,
    ) -> Tiling:
        """A tiling whose neighbouring tiles overlap by at least ``overlap`` of the tile's side (0 to 0.9).

        Example:
            >>> Tiling.with_overlap(128, (256, 256), score_window=5).stride
            (96, 96)
        """
        if not 0.0 <= overlap <= 0.9:
            raise ValueError(f"overlap must be from 0 to 0.9 of the tile, got {overlap}")
        sides = (int(tile), int(tile)) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
        stride = tuple(max(1, side - math.ceil(side * overlap)) for side in sides)
        return cls(sides, (int(image_size[0]), int(image_size[1])), stride, int(score_window))

    # --- the metadata object ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The ``tiling`` metadata object (plain JSON values)."""
        return {
            "tile": list(self.tile),
            "image_size": list(self.image_size),
            "stride": list(self.stride),
            "stitch": STITCH_METHOD,
            "score": {"method": SCORE_METHOD, "window": self.score_window},
        }

    @classmethod
    def from_dict(cls, values: Any) -> Tiling:
        """Parse a ``tiling`` metadata object.

        Raises:
            ValueError: not an object, a field missing or out of range, or a stitch or score method this
                version does not know (the message names it).
        """
        if not isinstance(values, dict):
            raise ValueError("must be an object")
        missing = [name for name in ("tile", "image_size", "stride", "stitch", "score") if name not in values]
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
        if values["stitch"] != STITCH_METHOD:
            raise ValueError(f"stitch {values['stitch']!r} is unknown (this version: {STITCH_METHOD!r})")
        score = values["score"]
        if not (isinstance(score, dict) and score.get("method") == SCORE_METHOD):
            raise ValueError(f'score must be {{"method": "{SCORE_METHOD}", "window": N}}, got {score!r}')

        def pair(name: str) -> tuple[int, int]:
            value = values[name]
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError(f"{name} must be [height, width], got {value!r}")
            return value[0], value[1]

        return cls(pair("tile"), pair("image_size"), pair("stride"), score.get("window"))

    # --- the grid ----------------------------------------------------------------------------------------

    def origins(self) -> list[tuple[int, int]]:
        """The (top, left) corner of every tile, row by row."""
        rows = tile_starts(self.image_size[0], self.tile[0], self.stride[0])
        columns = tile_starts(self.image_size[1], self.tile[1], self.stride[1])
        return [(top, left) for top in rows for left in columns]

    def cut(self, image: np.ndarray) -> np.ndarray:
        """The tiles ``[T, C, th, tw]`` of one model-input image ``[C, H, W]`` at ``image_size``."""
        if tuple(image.shape[-2:]) != self.image_size:
            raise ValueError(f"image is {list(image.shape[-2:])}, the tiling expects {list(self.image_size)}")
        height, width = self.tile
        return np.stack([image[:, top : top + height, left : left + width] for top, left in self.origins()])

    def stitch(self, tile_maps: np.ndarray) -> np.ndarray:
        """One map ``[H, W]`` at ``image_size`` from the maps ``[T, th, tw]`` of :meth:`cut`'s tiles."""
        return stitch(tile_maps, self.origins(), self.image_size, self.tile, self.stride)

    def score(self, anomaly_map: np.ndarray) -> float:
        """The image score of a stitched map: the detector's own definition (:func:`mean_filtered_max`)."""
        return mean_filtered_max(anomaly_map, self.score_window)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of tiles of ``tile`` pixels covering ``length`` pixels, at most ``stride`` apart.

    The count is the fewest that keeps every step at most ``stride``; the starts are spread evenly from 0
    to ``length - tile``, so the last tile ends exactly at the edge and the overlaps differ by at most one
    pixel (a length that is no multiple of the stride gets slightly larger overlaps, never a gap).

    Example:
        >>> tile_starts(300, 128, 96)
        [0, 86, 172]
    """
    if not 1 <= stride <= tile <= length:
        raise ValueError(f"need 1 <= stride ({stride}) <= tile ({tile}) <= length ({length})")
    steps = math.ceil((length - tile) / stride)
    if steps == 0:
        return [0]
    return [round(index * (length - tile) / steps) for index in range(steps + 1)]


def tile_weights(tile: Sequence[int], stride: Sequence[int]) -> np.ndarray:
    """The stitching weight of each pixel of a tile, float64 ``[th, tw]``, positive everywhere.

    Along each axis the weight rises linearly over the overlap (``tile - stride`` pixels) from the tile's
    edge and is 1 inside: where two tiles overlap, the map fades from one to the other.
    """
    axes = []
    for side, step in zip(tile, stride):
        ramp = max(1, side - step)
        index = np.arange(side)
        axes.append(np.minimum(np.minimum(index + 1, side - index), ramp) / ramp)
    return np.outer(axes[0], axes[1])


def stitch(
    tile_maps: np.ndarray,
    origins: Sequence[tuple[int, int]],
    image_size: Sequence[int],
    tile: Sequence[int],
    stride: Sequence[int],
) -> np.ndarray:
    """Stitch tile maps into one float32 map at ``image_size``: the weighted mean over overlapping tiles.

    Why a mean, weighted towards each tile's centre, and not the maximum: a fully convolutional net sees a
    pixel near a tile's edge with part of its context cut off (padding instead of the image), and that is
    where it errs. The weighted mean gives a pixel mostly the value of the tile in which it sits most
    centrally (the most context, the closest to what the net computes on the whole image), fades between
    tiles without seams, and keeps a defect that both tiles see. The maximum would keep every tile's
    border error, raising normal images' scores where tiles happen to meet, so that scores would depend
    on tile placement. Every pixel is covered by at least one tile with a positive weight, so a map that
    is constant on every tile stitches to the same constant.
    """
    tile_height, tile_width = int(tile[0]), int(tile[1])
    if len(tile_maps) != len(origins):
        raise ValueError(f"{len(tile_maps)} tile maps for {len(origins)} tiles")
    key = (tuple(origins), (int(image_size[0]), int(image_size[1])), (tile_height, tile_width), tuple(stride))
    weights, inverse_sum = _stitch_weights(*key)
    total = np.zeros(key[1], np.float32)
    for tile_map, (top, left) in zip(tile_maps, origins):
        total[top : top + tile_height, left : left + tile_width] += weights * tile_map.reshape(weights.shape)
    return total * inverse_sum


@functools.lru_cache(maxsize=4)
def _stitch_weights(
    origins: tuple[tuple[int, int], ...],
    image_size: tuple[int, int],
    tile: tuple[int, int],
    stride: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """One tile's weights (float32) and 1 / the sum of the weights on each pixel: the same for every image
    of one tiling, so computed once."""
    weights = tile_weights(tile, stride)
    weight_sum = np.zeros(image_size, np.float64)
    for top, left in origins:
        weight_sum[top : top + tile[0], left : left + tile[1]] += weights
    weights, inverse_sum = weights.astype(np.float32), (1.0 / weight_sum).astype(np.float32)
    weights.setflags(write=False)  # shared by every call: read-only
    inverse_sum.setflags(write=False)
    return weights, inverse_sum


def mean_filtered_max(anomaly_map: np.ndarray, window: int) -> float:
    """The largest mean of ``window`` x ``window`` squares of a map ``[H, W]``.

    The numpy twin of DRAEM's score (``training/detectors/draem.py``: ``avg_pool2d(map, window, stride=1,
    padding=window // 2, count_include_pad=False)`` then the maximum): squares cut by the image's edge
    average only the pixels they hold.
    """
    values = np.asarray(anomaly_map, dtype=np.float32)
    height, width = values.shape
    pad = window // 2
    extra = 2 * pad - window + 1  # avg_pool2d gives one more output than input for an even window
    if extra:
        values = cv2.copyMakeBorder(values, 0, extra, 0, extra, cv2.BORDER_CONSTANT, value=0.0)
    # Zero outside the map adds nothing to a sum; the counts leave it out of the mean.
    sums = cv2.boxFilter(
        values, -1, (window, window), anchor=(pad, pad), normalize=False, borderType=cv2.BORDER_CONSTANT
    )

    def counts(length: int) -> np.ndarray:
        start = np.arange(length + extra) - pad
        return (np.minimum(start + window, length) - np.maximum(start, 0)).astype(np.float32)

    return float((sums / np.outer(counts(height), counts(width))).max())
