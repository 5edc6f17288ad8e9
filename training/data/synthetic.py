"""The built-in dataset: procedural textured surfaces with defects and exact masks, in the MVTec AD layout.

MVTec AD cannot be downloaded on every machine, so the quick start, the tests and the benchmarks use this
generated stand-in. Each category is a surface whose normal images vary (phase, tone, lighting, grain);
each defect kind alters the surface only inside its mask, so the ground truth is exact.

Layout written (as MVTec AD)::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.training.data.generated import write_generated_category
from inspector.training.data.procedural import colourize, fractal_noise, smooth_noise, streak_noise, to_uint8
from inspector.training.data.samples import Splits

DEFAULT_ROOT = Path("data/synthetic")
#: Surfaces, the first is the default category.
CATEGORIES = ("fabric", "metal", "wood", "granite")
#: Categories written as single-channel PNGs (like MVTec's grid, screw and zipper).
GRAY_CATEGORIES = ("metal",)
DEFECT_KINDS = ("scratch", "crack", "hole", "stain", "contamination")
#: Written in each generated category; bump when the images change so that old copies are replaced.
GENERATOR_VERSION = 1


# --- surfaces -------------------------------------------------------------------------------------


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return ys, xs


def _lighting(size: int, rng: np.random.Generator, strength: float) -> np.ndarray:
    return (1.0 + strength * smooth_noise((size, size), rng, cell=size / 2))[:, :, None]


def _fabric(size: int, rng: np.random.Generator) -> np.ndarray:
    """Plain-weave denim: blue warp and pale weft threads crossing over and under."""
    ys, xs = _grid(size)
    period = size / 22.0 * rng.uniform(0.97, 1.03)
    # Python floats keep the arithmetic in float32 (numpy scalars would promote it to float64).
    angle = float(np.deg2rad(rng.uniform(-2.0, 2.0)))
    cos, sin = float(np.cos(angle)) / period, float(np.sin(angle)) / period
    u = xs * cos + ys * sin + float(rng.uniform(0, 2))
    v = ys * cos - xs * sin + float(rng.uniform(0, 2))
    across_warp, across_weft = np.sin(np.pi * (u % 1.0)), np.sin(np.pi * (v % 1.0))
    warp_on_top = (np.floor(u) + np.floor(v)) % 2 == 0
    height = np.where(
        warp_on_top,
        np.sqrt(across_warp) * (0.8 + 0.2 * across_weft),
        np.sqrt(across_weft) * (0.8 + 0.2 * across_warp),
    )
    fibres = 0.05 * cv2.GaussianBlur(rng.standard_normal((size, size), dtype=np.float32), (0, 0), 0.8)
    warp = np.array([0.20, 0.30, 0.52], np.float32) * rng.uniform(0.95, 1.05)
    weft = np.array([0.80, 0.78, 0.72], np.float32) * rng.uniform(0.95, 1.05)
    colour = weft + warp_on_top[:, :, None].astype(np.float32) * (warp - weft)
    shade = (0.3 + 0.7 * height + fibres)[:, :, None]
    return colour * shade * _lighting(size, rng, 0.05)


def _metal(size: int, rng: np.random.Generator) -> np.ndarray:
    """Brushed steel: long horizontal streaks under a broad sheen (gray)."""
    ys, xs = _grid(size)
    streaks = 0.05 * streak_noise((size, size), rng, size // 3) + 0.03 * streak_noise(
        (size, size), rng, size // 12
    )
    phase, tilt = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3)
    sheen = 0.08 * np.cos(2 * np.pi * (xs + tilt * ys) / size * rng.uniform(0.6, 1.2) + phase)
    tone = (
        rng.uniform(0.55, 0.65) + streaks + sheen + 0.01 * rng.standard_normal((size, size), dtype=np.float32)
    )
    return np.repeat(tone[:, :, None], 3, axis=2)


def _wood(size: int, rng: np.random.Generator) -> np.ndarray:
    """Planed wood: growth rings running roughly along x, with fibres."""
    ys, xs = _grid(size)
    turbulence = fractal_noise((size, size), rng, cell=size / 3, octaves=3)
    rings_per_pixel = rng.uniform(9, 13) / size
    bend = 0.12 * size * np.sin(2 * np.pi * xs / size * rng.uniform(0.3, 0.8) + rng.uniform(0, 2 * np.pi))
    position = (ys + bend) * rings_per_pixel + 0.5 * turbulence + rng.uniform(0, 1)
    late_wood = (position % 1.0) ** 3
    fibres = 0.08 * streak_noise((size, size), rng, size // 4)
    light = np.array([0.80, 0.60, 0.40], np.float32) * rng.uniform(0.95, 1.05)
    dark = np.array([0.52, 0.33, 0.18], np.float32)
    return colourize(0.8 * late_wood + fibres + 0.1, light, dark) * _lighting(size, rng, 0.04)


def _granite(size: int, rng: np.random.Generator) -> np.ndarray:
    """Polished granite tile: mottled gray-pink base with dark, white and feldspar grains."""
    base = fractal_noise((size, size), rng, cell=size / 8, octaves=4)
    image = colourize(0.5 + 0.2 * base, np.array([0.52, 0.50, 0.50]), np.array([0.76, 0.70, 0.68]))
    grains = (
        (3.0, 1.5, (0.75, 0.55, 0.50)),  # feldspar
        (2.0, 1.7, (0.93, 0.92, 0.90)),  # quartz
        (1.5, 1.6, (0.12, 0.12, 0.14)),  # mica
    )
    for cell, level, colour in grains:
        field = smooth_noise((size, size), rng, cell=cell * size / 256)
        image[field > level] = colour
    return image * _lighting(size, rng, 0.03)


_SURFACES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "fabric": _fabric,
    "metal": _metal,
    "wood": _wood,
    "granite": _granite,
}


def render_surface(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A defect-free image of ``category``: float32 RGB ``[size, size, 3]`` in [0, 1]."""
    if category not in _SURFACES:
        raise InspectorError(
            f"unknown synthetic category '{category}'; choose one of {', '.join(CATEGORIES)}"
        )
    return np.clip(_SURFACES[category](size, rng), 0.0, 1.0).astype(np.float32)


