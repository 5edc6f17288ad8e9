"""One-class datasets: the readers read tiny files written here in the real on-disk formats."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.config import load_config
from inspector.errors import InspectorError
from inspector.training.data import build_splits, oneclass
from inspector.training.data.dataset import ImageDataset

CLASSES = 3
PER_CLASS_TRAIN, PER_CLASS_TEST = 10, 4


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """An idx file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian uint32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def class_images(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Images whose brightness says their class, so the test can tell which ones it got back."""
    return np.stack([np.full(shape, 40 + 80 * int(label), dtype=np.uint8) for label in labels])


def write_idx_dataset(folder: Path, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = np.repeat(np.arange(CLASSES), PER_CLASS_TRAIN)
    test_labels = np.tile(np.arange(CLASSES), PER_CLASS_TEST)
    write_idx(folder / "train-images-idx3-ubyte", class_images(train_labels, (28, 28)), gz)
    write_idx(folder / "train-labels-idx1-ubyte", train_labels, gz)
    write_idx(folder / "t10k-images-idx3-ubyte", class_images(test_labels, (28, 28)), gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", test_labels, gz)


def splits_for(data_format: str, root: Path | None, normal_class: int, **data: object):
    overrides = {
        "data.format": data_format,
        "data.root": None if root is None else str(root),
        "data.normal_class": normal_class,
        "input_size": [28, 28],
        "channels": 1,
    }
    overrides.update({f"data.{key}": value for key, value in data.items()})
    return build_splits(load_config(None, overrides))


@pytest.mark.parametrize("gz", [True, False])
def test_a_flat_folder_of_idx_files_gives_the_normal_class_to_train_and_the_whole_test_split(tmp_path, gz):
    write_idx_dataset(tmp_path, gz)
    splits = splits_for("fashion-mnist", tmp_path, normal_class=1)
    train = splits.train + splits.val
    assert len(train) == PER_CLASS_TRAIN and len(splits.val) == 1
    assert all(sample.label == 0 and sample.image.dtype == np.uint8 for sample in train)
    assert all(int(sample.image[0, 0]) == 120 for sample in train)  # class 1's brightness
    assert len(splits.test) == CLASSES * PER_CLASS_TEST
    for sample in splits.test:
        assert sample.label == (0 if int(sample.image[0, 0]) == 120 else 1) and sample.mask is None
    assert splits.description == {
        "dataset": "fashion-mnist",
        "normal_class": 1,
        "class_name": "Trouser",
        "root": str(tmp_path),
    }


def test_torchvision_raw_layout_is_found_under_the_root(tmp_path):
    write_idx_dataset(tmp_path / "MNIST" / "raw", gz=False)
    splits = splits_for("mnist", tmp_path, normal_class=2)
    assert all(int(s.image[0, 0]) == 200 for s in splits.train + splits.val)
    batch = ImageDataset(splits.test, (16, 16), 1)[0]
    assert batch["image"].shape == (1, 16, 16) and batch["mask"].sum() == 0


def test_limits_keep_the_first_training_normals_and_a_stratified_test_subset(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    splits = splits_for("mnist", tmp_path, normal_class=0, train_limit=5, test_limit=6)
    assert len(splits.train) + len(splits.val) == 5
    assert len(splits.test) == 6
    assert sorted({s.defect for s in splits.test}) == ["1", "2", "good"]  # every class kept


def test_class_index_out_of_range_names_the_valid_range(tmp_path):
    write_idx_dataset(tmp_path, gz=True)
    with pytest.raises(
        InspectorError, match=r"normal class 10 is out of range for fashion-mnist: use 0\.\.9"
    ):
        splits_for("fashion-mnist", tmp_path, normal_class=10)


def test_a_folder_without_idx_files_says_what_was_expected_and_found(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(
        InspectorError, match=r"expected the idx files train-images-idx3-ubyte.*found images/, notes\.txt"
    ):
        splits_for("mnist", tmp_path, normal_class=0)


def test_a_corrupt_idx_file_is_named(tmp_path):
    write_idx_dataset(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(InspectorError, match=r"t10k-labels-idx1-ubyte: not an idx file"):
        splits_for("mnist", tmp_path, normal_class=0)


def test_missing_fashion_mnist_says_where_to_put_it_and_how_to_install_it(tmp_path, monkeypatch):
    with pytest.raises(
        InspectorError, match=r"not found at .*nowhere.*apt-get install dataset-fashion-mnist"
    ):
        splits_for("fashion-mnist", tmp_path / "nowhere", normal_class=0)
    monkeypatch.setattr(oneclass, "FASHION_MNIST_DEBIAN", tmp_path / "not-installed")
    with pytest.raises(InspectorError, match=r"set data.root .*apt-get install dataset-fashion-mnist"):
        splits_for("fashion-mnist", None, normal_class=0)


def test_mnist_without_a_root_asks_for_one_and_downloads_nothing():
    with pytest.raises(InspectorError, match=r"MNIST: set data.root .*nothing is downloaded"):
        splits_for("mnist", None, normal_class=0)


def write_cifar(folder: Path, per_batch: int = 6) -> None:
    """CIFAR-10 python batches as the original site ships them: dicts with bytes keys, pickle protocol 2."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        labels[:2] = [3, 5]  # both classes are in every batch
        data = np.zeros((per_batch, 3, 32, 32), dtype=np.uint8)
        for row, label in enumerate(labels):
            data[row, 0] = 10 * label  # red channel says the class; green and blue stay 0
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data.reshape(per_batch, 3072),
            b"filenames": [f"img{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in oneclass.CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar10_python_batches_give_rgb_images_of_the_normal_class(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    splits = build_splits(
        load_config(
            None,
            {
                "data.format": "cifar10",
                "data.root": str(tmp_path),
                "data.normal_class": 3,
                "input_size": [32, 32],
                "channels": 3,
            },
        )
    )
    train = splits.train + splits.val
    assert train and all(s.image.shape == (32, 32, 3) and tuple(s.image[0, 0]) == (30, 0, 0) for s in train)
    assert splits.description["class_name"] == "cat"
    assert {s.label for s in splits.test} == {0, 1}
    assert all((s.label == 0) == (s.image[0, 0, 0] == 30) for s in splits.test)


class _Exploit:
    """Unpickling this with the standard unpickler would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "code-ran"
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(
        pickle.dumps({b"data": _Exploit(marker)}, protocol=2)
    )
    with pytest.raises(InspectorError, match=r"test_batch: not a CIFAR python batch \(refusing to load "):
        splits_for("cifar10", tmp_path, normal_class=0)
    assert not marker.exists()


def test_cifar_folder_missing_batches_lists_them(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"")
    with pytest.raises(InspectorError, match=r"missing data_batch_2, .*test_batch; found data_batch_1"):
        splits_for("cifar10", tmp_path, normal_class=0)


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((12, 12, 3), value, dtype=np.uint8))


def test_class_folders_with_train_and_test_splits(tmp_path):
    for split, count in (("train", 4), ("test", 2)):
        for value, name in ((50, "bolt"), (150, "nut"), (250, "washer")):
            for i in range(count):
                write_png(tmp_path / split / name / f"{i}.png", value)
    splits = splits_for("class-folder", tmp_path, normal_class=1)
    assert len(splits.train) + len(splits.val) == 4
    assert all(isinstance(s.image, Path) and s.image.parent.name == "nut" for s in splits.train + splits.val)
    assert [s.label for s in splits.test if s.image.parent.name == "nut"] == [0, 0]
    assert sum(s.label for s in splits.test) == 4
    assert splits.description["class_name"] == "nut"


def test_class_folders_without_splits_hold_out_part_of_each_class_for_test(tmp_path):
    for value, name in ((50, "bolt"), (150, "nut")):
        for i in range(10):
            write_png(tmp_path / name / f"{i}.png", value)
    splits = splits_for("class-folder", tmp_path, normal_class=0)
    assert len(splits.train) + len(splits.val) == 8
    assert sorted(s.label for s in splits.test) == [0, 0, 1, 1]
    assert not {s.image for s in splits.train} & {s.image for s in splits.test}


def test_class_folder_in_the_wrong_layout_says_what_was_expected_and_found(tmp_path):
    write_png(tmp_path / "loose.png", 10)
    with pytest.raises(InspectorError, match=r"expected root/train/<class>/ .*found loose\.png"):
        splits_for("class-folder", tmp_path, normal_class=0)
    write_png(tmp_path / "train" / "a" / "0.png", 10)
    with pytest.raises(InspectorError, match=r"found a 'train' folder without its partner"):
        splits_for("class-folder", tmp_path, normal_class=0)


def test_a_missing_normal_class_is_asked_for():
    with pytest.raises(InspectorError, match=r"needs a normal class: set data.normal_class"):
        build_splits(load_config(None, {"data.format": "fashion-mnist"}))
