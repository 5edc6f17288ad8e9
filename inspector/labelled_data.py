"""Labelled image folders without torch: which images are good, which defective, and their masks.

Used by ``inspector calibrate MODEL`` and ``inspector eval MODEL`` on the base install. The rules are
those of the training readers (``inspector.training.data.mvtec`` and ``.folder``), which import torch:

- an MVTec AD category: ``test/good/`` normal, ``test/<defect>/`` anomalous, masks in
  ``ground_truth/<defect>/<image stem>_mask.png`` (every anomalous image needs one);
- folders of good and defective images (searched recursively; a defective image's first sub-folder
  names its defect kind) with an optional mask folder, masks named ``<stem>.png`` or ``<stem>_mask.png``
  at the same relative place, or anywhere in it when the stem is unique there.

Masks are read as the training's ``load_mask`` reads them: gray, above 127 is defect, resized to the
model's input size as floats and thresholded at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.io import IMAGE_EXTENSIONS, display_path, is_image_name, list_images
from inspector.preprocess import resize_image

MASK_SUFFIX = "_mask"
#: The sub-folders of a ``--data`` folder in the good/defective layout.
GOOD_DIR, DEFECTIVE_DIR, MASKS_DIR = "good", "defective", "masks"


@dataclass
class LabelledImage:
    """An image file, its label (0 normal, 1 anomalous), its mask file (or None), name and defect kind."""

    path: Path
    label: int
    mask: Path | None
    name: str
    defect: str = "good"


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of ``folder``: :func:`inspector.io.list_images` less hidden entries and non-files."""
    return [
        path
        for key, path in list_images(folder, recursive=recursive)
        if not any(part.startswith(".") for part in key.split("/")) and path.is_file()
    ]


def dataset_images(
    data: str | Path, category: str | None = None, default_category: str | None = None
) -> tuple[list[LabelledImage], dict[str, str]]:
    """The labelled images of ``--data``, and what they are (``{"dataset": ..., "category": ..., "root": ...}``).

    ``data`` is an MVTec category folder (it holds ``test/``), a folder of MVTec categories with
    ``category`` (or ``default_category``, the model's own, when that sub-folder exists), or a folder
    holding ``good/`` and ``defective/`` (and optionally ``masks/``).

    Raises:
        InspectorError: a missing folder, a layout this does not recognise, an empty folder, an
            anomalous image without its mask or a mask without its image.
    """
    root = Path(data)
    if not root.is_dir():
        raise InspectorError(f"{display_path(root)}: no such folder (--data)")
    if category:
        category_dir = root / category
        if not category_dir.is_dir():
            raise InspectorError(
                f"category '{category}' not found in {display_path(root)}; existing categories: "
                f"{', '.join(_categories(root)) or 'none (expected <category>/test)'}"
            )
        return mvtec_test_images(category_dir), _described("mvtec", category, root)
    if (root / "test").is_dir():
        return mvtec_test_images(root), _described("mvtec", root.name, root.parent)
    if (root / GOOD_DIR).is_dir():
        defective = root / DEFECTIVE_DIR
        masks = root / MASKS_DIR
        images = folder_images(
            root / GOOD_DIR, defective if defective.is_dir() else None, masks if masks.is_dir() else None
        )
        return images, _described("folder", root.name, root)
    if default_category and (root / default_category / "test").is_dir():
        return mvtec_test_images(root / default_category), _described("mvtec", default_category, root)
    categories = _categories(root)
    if categories:
        raise InspectorError(
            f"{display_path(root)} holds MVTec categories; pass --category NAME, one of: {', '.join(categories)}"
        )
    raise InspectorError(
        f"{display_path(root)}: no test/ (an MVTec category) nor {GOOD_DIR}/ and {DEFECTIVE_DIR}/ folders; "
        f"give an MVTec category folder or a folder holding {GOOD_DIR}/, {DEFECTIVE_DIR}/ and optionally {MASKS_DIR}/"
    )


def mvtec_test_images(category_dir: Path) -> list[LabelledImage]:
    """The test images of one MVTec AD category, good ones and defective ones with their masks."""
    test_dir, truth_dir = category_dir / "test", category_dir / "ground_truth"
    if not test_dir.is_dir():
        raise InspectorError(
            f"{display_path(test_dir)} not found; an MVTec category needs test/good and test/<defect> folders"
        )
    images: list[LabelledImage] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        for path in image_files(defect_dir):
            if defect == "good":
                images.append(LabelledImage(path, 0, None, f"good/{path.name}", "good"))
                continue
            mask = _mvtec_mask(truth_dir / defect, path)
            if mask is None:
                expected = truth_dir / defect / f"{path.stem}{MASK_SUFFIX}.png"
                raise InspectorError(
                    f"{display_path(path)} has no mask (expected {display_path(expected)}); "
                    "add the mask or remove the image"
                )
            images.append(LabelledImage(path, 1, mask, f"{defect}/{path.name}", defect))
    if not images:
        raise InspectorError(
            f"{display_path(test_dir)} holds no images; add test/good and test/<defect> images"
        )
    return images


