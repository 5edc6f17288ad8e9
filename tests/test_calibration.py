"""Calibrating thresholds on validation data: with anomalies (F1) and, the factory case, with normals only."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

import inspector.calibration as calibration_module
from inspector.calibration import Calibration, calibrate, f1_optimal_threshold, quantile_threshold
from inspector.metrics import f1_at_threshold
from inspector.normalization import normalize


def test_quantile_threshold_with_few_normals_is_never_below_their_maximum() -> None:
    normals = [0.3, 0.1, 0.4, 0.2]
    assert quantile_threshold(normals, 0.01) == 0.4
    assert quantile_threshold(normals, 0.0) == 0.4


@pytest.mark.parametrize("count, rate", [(199, 0.05), (1000, 0.01), (50, 0.1), (7, 0.5)])
def test_quantile_threshold_rejects_at_most_the_target_share_of_normals(count: int, rate: float) -> None:
    normals = np.random.default_rng(count).normal(size=count).astype(np.float32)
    threshold = quantile_threshold(normals, rate)

    assert threshold in normals  # an observed score: exactly representable, no interpolation
    assert np.count_nonzero(normals > threshold) <= rate * count
    # conformal rank ceil((n + 1)(1 - rate)): a new normal scores above it with probability <= rate
    rank = int(np.ceil((count + 1) * (1 - rate) - 1e-9))
    assert threshold == np.sort(normals)[min(rank, count) - 1]


def test_quantile_threshold_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="got none"):
        quantile_threshold([], 0.01)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        quantile_threshold([0.1], 1.5)


def test_f1_threshold_falls_between_separable_classes() -> None:
    normals = np.array([0.10, 0.20, 0.35], dtype=np.float32)
    anomalies = np.array([0.55, 0.90], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    threshold, best = f1_optimal_threshold(labels, np.concatenate([normals, anomalies]))

    assert best == 1.0
    assert normals.max() < threshold < anomalies.min()
    assert threshold == pytest.approx(0.45, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_f1_threshold_is_the_best_of_every_possible_cut(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(120) < 0.35).astype(int)
    scores = np.round(rng.normal(size=120) + labels, 1).astype(np.float32)  # ties within and across classes

    threshold, best = f1_optimal_threshold(labels, scores)

    best_by_sklearn = max(f1_score(labels, scores >= cut) for cut in np.unique(scores))
    assert best == pytest.approx(best_by_sklearn, abs=1e-12)
    assert f1_at_threshold(labels, scores, threshold) == pytest.approx(best, abs=1e-12)
    assert threshold not in scores  # no validation sample sits on the threshold: `>` and `>=` agree
    assert np.float32(threshold) == threshold  # representable in the scores' precision


def test_f1_threshold_on_adjacent_floats_still_flags_the_best_set() -> None:
    low = np.float32(1.0)
    high = np.nextafter(low, np.float32(2.0))
    threshold, best = f1_optimal_threshold([0, 1], np.array([low, high]))
    assert best == 1.0 and low < threshold <= high


def synthetic_validation(normal: int, anomalous: int, size: int = 16, seed: int = 0):
    """Image scores, labels, maps and masks where defects score clearly higher than the background."""
    rng = np.random.default_rng(seed)
    count = normal + anomalous
    labels = np.array([0] * normal + [1] * anomalous)
    masks = np.zeros((count, size, size), dtype=bool)
    for index in range(normal, count):
        top, left = rng.integers(0, size - 5, 2)
        masks[index, top : top + 4, left : left + 4] = True
    maps = (rng.random(masks.shape) * 0.3 + masks * 0.6).astype(np.float32)  # background < 0.3 < 0.6 < defect
    scores = maps.reshape(count, -1).max(axis=1)
    return scores, labels, maps, masks


def test_calibrating_with_anomalies_separates_images_and_pixels() -> None:
    scores, labels, maps, masks = synthetic_validation(normal=6, anomalous=4)

    calibration = calibrate(scores, labels, maps[:, None], masks[:, None], data={"split": "val"})

    assert calibration.method == "f1" and calibration.target is None
    assert calibration.data == {"split": "val", "normal": 6, "anomalous": 4}
    assert scores[labels == 0].max() < calibration.image_threshold < scores[labels == 1].min()
    assert maps[~masks].max() < calibration.pixel_threshold < maps[masks].min()
    assert (calibration.image_min, calibration.image_max) == (scores.min(), scores.max())
    assert (calibration.pixel_min, calibration.pixel_max) == (maps.min(), maps.max())

    # after normalisation the calibrated thresholds sit at 0.5 and the runtime's `> 0.5` splits the classes
    assert normalize(calibration.image_threshold, calibration.image_threshold, 0.0, 2.0) == 0.5
    normalized = calibration.normalize_image_scores(scores)
    assert calibration.normalize_image_scores(np.float32(calibration.image_threshold)) == 0.5
    np.testing.assert_array_equal(normalized > 0.5, labels == 1)
    np.testing.assert_array_equal(calibration.normalize_anomaly_maps(maps) > 0.5, masks)


def test_calibrating_with_normals_only_uses_the_false_reject_rate() -> None:
    scores, labels, maps, _ = synthetic_validation(normal=20, anomalous=0)

    calibration = calibrate(scores, labels, maps, false_reject_rate=0.01, pixel_false_positive_rate=0.001)

    assert calibration.method == "quantile" and calibration.target == 0.01
    assert (calibration.data["normal"], calibration.data["anomalous"]) == (20, 0)
    # 20 normals cannot resolve a 1% rate: no normal image may be rejected
    assert calibration.image_threshold == scores.max()
    assert np.count_nonzero(maps > calibration.pixel_threshold) <= 0.001 * maps.size
    assert calibration.pixel_threshold == quantile_threshold(maps, 0.001)
    assert (
        normalize(scores, calibration.image_threshold, calibration.image_min, calibration.image_max).max()
        == 0.5
    )


def test_f1_calibration_without_masks_falls_back_to_the_pixel_quantile() -> None:
    scores, labels, maps, _ = synthetic_validation(normal=5, anomalous=3)
    calibration = calibrate(scores, labels, maps, method="f1", pixel_false_positive_rate=0.01)
    assert calibration.method == "f1"
    assert calibration.data["pixel_method"] == "quantile"
    assert calibration.pixel_threshold == quantile_threshold(maps[labels == 0], 0.01)


def test_forced_quantile_calibration_uses_only_the_normal_images() -> None:
    scores, labels, maps, masks = synthetic_validation(normal=5, anomalous=3)
    calibration = calibrate(scores, labels, maps, masks, method="quantile", false_reject_rate=0.2)
    assert calibration.method == "quantile" and calibration.target == 0.2
    assert calibration.image_threshold == quantile_threshold(scores[:5], 0.2)
    assert calibration.pixel_threshold < 0.3  # defect pixels of anomalous images did not raise it


def test_large_pixel_sets_are_subsampled_reproducibly(monkeypatch: pytest.MonkeyPatch) -> None:
    scores, labels, maps, masks = synthetic_validation(normal=8, anomalous=8, size=32)
    monkeypatch.setattr(calibration_module, "F1_PIXEL_LIMIT", 2000)
    first = calibrate(scores, labels, maps, masks)
    second = calibrate(scores, labels, maps, masks)
    assert first.pixel_threshold == second.pixel_threshold
    assert 0.3 < first.pixel_threshold < 0.6  # still between background and defects


def test_calibration_rejects_unusable_input() -> None:
    scores, labels, maps, masks = synthetic_validation(normal=3, anomalous=0)
    with pytest.raises(ValueError, match="no image scores"):
        calibrate([], [], np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="anomalous validation images"):
        calibrate(scores, labels, maps, method="f1")
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrate(scores, labels, maps, method="best")
    with pytest.raises(ValueError, match="N = 3 images"):
        calibrate(scores, labels, maps[:2])
    with pytest.raises(ValueError, match="do not match"):
        calibrate(scores, labels, maps, masks[:, :8])
    with pytest.raises(ValueError, match="3 image scores but 2 labels"):
        calibrate(scores, labels[:2], maps)


def test_calibration_survives_a_save_and_load(tmp_path) -> None:
    scores, labels, maps, masks = synthetic_validation(normal=4, anomalous=2)
    calibration = calibrate(scores, labels, maps, masks, data={"split": "val"})
    path = tmp_path / "calibration.json"

    calibration.save(path)
    loaded = Calibration.load(path)

    assert loaded == calibration
    np.testing.assert_array_equal(
        loaded.normalize_anomaly_maps(maps), calibration.normalize_anomaly_maps(maps)
    )


def test_calibration_says_when_too_few_normals_cannot_promise_the_target_rate():
    rng = np.random.default_rng(0)
    few = calibrate(rng.random(20), np.zeros(20), rng.random((20, 4, 4)), false_reject_rate=0.01)
    assert few.data["promised_false_reject_rate"] == pytest.approx(1 / 21)
    assert "20 normal calibration images cannot resolve a 1.00% false-reject rate" in few.data["warning"]
    assert "99 or more" in few.data["warning"]
    enough = calibrate(rng.random(120), np.zeros(120), rng.random((120, 4, 4)), false_reject_rate=0.01)
    assert enough.data["promised_false_reject_rate"] == 0.01 and "warning" not in enough.data
