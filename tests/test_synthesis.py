"""The built-in dataset generator, anomaly sources, Perlin masks and DRAEM anomaly synthesis."""

from __future__ import annotations

import functools
import logging
import pickle

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from inspector.config import load_config
from inspector.errors import InspectorError
from inspector.preprocess import read_image
from inspector.training.data import synthetic
from inspector.training.data.anomaly_source import (
    AnomalySource,
    anomaly_source_from_config,
    generated_textures,
)
from inspector.training.data.dataset import ImageDataset
from inspector.training.data.perlin import perlin_mask, perlin_noise
from inspector.training.data.procedural import to_uint8
from inspector.training.data.samples import Sample
from inspector.training.data.synthesis import SyntheticAnomalyDataset
from inspector.training.data.synthetic import (
    CATEGORIES,
    DEFECT_KINDS,
    add_defect,
    build_synthetic_splits,
    generate_dataset,
    render_surface,
)

TINY = {"image_size": 48, "train_count": 3, "test_good": 2, "test_defect_per_kind": 1}

# --- the built-in dataset -------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_defects_change_pixels_exactly_inside_their_masks(category):
    for number, kind in enumerate(DEFECT_KINDS):
        rng = np.random.default_rng([1, number])
        clean = render_surface(category, 64, rng)
        defective, mask = add_defect(clean, kind, rng)
        changed = np.any(to_uint8(defective) != to_uint8(clean), axis=2)
        assert mask.dtype == bool and mask.any(), kind
        assert not changed[~mask].any(), f"{category}/{kind}: pixels changed outside the mask"
        assert changed[mask].mean() > 0.95, f"{category}/{kind}: mask covers unchanged pixels"


def test_normal_images_vary_but_stay_the_same_surface():
    first, second = (render_surface("wood", 64, np.random.default_rng(i)) for i in range(2))
    assert np.abs(first - second).mean() > 0.02
    assert abs(first.mean() - second.mean()) < 0.1


def test_generated_dataset_has_the_mvtec_layout_and_exact_binary_masks(tmp_path):
    root = generate_dataset(tmp_path / "data", categories=["fabric", "metal"], **TINY)
    for category in ("fabric", "metal"):
        base = root / category
        assert len(list((base / "train" / "good").glob("*.png"))) == 3
        assert len(list((base / "test" / "good").glob("*.png"))) == 2
        for kind in DEFECT_KINDS:
            (image,) = (base / "test" / kind).glob("*.png")
            mask = cv2.imread(
                str(base / "ground_truth" / kind / f"{image.stem}_mask.png"), cv2.IMREAD_UNCHANGED
            )
            assert mask.shape == (48, 48) and set(np.unique(mask)) == {0, 255}
    metal = cv2.imread(str(root / "metal" / "train" / "good" / "000.png"), cv2.IMREAD_UNCHANGED)
    fabric = cv2.imread(str(root / "fabric" / "train" / "good" / "000.png"), cv2.IMREAD_UNCHANGED)
    assert metal.shape == (48, 48) and fabric.shape == (48, 48, 3)  # metal is a grayscale category


def test_generation_is_deterministic_by_seed(tmp_path):
    picks = ("train/good/002.png", "test/crack/000.png", "ground_truth/crack/000_mask.png")
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        root = generate_dataset(tmp_path / name, categories=["granite"], seed=seed, **TINY)
        runs[name] = [(root / "granite" / pick).read_bytes() for pick in picks]
    assert runs["a"] == runs["b"]
    assert all(x != y for x, y in zip(runs["a"], runs["c"]))


def test_synthetic_splits_generate_only_when_missing(tmp_path, monkeypatch):
    calls = []

    def small_generator(root, categories):
        calls.append(list(categories))
        return generate_dataset(root, categories=categories, **TINY)

    monkeypatch.setattr(synthetic, "generate_dataset", small_generator)
    config = load_config(None, {"data.root": str(tmp_path / "builtin"), "data.category": "wood"})
    splits = build_synthetic_splits(config)
    again = build_synthetic_splits(config)
    assert calls == [["wood"]]
    assert len(splits.train) + len(splits.val) == 3 and len(splits.test) == 2 + len(DEFECT_KINDS)
    assert [s.name for s in again.test] == [s.name for s in splits.test]
    assert splits.description == {
        "dataset": "synthetic",
        "category": "wood",
        "root": str(tmp_path / "builtin"),
    }
    assert read_image(splits.test[0].image).shape == (48, 48, 3)


