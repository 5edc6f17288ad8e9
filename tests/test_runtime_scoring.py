"""Defect regions and overlay colours, checked against plain whole-image computations."""

from __future__ import annotations

import cv2
import numpy as np

from inspector.runtime.overlay import COLORMAP, MAX_ALPHA, render_overlay
from inspector.runtime.scoring import Inspection, RegionGrid


def two_blob_map() -> np.ndarray:
    anomaly_map = np.full((40, 60), 0.1, np.float32)
    anomaly_map[5:12, 8:20] = 0.7
    anomaly_map[7, 10] = 0.95  # the first blob's peak
    anomaly_map[25:35, 40:55] = 0.8
    anomaly_map[30, 50] = 0.9
    return anomaly_map


def noisy_map(seed: int) -> np.ndarray:
    """A blurred random map: dozens of irregular blobs above 0.5."""
    noise = np.random.default_rng(seed).random((48, 64)).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), 1.2)
    return (blurred - blurred.min()) / (blurred.max() - blurred.min())


def whole_grid_regions(grid: RegionGrid) -> list[tuple[int, int, int, int, int, float]]:
    """Regions (x, y, w, h, area, peak) by OpenCV's default labelling of the whole grid."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(grid.mask.astype(np.uint8), connectivity=8)
    expected = []
    for index in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[index])
        expected.append((x, y, w, h, area, float(grid.anomaly_map[labels == index].max())))
    return expected


def assert_same_regions(regions, expected) -> None:
    assert len(regions) == len(expected)
    # Equal areas may come in either order: compare as sorted sets of rows.
    found = sorted((r.x, r.y, r.width, r.height, r.area, r.peak) for r in regions)
    for row, (x, y, w, h, area, peak) in zip(found, sorted(expected)):
        assert row[:5] == (x, y, w, h, area)
        assert row[5] == np.float32(peak)
    assert [r.area for r in regions] == sorted((r.area for r in regions), reverse=True)


def test_regions_match_a_whole_grid_labelling_with_boxes_areas_and_peaks_in_original_pixels():
    grid = RegionGrid.build(two_blob_map(), (80, 120), pixel_threshold=0.5)

    regions = grid.regions()

    assert len(regions) == 2
    assert_same_regions(regions, whole_grid_regions(grid))


def test_regions_of_a_noisy_map_match_the_default_labelling_component_for_component():
    for seed in range(3):
        grid = RegionGrid.build(noisy_map(seed), (48, 64), pixel_threshold=0.5)

        regions = grid.regions()

        assert len(regions) >= 10
        assert_same_regions(regions, whole_grid_regions(grid))


def test_overlay_colours_hot_pixels_with_the_colormap_and_leaves_cold_ones_untouched():
    anomaly_map = two_blob_map()
    grid = RegionGrid.build(anomaly_map, (40, 60), pixel_threshold=0.5)
    inspection = Inspection(
        score=0.8,
        raw_score=1.0,
        anomalous=True,
        anomaly_map=anomaly_map,
        image_size=(40, 60),
        pixel_threshold=0.5,
        defect_regions=grid.regions(),
        grid=grid,
    )
    image = np.full((40, 60, 3), 120, np.uint8)

    overlay = render_overlay(image, inspection).astype(int)

    hot = cv2.applyColorMap(np.uint8([[round(0.8 * 255)]]), COLORMAP)[0, 0].astype(int)
    expected = np.round((1 - MAX_ALPHA) * 120 + MAX_ALPHA * hot)
    assert np.abs(overlay[30, 45] - expected).max() <= 1  # inside the second blob, away from its contour
    assert (overlay[20, 30] == 120).all()  # a cold pixel keeps the image's own value