def folder_images(
    good: Path | None, defective: Path | None = None, mask_dir: Path | None = None
) -> list[LabelledImage]:
    """Good images (label 0) and defective ones (label 1, with their masks when ``mask_dir`` is given).

    Raises:
        InspectorError: a folder missing or without images, masks without defective images, an anomalous
            image without a mask or a mask that matches no image.
    """
    images: list[LabelledImage] = []
    if good is not None:
        for path in _images(good, "good images"):
            images.append(LabelledImage(path, 0, None, f"good/{path.relative_to(good).as_posix()}", "good"))
    if mask_dir is not None and defective is None:
        raise InspectorError("masks were given but no defective images; give the defective folder too")
    if defective is not None:
        paths = _images(defective, "defective images")
        masks = _match_masks(defective, paths, mask_dir) if mask_dir is not None else {}
        for path in paths:
            relative = path.relative_to(defective)
            kind = relative.parts[0] if len(relative.parts) > 1 else "defect"
            name = relative.as_posix() if len(relative.parts) > 1 else f"defect/{relative.name}"
            images.append(LabelledImage(path, 1, masks.get(path), name, kind))
    return images


def load_mask(path: Path, image_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A mask file at ``size`` as bool ``[H, W]``: gray above 127, resized as floats, thresholded at 0.5.

    Raises:
        InspectorError: the mask is unreadable or its size differs from its image's.
    """
    mask = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InspectorError(f"{display_path(path)}: mask is not a readable image; replace or remove it")
    if mask.shape[:2] != tuple(image_shape):
        raise InspectorError(
            f"{display_path(path)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image_shape[1]}x{image_shape[0]}; masks must match their images"
        )
    resized = resize_image((mask > 127).astype(np.float32), size)
    return resized >= 0.5


def _described(dataset: str, category: str, root: Path) -> dict[str, str]:
    return {"dataset": dataset, "category": category, "root": str(root)}


def _categories(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "test").is_dir())


def _images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise InspectorError(f"{display_path(folder)} ({what}): no such folder")
    found = image_files(folder, recursive=True)
    if not found:
        raise InspectorError(
            f"{display_path(folder)} ({what}) holds no images; image files end in {', '.join(IMAGE_EXTENSIONS)}"
        )
    return found


def _mvtec_mask(mask_folder: Path, image: Path) -> Path | None:
    for candidate in sorted(mask_folder.glob(f"{image.stem}{MASK_SUFFIX}.*")):
        if is_image_name(candidate):
            return candidate
    return None


def _mask_key(relative: Path) -> str:
    return (relative.parent / relative.stem.removesuffix(MASK_SUFFIX)).as_posix()


def _match_masks(defective: Path, images: list[Path], mask_dir: Path) -> dict[Path, Path]:
    """Each defective image's mask; every image needs one and every mask needs an image."""
    masks = _images(mask_dir, "masks")
    by_key = {_mask_key(mask.relative_to(mask_dir)): mask for mask in masks}
    by_stem: dict[str, list[Path]] = {}
    for key, mask in by_key.items():
        by_stem.setdefault(Path(key).name, []).append(mask)
    matched: dict[Path, Path] = {}
    for image in images:
        relative = image.relative_to(defective)
        mask = by_key.get((relative.parent / relative.stem).as_posix())
        if mask is None and len(by_stem.get(image.stem, [])) == 1:
            mask = by_stem[image.stem][0]
        if mask is None:
            raise InspectorError(
                f"{display_path(image)} has no mask in {display_path(mask_dir)} (expected {image.stem}.png or "
                f"{image.stem}{MASK_SUFFIX}.png); add the mask or remove the image"
            )
        matched[image] = mask
    unused = sorted(set(masks) - set(matched.values()))
    if unused:
        more = f" (and {len(unused) - 1} more)" if len(unused) > 1 else ""
        raise InspectorError(
            f"{display_path(unused[0])} matches no image in {display_path(defective)}{more}; name masks "
            f"<image stem>.png or <image stem>{MASK_SUFFIX}.png, or remove it"
        )
    return matched