def test_synthetic_splits_reject_unknown_category(tmp_path):
    config = load_config(None, {"data.root": str(tmp_path), "data.category": "cable"})
    with pytest.raises(InspectorError, match="no category 'cable'; choose one of fabric"):
        build_synthetic_splits(config)


def test_generator_never_overwrites_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "fabric" / "train").mkdir(parents=True)
    with pytest.raises(InspectorError, match="was not made by the generator"):
        generate_dataset(tmp_path, categories=["fabric"], **TINY)


# --- anomaly sources ------------------------------------------------------------------------------


def test_anomaly_source_reads_a_dtd_tree(tmp_path):
    for texture_class, colour in (("banded", 40), ("dotted", 200)):
        for i in range(2):
            path = tmp_path / "dtd" / "images" / texture_class / f"{texture_class}_{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.full((40, 60, 3), colour + i, np.uint8))
    (tmp_path / "dtd" / "labels.txt").write_text("not an image")
    source = AnomalySource(tmp_path / "dtd")
    assert len(source) == 4
    rng = np.random.default_rng(0)
    samples = [source.sample(rng, (24, 32)) for _ in range(20)]
    assert all(s.shape == (24, 32, 3) and s.dtype == np.uint8 for s in samples)
    assert len({int(s.mean()) for s in samples}) > 1


def test_anomaly_source_folder_errors(tmp_path):
    with pytest.raises(InspectorError, match="missing is not a folder"):
        AnomalySource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InspectorError, match="empty holds no images"):
        AnomalySource(tmp_path / "empty")


def test_without_anomaly_source_textures_are_generated_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr("inspector.training.data.anomaly_source.GENERATED_TEXTURE_COUNT", 3)
    with caplog.at_level(logging.WARNING):
        source = anomaly_source_from_config(load_config(None, {}))
    assert len(source) == 3
    assert "generated textures" in caplog.text and "--anomaly-source" in caplog.text and "DTD" in caplog.text


def test_generated_textures_are_varied_and_deterministic():
    first, again = generated_textures(6, 32, seed=0), generated_textures(6, 32, seed=0)
    assert all(t.shape == (32, 32, 3) and t.dtype == np.uint8 for t in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len({t.tobytes() for t in first}) == 6
    assert all(t.std() > 5 for t in first)


# --- Perlin masks ---------------------------------------------------------------------------------


def test_perlin_noise_scales_set_feature_size_per_axis():
    noise = perlin_noise((64, 64), 1, 32, np.random.default_rng(0))
    assert noise.shape == (64, 64) and np.abs(noise).max() <= 1.0
    along_x = np.abs(np.diff(noise, axis=1)).mean()
    along_y = np.abs(np.diff(noise, axis=0)).mean()
    assert along_x > 8 * along_y


def test_perlin_masks_are_binary_with_both_values_over_draws():
    rng = np.random.default_rng(0)
    masks = [perlin_mask((64, 64), rng) for _ in range(30)]
    assert all(m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    coverage = np.array([m.mean() for m in masks])
    assert (coverage > 0).sum() > 20 and coverage.max() < 0.5


def _regions(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8))[0] - 1


def test_perlin_mask_scales_vary_between_draws():
    rng = np.random.default_rng(0)
    coarse = [_regions(perlin_mask((64, 64), rng, 0, 1)) for _ in range(20)]
    fine = [_regions(perlin_mask((64, 64), rng, 5, 6)) for _ in range(20)]
    mixed = [_regions(perlin_mask((64, 64), rng)) for _ in range(40)]
    assert max(coarse) <= 2 and min(fine) > 20
    assert min(mixed) <= 2 and max(mixed) > 20


def _orientation(mask: np.ndarray) -> tuple[float, float]:
    """Dominant orientation of the mask's edges (structure tensor) and how strongly oriented it is."""
    gy, gx = np.gradient(cv2.GaussianBlur(mask, (0, 0), 2))
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    coherence = np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy + 1e-9)
    return 0.5 * np.arctan2(2 * jxy, jxx - jyy), coherence


