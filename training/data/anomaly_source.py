"""Anomaly textures for DRAEM-style synthesis: a folder of images (DTD or any other), or generated ones.

DRAEM pastes pieces of Describable Textures Dataset (DTD) images into normal images. DTD cannot be
downloaded on every machine, so without a source the textures are generated procedurally (with a warning:
a real texture set gives the detector more varied anomalies to learn from).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.preprocess import read_image, resize_image, to_uint8_rgb
from inspector.training.data.mvtec import image_files
from inspector.training.data.procedural import colourize, fractal_noise, smooth_noise, to_uint8

from .gimp_pattern import is_pattern_name, read_gimp_pattern

log = logging.getLogger(__name__)

#: How many textures the fallback generates: enough variety, generated in about a second.
GENERATED_TEXTURE_COUNT = 96
GENERATED_TEXTURE_SIZE = 256


class AnomalySource:
    """Random access to anomaly textures, read from a folder of images searched recursively.

    Works with the DTD layout (``images/<class>/*.jpg``) as with a flat folder. Images are read when
    sampled, so a large texture set costs no memory. GIMP patterns (``.pat``) count as images, so GIMP's
    pattern folder (``/usr/share/gimp/2.0/patterns``) works as a source too.

    Example:
        >>> source = AnomalySource("dtd/images")
        >>> texture = source.sample(np.random.default_rng(0), (128, 128))  # RGB uint8 [128, 128, 3]
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise InspectorError(
                f"anomaly source {root} is not a folder; give a folder of texture images (e.g. DTD's images/)"
            )
        patterns = [
            p
            for p in root.rglob("*")
            if is_pattern_name(p)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.is_file()
        ]
        paths = sorted(image_files(root, recursive=True) + patterns)
        if not paths:
            raise InspectorError(
                f"anomaly source {root} holds no images; give a folder of texture images (e.g. DTD's images/)"
            )
        self._items: list[Path | np.ndarray] = list(paths)
        self.description = str(root)

    @classmethod
    def from_images(
        cls, images: Sequence[np.ndarray], description: str = "in-memory images"
    ) -> AnomalySource:
        """A source over images already in memory (RGB or gray ``uint8``)."""
        if len(images) == 0:
            raise InspectorError(f"anomaly source ({description}) holds no images")
        source = cls.__new__(cls)
        source._items = [to_uint8_rgb(np.asarray(image)) for image in images]
        source.description = description
        return source

    def __len__(self) -> int:
        return len(self._items)

    def load(self, index: int) -> np.ndarray:
        """Texture ``index`` as RGB ``uint8`` ``[H, W, 3]`` at its own size."""
        item = self._items[index]
        if isinstance(item, np.ndarray):
            return item
        return read_gimp_pattern(item) if is_pattern_name(item) else read_image(item)

    def sample(self, rng: np.random.Generator, size: Sequence[int]) -> np.ndarray:
        """A random texture resized (whole, as DRAEM does) to ``size`` = (height, width): RGB ``uint8``."""
        return resize_image(self.load(int(rng.integers(len(self._items)))), size)


def anomaly_source_from_config(config: TrainConfig) -> AnomalySource:
    """The folder named by ``config.data.anomaly_source``, or generated textures with a warning."""
    if config.data.anomaly_source:
        return AnomalySource(config.data.anomaly_source)
    log.warning(
        "no anomaly source given: using %d generated textures for synthetic anomalies; a real texture set "
        "such as DTD is recommended (--anomaly-source DIR, e.g. dtd/images)",
        GENERATED_TEXTURE_COUNT,
    )
    textures = generated_textures(GENERATED_TEXTURE_COUNT, GENERATED_TEXTURE_SIZE, seed=config.seed)
    return AnomalySource.from_images(textures, description="generated textures")


def generated_textures(count: int, size: int | Sequence[int], seed: int) -> list[np.ndarray]:
    """``count`` procedural textures (noise, stripes, checks, cells, dots, marble): RGB ``uint8``.

    Deterministic for a seed; texture ``i`` does not depend on ``count``.
    """
    shape = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    makers = (_noise_texture, _stripe_texture, _check_texture, _cell_texture, _dot_texture, _marble_texture)
    textures = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        maker = makers[int(rng.integers(len(makers)))]
        textures.append(to_uint8(maker(shape, rng)))
    return textures


def _colours(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=(count, 3)).astype(np.float32)


def _rotated_coordinates(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0.0, np.pi)
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return xs * np.cos(angle) + ys * np.sin(angle), -xs * np.sin(angle) + ys * np.cos(angle)


def _noise_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    values = fractal_noise(shape, rng, cell=rng.uniform(8, 64), octaves=int(rng.integers(2, 5)))
    low, mid, high = _colours(rng, 3)
    t = np.clip(values * 0.25 + 0.5, 0.0, 1.0)
    return np.where(t[:, :, None] < 0.5, colourize(2 * t, low, mid), colourize(2 * t - 1, mid, high))


def _stripe_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    u, _ = _rotated_coordinates(shape, rng)
    warp = smooth_noise(shape, rng, cell=rng.uniform(16, 64)) * rng.uniform(0.0, 3.0)
    period = rng.uniform(4, 32)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * u / period + warp)
    if rng.random() < 0.5:
        wave = (wave > 0.5).astype(np.float32)
    low, high = _colours(rng, 2)
    return colourize(wave, low, high)


def _check_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    u, v = _rotated_coordinates(shape, rng)
    period = rng.uniform(6, 40)
    parity = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    grain = 0.15 * fractal_noise(shape, rng, cell=8, octaves=2)
    low, high = _colours(rng, 2)
    return colourize(parity + grain, low, high)


def _cell_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    values = smooth_noise(shape, rng, cell=rng.uniform(6, 40))
    levels = int(rng.integers(2, 6))
    bins = np.digitize(values, np.quantile(values, np.linspace(0, 1, levels + 1)[1:-1]))
    palette = _colours(rng, levels)
    return palette[bins] * (1.0 + 0.1 * fractal_noise(shape, rng, cell=6, octaves=2))[:, :, None]


def _dot_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    background, *dot_colours = _colours(rng, 4)
    image = np.empty((*shape, 3), np.float32)
    image[:] = background
    radius_max = rng.uniform(2, 16)
    for _ in range(int(rng.integers(20, 200))):
        centre = (int(rng.integers(shape[1])), int(rng.integers(shape[0])))
        radius = int(rng.uniform(1, radius_max))
        colour = dot_colours[int(rng.integers(len(dot_colours)))]
        cv2.circle(image, centre, radius, colour.tolist(), -1, lineType=cv2.LINE_AA)
    return image


def _marble_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    u, _ = _rotated_coordinates(shape, rng)
    turbulence = fractal_noise(shape, rng, cell=rng.uniform(32, 96), octaves=4)
    veins = np.abs(np.sin(2 * np.pi * u / rng.uniform(24, 96) + rng.uniform(1.0, 4.0) * turbulence))
    low, high = _colours(rng, 2)
    return colourize(veins ** rng.uniform(0.3, 3.0), low, high)
