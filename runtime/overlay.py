"""Draw an inspection onto the original image: heatmap where the map is high, region contours, a badge."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.io import display_path
from inspector.runtime import SAVE_CHOICES  # noqa: F401 - re-exported with the other overlay names
from inspector.runtime.scoring import Inspection

COLORMAP = cv2.COLORMAP_INFERNO  # perceptually uniform and readable in grayscale, unlike JET
MAX_ALPHA = 0.6
FADE = 0.15  # the heatmap fades in over this span of normalised map values below the pixel threshold
CONTOUR_BGR = (255, 255, 0)  # cyan: stands out against INFERNO's reds and yellows and most surfaces
ANOMALOUS_BGR = (40, 40, 220)
NORMAL_BGR = (60, 160, 40)
# The colormap as a 256-entry table, built once: cv2.applyColorMap rebuilds it on every call.
_LEVELS = np.arange(256, dtype=np.uint8).reshape(256, 1)
_COLORMAP_TABLE = cv2.applyColorMap(_LEVELS, COLORMAP).reshape(1, 256, 3)


def render_overlay(image_rgb: np.ndarray, inspection: Inspection) -> np.ndarray:
    """The original image (BGR, its own resolution) with the anomaly map blended in only where it is high.

    The map is laid onto the image pixel for pixel (the model saw the whole image resized, never cropped);
    colour fades in just below the inspection's pixel threshold and is full above it.
    """
    pixel_threshold = inspection.pixel_threshold
    image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    start = max(0.0, pixel_threshold - FADE)
    visible = inspection.map_window(start)  # only where the map is high enough to be coloured
    if visible is not None:
        (x, y, width, height), heat = visible
        gain = np.float32(MAX_ALPHA / max(pixel_threshold - start, 1e-6))
        alpha = np.clip((heat - np.float32(start)) * gain, np.float32(0.0), np.float32(MAX_ALPHA))
        # The normalised map lies in [0, 1]; convertScaleAbs scales, rounds and saturates to uint8 in one pass.
        heat_bytes = cv2.convertScaleAbs(heat, alpha=255.0)
        colored = cv2.LUT(cv2.cvtColor(heat_bytes, cv2.COLOR_GRAY2BGR), _COLORMAP_TABLE)
        region = image_bgr[y : y + height, x : x + width]
        region[:] = cv2.blendLinear(region, colored, np.float32(1.0) - alpha, alpha)
    thickness = max(1, round(min(image_bgr.shape[:2]) / 300))
    contours = inspection.defect_contours()
    if contours:
        cv2.drawContours(image_bgr, contours, -1, CONTOUR_BGR, thickness, lineType=cv2.LINE_AA)
    draw_badge(
        image_bgr,
        f"{inspection.label.upper()} {inspection.score:.2f}",
        ANOMALOUS_BGR if inspection.anomalous else NORMAL_BGR,
    )
    return image_bgr


def draw_badge(image_bgr: np.ndarray, text: str, color: tuple[int, int, int], row: int = 0) -> None:
    """A filled label box in the top-left corner (``row`` stacks several), sized to the image."""
    scale = max(0.4, min(image_bgr.shape[:2]) / 500)
    thickness = max(1, round(scale * 1.5))
    (text_width, text_height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(3, text_height // 3)
    top = row * (text_height + baseline + 2 * pad)
    bottom = top + text_height + baseline + 2 * pad
    cv2.rectangle(image_bgr, (0, top), (text_width + 2 * pad, bottom), color, cv2.FILLED)
    cv2.putText(
        image_bgr,
        text,
        (pad, bottom - baseline - pad),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )


def render_mask(inspection: Inspection) -> np.ndarray:
    """The defect mask at the original resolution: 255 where defective, 0 elsewhere."""
    return inspection.defect_mask().astype(np.uint8) * 255


OVERLAYS_DIR = "overlays"
OVERLAY_SUFFIX = ".jpg"
MASK_SUFFIX = ".png"


def wants_overlay(save: str, anomalous: bool) -> bool:
    """Whether ``--save`` asks for this image's overlay."""
    return save == "all" or (save == "anomalous" and anomalous)


def output_stems(keys: Sequence[str]) -> dict[str, str]:
    """The name (without extension) each image's overlay and mask get: its path without the image
    extension (``line2/part_01.png`` -> ``line2/part_01``, written as ``line2/part_01.jpg``).

    Only a name that clashes with an earlier key's (``part.png`` and ``part.tif``; compared without
    regard to case, for case-insensitive file systems) gets a suffix: ``part-2``, ``part-3``... never one
    that another key uses. Names follow from the whole list, so a resumed run names the same way.
    """
    stems = {key: PurePosixPath(key).with_suffix("").as_posix() for key in keys}
    first: dict[str, str] = {}
    for key in keys:
        first.setdefault(stems[key].casefold(), key)
    taken = set(first)
    for key in keys:
        stem = stems[key]
        if first[stem.casefold()] == key:
            continue
        number = 2
        while f"{stem}-{number}".casefold() in taken:
            number += 1
        stems[key] = f"{stem}-{number}"
        taken.add(stems[key].casefold())
    return stems


def free_name(folder: Path, stem: str, suffix: str) -> str:
    """``stem + suffix``, or ``stem-2 + suffix``... when a file of that name is already in ``folder``
    (an earlier run's overlay that its own event log points to)."""
    name, number = stem + suffix, 2
    while (folder / name).exists():
        name, number = f"{stem}-{number}{suffix}", number + 1
    return name


def write_image(path: str | Path, image: np.ndarray, quality: int = 90) -> None:
    """Write an image by extension (.jpg/.png); works with non-ASCII paths on every platform.

    Raises:
        OSError: naming ``path`` (a full disk, a read-only folder); a partly written file is removed.
    """
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(path.suffix, image, params)
    if not ok:
        raise InspectorError(f"{display_path(path)}: cannot encode an image of this type")
    path.parent.mkdir(parents=True, exist_ok=True)
    opened = False
    try:
        with open(path, "wb") as handle:
            opened = True
            handle.write(encoded.tobytes())
    except OSError as error:
        if opened:
            with suppress(OSError):
                path.unlink()
        raise OSError(error.errno, error.strerror, str(path)) from error
