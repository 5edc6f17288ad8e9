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
    """The model input of a tiled model: each image preprocessed whole at the tiling's ``image_size``
    (``[C, H, W]``); the tiles are cut from them per model call, as views, so a frame is never held twice."""

    images: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def prepare_tiles(images: Sequence[np.ndarray], tiling: Tiling, channels: int) -> TileBatch:
    """Resize each RGB ``uint8`` image whole to ``tiling.image_size`` (the shared preprocessing)."""
    return TileBatch([to_model_input(image, tiling.image_size, channels) for image in images])


def infer_tiles(session: ModelSession, batch: TileBatch, tiling: Tiling) -> tuple[np.ndarray, np.ndarray]:
    """Raw image scores ``[N]`` and stitched raw maps ``[N, H, W]`` (at ``tiling.image_size``).

    The tiles of all images run ``TILE_PIXELS_PER_CALL`` pixels per model call; the graph's own score
    output is per tile and unused: the image score is recomputed from the stitched map
    (:meth:`Tiling.score`).
    """
    height, width = tiling.tile
    origins = tiling.origins()
    count = len(origins)
    tiles = [(image, top, left) for image in batch.images for top, left in origins]
    chunk = max(1, TILE_PIXELS_PER_CALL // (height * width))
    stitched: list[np.ndarray] = []
    pending: list[np.ndarray] = []  # tile maps of the image being stitched, held only until it is complete
    held = 0
    for start in range(0, len(tiles), chunk):
        model_input = np.stack(
            [
                image[:, top : top + height, left : left + width]
                for image, top, left in tiles[start : start + chunk]
            ]
        )
        pending.append(session.run(model_input)[1])
        held += len(pending[-1])
        while held >= count:
            maps = np.concatenate(pending)
            stitched.append(tiling.stitch(maps[:count]))
            pending, held = [maps[count:]], held - count
    if not stitched:
        return np.zeros(0, np.float32), np.zeros((0, *tiling.image_size), np.float32)
    scores = np.array([tiling.score(anomaly_map) for anomaly_map in stitched], np.float32)
    return scores, np.stack(stitched)
