"""The real-texture benchmark generator, GIMP patterns and .pat anomaly sources, on small stand-in textures
(the Debian packages are not needed: a tree laid out like theirs is written into a temporary folder)."""

from __future__ import annotations

import itertools
import json
import math

import cv2
import numpy as np
import pytest

from inspector.errors import InspectorError
from inspector.training.data import real_textures as rt
from inspector.training.data.anomaly_source import AnomalySource
from inspector.training.data.defects import (
    CONTRASTS,
    DEFECT_KINDS,
    DEFECTS,
    MAX_FRINGE_AT_256,
    SIZES,
    add_defect,
)
from inspector.training.data.gimp_pattern import encode_gimp_pattern, read_gimp_pattern
from inspector.training.data.procedural import to_uint8

SIZE = 64
#: One gray and one colour category (plaster from a gray PNG, marble from an RGB .pat).
TWO = ["plaster", "marble"]
TINY = {"size": SIZE, "train_count": 3, "test_good_count": 2, "defects_per_kind": 9}


def _texture(rng: np.random.Generator, side: int, channels: int) -> np.ndarray:
    noise = np.tile(rng.random((side, side, channels), dtype=np.float32), (3, 3, 1))
    smooth = cv2.GaussianBlur(noise, (0, 0), 1.5).reshape(3 * side, 3 * side, channels)[
        side:-side, side:-side
    ]
    return to_uint8(0.5 + 2.5 * (smooth - smooth.mean()))  # seamless, like the real patterns


@pytest.fixture(scope="module")
def texture_root(tmp_path_factory):
    """A folder laid out like the unpacked packages: every category file and a few anomaly textures."""
    root = tmp_path_factory.mktemp("texture-packages")
    rng = np.random.default_rng(0)
    names = [name for category in rt.CATEGORIES for name in category.files] + list(rt.ANOMALY_TEXTURES[::12])
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pat":
            path.write_bytes(encode_gimp_pattern(_texture(rng, 40, 3)))
        else:  # Krita's PNG textures are gray
            cv2.imwrite(str(path), _texture(rng, 48, 1))
    return root


@pytest.fixture(scope="module")
def dataset(texture_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("realtex")
    rt.generate_real_texture_dataset(texture_root, out, categories=TWO, seed=3, **TINY)
    return out


# --- GIMP patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_gimp_patterns_of_every_depth_read_as_rgb(tmp_path, channels):
    pixels = np.random.default_rng(channels).integers(0, 256, (5, 7, channels), dtype=np.uint8)
    if channels in (2, 4):
        pixels[0, 0, -1], pixels[0, 1, -1] = 0, 255  # transparent, opaque
    path = tmp_path / "p.pat"
    path.write_bytes(encode_gimp_pattern(pixels, name="test pattern"))
    image = read_gimp_pattern(path)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    colour = pixels[:, :, :3] if channels >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2)
    if channels in (1, 3):
        np.testing.assert_array_equal(image, colour)
    else:
        np.testing.assert_array_equal(image[0, 0], [255, 255, 255])  # composited on white
        np.testing.assert_array_equal(image[0, 1], colour[0, 1])


def test_bad_gimp_patterns_give_clear_errors(tmp_path):
    data = encode_gimp_pattern(np.zeros((8, 8, 3), np.uint8))
    truncated = tmp_path / "truncated.pat"
    truncated.write_bytes(data[:-10])
    with pytest.raises(InspectorError, match="truncated"):
        read_gimp_pattern(truncated)
    short = tmp_path / "short.pat"
    short.write_bytes(data[:10])
    with pytest.raises(InspectorError, match="too short"):
        read_gimp_pattern(short)
    not_pattern = tmp_path / "png.pat"
    not_pattern.write_bytes(data[:20] + b"XXXX" + data[24:])
    with pytest.raises(InspectorError, match="GPAT"):
        read_gimp_pattern(not_pattern)
    with pytest.raises(InspectorError, match="cannot be read"):
        read_gimp_pattern(tmp_path / "missing.pat")


