"""Reading datasets: the MVTec AD layout, plain folders, and the bad inputs a user can make."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.config import load_config
from inspector.errors import InspectorError
from inspector.labelled_data import dataset_images
from inspector.training.data import build_splits
from inspector.training.data.dataset import ImageDataset

SIZE = 32


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _image(seed: int, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (SIZE, SIZE) if gray else (SIZE, SIZE, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _square_mask(top: int, left: int, side: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 255
    return mask


def make_mvtec(root: Path, category: str = "bottle", train: int = 10, gray: bool = False) -> Path:
    """A tiny MVTec AD category: train/good, test/good, test/<defect> and ground_truth/<defect>."""
    base = root / category
    for i in range(train):
        _write(base / "train" / "good" / f"{i:03d}.png", _image(i, gray))
    for i in range(2):
        _write(base / "test" / "good" / f"{i:03d}.png", _image(100 + i, gray))
    for defect in ("crack", "hole"):
        for i in range(2):
            _write(base / "test" / defect / f"{i:03d}.png", _image(200 + i, gray))
            _write(base / "ground_truth" / defect / f"{i:03d}_mask.png", _square_mask(3, 4, 6))
    return root


def mvtec_config(root: Path, category: str | None = "bottle", **data):
    overrides = {"data.format": "mvtec", "data.root": str(root), "data.category": category}
    overrides.update({f"data.{key}": value for key, value in data.items()})
    return load_config(None, overrides)


def test_mvtec_category_splits_with_validation_from_train_normals_only(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    splits = build_splits(mvtec_config(root, val_fraction=0.2))

    train_good = {p.name for p in (root / "bottle" / "train" / "good").iterdir()}
    assert {s.image.name for s in splits.train + splits.val} == train_good
    assert len(splits.val) == 2 and not {s.image for s in splits.val} & {s.image for s in splits.train}
    assert all(
        s.label == 0 and s.mask is None and "train" in s.image.parts for s in splits.train + splits.val
    )

    assert sorted(s.defect for s in splits.test) == ["crack", "crack", "good", "good", "hole", "hole"]
    for sample in splits.test:
        if sample.label == 1:
            assert (
                sample.mask
                == root / "bottle" / "ground_truth" / sample.defect / f"{sample.image.stem}_mask.png"
            )
        else:
            assert sample.mask is None and sample.defect == "good"
    assert splits.has_pixel_ground_truth
    assert splits.description == {"dataset": "mvtec", "category": "bottle", "root": str(root)}


def test_validation_split_is_reproducible_for_a_seed(tmp_path):
    root = make_mvtec(tmp_path / "mvtec", train=20)
    names = [[s.name for s in build_splits(mvtec_config(root)).val] for _ in range(2)]
    other = [s.name for s in build_splits(load_config(None, {**_overrides(root), "seed": 7})).val]
    assert names[0] == names[1]
    assert other != names[0]


def _overrides(root: Path) -> dict:
    return {"data.format": "mvtec", "data.root": str(root), "data.category": "bottle"}


def test_train_and_test_limits_take_subsets(tmp_path):
    root = make_mvtec(tmp_path / "mvtec", train=20)
    splits = build_splits(mvtec_config(root, train_limit=10, test_limit=4, val_fraction=0.2))
    assert len(splits.train) + len(splits.val) == 10
    assert len(splits.test) == 4


def test_grayscale_category_reads_as_rgb_and_gray(tmp_path):
    root = make_mvtec(tmp_path / "mvtec", gray=True)
    splits = build_splits(mvtec_config(root))
    item = ImageDataset(splits.test, (16, 16), channels=3)[0]
    assert item["image"].shape == (3, 16, 16)
    assert np.array_equal(item["image"][0], item["image"][1]) and np.array_equal(
        item["image"][1], item["image"][2]
    )
    assert ImageDataset(splits.test, (16, 16), channels=1)[0]["image"].shape == (1, 16, 16)


def test_masks_are_thresholded_after_resizing_not_eroded(tmp_path):
    # Rows 3-8 of a 6x6 square, halved, give half-covered rows 1 and 4 (value 0.5). Thresholding at 0.5
    # keeps them (4x3 pixels); resizing then casting to uint8, the originals' bug, erodes it to 2x3.
    root = make_mvtec(tmp_path / "mvtec")
    splits = build_splits(mvtec_config(root))
    anomalous = [i for i, s in enumerate(splits.test) if s.label == 1]
    item = ImageDataset(splits.test, (16, 16), channels=3)[anomalous[0]]
    mask = item["mask"].numpy()
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask.sum() == 12
    rows, cols = np.nonzero(mask[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (1, 4, 2, 4)
    assert item["label"] == 1


def test_missing_root_is_an_error_naming_it(tmp_path):
    with pytest.raises(InspectorError, match="nowhere.*not found"):
        build_splits(mvtec_config(tmp_path / "nowhere"))


def test_unknown_category_lists_the_existing_ones(tmp_path):
    root = make_mvtec(tmp_path / "mvtec", "bottle")
    make_mvtec(root, "screw")
    with pytest.raises(InspectorError, match="'cable' not found.*existing categories: bottle, screw"):
        build_splits(mvtec_config(root, "cable"))


def test_a_category_folder_given_as_root_gets_a_hint(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    with pytest.raises(InspectorError, match="looks like a category folder itself.*--category bottle"):
        build_splits(mvtec_config(root / "bottle", "bottle"))


def test_empty_train_good_is_an_error(tmp_path):
    root = make_mvtec(tmp_path / "mvtec", train=0)
    (root / "bottle" / "train" / "good").mkdir(parents=True, exist_ok=True)
    with pytest.raises(InspectorError, match=r"train/good holds no images"):
        build_splits(mvtec_config(root))


@pytest.mark.parametrize("reader", ["training", "eval MODEL"])
@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "image without mask",
            r"test/hole/001.png has no mask \(expected .*ground_truth/hole/001_mask.png\);",
        ),
        ("images without masks", r"test/hole/000.png has no mask .* \(and 1 more\); add the mask"),
        ("mask without image", r"ground_truth/crack/007_mask.png matches no image in .*test/crack;"),
        (
            "masks of no defect folder",
            r"ground_truth/scratch has masks but there is no .*test/scratch folder",
        ),
    ],
)
def test_mvtec_mask_errors_are_the_same_for_training_and_eval_model(tmp_path, reader, case, message):
    # One set of rules (inspector.labelled_data): the training reader and the torch-free one of
    # `inspector eval MODEL --data` refuse the same layouts with the same line.
    root = make_mvtec(tmp_path / "mvtec")
    truth = root / "bottle" / "ground_truth"
    if case == "image without mask":
        (truth / "hole" / "001_mask.png").unlink()
    elif case == "images without masks":
        for name in ("000_mask.png", "001_mask.png"):
            (truth / "hole" / name).unlink()
    elif case == "mask without image":
        _write(truth / "crack" / "007_mask.png", _square_mask(0, 0, 4))
    else:
        _write(truth / "scratch" / "000_mask.png", _square_mask(0, 0, 4))
    with pytest.raises(InspectorError, match=message):
        if reader == "training":
            build_splits(mvtec_config(root))
        else:
            dataset_images(root / "bottle")


def test_mask_of_another_size_is_an_error_naming_the_file(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    bad = _write(root / "bottle" / "ground_truth" / "crack" / "000_mask.png", _square_mask(1, 1, 4, size=20))
    splits = build_splits(mvtec_config(root))
    dataset = ImageDataset(splits.test, (16, 16), channels=3)
    index = next(i for i, s in enumerate(splits.test) if s.mask == bad)
    with pytest.raises(InspectorError, match=f"{bad}: mask is 20x20 but its image is 32x32"):
        dataset[index]


# --- plain folders -------------------------------------------------------------------------------


def make_folders(root: Path) -> Path:
    for i in range(6):
        _write(root / "good" / "line1" / f"part{i}.png", _image(i))
    for i in range(2):
        _write(root / "good_test" / f"ok{i}.jpg", _image(50 + i))
    _write(root / "bad" / "dent" / "d0.png", _image(60))
    _write(root / "bad" / "scuff" / "s0.png", _image(61))
    _write(root / "bad" / "x0.png", _image(62))
    _write(root / "masks" / "dent" / "d0_mask.png", _square_mask(0, 0, 8))
    _write(root / "masks" / "s0.png", _square_mask(4, 4, 8))  # found anywhere when the stem is unique
    _write(root / "masks" / "x0_mask.png", _square_mask(8, 8, 8))
    return root


def folder_config(root: Path, **data):
    overrides = {
        "data.format": "folder",
        "data.root": str(root),
        "data.normal_dir": "good",
        "data.abnormal_dir": "bad",
        "data.mask_dir": "masks",
        "data.normal_test_dir": "good_test",
    }
    overrides.update({f"data.{key}": value for key, value in data.items()})
    return load_config(None, overrides)


def test_folder_dataset_matches_masks_by_name(tmp_path):
    root = make_folders(tmp_path / "parts")
    splits = build_splits(folder_config(root, val_fraction=0.25))
    assert len(splits.train) + len(splits.val) == 6 and len(splits.val) == 2
    assert all(s.label == 0 for s in splits.train + splits.val)

    by_name = {s.image.name: s for s in splits.test}
    assert {name for name, s in by_name.items() if s.label == 0} == {"ok0.jpg", "ok1.jpg"}
    assert by_name["d0.png"].mask == root / "masks" / "dent" / "d0_mask.png"
    assert by_name["s0.png"].mask == root / "masks" / "s0.png"
    assert by_name["x0.png"].mask == root / "masks" / "x0_mask.png"
    assert (by_name["d0.png"].defect, by_name["s0.png"].defect, by_name["x0.png"].defect) == (
        "dent",
        "scuff",
        "defect",
    )
    assert splits.description["dataset"] == "folder"


def test_folder_dataset_without_optional_folders(tmp_path):
    root = make_folders(tmp_path / "parts")
    config = load_config(None, {"data.format": "folder", "data.normal_dir": str(root / "good")})
    splits = build_splits(config)
    assert len(splits.train) + len(splits.val) == 6 and splits.test == []


def test_folder_dataset_mask_without_image_is_named(tmp_path):
    root = make_folders(tmp_path / "parts")
    _write(root / "masks" / "zz9_mask.png", _square_mask(0, 0, 4))
    with pytest.raises(InspectorError, match=r"masks/zz9_mask.png matches no image"):
        build_splits(folder_config(root))


def test_folder_dataset_image_without_mask_is_named(tmp_path):
    root = make_folders(tmp_path / "parts")
    (root / "masks" / "x0_mask.png").unlink()
    with pytest.raises(InspectorError, match=r"bad/x0.png has no mask"):
        build_splits(folder_config(root))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"normal_dir": None}, "data.normal_dir is not set"),
        ({"normal_dir": "missing"}, r"missing \(data.normal_dir\) not found"),
        ({"normal_dir": "empty"}, r"empty \(data.normal_dir\) holds no images"),
        ({"abnormal_dir": None}, "data.mask_dir given without data.abnormal_dir"),
    ],
)
def test_folder_dataset_bad_folders(tmp_path, data, message):
    root = make_folders(tmp_path / "parts")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(InspectorError, match=message):
        build_splits(folder_config(root, **data))


def test_mvtec_format_pointed_at_a_category_folder_names_the_fix(tmp_path):
    from inspector.config import load_config
    from inspector.errors import InspectorError
    from inspector.training.data import build_splits

    category = tmp_path / "bottle"
    (category / "train" / "good").mkdir(parents=True)
    config = load_config(None, {"data.format": "mvtec", "data.root": str(category)})
    with pytest.raises(InspectorError, match=r"looks like a category folder .* --category bottle"):
        build_splits(config)
