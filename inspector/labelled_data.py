"""Labelled image folders without torch: which images are good, which defective, and their masks.

The one place these rules live: ``inspector calibrate MODEL`` and ``inspector eval MODEL`` use them on the
base install, and the training readers (``inspector.training.data.mvtec`` and ``.folder``, and
``.dataset``'s mask loading) call them too.

- an MVTec AD category: ``test/good/`` normal, ``test/<defect>/`` anomalous, masks in
  ``ground_truth/<defect>/<image stem>_mask.png`` (every anomalous image needs one, every mask an image);
- folders of good and defective images (searched recursively; a defective image's first sub-folder
  names its defect kind) with an optional mask folder, masks named ``<stem>.png`` or ``<stem>_mask.png``
  at the same relative place, or anywhere in it when the stem is unique there.

Masks are read gray, above 127 is defect, resized to the model's input size as floats and thresholded
at 0.5 (so edges are neither eroded nor dilated).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.io import IMAGE_EXTENSIONS, display_path, list_images
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


@dataclass(frozen=True)
class FolderNames:
    """What error messages call the folders of :func:`folder_images`: plain words by default, the
    options or config keys that named them otherwise (e.g. ``data.abnormal_dir``)."""

    good: str = "good images"
    defective: str = "defective images"
    masks: str = "masks"


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of ``folder``: :func:`inspector.io.list_images` less hidden entries and non-files."""
    return [
        path
        for key, path in list_images(folder, recursive=recursive)
        if not any(part.startswith(".") for part in key.split("/")) and path.is_file()
    ]


def images_in(folder: Path, what: str) -> list[Path]:
    """The image files under ``folder``, searched recursively; ``what`` names it in errors.

    Raises:
        InspectorError: the folder is missing or holds no images.
    """
    if not folder.is_dir():
        raise InspectorError(f"{display_path(folder)} ({what}) not found; give an existing folder of images")
    found = image_files(folder, recursive=True)
    if not found:
        raise InspectorError(
            f"{display_path(folder)} ({what}) holds no images (image files end in "
            f"{', '.join(IMAGE_EXTENSIONS)}); add images or fix the path"
        )
    return found


def mvtec_categories(root: Path, split: str = "test") -> list[str]:
    """The MVTec categories in ``root``: its sub-folders that hold ``split/`` (``test`` or ``train``)."""
    return sorted(p.name for p in root.iterdir() if (p / split).is_dir())


def mvtec_category(root: Path, category: str, split: str = "test") -> Path:
    """The folder of ``category`` in ``root``.

    Raises:
        InspectorError: no such category; the message lists those of ``root`` (holding ``split/``).
    """
    category_dir = root / category
    if not category_dir.is_dir():
        raise InspectorError(
            f"category '{category}' not found in {display_path(root)}; existing categories: "
            f"{', '.join(mvtec_categories(root, split)) or f'none (expected <category>/{split})'}"
        )
    return category_dir


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
        return mvtec_test_images(mvtec_category(root, category)), _described("mvtec", category, root)
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
    categories = mvtec_categories(root)
    if categories:
        raise InspectorError(
            f"{display_path(root)} holds MVTec categories; pass --category NAME, one of: {', '.join(categories)}"
        )
    raise InspectorError(
        f"{display_path(root)}: no test/ (an MVTec category) nor {GOOD_DIR}/ and {DEFECTIVE_DIR}/ folders; "
        f"give an MVTec category folder or a folder holding {GOOD_DIR}/, {DEFECTIVE_DIR}/ and optionally {MASKS_DIR}/"
    )


def mvtec_test_images(category_dir: Path) -> list[LabelledImage]:
    """The test images of one MVTec AD category, good ones and defective ones with their masks.

    Raises:
        InspectorError: no ``test/`` or no images in it, an anomalous image without its mask, a mask
            that matches no image, masks of a defect kind that has no ``test/<defect>`` folder.
    """
    test_dir, truth_dir = category_dir / "test", category_dir / "ground_truth"
    if not test_dir.is_dir():
        raise InspectorError(
            f"{display_path(test_dir)} not found; an MVTec category needs test/good and test/<defect> folders"
        )
    images: list[LabelledImage] = []
    missing: list[Path] = []
    for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect = defect_dir.name
        paths = image_files(defect_dir)
        if defect == "good":
            images += [LabelledImage(path, 0, None, f"good/{path.name}", "good") for path in paths]
            continue
        masks = _mvtec_masks(truth_dir / defect, defect_dir, paths)
        missing += [path for path in paths if path not in masks]
        images += [LabelledImage(path, 1, masks.get(path), f"{defect}/{path.name}", defect) for path in paths]
    if missing:
        expected = truth_dir / missing[0].parent.name / f"{missing[0].stem}{MASK_SUFFIX}.png"
        raise InspectorError(
            f"{display_path(missing[0])} has no mask (expected {display_path(expected)}){_more(missing)}; "
            "add the mask or remove the image"
        )
    if truth_dir.is_dir():
        for mask_dir in sorted(p for p in truth_dir.iterdir() if p.is_dir()):
            if not (test_dir / mask_dir.name).is_dir() and image_files(mask_dir):
                raise InspectorError(
                    f"{display_path(mask_dir)} has masks but there is no {display_path(test_dir / mask_dir.name)} "
                    "folder; add the images or remove the masks"
                )
    if not images:
        raise InspectorError(
            f"{display_path(test_dir)} holds no images; add test/good and test/<defect> images"
        )
    return images


