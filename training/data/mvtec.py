"""Reader for the MVTec AD folder layout.

::

    <root>/<category>/train/good/*.png                     normal training images
    <root>/<category>/test/good/*.png                      normal test images
    <root>/<category>/test/<defect>/*.png                  anomalous test images
    <root>/<category>/ground_truth/<defect>/<name>_mask.png  their masks

The validation split is held out of ``train/good``; the test set is never used for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.io import list_images
from inspector.preprocess import is_image_name
from inspector.training.data.samples import Sample, Splits, split_validation

MASK_SUFFIX = "_mask"


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` for training: :func:`inspector.io.list_images` (the one listing rule,
    shared with the runtime), less hidden files and folders and entries that are not files."""
    return [
        path
        for key, path in list_images(folder, recursive=recursive)
        if not any(part.startswith(".") for part in key.split("/")) and path.is_file()
    ]


def limit_samples(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of ``limit`` samples, kept in their original order (all if no limit)."""
    if limit is None or limit >= len(samples):
        return samples
    keep = set(np.random.default_rng(seed).permutation(len(samples))[: max(0, int(limit))].tolist())
    return [sample for index, sample in enumerate(samples) if index in keep]


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def _find_mask(mask_folder: Path, image: Path) -> Path | None:
    for candidate in sorted(mask_folder.glob(f"{image.stem}{MASK_SUFFIX}.*")):
        if is_image_name(candidate):
            return candidate
    return None


def _test_samples(category_dir: Path) -> list[Sample]:
    test_dir, truth_dir = category_dir / "test", category_dir / "ground_truth"
    if not test_dir.is_dir():
        raise InspectorError(
            f"{test_dir} not found; an MVTec category needs test/good and test/<defect> folders"
        )
    samples: list[Sample] = []
    missing_masks: list[str] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        images = image_files(defect_dir)
        if defect == "good":
            samples += [Sample(p, 0, None, f"good/{p.name}", "good") for p in images]
            continue
        for image in images:
            mask = _find_mask(truth_dir / defect, image)
            if mask is None:
                missing_masks.append(str(image))
            samples.append(Sample(image, 1, mask, f"{defect}/{image.name}", defect))
        _check_orphan_masks(truth_dir / defect, images)
    if missing_masks:
        expected = (
            truth_dir / Path(missing_masks[0]).parent.name / f"{Path(missing_masks[0]).stem}{MASK_SUFFIX}.png"
        )
        raise InspectorError(
            f"{missing_masks[0]} has no mask (expected {expected}){_more(missing_masks)}; "
            "add the mask or remove the image"
        )
    if truth_dir.is_dir():
        for mask_dir in sorted(p for p in truth_dir.iterdir() if p.is_dir()):
            if not (test_dir / mask_dir.name).is_dir() and image_files(mask_dir):
                raise InspectorError(
                    f"{mask_dir} has masks but there is no {test_dir / mask_dir.name} folder; "
                    "add the images or remove the masks"
                )
    if not samples:
        raise InspectorError(f"{test_dir} holds no images; add test/good and test/<defect> images")
    return samples


def _check_orphan_masks(mask_folder: Path, images: list[Path]) -> None:
    if not mask_folder.is_dir():
        return
    stems = {image.stem for image in images}
    orphans = [
        str(mask)
        for mask in image_files(mask_folder)
        if not (mask.stem.endswith(MASK_SUFFIX) and mask.stem[: -len(MASK_SUFFIX)] in stems)
    ]
    if orphans:
        raise InspectorError(
            f"{orphans[0]} matches no image in {mask_folder.parent.parent / 'test' / mask_folder.name}"
            f"{_more(orphans)}; masks are named <image name>{MASK_SUFFIX}.png: rename or remove it"
        )


def build_mvtec_splits(config: TrainConfig) -> Splits:
    """Read one MVTec AD category (``config.data.root`` / ``config.data.category``) into splits.

    Raises:
        InspectorError: missing root or category (the existing categories are listed), empty
            ``train/good``, an anomalous image without a mask or a mask without an image.
    """
    data = config.data
    if not data.root:
        raise InspectorError(
            "no dataset folder given; pass --data DIR (the folder holding the MVTec categories)"
        )
    root = Path(data.root)
    if not root.is_dir():
        raise InspectorError(f"dataset folder {root} not found; pass --data DIR with the MVTec categories")
    categories = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    if not data.category:
        if (root / "train" / "good").is_dir():
            raise InspectorError(
                f"{root} looks like a category folder (it holds train/good); pass its parent with "
                f"--data {root.parent} --category {root.name}"
            )
        raise InspectorError(
            f"no category given for {root}; pass --category NAME, one of: "
            f"{', '.join(categories) or 'none found (expected <category>/train/good under --data)'}"
        )
    category_dir = root / data.category
    if not category_dir.is_dir():
        if (root / "train" / "good").is_dir():
            raise InspectorError(
                f"{root} looks like a category folder itself; pass its parent with --data and --category {root.name}"
            )
        raise InspectorError(
            f"category '{data.category}' not found in {root}; existing categories: "
            f"{', '.join(categories) or 'none (expected <category>/train/good)'}"
        )
    good_dir = category_dir / "train" / "good"
    if not good_dir.is_dir():
        raise InspectorError(f"{good_dir} not found; put the normal training images there (MVTec layout)")
    train_images = image_files(good_dir)
    if not train_images:
        raise InspectorError(f"{good_dir} holds no images; put the normal training images there")

    normals = [Sample(p, 0, None, f"good/{p.name}", "good") for p in train_images]
    normals = limit_samples(normals, data.train_limit, config.seed)
    train, val = split_validation(normals, data.val_fraction, config.seed)
    test = limit_samples(_test_samples(category_dir), data.test_limit, config.seed)
    return Splits(
        train=train,
        val=val,
        test=test,
        description={"dataset": "mvtec", "category": data.category, "root": str(root)},
    )
