"""Metrics a user reads after `inspector eval`: checked against scikit-learn and against values worked by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as sk

from inspector.metrics import (
    aupro,
    average_precision,
    f1_at_threshold,
    fpr_at_tpr,
    image_metrics,
    pixel_metrics,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)


def tied_scores(seed: int, count: int = 300, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores that overlap between classes, rounded so many scores tie within and across classes."""
    rng = np.random.default_rng(seed)
    labels = rng.random(count) < 0.3
    scores = np.round(rng.normal(size=count) + labels * 1.0, 1).astype(dtype)
    return labels.astype(int), scores


@pytest.mark.parametrize("seed", range(5))
def test_ranking_metrics_match_scikit_learn_with_ties(seed: int) -> None:
    labels, scores = tied_scores(seed, dtype=np.float32 if seed % 2 else np.float64)

    assert roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        sk.average_precision_score(labels, scores), abs=1e-12
    )

    fpr, tpr, thresholds = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thresholds = sk.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thresholds, sk_thresholds)

    precision, recall, pr_thresholds = precision_recall_curve(labels, scores)
    sk_precision, sk_recall, sk_pr_thresholds = sk.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(precision, sk_precision)
    np.testing.assert_allclose(recall, sk_recall)
    np.testing.assert_array_equal(pr_thresholds, sk_pr_thresholds)

    for threshold in (-0.5, 0.0, 0.5, 1.2):
        expected = sk.f1_score(labels, scores > np.float64(threshold), zero_division=0.0)
        assert f1_at_threshold(labels, scores, threshold) == pytest.approx(expected, abs=1e-12)

    # the lowest FPR whose TPR reaches 95%, read off scikit-learn's full curve
    expected_fpr = sk_fpr[np.argmax(sk_tpr >= 0.95)]
    assert fpr_at_tpr(labels, scores, 0.95) == pytest.approx(expected_fpr, abs=1e-12)


def test_separation_gives_the_extreme_values() -> None:
    labels = [0, 0, 0, 1, 1]
    perfect = [0.1, 0.2, 0.3, 0.7, 0.9]
    assert roc_auc(labels, perfect) == 1.0
    assert average_precision(labels, perfect) == 1.0
    assert fpr_at_tpr(labels, perfect) == 0.0
    reversed_scores = [-s for s in perfect]
    assert roc_auc(labels, reversed_scores) == 0.0
    assert fpr_at_tpr(labels, reversed_scores, tpr=1.0) == 1.0
    # every score tied: the ROC is the diagonal and precision is the anomaly rate
    assert roc_auc(labels, [0.5] * 5) == 0.5
    assert average_precision(labels, [0.5] * 5) == pytest.approx(0.4)


def test_undefined_metrics_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="both normal and anomalous"):
        roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="anomalous sample"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        roc_auc([0, 2], [0.1, 0.2])


def two_regions() -> np.ndarray:
    """One 8x8 image with a 2x2 defect (4 pixels) and a separate 2x4 defect (8 pixels); 52 normal pixels."""
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[0, 1:3, 1:3] = True
    mask[0, 5:7, 2:6] = True
    return mask


def test_aupro_of_a_map_covering_one_region_and_half_of_the_other() -> None:
    masks = two_regions()
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 1:3, 1:3] = 1.0  # all of the small region
    maps[0, 5:7, 2:4] = 1.0  # half of the large one
    # By hand: at threshold 1 PRO = (1 + 1/2) / 2 = 0.75 with no false positive; at 0 everything is flagged.
    # The curve (0, 0) -> (0, 0.75) -> (1, 1) reaches 0.825 at FPR 0.3: area 0.3 * (0.75 + 0.825) / 2.
    assert aupro(masks, maps) == pytest.approx(0.3 * (0.75 + 0.825) / 2 / 0.3)

    # Raising the rest of the large region and 13 of the 52 normal pixels to 0.5 adds the point (0.25, 1):
    # area 0.25 * (0.75 + 1) / 2 + 0.05 * 1 over 0.3.
    maps[0, 5:7, 4:6] = 0.5
    normal = np.flatnonzero(~masks.reshape(-1))[:13]
    maps.reshape(-1)[normal] = 0.5
    assert aupro(masks, maps) == pytest.approx((0.25 * 1.75 / 2 + 0.05) / 0.3)


