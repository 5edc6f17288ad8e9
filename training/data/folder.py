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
from inspector.training.data.mvtec import MASK_SUFFIX, image_files, limit_samples
from inspector.training.data.samples import Sample, Splits, split_validation


def _folder(root: str | None, folder: str, option: str) -> Path:
    path = Path(root) / folder if root else Path(folder)
    if not path.is_dir():
        raise InspectorError(f"{path} ({option}) not found; give an existing folder of images")
    return path


def _images(folder: Path, option: str) -> list[Path]:
    images = image_files(folder, recursive=True)
    if not images:
        raise InspectorError(f"{folder} ({option}) holds no images; add images or fix the path")
    return images


def _mask_key(relative: Path) -> str:
    stem = relative.stem.removesuffix(MASK_SUFFIX)
    return (relative.parent / stem).as_posix()


def _match_masks(abnormal_dir: Path, images: list[Path], mask_dir: Path) -> dict[Path, Path]:
    """Map each anomalous image to its mask; every image needs one and every mask needs an image."""
    masks = _images(mask_dir, "data.mask_dir")
    by_key = {_mask_key(mask.relative_to(mask_dir)): mask for mask in masks}
    by_stem: dict[str, list[Path]] = {}
    for key, mask in by_key.items():
        by_stem.setdefault(Path(key).name, []).append(mask)

    matched: dict[Path, Path] = {}
    for image in images:
        relative = image.relative_to(abnormal_dir)
        mask = by_key.get((relative.parent / relative.stem).as_posix())
        if mask is None and len(by_stem.get(image.stem, [])) == 1:
            mask = by_stem[image.stem][0]
        if mask is None:
            raise InspectorError(
                f"{image} has no mask in {mask_dir} (expected {image.stem}.png or {image.stem}{MASK_SUFFIX}.png); "
                "add the mask or remove the image"
            )
        matched[image] = mask
    unused = sorted(set(masks) - set(matched.values()))
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise InspectorError(
            f"{unused[0]} matches no image in {abnormal_dir}{more}; name masks <image stem>.png or "
            f"<image stem>{MASK_SUFFIX}.png, or remove it"
        )
    return matched


def build_folder_splits(config: TrainConfig) -> Splits:
    """Read ``data.normal_dir`` (training normals) and the optional test folders into splits.

    Raises:
        InspectorError: a folder that is not set, missing or empty; a mask without an image or an
            anomalous image without a mask (when ``data.mask_dir`` is given).
    """
    data = config.data
    if not data.normal_dir:
        raise InspectorError("data.normal_dir is not set; give the folder of normal (good) training images")
    normal_dir = _folder(data.root, data.normal_dir, "data.normal_dir")
    normals = [
        Sample(p, 0, None, p.relative_to(normal_dir).as_posix(), "good")
        for p in _images(normal_dir, "data.normal_dir")
    ]
    normals = limit_samples(normals, data.train_limit, config.seed)
    train, val = split_validation(normals, data.val_fraction, config.seed)

    test: list[Sample] = []
    if data.normal_test_dir:
        folder = _folder(data.root, data.normal_test_dir, "data.normal_test_dir")
        for image in _images(folder, "data.normal_test_dir"):
            test.append(Sample(image, 0, None, f"good/{image.relative_to(folder).as_posix()}", "good"))
    if data.abnormal_dir:
        folder = _folder(data.root, data.abnormal_dir, "data.abnormal_dir")
        images = _images(folder, "data.abnormal_dir")
        masks = (
            _match_masks(folder, images, _folder(data.root, data.mask_dir, "data.mask_dir"))
            if data.mask_dir
            else {}
        )
        for image in images:
            relative = image.relative_to(folder)
            # Sub-folders of abnormal_dir name the defect kinds (as MVTec's test/<defect>).
            defect = relative.parts[0] if len(relative.parts) > 1 else "defect"
            name = relative.as_posix() if len(relative.parts) > 1 else f"defect/{relative.name}"
            test.append(Sample(image, 1, masks.get(image), name, defect))
    elif data.mask_dir:
        raise InspectorError(
            "data.mask_dir is set but data.abnormal_dir is not; give the anomalous images too"
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
