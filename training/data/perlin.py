"""Perlin noise and the DRAEM anomaly-region masks made from it, in vectorised numpy."""

from __future__ import annotations

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], scale_y: int, scale_x: int, rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise of ``shape`` with ``scale_y`` x ``scale_x`` lattice cells, float32 in about [-1, 1].

    Any shape works: the lattice need not divide the image size.
    """
    height, width = int(shape[0]), int(shape[1])
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(scale_y + 1, scale_x + 1))
    grad_y, grad_x = np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)

    pos_y = np.arange(height, dtype=np.float32) * np.float32(scale_y / height)
    pos_x = np.arange(width, dtype=np.float32) * np.float32(scale_x / width)
    cell_y, cell_x = pos_y.astype(np.int64), pos_x.astype(np.int64)
    frac_y = (pos_y - cell_y.astype(np.float32))[:, None]
    frac_x = (pos_x - cell_x.astype(np.float32))[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # Dot product of the corner's gradient with the offset from that corner; indexing rows then
        # columns with 1-D index arrays is much faster than one 2-D fancy index.
        rows, cols = cell_y + dy, cell_x + dx
        return grad_y[rows][:, cols] * (frac_y - dy) + grad_x[rows][:, cols] * (frac_x - dx)

    fade_y, fade_x = _fade(frac_y), _fade(frac_x)
    top_left, bottom_left = corner(0, 0), corner(1, 0)
    top = top_left + fade_x * (corner(0, 1) - top_left)
    bottom = bottom_left + fade_x * (corner(1, 1) - bottom_left)
    # sqrt(2) brings the theoretical range of 2-D Perlin noise (+-1/sqrt(2)) to +-1.
    return np.float32(np.sqrt(2.0)) * (top + fade_y * (bottom - top))


def rotate(image: np.ndarray, angle: float, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """Rotate an image by ``angle`` degrees about its centre, keeping its size."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2.0, (height - 1) / 2.0), float(angle), 1.0)
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=border)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    min_scale_exp: int = 0,
    max_scale_exp: int = 6,
    threshold: float = 0.5,
    max_rotation: float = 90.0,
) -> np.ndarray:
    """A DRAEM anomaly-region mask: float32 ``[H, W]`` in {0, 1}.

    The lattice scale of each axis is ``2**k`` with ``k`` drawn independently in
    ``[min_scale_exp, max_scale_exp)``, the noise is rotated by U(-max_rotation, max_rotation) degrees and
    thresholded. The mask can be empty (callers treat that sample as clean).
    """
    scale_y = 2 ** int(rng.integers(min_scale_exp, max_scale_exp))
    scale_x = 2 ** int(rng.integers(min_scale_exp, max_scale_exp))
    noise = perlin_noise(shape, scale_y, scale_x, rng)
    angle = rng.uniform(-max_rotation, max_rotation)
    # Corners uncovered by the rotation read 0 (below the threshold): no anomaly there.
    noise = rotate(noise, angle)
    return (noise > threshold).astype(np.float32)


def perlin_line_mask(shape: tuple[int, int], rng: np.random.Generator, max_width: int = 4) -> np.ndarray:
    """A thin-line anomaly mask: float32 ``[H, W]`` in {0, 1}, 1 to ``max_width`` pixels wide.

    The zero crossings of Perlin noise are smooth wandering curves; a coarse Perlin region keeps parts of
    them, so a mask holds a few curve segments, the shape of scratches, cracks, hairs and creases, which
    DRAEM's blob masks never make.
    """
    # 2 to 8 lattice cells per side: smooth curves, not squiggles.
    scale_y = 2 ** int(rng.integers(1, 4))
    scale_x = 2 ** int(rng.integers(1, 4))
    positive = (perlin_noise(shape, scale_y, scale_x, rng) > 0).astype(np.uint8)
    lines = cv2.morphologyEx(positive, cv2.MORPH_GRADIENT, np.ones((2, 2), np.uint8))
    lines &= perlin_mask(shape, rng, max_scale_exp=3, threshold=0.3).astype(np.uint8)
    width = int(rng.integers(1, max_width + 1))
    if width > 2:
        lines = cv2.dilate(lines, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (width - 1, width - 1)))
    return lines.astype(np.float32)
