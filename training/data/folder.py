"""Reader for plain folders: normal images, and optionally anomalous images, their masks, test normals.

Folders are searched recursively. Relative folders are taken inside ``data.root`` when it is set. Masks
are matched to anomalous images by name: ``<stem>.png`` or ``<stem>_mask.png`` (any image extension),
at the same relative place in ``mask_dir`` as the image in ``abnormal_dir``, or anywhere in ``mask_dir``
when the stem is unique there.
"""

from __future__ import annotations

from pathlib import Path

from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.labelled_data import FolderNames, folder_images, images_in
from inspector.training.data.mvtec import as_samples, limit_samples
from inspector.training.data.samples import Sample, Splits, split_validation

#: How errors name the test folders: by their config keys.
TEST_FOLDER_NAMES = FolderNames(
    good="data.normal_test_dir", defective="data.abnormal_dir", masks="data.mask_dir"
)


def _folder(root: str | None, folder: str | None) -> Path | None:
    """``folder`` (inside ``root`` when it is relative and ``root`` is set), or None when not set."""
    return Path(root or "", folder) if folder else None


def build_folder_splits(config: TrainConfig) -> Splits:
    """Read ``data.normal_dir`` (training normals) and the optional test folders into splits.

    The test folders are read by :func:`inspector.labelled_data.folder_images`, the rules that
    ``eval MODEL`` and ``calibrate MODEL`` use.

    Raises:
        InspectorError: a folder that is not set, missing or empty; a mask without an image or an
            anomalous image without a mask (when ``data.mask_dir`` is given).
    """
    data = config.data
    if not data.normal_dir:
        raise InspectorError("data.normal_dir is not set; give the folder of normal (good) training images")
    normal_dir = Path(data.root or "", data.normal_dir)
    normals = [
        Sample(p, 0, None, p.relative_to(normal_dir).as_posix(), "good")
        for p in images_in(normal_dir, "data.normal_dir")
    ]
    normals = limit_samples(normals, data.train_limit, config.seed)
    train, val = split_validation(normals, data.val_fraction, config.seed)

    test = as_samples(
        folder_images(
            _folder(data.root, data.normal_test_dir),
            _folder(data.root, data.abnormal_dir),
            _folder(data.root, data.mask_dir),
            TEST_FOLDER_NAMES,
        )
    )
    test = limit_samples(test, data.test_limit, config.seed)

    return Splits(
        train=train,
        val=val,
        test=test,
        description={
            "dataset": "folder",
            "category": data.category or normal_dir.name,
            "root": str(normal_dir),
        },
    )
