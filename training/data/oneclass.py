"""One-class datasets: one class is normal, every other class of the test split is anomalous.

Readers for the standard on-disk formats, with nothing downloaded at run time:

- ``mnist`` / ``fashion-mnist``: the four idx files (gzipped or not) in a flat folder, in torchvision's
  ``<root>/<MNIST|FashionMNIST>/raw/`` layout, or (Fashion-MNIST, ``root`` unset) in Debian's
  ``/usr/share/datasets/fashion-mnist/`` from ``apt-get install dataset-fashion-mnist``;
- ``cifar10``: the python batches ``cifar-10-batches-py/{data_batch_1..5, test_batch}``, read with an
  unpickler that can only rebuild plain containers and numpy arrays (no pickled code runs);
- ``class-folder``: ``root/<train|test>/<class>/`` or ``root/<class>/`` (then split per class).

The normal class's training images (less a validation split) train; the whole test split tests, with
label 1 for every other class and no masks (image-level ground truth only).
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.preprocess import is_image_name
from inspector.training.data.samples import Sample, Splits, split_validation

FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MNIST_CLASSES = tuple(str(digit) for digit in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: Share of each class held out as the test split when a class folder has no train/test sub-folders.
CLASS_FOLDER_TEST_FRACTION = 0.2

ClassArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


def build_oneclass_splits(config: TrainConfig) -> Splits:
    """Train / validation / test samples of a one-class protocol for ``config.data.normal_class``.

    Raises:
        InspectorError: missing dataset (says where to put it), wrong layout, class index out of range.
    """
    data = config.data
    data_format = data.format
    if data.normal_class is None:
        raise InspectorError(
            f"data.format '{data_format}' needs a normal class: set data.normal_class (--normal-class)"
        )
    if data_format == "class-folder":
        train, test, class_names, root = _class_folder_samples(data.root, config.seed)
    else:
        if data_format in ("mnist", "fashion-mnist"):
            root = _idx_root(data_format, data.root)
            arrays = read_idx_dataset(root, data_format)
        elif data_format == "cifar10":
            root = _require_root(
                data.root, "CIFAR-10", "the cifar-10-batches-py folder (data_batch_1..5, test_batch)"
            )
            arrays = read_cifar10(root)
        else:
            raise InspectorError(f"data.format '{data_format}' is not a one-class format")
        train, test, class_names = _array_samples(arrays)
    normal_class = _check_class(data.normal_class, class_names, data_format)

    normals = [s for s in train if s.label == normal_class]
    if data.train_limit is not None:
        normals = normals[: max(1, int(data.train_limit))]
    for sample in normals:
        sample.label = 0
    test = _relabel(test, normal_class)
    if data.test_limit is not None:
        test = _stratified_subset(test, int(data.test_limit), config.seed)
    train_split, val_split = split_validation(normals, data.val_fraction, config.seed)
    description = {
        "dataset": data_format,
        "normal_class": normal_class,
        "class_name": class_names[normal_class],
        "root": str(root),
    }
    return Splits(train=train_split, val=val_split, test=test, description=description)


# --------------------------------------------------------------------------------------------- idx files


def read_idx(path: str | Path) -> np.ndarray:
    """Read one idx file (``.gz`` or raw) of unsigned bytes into an array of its declared shape."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise InspectorError(f"{path}: cannot be read as an idx file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InspectorError(f"{path}: not an idx file of unsigned bytes (bad magic number); replace it")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise InspectorError(f"{path}: truncated idx header; replace the file")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise InspectorError(
            f"{path}: idx header says {count} values but the file holds {len(raw) - header}; replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_files(root: Path, data_format: str) -> dict[str, Path] | None:
    """The four idx files under ``root`` (flat or torchvision layout), or None when they are not all there."""
    torchvision_name = "FashionMNIST" if data_format == "fashion-mnist" else "MNIST"
    for folder in (root, root / "raw", root / torchvision_name / "raw"):
        found = {}
        for key, stem in IDX_FILES.items():
            # The original site's names, with a dot before "idx" as some mirrors write them, gzipped or not.
            names = (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz")
            path = next((folder / name for name in names if (folder / name).is_file()), None)
            if path is None:
                break
            found[key] = path
        else:
            return found
    return None


def read_idx_dataset(root: Path, data_format: str) -> ClassArrays:
    """Train and test images and labels of MNIST or Fashion-MNIST from the idx files under ``root``."""
    files = find_idx_files(root, data_format)
    torchvision_name = "FashionMNIST" if data_format == "fashion-mnist" else "MNIST"
    if files is None:
        raise InspectorError(
            f"{root}: expected the idx files {', '.join(IDX_FILES.values())} (optionally .gz) in this folder or in "
            f"{root / torchvision_name / 'raw'}; found {_listing(root)}"
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise InspectorError(
                f"{files[f'{split}_images']}: expected images [N, H, W] with N labels; found images "
                f"{list(images.shape)} and labels {list(labels.shape)}"
            )
    names = FASHION_MNIST_CLASSES if data_format == "fashion-mnist" else MNIST_CLASSES
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"], names


def _idx_root(data_format: str, root: str | None) -> Path:
    if data_format == "fashion-mnist":
        hint = f"or run `apt-get install dataset-fashion-mnist` (installs them in {FASHION_MNIST_DEBIAN})"
        if root is None:
            if FASHION_MNIST_DEBIAN.is_dir():
                return FASHION_MNIST_DEBIAN
            raise InspectorError(
                f"Fashion-MNIST not found: set data.root to a folder with the four idx files "
                f"(train-images-idx3-ubyte.gz ...), {hint}"
            )
        return _require_root(
            root, "Fashion-MNIST", f"the four idx files (train-images-idx3-ubyte.gz ...), {hint}"
        )
    return _require_root(
        root, "MNIST", "the four idx files (train-images-idx3-ubyte.gz ...) or torchvision's MNIST/raw/"
    )


def _require_root(root: str | None, dataset: str, what: str) -> Path:
    if root is None:
        raise InspectorError(f"{dataset}: set data.root to a folder holding {what}; nothing is downloaded")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InspectorError(f"{dataset} not found at {path}: put {what} there; nothing is downloaded")
    return path


# ---------------------------------------------------------------------------------------------- CIFAR-10


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a batch file cannot run code when read."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"  # numpy 2's name for the same module
        return super().find_class(module, name)


def load_cifar_batch(path: Path) -> dict:
    """One CIFAR python batch (a pickled dict with bytes keys), read without running pickled code."""
    try:
        with path.open("rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as error:
        raise InspectorError(f"{path}: not a CIFAR python batch ({error}); replace it") from None
    if not isinstance(batch, dict):
        raise InspectorError(
            f"{path}: not a CIFAR python batch (expected a dict, found {type(batch).__name__})"
        )
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def read_cifar10(root: Path) -> ClassArrays:
    """CIFAR-10 train and test images (RGB ``uint8`` ``[N, 32, 32, 3]``) and labels from its python batches."""
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise InspectorError(
            f"{folder}: expected the CIFAR-10 python batches data_batch_1..5 and test_batch "
            f"(in cifar-10-batches-py/); missing {', '.join(missing)}; found {_listing(folder)}"
        )
    parts = []
    for name in names:
        batch = load_cifar_batch(folder / name)
        try:
            images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            labels = np.asarray(batch["labels"], dtype=np.int64)
        except (KeyError, ValueError) as error:
            raise InspectorError(
                f"{folder / name}: expected 'data' [N, 3072] and 'labels' in the batch ({error})"
            ) from None
        if len(images) != len(labels):
            raise InspectorError(f"{folder / name}: {len(images)} images but {len(labels)} labels")
        parts.append((images, labels))
    class_names = CIFAR10_CLASSES
    if (folder / "batches.meta").is_file():
        meta = load_cifar_batch(folder / "batches.meta")
        label_names = meta.get("label_names")
        if label_names:
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in label_names)
    train_images = np.concatenate([images for images, _ in parts[:5]])
    train_labels = np.concatenate([labels for _, labels in parts[:5]])
    test_images, test_labels = parts[5]
    return train_images, train_labels, np.ascontiguousarray(test_images), test_labels, class_names


# ------------------------------------------------------------------------------------------- class folders


def _class_folder_samples(
    root: str | None, seed: int
) -> tuple[list[Sample], list[Sample], tuple[str, ...], Path]:
    path = _require_root(
        root, "class folder", "root/<train|test>/<class>/ or root/<class>/ folders of images"
    )
    expected = "root/train/<class>/ and root/test/<class>/, or root/<class>/ with images"
    has_train, has_test = (path / "train").is_dir(), (path / "test").is_dir()
    if has_train != has_test:
        present = "train" if has_train else "test"
        raise InspectorError(f"{path}: expected {expected}; found a '{present}' folder without its partner")
    if has_train:
        train_classes, test_classes = _class_dirs(path / "train"), _class_dirs(path / "test")
        class_names = tuple(sorted(set(train_classes) | set(test_classes)))
        if not class_names:
            raise InspectorError(
                f"{path}: expected {expected}; found no class folders under train/ and test/"
            )
        train = _folder_images(path / "train", class_names)
        test = _folder_images(path / "test", class_names)
    else:
        class_names = tuple(sorted(_class_dirs(path)))
        if not class_names:
            raise InspectorError(f"{path}: expected {expected}; found {_listing(path)}")
        train, test = [], []
        rng = np.random.default_rng(seed)
        for label, name in enumerate(class_names):
            images = _images_in(path / name)
            order = rng.permutation(len(images))
            test_count = round(CLASS_FOLDER_TEST_FRACTION * len(images)) if len(images) > 1 else 0
            test_index = set(order[:test_count].tolist())
            for i, image in enumerate(images):
                sample = Sample(image=image, label=label, name=f"{name}/{image.name}", defect=name)
                (test if i in test_index else train).append(sample)
    if not train or not test:
        raise InspectorError(f"{path}: expected {expected}; found no images in the train or test part")
    return train, test, class_names, path


def _class_dirs(folder: Path) -> list[str]:
    return [p.name for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p))


def _folder_images(split_dir: Path, class_names: tuple[str, ...]) -> list[Sample]:
    samples = []
    for label, name in enumerate(class_names):
        if (split_dir / name).is_dir():
            for image in _images_in(split_dir / name):
                samples.append(
                    Sample(
                        image=image, label=label, name=f"{split_dir.name}/{name}/{image.name}", defect=name
                    )
                )
    return samples


# ------------------------------------------------------------------------------------------------ helpers


def _array_samples(arrays: ClassArrays) -> tuple[list[Sample], list[Sample], tuple[str, ...]]:
    """Samples over in-memory images; ``label`` holds the class index until relabelled."""
    train_images, train_labels, test_images, test_labels, class_names = arrays
    train = [
        Sample(image=image, label=int(label), name=f"train/{i:05d}", defect=class_names[int(label)])
        for i, (image, label) in enumerate(zip(train_images, train_labels))
        if int(label) < len(class_names)
    ]
    test = [
        Sample(image=image, label=int(label), name=f"test/{i:05d}", defect=class_names[int(label)])
        for i, (image, label) in enumerate(zip(test_images, test_labels))
        if int(label) < len(class_names)
    ]
    return train, test, class_names


def _check_class(normal_class: Any, class_names: tuple[str, ...], data_format: str) -> int:
    try:
        index = int(normal_class)
    except (TypeError, ValueError):
        raise InspectorError(f"normal class '{normal_class}' must be an integer class index") from None
    if not 0 <= index < len(class_names):
        shown = ", ".join(f"{i}={name}" for i, name in enumerate(class_names[:12]))
        more = ", ..." if len(class_names) > 12 else ""
        raise InspectorError(
            f"normal class {index} is out of range for {data_format}: use 0..{len(class_names) - 1} ({shown}{more})"
        )
    return index


def _relabel(test: list[Sample], normal_class: int) -> list[Sample]:
    for sample in test:
        normal = sample.label == normal_class
        sample.label = 0 if normal else 1
        sample.defect = "good" if normal else sample.defect
        sample.mask = None
    return test


def _stratified_subset(samples: list[Sample], limit: int, seed: int) -> list[Sample]:
    """At most ``limit`` samples keeping each class's share (at least one per class), in original order."""
    if limit >= len(samples):
        return samples
    by_class: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_class.setdefault(sample.defect, []).append(i)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for indices in by_class.values():
        count = max(1, round(limit * len(indices) / len(samples)))
        chosen.extend(rng.choice(indices, size=min(count, len(indices)), replace=False).tolist())
    excess = len(chosen) - max(limit, len(by_class))
    if excess > 0:  # rounding up per class can overshoot by a few: drop those at random
        chosen = rng.permutation(chosen)[excess:].tolist()
    return [samples[i] for i in sorted(chosen)]


def _listing(folder: Path, limit: int = 8) -> str:
    if not folder.is_dir():
        return "no such folder"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not entries:
        return "an empty folder"
    return ", ".join(entries[:limit]) + (f" and {len(entries) - limit} more" if len(entries) > limit else "")
