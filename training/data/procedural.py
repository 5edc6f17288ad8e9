"""Small procedural-image helpers shared by the built-in dataset generator and the fallback textures."""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cell: float) -> np.ndarray:
    """Band-limited noise with features about ``cell`` pixels wide: float32 ``[H, W]``, mean 0, std 1.

    White noise on a coarse grid, enlarged by bicubic interpolation (much faster than a large blur).
    """
    height, width = int(shape[0]), int(shape[1])
    cell = max(float(cell), 1.0)
    grid_h, grid_w = int(np.ceil(height / cell)) + 3, int(np.ceil(width / cell)) + 3
    coarse = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    # Bicubic interpolation straight onto the output grid (a resize would also compute the margin),
    # starting one cell in: interpolation is distorted next to the coarse grid's border.
    scale = 1.0 / cell
    to_coarse = np.float32([[scale, 0.0, 1.0], [0.0, scale, 1.0]])
    field = cv2.warpAffine(
        coarse,
        to_coarse,
        (width, height),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT,
    )
    return (field - field.mean()) / (field.std() + 1e-6)


def fractal_noise(
    shape: tuple[int, int], rng: np.random.Generator, cell: float, octaves: int = 4, gain: float = 0.5
) -> np.ndarray:
    """Sum of :func:`smooth_noise` octaves (cell halved, amplitude times ``gain`` each time), std 1."""
    total = np.zeros(shape, np.float32)
    amplitude = 1.0
    for _ in range(octaves):
        total += amplitude * smooth_noise(shape, rng, cell)
        cell /= 2.0
        amplitude *= gain
    return total / (total.std() + 1e-6)


def streak_noise(
    shape: tuple[int, int], rng: np.random.Generator, length: int, width: float = 1.0
) -> np.ndarray:
    """Noise stretched along x into streaks about ``length`` pixels long (brushing, wood fibres), std 1."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if width > 1.0:
        noise = cv2.GaussianBlur(noise, (0, 0), sigmaX=0.1, sigmaY=width / 2.0)
    streaks = cv2.blur(noise, (max(1, int(length)), 1), borderType=cv2.BORDER_REFLECT)
    return (streaks - streaks.mean()) / (streaks.std() + 1e-6)


def colourize(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] ``[H, W]`` linearly between two RGB colours: float32 ``[H, W, 3]``."""
    values = np.clip(values, 0.0, 1.0)[:, :, None]
    return np.asarray(low, np.float32) + values * (np.asarray(high, np.float32) - np.asarray(low, np.float32))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] as ``uint8`` (rounded, clipped)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