def test_aupro_joins_diagonal_neighbours_into_one_region() -> None:
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 1:3, 1:3] = True  # 4 pixels
    masks[0, 3:6, 3:6] = True  # 9 pixels touching the first only at a corner
    maps = masks * 0.0
    maps[0, 1:3, 1:3] = 1.0
    # 8-connectivity: one region of 13 pixels, 4 found -> PRO 4/13 (4-connectivity would give 1/2)
    pro = 4 / 13
    assert aupro(masks, maps) == pytest.approx(pro + 0.15 * (1 - pro))


def brute_force_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO the slow, obvious way: label regions with scipy, loop over every distinct threshold."""
    eight = np.ones((3, 3), dtype=int)
    regions = []
    for mask, anomaly_map in zip(masks, maps):
        labelled, count = ndimage.label(mask, structure=eight)
        regions += [(anomaly_map, labelled == index) for index in range(1, count + 1)]
    normal_values = maps[~masks]
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        pro = np.mean([np.mean(anomaly_map[region] >= threshold) for anomaly_map, region in regions])
        points.append((np.mean(normal_values >= threshold), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def blob_masks(seed: int, count: int = 4, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, size, size), dtype=bool)
    for index in range(count - 1):  # the last image stays defect-free
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 6, 2)
            masks[index, top : top + rng.integers(1, 7), left : left + rng.integers(1, 7)] = True
    return masks


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_a_brute_force_computation(seed: int) -> None:
    masks = blob_masks(seed)
    rng = np.random.default_rng(seed)
    levels = np.linspace(0.0, 1.0, 20, dtype=np.float32)
    # a noisy map quantised to 20 levels: many ties within and across defects and background
    noisy = rng.normal(size=masks.shape) * 0.25 + masks * 0.5 + 0.25
    maps = levels[np.clip(np.round(noisy * 19), 0, 19).astype(int)]

    expected = brute_force_aupro(masks, maps)
    assert aupro(masks, maps) == pytest.approx(expected, abs=1e-9)
    # the maps already sit on a 20-level grid, so evaluating 20 evenly spaced thresholds is exact too
    assert aupro(masks, maps, num_thresholds=20) == pytest.approx(expected, abs=1e-9)
    assert aupro(masks, maps, num_thresholds=5) == pytest.approx(expected, abs=0.1)
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(brute_force_aupro(masks, maps, 1.0), abs=1e-9)


def test_pixel_metrics_agree_with_scikit_learn_and_aupro() -> None:
    masks = blob_masks(7, count=6, size=32)
    rng = np.random.default_rng(7)
    maps = np.round(rng.random(masks.shape) + masks * 0.6, 2).astype(np.float32)[:, None]  # [N, 1, H, W]

    results = pixel_metrics(masks[:, None], maps, threshold=0.8)

    pixels, values = masks.reshape(-1), maps.reshape(-1)
    assert set(results) == {"pixel_auroc", "pixel_ap", "aupro", "pixel_f1"}
    assert results["pixel_auroc"] == pytest.approx(sk.roc_auc_score(pixels, values), abs=1e-12)
    assert results["pixel_ap"] == pytest.approx(sk.average_precision_score(pixels, values), abs=1e-12)
    assert results["pixel_f1"] == pytest.approx(sk.f1_score(pixels, values > np.float64(0.8)), abs=1e-12)
    assert results["aupro"] == pytest.approx(aupro(masks, maps[:, 0]), abs=1e-12)
    assert "pixel_f1" not in pixel_metrics(masks, maps[:, 0])


def test_pixel_metrics_need_defects_and_matching_shapes() -> None:
    empty = np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="both normal and anomalous"):
        pixel_metrics(empty, np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="same size"):
        pixel_metrics(two_regions(), np.zeros((1, 8, 9)))
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1"):
        aupro(two_regions().astype(np.uint8) * 255, np.zeros((1, 8, 8)))


def test_image_metrics_report_the_metrics_json_keys() -> None:
    labels, scores = tied_scores(11, count=100)
    results = image_metrics(labels, scores)
    assert set(results) == {"image_auroc", "image_ap", "fpr_at_95_tpr"}
    assert results["image_auroc"] == pytest.approx(sk.roc_auc_score(labels, scores))
    with_threshold = image_metrics(labels, scores, threshold=0.5)
    assert with_threshold["image_f1"] == pytest.approx(sk.f1_score(labels, scores > 0.5))