def test_anomaly_source_reads_gimp_patterns(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.pat").write_bytes(encode_gimp_pattern(np.full((6, 9), 77, np.uint8)))
    cv2.imwrite(str(tmp_path / "b.png"), np.zeros((5, 5, 3), np.uint8))
    source = AnomalySource(tmp_path)
    assert len(source) == 2
    pattern = next(image for image in map(source.load, range(2)) if image.shape == (6, 9, 3))
    assert (pattern == 77).all()
    assert source.sample(np.random.default_rng(0), (16, 16)).shape == (16, 16, 3)


# --- the dataset ----------------------------------------------------------------------------------


def test_catalogue_has_dev_and_reported_categories_and_a_disjoint_anomaly_source():
    names = [category.name for category in rt.CATEGORIES]
    assert len(set(names)) == len(names) >= 8
    assert sum(category.dev for category in rt.CATEGORIES) == 2
    assert sum(not category.dev for category in rt.CATEGORIES) >= 6
    category_files = {name for category in rt.CATEGORIES for name in category.files}
    assert not category_files & set(rt.ANOMALY_TEXTURES)
    assert len(set(rt.ANOMALY_TEXTURES)) == len(rt.ANOMALY_TEXTURES)


def test_dataset_has_the_mvtec_layout_binary_masks_and_balanced_strata(dataset):
    for name in TWO:
        base = dataset / name
        assert len(list((base / "train" / "good").glob("*.png"))) == 3
        assert len(list((base / "test" / "good").glob("*.png"))) == 2
        marker = json.loads((base / rt.MARKER).read_text())
        assert marker["category"] == name and marker["dev"] is rt.category_by_name(name).dev
        records = json.loads((base / rt.DEFECTS_FILE).read_text())
        assert len(records) == 9 * len(DEFECT_KINDS)
        gray = rt.category_by_name(name).gray
        for kind in DEFECT_KINDS:
            images = sorted((base / "test" / kind).glob("*.png"))
            assert len(images) == 9
            pairs = []
            for image_path in images:
                image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
                assert image.shape == ((SIZE, SIZE) if gray else (SIZE, SIZE, 3))
                mask = cv2.imread(str(base / "ground_truth" / kind / f"{image_path.stem}_mask.png"), -1)
                assert mask.shape == (SIZE, SIZE) and set(np.unique(mask)) == {0, 255}
                record = records[f"test/{kind}/{image_path.name}"]
                assert record["kind"] == kind and record["area_px"] == int((mask > 0).sum())
                pairs.append((record["size"], record["contrast"]))
            assert sorted(pairs) == sorted(itertools.product(SIZES, CONTRASTS))  # each pair once


def test_defects_change_pixels_only_in_or_next_to_their_masks(texture_root):
    fringe = math.ceil(MAX_FRINGE_AT_256 * SIZE / 256) + 1
    near = np.ones((2 * fringe + 1, 2 * fringe + 1), np.uint8)
    camera = np.ones((2 * fringe + 7, 2 * fringe + 7), np.uint8)  # the camera's defocus spreads changes
    for name in TWO:
        category = rt.category_by_name(name)
        textures = rt.prepare_textures(category, texture_root, SIZE)
        for number, (kind, (size, contrast)) in enumerate(
            itertools.product(DEFECT_KINDS, map(rt.strata, range(9)))
        ):
            rng = np.random.default_rng([7, number])
            surface = rt.sample_surface(category, textures, SIZE, rng)
            defective, mask = DEFECTS[kind](surface, rng, size, contrast)
            changed = np.any(to_uint8(defective) != to_uint8(surface), axis=2)
            assert mask.dtype == bool and mask.any(), (name, kind, size, contrast)
            assert not (changed & ~cv2.dilate(mask.astype(np.uint8), near).astype(bool)).any(), (name, kind)
            assert changed[mask].mean() > 0.8, (name, kind, size, contrast)
            # The whole pipeline: the same image without its defect differs only near the mask too.
            image, mask = rt.render_sample(category, textures, SIZE, 0, 2, number, (kind, size, contrast))
            normal, _ = rt.render_sample(category, textures, SIZE, 0, 2, number)
            changed = np.any(to_uint8(image) != to_uint8(normal), axis=2)
            assert not (changed & ~cv2.dilate(mask.astype(np.uint8), camera).astype(bool)).any(), (name, kind)


def test_defects_reject_unknown_kinds_and_strata():
    image = np.full((32, 32, 3), 0.5, np.float32)
    with pytest.raises(InspectorError, match="defect kind"):
        add_defect(image, "dent", np.random.default_rng(0), "small", "subtle")
    with pytest.raises(InspectorError, match="size stratum"):
        add_defect(image, "stain", np.random.default_rng(0), "huge", "subtle")
    with pytest.raises(InspectorError, match="contrast stratum"):
        add_defect(image, "stain", np.random.default_rng(0), "small", "faint")


def test_generation_is_deterministic_and_depends_on_the_seed(texture_root, dataset, tmp_path):
    again = tmp_path / "again"
    rt.generate_real_texture_dataset(texture_root, again, categories=TWO, seed=3, **TINY)
    files = sorted(p.relative_to(dataset) for p in dataset.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    for relative in files:
        assert (dataset / relative).read_bytes() == (again / relative).read_bytes(), relative
    other = tmp_path / "other"
    rt.generate_real_texture_dataset(texture_root, other, categories=TWO[:1], seed=4, **TINY)
    first = "plaster/train/good/000.png"
    assert (other / first).read_bytes() != (dataset / first).read_bytes()


def test_an_up_to_date_copy_is_kept_and_an_old_one_replaced(texture_root, tmp_path):
    out = tmp_path / "data"
    small = {**TINY, "defects_per_kind": 1}
    rt.generate_real_texture_dataset(texture_root, out, categories=["marble"], **small)
    marker = out / "marble" / rt.MARKER
    stamp = marker.stat().st_mtime_ns
    rt.generate_real_texture_dataset(texture_root, out, categories=["marble"], **small)
    assert marker.stat().st_mtime_ns == stamp
    old = json.loads(marker.read_text())
    old["generator_version"] = 0
    marker.write_text(json.dumps(old))
    (out / "marble" / "stale.txt").write_text("from the old version")
    rt.generate_real_texture_dataset(texture_root, out, categories=["marble"], **small)
    assert json.loads(marker.read_text())["generator_version"] == rt.GENERATOR_VERSION
    assert not (out / "marble" / "stale.txt").exists()
    (out / "wood").mkdir()
    with pytest.raises(InspectorError, match="not made by"):
        rt.generate_real_texture_dataset(texture_root, out, categories=["wood"], **small)
    with pytest.raises(InspectorError, match="unknown real-texture category"):
        rt.generate_real_texture_dataset(texture_root, out, categories=["carpet"], **small)


def test_anomaly_source_is_written_as_pngs_apart_from_the_categories(texture_root, tmp_path):
    files = rt.anomaly_texture_files(texture_root)
    category_files = {texture_root / name for category in rt.CATEGORIES for name in category.files}
    assert files and not set(files) & category_files
    out = rt.write_anomaly_source(texture_root, tmp_path / "source", min_size=64)
    written = sorted(out.glob("*.png"))
    assert len(written) == len(files)
    assert all(min(cv2.imread(str(p)).shape[:2]) >= 64 for p in written)
    assert len(AnomalySource(out)) == len(files)


def test_fetch_reuses_an_unpacked_tree_and_explains_a_missing_apt(texture_root, tmp_path, monkeypatch):
    assert rt.fetch_texture_packages(texture_root) == texture_root
    monkeypatch.setattr(rt.shutil, "which", lambda tool: None)
    with pytest.raises(InspectorError, match="apt-get not found"):
        rt.fetch_texture_packages(tmp_path / "empty-cache")


def test_benchmark_report_merges_earlier_rows_without_training_them_again(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "data" / "wood" / "train" / "good").mkdir(parents=True)
    (tmp_path / "data" / "wood" / "generated.json").write_text('{"dev": false}')
    row = {"category": "wood", "seed": 0, "image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7}
    row |= {
        "false_reject_rate": 0.0,
        "region_recall": 0.5,
        "region_precision": 0.6,
        "steps": 10,
        "train_minutes": 1,
    }
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps([row, {**row, "seed": 1, "image_auroc": 0.7}]))
    script = Path(__file__).parents[1] / "benchmarks" / "real_texture_bench.py"
    report = tmp_path / "merged.md"
    done = subprocess.run(
        [sys.executable, str(script), "--data", str(tmp_path / "data"), "--seeds", "0,1"]
        + ["--include", str(earlier), "--report", str(report)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = report.read_text()
    assert "0 runs in" in text and "2 rows from the --include reports" in text
    assert "| wood | 0.800 |" in text  # the median of both seeds' image AUROC
    assert len(json.loads(report.with_suffix(".json").read_text())) == 2