# --- defects --------------------------------------------------------------------------------------
# Each defect draws a weight map (where and how strongly the surface is altered) and an appearance;
# the image is blended towards the appearance by the weight, and the mask is exactly where the weight
# is applied.


def _scaled(size: int, pixels_at_256: float) -> float:
    return pixels_at_256 * size / 256.0


def _curve(
    rng: np.random.Generator, start: np.ndarray, end: np.ndarray, bow: float, points: int = 40
) -> np.ndarray:
    """A quadratic Bezier from ``start`` to ``end`` bowed sideways by ``bow`` of its length."""
    direction = end - start
    normal = np.array([-direction[1], direction[0]])
    control = (start + end) / 2 + bow * normal
    t = np.linspace(0.0, 1.0, points)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _draw_polyline(weight: np.ndarray, points: np.ndarray, thickness: float) -> None:
    # Drawn with 4 bits of sub-pixel precision and antialiasing, so thin lines keep their shape.
    pts = np.round(points * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(weight, [pts], False, 1.0, max(1, round(thickness)), cv2.LINE_AA, shift=4)


def _scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    weight = np.zeros((size, size), np.float32)
    length = rng.uniform(0.25, 0.6) * size
    start = rng.uniform(0.15, 0.85, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 2, size - 3)
    _draw_polyline(
        weight, _curve(rng, start, end, rng.uniform(-0.15, 0.15)), _scaled(size, rng.uniform(2, 4))
    )
    if rng.random() < 0.7:  # bright: the surface is scraped open
        appearance = image + (1.0 - image) * rng.uniform(0.45, 0.75)
    else:
        appearance = image * rng.uniform(0.35, 0.6)
    return weight, appearance


def _crack(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size = image.shape[0]
    weight = np.zeros((size, size), np.float32)
    step = size / 40.0

    def walk(start: np.ndarray, heading: float, steps: int) -> np.ndarray:
        turns = np.cumsum(rng.normal(0.0, 0.45, steps))
        offsets = step * np.stack([np.cos(heading + turns), np.sin(heading + turns)], axis=1)
        return np.clip(start + np.concatenate([np.zeros((1, 2)), np.cumsum(offsets, axis=0)]), 1, size - 2)

    main = walk(rng.uniform(0.2, 0.8, 2) * size, rng.uniform(0, 2 * np.pi), int(rng.integers(10, 22)))
    _draw_polyline(weight, main, _scaled(size, rng.uniform(2, 3.5)))
    for _ in range(int(rng.integers(0, 3))):
        branch_from = main[int(rng.integers(1, len(main)))]
        _draw_polyline(
            weight, walk(branch_from, rng.uniform(0, 2 * np.pi), int(rng.integers(3, 8))), _scaled(size, 2)
        )
    return weight, image * rng.uniform(0.15, 0.35)


def _blob_outline(
    rng: np.random.Generator, centre: np.ndarray, radius: float, roughness: float
) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    wobble = np.zeros_like(angles)
    for harmonic in range(2, 6):
        wobble += rng.normal(0, roughness / harmonic) * np.cos(harmonic * angles + rng.uniform(0, 2 * np.pi))
    radii = radius * np.clip(1.0 + wobble, 0.4, 1.6)
    return centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _hole(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Missing material: the dark backing shows through an irregular opening."""
    size = image.shape[0]
    weight = np.zeros((size, size), np.float32)
    radius = rng.uniform(0.035, 0.08) * size
    centre = rng.uniform(radius * 1.5, size - radius * 1.5, 2)
    outline = _blob_outline(rng, centre, radius, roughness=0.5)
    cv2.fillPoly(weight, [np.round(outline * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    ys, xs = _grid(size)
    depth = np.clip(np.hypot(ys - centre[1], xs - centre[0]) / radius, 0, 1)[:, :, None]
    backing = rng.uniform(0.04, 0.15) * np.ones(3, np.float32)
    appearance = backing * (0.6 + 0.8 * depth) + 0.02 * rng.standard_normal((size, size, 1), dtype=np.float32)
    return weight, appearance


_STAIN_TINTS = (
    (0.80, 0.62, 0.45),  # coffee
    (0.88, 0.55, 0.35),  # rust
    (0.55, 0.55, 0.60),  # oil
    (0.70, 0.80, 0.60),  # residue
)


def _stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A tinted, soft-edged blot (the most subtle kind)."""
    size = image.shape[0]
    radius = rng.uniform(0.06, 0.13) * size
    centre = rng.uniform(radius, size - radius, 2)
    ys, xs = _grid(size)
    distance = np.hypot(ys - centre[1], xs - centre[0]) / radius
    field = 1.0 - distance + 0.35 * smooth_noise((size, size), rng, cell=radius * 0.6)
    strength = rng.uniform(0.55, 0.85)
    # The edge fades in over a short ramp but starts at a visible level, so every masked pixel changes.
    weight = np.where(field > 0, strength * np.clip(0.35 + field / 0.2, 0.0, 1.0), 0.0).astype(np.float32)
    tint = np.asarray(_STAIN_TINTS[int(rng.integers(len(_STAIN_TINTS)))], np.float32)
    return weight, image * tint


def _contamination(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreign particles (and sometimes a fibre) in a small cluster, in a colour foreign to the surface."""
    size = image.shape[0]
    weight = np.zeros((size, size), np.float32)
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(60, 230)]]])
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255.0
    if rng.random() < 0.3:
        colour = np.full(3, rng.choice([0.05, 0.97]), np.float32)
    spread = rng.uniform(0.04, 0.1) * size
    centre = rng.uniform(spread + 6, size - spread - 6, 2)
    for _ in range(int(rng.integers(2, 8))):
        spot = centre + rng.normal(0, spread / 2, 2)
        outline = _blob_outline(rng, spot, _scaled(size, rng.uniform(2, 5)), roughness=0.3)
        cv2.fillPoly(weight, [np.round(outline * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    if rng.random() < 0.4:
        angle = rng.uniform(0, 2 * np.pi)
        end = centre + rng.uniform(0.08, 0.2) * size * np.array([np.cos(angle), np.sin(angle)])
        fibre = _curve(rng, centre, np.clip(end, 2, size - 3), rng.uniform(-0.3, 0.3))
        _draw_polyline(weight, fibre, _scaled(size, 2))
    texture = 1.0 + 0.08 * smooth_noise((size, size), rng, cell=3)
    return weight * rng.uniform(0.85, 1.0), colour * texture[:, :, None]


_DEFECTS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "contamination": _contamination,
}


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add a defect of ``kind`` to a float RGB image; returns (defective image, bool mask ``[H, W]``).

    Pixels outside the mask are exactly those of ``image``. Faint antialiased fringes (weight below 0.25)
    are dropped rather than left unmasked.
    """
    if kind not in _DEFECTS:
        raise InspectorError(f"unknown defect kind '{kind}'; choose one of {', '.join(DEFECT_KINDS)}")
    min_area = 0.0008 * image.shape[0] * image.shape[1]
    for _ in range(20):
        weight, appearance = _DEFECTS[kind](image, rng)
        mask = weight >= 0.25
        if mask.sum() >= min_area:  # too small to survive resizing to the training size: draw again
            break
    defective = image.copy()
    alpha = weight[mask][:, None]
    defective[mask] = image[mask] * (1.0 - alpha) + np.clip(appearance[mask], 0.0, 1.0) * alpha
    return defective, mask


# --- writing the dataset --------------------------------------------------------------------------


def _rng(seed: int, category: str, split: str, index: int) -> np.random.Generator:
    # crc32 is stable across runs (unlike hash()), so one category's images do not depend on the others.
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(split.encode()), index])


def _write_png(path: Path, image: np.ndarray, gray: bool) -> None:
    pixels = to_uint8(image)
    pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if gray else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), pixels):
        raise InspectorError(f"{path}: could not be written; check that the folder is writable")


