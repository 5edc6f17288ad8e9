"""Run a tiled model (``inspector export --tile``) on whole images: cut, run the tiles, stitch, score.

:class:`~inspector.runtime.scoring.Scorer` calls these two functions when the model's metadata has a
``tiling`` object, so ``inspect``, ``watch``, ``bench`` and the Python API score tiled models with no
change of their own. The grid, the stitching and the score are :mod:`inspector.tiling`'s (the export
calibrates through the same functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inspector.preprocess import to_model_input
from inspector.runtime.session import ModelSession
from inspector.tiling import Tiling

#: Tiles per model call, as pixels: 8 tiles of 256x256, 32 of 128x128. Bounds the memory a call takes
#: however large the image, while keeping calls large enough to use the cores.
TILE_PIXELS_PER_CALL = 8 * 256 * 256


@dataclass
class TileBatch:
    """The model input of ``images`` images: their tiles ``[images * T, C, th, tw]``, image by image."""

    tiles: np.ndarray
    images: int

    def __len__(self) -> int:
        return self.images


def prepare_tiles(images: Sequence[np.ndarray], tiling: Tiling, channels: int) -> TileBatch:
    """Resize each RGB ``uint8`` image whole to ``tiling.image_size`` (the shared preprocessing) and cut it."""
    height, width = tiling.tile
    if len(images) == 0:
        return TileBatch(np.zeros((0, channels, height, width), np.float32), 0)
    tiles = [tiling.cut(to_model_input(image, tiling.image_size, channels)) for image in images]
    return TileBatch(np.concatenate(tiles), len(images))


def infer_tiles(session: ModelSession, batch: TileBatch, tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
    """Raw image scores ``[N]`` and stitched raw maps ``[N, H, W]`` (at ``tiling.image_size``).

    The tiles run ``TILE_PIXELS_PER_CALL`` pixels per model call; the graph's own score output is per tile
    and unused: the image score is recomputed from the stitched map (:meth:`Tiling.score`).
    """
    per_image = len(tiling.origins())
    if len(batch.tiles) != per_image * batch.images:
        raise ValueError(f"{len(batch.tiles)} tiles for {batch.images} images of {per_image} tiles")
    chunk = max(1, TILE_PIXELS_PER_CALL // (tiling.tile[0] * tiling.tile[1]))
    tile_maps = [
        session.run(batch.tiles[start : start + chunk])[1] for start in range(0, len(batch.tiles), chunk)
    ]
    height, width = tiling.image_size
    if not tile_maps:
        return np.zeros(0, np.float32), np.zeros((0, height, width), np.float32)
    maps = np.concatenate(tile_maps)
    stitched = np.stack(
        [tiling.stitch(maps[index * per_image : (index + 1) * per_image]) for index in range(batch.images)]
    )
    scores = np.array([tiling.score(anomaly_map) for anomaly_map in stitched], np.float32)
    return scores, stitched
