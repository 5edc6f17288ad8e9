"""Reader for the MVTec AD folder layout.

::

    <root>/<category>/train/good/*.png                     normal training images
    <root>/<category>/test/good/*.png                      normal test images
    <root>/<category>/test/<defect>/*.png                  anomalous test images
    <root>/<category>/ground_truth/<defect>/<name>_mask.png  their masks

The validation split is held out of ``train/good``; the test set is never used for it. The test set and
its masks are listed by :func:`inspector.labelled_data.mvtec_test_images`, the rules ``eval MODEL`` uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.labelled_data import (  # noqa: F401 - MASK_SUFFIX: the readers' vocabulary
    MASK_SUFFIX,
    LabelledImage,
    image_files,
    mvtec_categories,
    mvtec_category,
    mvtec_test_images,
)
from inspector.training.data.samples import Sample, Splits, split_validation


def limit_samples(samples: list[Sample], limit: int | None, seed: int) -> list[Sample]:
    """A seeded random subset of ``limit`` samples, kept in their original order (all if no limit)."""
    if limit is None or limit >= len(samples):
        return samples
    keep = set(np.random.default_rng(seed).permutation(len(samples))[: max(0, int(limit))].tolist())
    return [sample for index, sample in enumerate(samples) if index in keep]


def as_samples(images: list[LabelledImage]) -> list[Sample]:
    """The training's :class:`Sample` of each labelled image that :mod:`inspector.labelled_data` listed."""
    return [Sample(image.path, image.label, image.mask, image.name, image.defect) for image in images]


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
    if not data.category:
        if (root / "train" / "good").is_dir():
            raise InspectorError(
                f"{root} looks like a category folder (it holds train/good); pass its parent with "
                f"--data {root.parent} --category {root.name}"
            )
        raise InspectorError(
            f"no category given for {root}; pass --category NAME, one of: "
            f"{', '.join(mvtec_categories(root, 'train')) or 'none found (expected <category>/train/good under --data)'}"
        )
    if not (root / data.category).is_dir() and (root / "train" / "good").is_dir():
        raise InspectorError(
            f"{root} looks like a category folder itself; pass its parent with --data and --category {root.name}"
        )
    category_dir = mvtec_category(root, data.category, "train")
    good_dir = category_dir / "train" / "good"
    if not good_dir.is_dir():
        raise InspectorError(f"{good_dir} not found; put the normal training images there (MVTec layout)")
    train_images = image_files(good_dir)
    if not train_images:
        raise InspectorError(f"{good_dir} holds no images; put the normal training images there")

    normals = [Sample(p, 0, None, f"good/{p.name}", "good") for p in train_images]
    normals = limit_samples(normals, data.train_limit, config.seed)
    train, val = split_validation(normals, data.val_fraction, config.seed)
    test = limit_samples(as_samples(mvtec_test_images(category_dir)), data.test_limit, config.seed)
    return Splits(
        train=train,
        val=val,
        test=test,
        description={"dataset": "mvtec", "category": data.category, "root": str(root)},
    )