def _write_category(
    target: Path,
    category: str,
    image_size: int,
    train_count: int,
    test_good: int,
    defect_count: int,
    seed: int,
) -> None:
    gray = category in GRAY_CATEGORIES
    for split, count in (("train", train_count), ("test", test_good)):
        folder = target / split / "good"
        folder.mkdir(parents=True)
        for index in range(count):
            image = render_surface(category, image_size, _rng(seed, category, f"{split}/good", index))
            _write_png(folder / f"{index:03d}.png", image, gray)
    for kind in DEFECT_KINDS:
        (target / "test" / kind).mkdir(parents=True)
        (target / "ground_truth" / kind).mkdir(parents=True)
        for index in range(defect_count):
            rng = _rng(seed, category, f"test/{kind}", index)
            image, mask = add_defect(render_surface(category, image_size, rng), kind, rng)
            _write_png(target / "test" / kind / f"{index:03d}.png", image, gray)
            cv2.imwrite(
                str(target / "ground_truth" / kind / f"{index:03d}_mask.png"), mask.astype(np.uint8) * 255
            )


def generate_dataset(
    root: str | Path,
    categories: Sequence[str] = CATEGORIES,
    image_size: int = 256,
    train_count: int = 200,
    test_good: int = 30,
    test_defect_per_kind: int = 12,
    seed: int = 0,
) -> Path:
    """Write the built-in MVTec-style dataset under ``root`` and return ``root``.

    A category already generated with the same parameters is kept; one generated with other parameters
    is replaced. Each category is written to a temporary folder and renamed into place, so an
    interrupted run never leaves a half-written category behind.

    Example:
        >>> generate_dataset("data/synthetic", categories=["fabric"], image_size=128)
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for category in categories:
        if category not in _SURFACES:
            raise InspectorError(
                f"unknown synthetic category '{category}'; choose one of {', '.join(CATEGORIES)}"
            )
        parameters = {
            "generator_version": GENERATOR_VERSION,
            "category": category,
            "image_size": int(image_size),
            "train_count": int(train_count),
            "test_good": int(test_good),
            "test_defect_per_kind": int(test_defect_per_kind),
            "defect_kinds": list(DEFECT_KINDS),
            "seed": int(seed),
        }
        write_generated_category(
            root / category,
            parameters,
            lambda folder: _write_category(
                folder, category, image_size, train_count, test_good, test_defect_per_kind, seed
            ),
        )
    return root


def build_synthetic_splits(config: TrainConfig) -> Splits:
    """The built-in dataset's splits, generating the category under ``config.data.root`` if missing.

    ``root`` defaults to ``data/synthetic`` and ``category`` to the first of :data:`CATEGORIES`. The data
    do not depend on the training seed, so runs with different seeds see the same images.
    """
    from inspector.training.data.mvtec import build_mvtec_splits

    root = Path(config.data.root) if config.data.root else DEFAULT_ROOT
    category = config.data.category or CATEGORIES[0]
    if not (root / category).exists():
        if category not in _SURFACES:
            raise InspectorError(
                f"built-in dataset has no category '{category}'; choose one of {', '.join(CATEGORIES)}"
            )
        logging.getLogger(__name__).warning(
            "generating the built-in dataset's '%s' category under %s (done once)", category, root
        )
        generate_dataset(root, categories=[category])
    data = dataclasses.replace(config.data, root=str(root), category=category)
    splits = build_mvtec_splits(dataclasses.replace(config, data=data))
    splits.description = {"dataset": "synthetic", "category": category, "root": str(root)}
    return splits