@pytest.mark.parametrize(("max_rotation", "diagonal"), [(0.0, False), (90.0, True)])
def test_perlin_masks_are_rotated(max_rotation, diagonal):
    # Unrotated, elongated masks (different x and y scales) line up with the axes; rotated ones do not.
    rng = np.random.default_rng(1)
    tilt = []
    for _ in range(60):
        angle, coherence = _orientation(perlin_mask((64, 64), rng, max_rotation=max_rotation))
        if coherence > 0.5:
            tilt.append(abs(np.sin(2 * angle)))
    assert len(tilt) >= 8
    assert (np.mean(tilt) > 0.4) == diagonal


# --- anomaly synthesis ----------------------------------------------------------------------------


def _base(count: int = 16, size: int = 32, same_image: bool = False) -> ImageDataset:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(count)]
    if same_image:
        images = [images[0]] * count
    return ImageDataset([Sample(image, 0, None, f"n{i}") for i, image in enumerate(images)], (size, size), 3)


@functools.cache
def _textures() -> AnomalySource:
    return AnomalySource.from_images(generated_textures(4, 32, seed=0))


def test_half_the_samples_stay_clean_and_anomalies_follow_their_masks():
    dataset = SyntheticAnomalyDataset(_base(40), _textures(), seed=0, rotate_probability=0.0)
    items = [dataset[i] for i in range(40)]
    anomalous = [item for item in items if item["has_anomaly"] == 1]
    assert 10 <= len(anomalous) <= 30
    for item in items:
        assert item["image"].shape == item["augmented"].shape == (3, 32, 32)
        assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        outside = item["mask"].expand(3, -1, -1) == 0
        assert torch.equal(item["augmented"][outside], item["image"][outside])
        assert float(item["has_anomaly"]) == float(item["mask"].any())
        assert torch.equal(item["image"], _base(40)[item["index"]]["image"])  # no rotation: the normal image
    assert all((item["augmented"] != item["image"]).any() for item in anomalous)


def test_blend_inside_the_mask_is_beta_mix_of_texture_and_image():
    # A one-colour texture stays one colour through every augmentation, so inside the mask
    # x_aug = (1 - beta) A + beta x is a line in x with the same slope beta in every channel.
    source = AnomalySource.from_images([np.full((8, 8, 3), (200, 60, 120), np.uint8)])
    dataset = SyntheticAnomalyDataset(
        _base(), source, seed=0, anomaly_probability=1.0, rotate_probability=0.0
    )
    betas = []
    for index in range(8):
        item = dataset[index]
        inside = item["mask"][0] == 1
        slopes = []
        for channel in range(3):
            x = item["image"][channel][inside].double().numpy()
            y = item["augmented"][channel][inside].double().numpy()
            slope, intercept = np.polyfit(x, y, 1)
            assert np.abs(slope * x + intercept - y).max() < 1e-5
            assert 0.0 <= intercept / (1 - slope) <= 1.0  # the texture colour
            slopes.append(slope)
        assert np.ptp(slopes) < 1e-4 and -1e-6 <= slopes[0] <= 0.8
        betas.append(slopes[0])
    assert np.ptp(betas) > 0.2  # beta is drawn per item


def test_items_are_reproducible_and_differ_by_index_epoch_and_seed():
    base = _base(8, same_image=True)  # identical images: only the random streams can tell items apart
    dataset = SyntheticAnomalyDataset(base, _textures(), seed=3, anomaly_probability=1.0)
    again = SyntheticAnomalyDataset(base, _textures(), seed=3, anomaly_probability=1.0)
    first = [dataset[i]["augmented"] for i in range(8)]
    assert all(torch.equal(a, again[i]["augmented"]) for i, a in enumerate(first))
    assert len({a.numpy().tobytes() for a in first}) == 8

    dataset.set_epoch(1)
    assert not any(torch.equal(first[i], dataset[i]["augmented"]) for i in range(8))
    other_seed = SyntheticAnomalyDataset(base, _textures(), seed=4, anomaly_probability=1.0)
    assert not any(torch.equal(first[i], other_seed[i]["augmented"]) for i in range(8))