def folder_images(
    good: Path | None,
    defective: Path | None = None,
    mask_dir: Path | None = None,
    names: FolderNames = FolderNames(),
) -> list[LabelledImage]:
    """Good images (label 0) and defective ones (label 1, with their masks when ``mask_dir`` is given).

    Raises:
        InspectorError: a folder missing or without images, masks without defective images, an anomalous
            image without a mask or a mask that matches no image (``names`` names the folders).
    """
    images: list[LabelledImage] = []
    if good is not None:
        for path in images_in(good, names.good):
            images.append(LabelledImage(path, 0, None, f"good/{path.relative_to(good).as_posix()}", "good"))
    if mask_dir is not None and defective is None:
        raise InspectorError(f"{names.masks} given without {names.defective}; give the defective images too")
    if defective is not None:
        paths = images_in(defective, names.defective)
        masks = _match_masks(defective, paths, mask_dir, names.masks) if mask_dir is not None else {}
        for path in paths:
            relative = path.relative_to(defective)
            kind = relative.parts[0] if len(relative.parts) > 1 else "defect"
            name = relative.as_posix() if len(relative.parts) > 1 else f"defect/{relative.name}"
            images.append(LabelledImage(path, 1, masks.get(path), name, kind))
    return images


def load_mask(path: Path, image_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A mask file at ``size`` as bool ``[H, W]``: gray above 127 is defect, then :func:`fit_mask`.

    Raises:
        InspectorError: the mask is unreadable or its size differs from its image's.
    """
    mask = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise InspectorError(f"{display_path(path)}: mask is not a readable image; replace or remove it")
    return fit_mask(mask > 127, image_shape, size, display_path(path))


def fit_mask(
    mask: np.ndarray, image_shape: tuple[int, int], size: tuple[int, int], source: str
) -> np.ndarray:
    """A 0/1 mask ``[H, W]`` of an image of ``image_shape``, at ``size`` as bool: resized as floats and
    thresholded at 0.5, so edges are neither eroded nor dilated. ``source`` names the mask in errors.

    Raises:
        InspectorError: the mask's size differs from its image's.
    """
    if mask.shape[:2] != tuple(image_shape):
        raise InspectorError(
            f"{source}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
            f"{image_shape[1]}x{image_shape[0]}; masks must match their images"
        )
    return resize_image(mask.astype(np.float32), size) >= 0.5


def _described(dataset: str, category: str, root: Path) -> dict[str, str]:
    return {"dataset": dataset, "category": category, "root": str(root)}


def _more(items: list[Path]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _mvtec_masks(mask_folder: Path, image_folder: Path, images: list[Path]) -> dict[Path, Path]:
    """The mask ``<image stem>_mask.<ext>`` of each image that has one; a mask with no image is an error."""
    masks = image_files(mask_folder) if mask_folder.is_dir() else []
    by_stem: dict[str, Path] = {}
    for mask in masks:
        by_stem.setdefault(mask.stem, mask)
    wanted = {f"{image.stem}{MASK_SUFFIX}" for image in images}
    orphans = [mask for mask in masks if mask.stem not in wanted]
    if orphans:
        raise InspectorError(
            f"{display_path(orphans[0])} matches no image in {display_path(image_folder)}{_more(orphans)}; "
            f"masks are named <image name>{MASK_SUFFIX}.png: rename or remove it"
        )
    return {image: by_stem[key] for image in images if (key := f"{image.stem}{MASK_SUFFIX}") in by_stem}


def _mask_key(relative: Path) -> str:
    return (relative.parent / relative.stem.removesuffix(MASK_SUFFIX)).as_posix()


def _match_masks(defective: Path, images: list[Path], mask_dir: Path, what: str) -> dict[Path, Path]:
    """Each defective image's mask; every image needs one and every mask needs an image."""
    masks = images_in(mask_dir, what)
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
        raise InspectorError(
            f"{display_path(unused[0])} matches no image in {display_path(defective)}{_more(unused)}; name masks "
            f"<image stem>.png or <image stem>{MASK_SUFFIX}.png, or remove it"
        )
    return matched
