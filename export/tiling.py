"""``inspector export RUN --tile``: export a run trained on crops as a tile-sized graph that scores tiled.

A run with ``crop_size`` learned from crops of images read at ``input_size``. :func:`tile_for_export`
turns the export into a tiled one: the graph is traced at the crop size (one tile), the metadata gets a
``tiling`` object (:class:`inspector.tiling.Tiling`: tile, the run's ``input_size`` as the image size the
frame is resized to, stride, score window) and the thresholds are recalibrated on the run's validation
images scored exactly as the runtime will score them: tiled, stitched, the score recomputed from the
stitched map (:class:`TiledScoring`, through :mod:`inspector.tiling`'s numpy functions, which the runtime
calls too). The run's own ``calibration.json`` (whole images) is left as it is.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from inspector.calibration import Calibration
from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.tiling import DEFAULT_OVERLAP, Tiling
from inspector.training.detectors.base import Detector

#: Tiles per forward pass while calibrating.
TILES_PER_PASS = 16


class TiledScoring(nn.Module):
    """A detector scoring whole images ``[N, C, H, W]`` at ``tiling.image_size`` tile by tile: the stitched
    raw map ``[N, 1, H, W]`` and the score recomputed from it, as the runtime computes them."""

    def __init__(self, detector: Detector, tiling: Tiling) -> None:
        super().__init__()
        self.detector = detector
        self.tiling = tiling

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tiling = self.tiling
        per_image = len(tiling.origins())
        tiles = np.concatenate([tiling.cut(item) for item in image.detach().float().cpu().numpy()])
        maps = []
        for start in range(0, len(tiles), TILES_PER_PASS):
            chunk = torch.from_numpy(tiles[start : start + TILES_PER_PASS]).to(image.device)
            maps.append(self.detector(chunk)[1].float().cpu().numpy()[:, 0])
        tile_maps = np.concatenate(maps)
        stitched = np.stack(
            [
                tiling.stitch(tile_maps[index * per_image : (index + 1) * per_image])
                for index in range(len(image))
            ]
        )
        scores = np.array([tiling.score(anomaly_map) for anomaly_map in stitched], np.float32)
        return torch.from_numpy(scores), torch.from_numpy(stitched)[:, None]


def tiling_for_run(detector: Detector, config: TrainConfig, overlap: float = DEFAULT_OVERLAP) -> Tiling:
    """The tiling of a run trained on crops: tile = ``crop_size``, image size = ``input_size``.

    Raises:
        InspectorError: the run was not trained on crops, its detector's score is not computed from its
            map by a mean filter (only DRAEM-family detectors), or the net cannot run on one tile.
    """
    if config.crop_size is None:
        raise InspectorError(
            f"--tile: run '{config.name}' was not trained on crops (crop_size is not set): its model scores "
            "whole images at input_size; train with crop_size (e.g. input_size [1024, 1024], crop_size 256) "
            "to score at a finer scale in tiles"
        )
    window = getattr(detector, "score_window", None)
    if not isinstance(window, int):
        raise InspectorError(
            f"--tile: detector '{config.detector}' does not score an image from its anomaly map (no "
            "score_window); tiling is for the fully convolutional draem and rdna detectors"
        )
    tiling = Tiling.with_overlap(int(config.crop_size), config.input_size, window, overlap)
    with torch.no_grad():
        _, anomaly_map = detector.eval()(torch.zeros(1, config.channels, *tiling.tile))
    if tuple(anomaly_map.shape[-2:]) != tiling.tile:
        raise InspectorError(
            f"--tile: detector '{config.detector}' returns a {list(anomaly_map.shape[-2:])} map for a "
            f"{list(tiling.tile)} tile; it cannot be tiled"
        )
    return tiling


def tile_for_export(
    detector: Detector,
    config: TrainConfig,
    overlap: float = DEFAULT_OVERLAP,
    log: Callable[[str], None] = print,
) -> tuple[Tiling, Calibration, TrainConfig]:
    """Prepare a tiled export: (tiling, calibration on tiled scores, config whose ``input_size`` is the tile).

    ``detector.input_size`` is set to the tile, so the scoring graph and the components are traced at one
    tile; the export goes on with the returned config and calibration and stores ``tiling.to_dict()`` as
    the metadata's ``tiling``.

    Raises:
        InspectorError: see :func:`tiling_for_run`; the run's data cannot be read or calibrated on.
    """
    from inspector.training.data import build_splits
    from inspector.training.evaluate import calibrate_on_validation

    tiling = tiling_for_run(detector, config, overlap)
    try:
        splits = build_splits(config)
    except InspectorError as error:
        raise InspectorError(
            f"--tile recalibrates on the run's validation images, which cannot be read ({error})"
        ) from None
    try:
        calibration, split, scored = calibrate_on_validation(
            TiledScoring(detector, tiling).eval(), config, splits, config.batch_size, scored="tiled"
        )
    except ValueError as error:
        split = "val" if splits.val else "train"
        raise InspectorError(f"--tile: cannot calibrate on the {split} split scored tiled: {error}") from None
    tiles = len(tiling.origins())
    log(
        f"tiled: {tiling.image_size[0]}x{tiling.image_size[1]} images in {tiles} tiles of "
        f"{tiling.tile[0]}x{tiling.tile[1]} (stride {tiling.stride[0]}x{tiling.stride[1]}); recalibrated on "
        f"{len(scored.labels)} {split} images scored tiled: image threshold {calibration.image_threshold:.4g}, "
        f"pixel threshold {calibration.pixel_threshold:.4g}"
    )
    detector.input_size = tiling.tile
    tiled_config = copy.deepcopy(config)
    tiled_config.input_size = list(tiling.tile)
    return tiling, calibration, tiled_config


def tiles_of(images: np.ndarray, tiling: Tiling, count: int) -> np.ndarray:
    """``count`` tiles ``[count, C, th, tw]`` spread evenly over all the tiles of ``images`` ``[N, C, H, W]``
    (at ``tiling.image_size``): the inputs a tiled graph sees, for its parity check and int8 calibration."""
    every = [tile for image in images for tile in tiling.cut(image)]
    if not every:
        return np.zeros((0, images.shape[1], *tiling.tile), dtype=np.float32)
    picks = sorted({int(index) for index in np.linspace(0, len(every) - 1, min(count, len(every)))})
    return np.stack([every[index] for index in picks])
