"""Defect regions and overlay colours, checked against plain whole-image computations."""

from __future__ import annotations

import cv2
import numpy as np

from runtime.overlay import COLORMAP, MAX_ALPHA, render_overlay
from runtime.scoring import Inspection, RegionGrid


def two_blob_map() -> np.ndarray:
    anomaly_map = np.full((40, 60), 0.1, np.float32)
    anomaly_map[5:12, 8:20] = 0.7
    anomaly_map[7, 10] = 0.95  # the first blob's peak
    anomaly_map[25:35, 40:55] = 0.8
    anomaly_map[30, 50] = 0.9
    return anomaly_map


def test_regions_match_a_whole_grid_labelling_with_boxes_areas_and_peaks_in_original_pixels():
    anomaly_map = two_blob_map()
    grid = RegionGrid.build(anomaly_map, (80, 120), pixel_threshold=0.5)

    regions = grid.regions()

    count, labels, stats, _ = cv2.connectedComponentsWithStats(grid.mask.astype(np.uint8), connectivity=8)
    expected = []
    for index in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[index])
        expected.append((x, y, w, h, area, float(grid.anomaly_map[labels == index].max())))
    expected.sort(key=lambda row: row[4], reverse=True)
    assert len(regions) == 2
    for region, (x, y, w, h, area, peak) in zip(regions, expected):
        assert (region.x, region.y, region.width, region.height, region.area) == (x, y, w, h, area)
        assert region.peak == np.float32(peak)


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