def test_data_loader_workers_give_the_same_items_as_one_process():
    dataset = SyntheticAnomalyDataset(_base(8, same_image=True), _textures(), seed=0, anomaly_probability=1.0)
    dataset.set_epoch(2)
    single = [dataset[i] for i in range(8)]
    # Spawned, not forked: a fork of the test process (with the threads earlier tests left, onnxruntime's
    # among them) once hung both workers on a lock no thread of theirs held.
    batches = list(DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="spawn"))
    masks = torch.cat([batch["mask"] for batch in batches])
    assert torch.equal(masks, torch.stack([item["mask"] for item in single]))
    assert len({mask.numpy().tobytes() for mask in masks}) == 8  # workers do not repeat each other's masks
    assert batches[0]["has_anomaly"].shape == (2,)


def test_dataset_pickles_for_spawned_workers():
    dataset = SyntheticAnomalyDataset(_base(4), _textures(), seed=0, anomaly_probability=1.0)
    copy = pickle.loads(pickle.dumps(dataset))
    assert all(torch.equal(dataset[i]["augmented"], copy[i]["augmented"]) for i in range(4))


def test_gray_models_get_gray_items_matching_the_shared_preprocessing():
    rgb = _base(6)
    gray = ImageDataset(rgb.samples, rgb.input_size, channels=1)
    dataset = SyntheticAnomalyDataset(
        gray, _textures(), seed=0, rotate_probability=0.0, anomaly_probability=1.0
    )
    for index in range(6):
        item = dataset[index]
        assert item["image"].shape == item["augmented"].shape == (1, 32, 32)
        assert torch.equal(item["image"], gray[index]["image"])
        outside = item["mask"] == 0
        assert torch.equal(item["augmented"][outside], item["image"][outside])


def test_rotation_rotates_the_target_too():
    dataset = SyntheticAnomalyDataset(
        _base(4), _textures(), seed=0, rotate_probability=1.0, anomaly_probability=0.0
    )
    for index in range(4):
        item = dataset[index]
        assert not torch.equal(item["image"], _base(4)[index]["image"])
        assert torch.equal(item["augmented"], item["image"]) and item["has_anomaly"] == 0


def test_line_anomalies_are_thin_curve_segments():
    from inspector.training.data.perlin import perlin_line_mask

    rng = np.random.default_rng(0)
    masks = [perlin_line_mask((96, 96), rng, max_width=4) for _ in range(20)]
    assert sum(mask.any() for mask in masks) >= 15
    drawn = np.stack(masks).astype(np.uint8)
    assert set(np.unique(drawn)) <= {0, 1}
    # Thin: eroding by a 5x5 square leaves (almost) nothing of curves at most 4 pixels wide (crossings aside).
    left = sum(int(cv2.erode(mask, np.ones((5, 5), np.uint8)).sum()) for mask in drawn)
    assert left < 0.02 * drawn.sum()


def test_shade_anomalies_change_the_surface_smoothly_inside_their_masks():
    dataset = SyntheticAnomalyDataset(
        _base(12), _textures(), seed=0, anomaly_probability=1.0, rotate_probability=0.0, shade_probability=1.0
    )
    shifts = []
    for index in range(12):
        item = dataset[index]
        if item["has_anomaly"] == 0:  # an empty Perlin draw
            continue
        mask = item["mask"][0].numpy().astype(np.uint8)
        change = (item["augmented"] - item["image"]).abs().mean(dim=0).numpy()
        # The feathered edge reaches at most 6 pixels past the mask.
        far = cv2.dilate(mask, np.ones((15, 15), np.uint8)) == 0
        assert change[far].max() < 1e-6
        inside = mask == 1
        assert change[inside].mean() > 0.01
        shifts.append(float((item["augmented"] - item["image"])[:, inside].mean()))
    assert len(shifts) >= 8
    assert min(shifts) < 0 < max(shifts)  # darker and lighter shades both drawn


def test_shade_share_is_validated():
    with pytest.raises(InspectorError, match="shade_anomaly_probability"):
        load_config("rdna_cpu", overrides={"data.shade_anomaly_probability": 1.5})
