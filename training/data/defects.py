"""Defect renderers for the real-texture benchmark: scratches, cracks, holes, stains, fibres, worn patches, folds.

Each renderer takes a normal surface (float32 RGB ``[H, W, 3]`` in [0, 1]), a random generator, a size
stratum (``small`` / ``medium`` / ``large``) and a contrast stratum (``subtle`` / ``medium`` / ``strong``),
and returns ``(defective image, mask)``. It draws a soft weight map ``alpha`` (the rendered support of the
defect) and an appearance; the image changes only where ``alpha > 0`` and the mask is where ``alpha`` is at
least half its peak, so the only unmasked changes are the soft fringe of the defect's edge (a few pixels).

Strength is set relative to the surface, so that a ``subtle`` defect is faint but visible on a smooth
marble as on a busy burlap: its luminance change is 3 % of the mean luminance plus 0.8 times the surface's
fine-texture contrast (the standard deviation of the luminance minus its blur at 4 pixels), which masks
defects; thin lines, which the texture masks more, get 1.6 times that contrast. ``medium`` is twice and
``strong`` four times ``subtle``. Colour changes always carry a luminance part, so gray images show them.
Sizes are given at 256x256 and scale with the image.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from inspector.errors import InspectorError

from .procedural import smooth_noise

SIZES = ("small", "medium", "large")
CONTRASTS = ("subtle", "medium", "strong")
DEFECT_KINDS = ("scratch", "crack", "hole", "stain", "fibre", "worn", "fold")

#: Strength of each contrast stratum, in units of the surface's luminance scale (see the module doc).
CONTRAST_LEVEL = {"subtle": 1.0, "medium": 2.0, "strong": 4.0}
#: Blob defects (hole, stain, worn): area as a fraction of the image (before the kind's own factor).
BLOB_AREA = {"small": (0.0012, 0.0025), "medium": (0.004, 0.008), "large": (0.012, 0.024)}
#: Line defects: length as a fraction of the image side, and width in pixels at 256x256.
LINE_LENGTH = {"small": (0.10, 0.18), "medium": (0.22, 0.35), "large": (0.40, 0.60)}
LINE_WIDTH = {"small": (2.0, 2.5), "medium": (2.5, 3.3), "large": (3.5, 4.5)}
#: Cracks are thinner than scratches and fibres (pixels at 256x256).
CRACK_WIDTH = {"small": (1.6, 2.0), "medium": (2.0, 2.6), "large": (2.6, 3.4)}
#: How far (pixels at 256x256) a defect's soft edge may reach outside its mask.
MAX_FRINGE_AT_256 = 8.0
#: Weights below this fraction of a defect's peak are dropped (see ``_finish``).
FAINT = 0.04

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_SUPERSAMPLE = 4

Defect = Callable[..., tuple[np.ndarray, np.ndarray]]


# --- shared helpers -------------------------------------------------------------------------------


def _scale(image: np.ndarray) -> float:
    """Pixels of this image per pixel at 256x256."""
    return min(image.shape[:2]) / 256.0


def _luma(image: np.ndarray) -> np.ndarray:
    return image @ _LUMA


def surface_statistics(image: np.ndarray) -> tuple[float, float]:
    """(mean luminance, fine-texture contrast): the standard deviation of the luminance minus its
    Gaussian blur at 4 pixels (at 256x256), the texture that hides small defects."""
    luma = _luma(image)
    fine = luma - cv2.GaussianBlur(luma, (0, 0), sigmaX=4.0 * _scale(image))
    return float(luma.mean()), float(fine.std())


def _strength(
    image: np.ndarray, rng: np.random.Generator, contrast: str, strength: float, line: bool = False
) -> tuple[float, float]:
    """(absolute luminance change for ``contrast``, the surface's mean luminance); see the module doc.

    ``strength`` scales it for surfaces where the rule misjudges visibility (a regular weave hides little).
    """
    if contrast not in CONTRAST_LEVEL:
        raise InspectorError(f"unknown contrast stratum '{contrast}'; choose one of {', '.join(CONTRASTS)}")
    mean, fine = surface_statistics(image)
    subtle = 0.03 * max(mean, 0.15) + (1.6 if line else 0.8) * fine
    return strength * CONTRAST_LEVEL[contrast] * float(rng.uniform(0.85, 1.15)) * subtle, mean


def _brighter(rng: np.random.Generator, mean: float, p_bright: float) -> bool:
    """Whether a two-way defect brightens: chance ``p_bright``, but never on a near-white surface and
    always on a near-black one (where the change would be clipped away)."""
    if mean > 0.8:
        return False
    if mean < 0.15:
        return True
    return bool(rng.random() < p_bright)


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise InspectorError(f"unknown size stratum '{size}'; choose one of {', '.join(SIZES)}")


def _grid(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return ys, xs


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _finish(image: np.ndarray, alpha: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``image`` towards ``target`` by ``alpha``; the mask is alpha at half its peak or more.

    Weights under 4 % of the peak are dropped (a change of a few gray levels at most), so that the faint
    tail of a soft edge does not reach far outside the mask.
    """
    peak = float(alpha.max())
    alpha = np.where(alpha >= FAINT * peak, alpha, 0.0).astype(np.float32)
    out = image + alpha[:, :, None] * (np.clip(target, 0.0, 1.0) - image)
    mask = alpha >= 0.5 * peak if peak > 0 else np.zeros(alpha.shape, bool)
    return np.clip(out, 0.0, 1.0).astype(np.float32), mask


def _draw_strokes(
    shape: tuple[int, ...], points: np.ndarray, widths: np.ndarray, values: np.ndarray | None = None
) -> np.ndarray:
    """A polyline with a width (and optionally a value) per segment, antialiased: float32 ``[H, W]``.

    Drawn on a 4x finer canvas and averaged down, so widths between whole pixels render faithfully.
    """
    ss = _SUPERSAMPLE
    canvas = np.zeros((shape[0] * ss, shape[1] * ss), np.float32)
    pts = np.round((points * ss + (ss - 1) / 2.0) * 16).astype(np.int64)
    for index in range(len(points) - 1):
        value = 1.0 if values is None else float(values[index])
        thickness = max(1, round(float(widths[index]) * ss))
        p, q = pts[index], pts[index + 1]
        cv2.line(canvas, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), value, thickness, cv2.LINE_AA, 4)
    return cv2.resize(canvas, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def _walk(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    step: float,
    turn: float,
    keep: float,
) -> np.ndarray:
    """A random walk of ``length`` pixels from ``start``: the heading wanders by ``turn`` radians per step
    and returns towards ``heading`` (``keep`` near 1: it wanders off; near 0: jagged but straight)."""
    steps = max(2, int(np.ceil(length / step)))
    offsets = np.zeros(steps)
    for index in range(1, steps):
        offsets[index] = keep * offsets[index - 1] + rng.normal(0.0, turn)
    headings = heading + offsets
    moves = step * np.stack([np.cos(headings), np.sin(headings)], axis=1)
    return np.concatenate([start[None, :], start + np.cumsum(moves, axis=0)])


def _smooth_path(points: np.ndarray, passes: int = 3) -> np.ndarray:
    """Chaikin corner cutting: a smooth curve through a coarse polyline (ends kept)."""
    for _ in range(passes):
        q = 0.75 * points[:-1] + 0.25 * points[1:]
        r = 0.25 * points[:-1] + 0.75 * points[1:]
        middle = np.stack([q, r], axis=1).reshape(-1, 2)
        points = np.concatenate([points[:1], middle[1:-1], points[-1:]])
    return points


def _line_geometry(
    image: np.ndarray, rng: np.random.Generator, size: str, lengths: dict = LINE_LENGTH
) -> tuple[float, float, np.ndarray, float]:
    """(length, width in pixels, centre, heading) of a line defect of ``size``."""
    _check_size(size)
    side = min(image.shape[:2])
    length = float(rng.uniform(*lengths[size])) * side
    width = max(1.5, float(rng.uniform(*LINE_WIDTH[size])) * _scale(image))
    centre = rng.uniform(0.22, 0.78, 2) * np.array([image.shape[1], image.shape[0]])
    return length, width, centre, float(rng.uniform(0, 2 * np.pi))


def _blob_radius(image: np.ndarray, rng: np.random.Generator, size: str, factor: float = 1.0) -> float:
    _check_size(size)
    area = float(rng.uniform(*BLOB_AREA[size])) * factor * image.shape[0] * image.shape[1]
    return float(np.sqrt(area / np.pi))


def _blob_field(
    image: np.ndarray,
    rng: np.random.Generator,
    radius: float,
    aspect: float,
    roughness: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A normalised radius field (1 on an irregular outline of mean radius ``radius``) around a random
    centre: (field ``[H, W]``, centre (x, y), coordinates relative to the centre ``(dy, dx)``)."""
    h, w = image.shape[:2]
    margin = min(1.3 * radius + 2, 0.45 * min(h, w))
    centre = np.array([rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)])
    ys, xs = _grid(image.shape)
    dy, dx = ys - float(centre[1]), xs - float(centre[0])
    angle = float(rng.uniform(0, np.pi))
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos
    stretch = float(np.sqrt(aspect))
    ellipse = np.hypot(along * stretch, across / stretch) / radius
    theta = np.arctan2(across, along)
    wobble = np.zeros_like(theta)
    for harmonic in range(2, 7):
        amplitude = rng.normal(0.0, roughness / harmonic)
        wobble += amplitude * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    fine = 0.06 * smooth_noise(image.shape[:2], rng, cell=max(2.0, radius / 3))
    field = ellipse / np.clip(1.0 + wobble, 0.55, 1.6) + fine
    return field.astype(np.float32), centre, np.stack([dy, dx])


def _hue_direction(rng: np.random.Generator) -> np.ndarray:
    """A random colour direction with no luminance (luma-weighted mean 0), unit length."""
    direction = rng.normal(0.0, 1.0, 3).astype(np.float32)
    direction -= float(direction @ _LUMA)
    return direction / (float(np.linalg.norm(direction)) + 1e-6)


# --- the defects ----------------------------------------------------------------------------------


def scratch(
    image: np.ndarray, rng: np.random.Generator, size: str, contrast: str, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A thin, gently curved line, bright (scraped open, more often) or dark (a groove)."""
    length, width, centre, heading = _line_geometry(image, rng, size)
    delta, mean = _strength(image, rng, contrast, strength, line=True)
    direction = np.array([np.cos(heading), np.sin(heading)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-0.5, 0.5, 48)[:, None]
    bow = rng.uniform(-0.08, 0.08) * length
    points = centre + t * length * direction + (1 - 4 * t**2) * bow * normal
    h, w = image.shape[:2]
    points = np.clip(points, 1, np.array([w - 2, h - 2]))
    # Uneven pressure along the stroke: the weight varies between 0.7 and 1 (all of it stays in the mask).
    pressure = 0.85 + 0.15 * np.clip(smooth_noise((1, len(points)), rng, cell=12)[0], -1, 1)
    alpha = _draw_strokes(image.shape, points, np.full(len(points), width), pressure)
    if _brighter(rng, mean, 0.7):
        luma = _luma(image)[:, :, None]
        target = image + 0.4 * (luma - image) + delta
    else:
        target = image - delta
    return _finish(image, alpha, target)


def crack(
    image: np.ndarray, rng: np.random.Generator, size: str, contrast: str, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A dark, jagged line, widest in its middle, with a few thinner branches."""
    length, _, centre, heading = _line_geometry(image, rng, size)
    width = max(1.2, float(rng.uniform(*CRACK_WIDTH[size])) * _scale(image))
    delta, mean = _strength(image, rng, contrast, strength, line=True)
    step = max(1.0, 2.0 * _scale(image))
    start = centre - 0.5 * length * np.array([np.cos(heading), np.sin(heading)])
    main = _walk(rng, start, heading, length, step, turn=0.45, keep=0.8)
    t = np.linspace(0.0, 1.0, len(main) - 1)
    widths = np.maximum(0.8, width * (0.35 + 0.65 * np.sin(np.pi * np.clip(t, 0.02, 0.98)) ** 0.6))
    strokes = [(main, widths)]
    branches = {"small": (0, 2), "medium": (1, 3), "large": (2, 4)}[size]
    for _ in range(int(rng.integers(*branches))):
        at = int(rng.integers(len(main) // 5, max(len(main) // 5 + 1, 4 * len(main) // 5)))
        side = rng.choice([-1.0, 1.0])
        branch_heading = heading + side * rng.uniform(0.45, 1.2)
        branch = _walk(rng, main[at], branch_heading, rng.uniform(0.2, 0.45) * length, step, 0.5, 0.7)
        taper = np.linspace(1.0, 0.35, len(branch) - 1)
        strokes.append((branch, np.maximum(0.8, 0.6 * widths[min(at, len(widths) - 1)] * taper)))
    h, w = image.shape[:2]
    alpha = np.zeros(image.shape[:2], np.float32)
    for points, stroke_widths in strokes:
        points = np.clip(points, 1, np.array([w - 2, h - 2]))
        alpha = np.maximum(alpha, _draw_strokes(image.shape, points, stroke_widths))
    most = {"subtle": 0.45, "medium": 0.75, "strong": 0.92}[contrast]
    darkening = float(np.clip(1.2 * delta / max(mean, 0.15), 0.08, most))
    return _finish(image, alpha, image * (1.0 - darkening))


def hole(
    image: np.ndarray, rng: np.random.Generator, size: str, contrast: str, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A dark elliptical pit or hole with a raised rim lit from one side.

    ``subtle``: a shallow pit (15-50 % darker, more on a busy surface); ``strong``: a hole through to a
    dark backing.
    """
    radius = _blob_radius(image, rng, size)
    delta, mean = _strength(image, rng, contrast, strength)
    field, _, (dy, dx) = _blob_field(image, rng, radius, aspect=float(rng.uniform(0.6, 1.0)), roughness=0.12)
    s = _scale(image)
    inside = np.clip(0.5 + (1.0 - field) * radius / max(0.8, 0.9 * s), 0.0, 1.0)
    rim_width = max(1.3 * s, 0.2 * radius)
    outside = (field - 1.0) * radius  # approximate distance outside the outline, in pixels
    rim = np.exp(-(((outside - 0.45 * rim_width) / (0.55 * rim_width)) ** 2))
    rim = np.where(outside < 2.2 * rim_width, rim, 0.0) * (1.0 - inside)
    light = float(rng.uniform(0, 2 * np.pi))
    towards_light = (dx * np.cos(light) + dy * np.sin(light)) / np.maximum(np.hypot(dx, dy), 1e-3)
    # Inside, the wall nearest the light casts its shadow: darkest on the lit side.
    wall = 0.5 + 0.5 * np.clip((dx * np.cos(light) + dy * np.sin(light)) / radius, -1, 1)
    least = {"subtle": 0.15, "medium": 0.35, "strong": 0.8}[contrast]
    most = {"subtle": 0.5, "medium": 0.8, "strong": 0.95}[contrast]
    depth = float(np.clip(2.5 * delta / max(mean, 0.15), least, most))
    floor = image * (1.0 - depth * (0.45 + 0.55 * wall))[:, :, None]
    if contrast == "strong":  # through: the backing shows, barely lit
        backing = rng.uniform(0.02, 0.07) * (0.7 + 0.6 * (1.0 - wall))
        floor = 0.3 * floor + 0.7 * backing[:, :, None]
    # The raised lip is lit (towards white) on the side facing the light and shaded on the other.
    lip = image + (1.3 * delta * (0.35 + 0.65 * towards_light))[:, :, None]
    alpha = np.maximum(inside, rim)
    weight_floor = inside / np.maximum(alpha, 1e-6)
    target = weight_floor[:, :, None] * floor + (1.0 - weight_floor[:, :, None]) * lip
    return _finish(image, alpha, target)


_STAIN_TINTS = (
    (0.55, 1.0, 1.7),  # coffee / tea: yellow-brown
    (0.35, 1.1, 1.9),  # rust: orange
    (1.0, 1.0, 1.0),  # oil, grease: a neutral darkening
    (1.3, 0.75, 1.35),  # green residue
    (1.35, 1.05, 0.45),  # ink: blue
)


def stain(
    image: np.ndarray, rng: np.random.Generator, size: str, contrast: str, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged, irregular blot that tints or darkens the surface (or, less often, bleaches it);
    the texture shows through. The subtle kind shifts the local colour by about 5-8 % on a smooth
    surface (more on a busy one, whose texture hides it)."""
    radius = _blob_radius(image, rng, size, factor=1.4)
    delta, mean = _strength(image, rng, contrast, strength)
    field, _, _ = _blob_field(image, rng, radius, aspect=float(rng.uniform(0.5, 1.0)), roughness=0.3)
    feather = 0.22
    alpha = _smoothstep((1.0 - field) / feather)
    if rng.random() < 0.35:  # a drying ring: the rim darker than the middle
        alpha *= 0.7 + 0.3 * _smoothstep((field - (1.0 - 2.2 * feather)) / feather)
    alpha *= 0.88 + 0.12 * np.clip(smooth_noise(image.shape[:2], rng, cell=max(2.0, radius / 2)), -1, 1)
    alpha = np.where(field < 1.0, alpha, 0.0)
    relative = delta / max(mean, 1e-3)
    # A dark surface cannot be darkened by much: there the stain is a light deposit instead.
    if relative > 0.6 or _brighter(rng, mean, 0.2):  # dried detergent, limescale: lighter, less coloured
        luma = _luma(image)[:, :, None]
        target = image + 0.3 * (luma - image) + delta
    else:
        tint = np.asarray(_STAIN_TINTS[int(rng.integers(len(_STAIN_TINTS)))], np.float32)
        tint = tint / float(tint @ _LUMA)
        target = image * np.clip(1.0 - relative * tint, 0.05, 1.5)
    return _finish(image, alpha, target)


def fibre(
    image: np.ndarray, rng: np.random.Generator, size: str, contrast: str, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A foreign thread or hair lying on the surface: a thin, smoothly wandering line of its own colour."""
    lengths = {"small": (0.12, 0.2), "medium": (0.25, 0.38), "large": (0.42, 0.62)}
    length, width, centre, heading = _line_geometry(image, rng, size, lengths)
    width = max(1.5, width * 0.85)
    delta, mean = _strength(image, rng, contrast, strength, line=True)
    s = _scale(image)
    start = centre - 0.5 * length * np.array([np.cos(heading), np.sin(heading)])
    coarse = _walk(rng, start, heading, length, max(2.0, 6.0 * s), turn=0.35, keep=0.95)
    points = _smooth_path(coarse)
    h, w = image.shape[:2]
    points = np.clip(points, 1, np.array([w - 2, h - 2]))
    along = 0.9 + 0.1 * np.clip(smooth_noise((1, len(points)), rng, cell=10)[0], -1, 1)
    alpha = _draw_strokes(image.shape, points, np.full(len(points), width), along)
    mean_colour = image.reshape(-1, 3).mean(axis=0)
    sign = 1.0 if _brighter(rng, mean, 0.45) else -1.0
    colour = mean_colour + sign * delta + float(rng.uniform(0.5, 1.0)) * delta * _hue_direction(rng)
    target = np.broadcast_to(np.clip(colour, 0.02, 0.98).astype(np.float32), image.shape)
    return _finish(image, alpha, target)


def worn(
    image: np.ndarray, rng: np.random.Generator, size: str, contrast: str, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A worn or rubbed patch: the texture smoothed out and the colour bleached (or darkened), soft edge."""
    radius = _blob_radius(image, rng, size, factor=1.5)
    delta, mean = _strength(image, rng, contrast, strength)
    field, _, _ = _blob_field(image, rng, radius, aspect=float(rng.uniform(0.35, 0.8)), roughness=0.25)
    alpha = np.where(field < 1.0, _smoothstep((1.0 - field) / 0.3), 0.0)
    s = _scale(image)
    smoothing = {"subtle": 0.55, "medium": 0.8, "strong": 0.97}[contrast]
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=(1.5 + 2.5 * smoothing) * s + 0.5)
    target = image - smoothing * (image - blurred)
    luma = _luma(target)[:, :, None]
    target = target + {"subtle": 0.1, "medium": 0.2, "strong": 0.4}[contrast] * (luma - target)
    sign = 1.0 if _brighter(rng, mean, 0.75) else -1.0
    target = target + sign * 0.8 * delta
    return _finish(image, alpha, target)


def fold(
    image: np.ndarray, rng: np.random.Generator, size: str, contrast: str, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A crease: a straight-ish line with a bright and a dark side, a thin centre line, and the texture
    pulled slightly towards it. The mask is where the shading is at least half its peak (about 1.4 widths
    either side of the line); the shading fades out to 2 widths."""
    lengths = {"small": (0.22, 0.32), "medium": (0.38, 0.55), "large": (0.65, 0.95)}
    widths = {"small": (2.2, 2.8), "medium": (3.0, 4.0), "large": (4.5, 5.5)}
    length, _, centre, heading = _line_geometry(image, rng, size, lengths)
    s = _scale(image)
    width = max(1.5, float(rng.uniform(*widths[size])) * s)
    delta, mean = _strength(image, rng, contrast, strength)
    ys, xs = _grid(image.shape)
    cos, sin = float(np.cos(heading)), float(np.sin(heading))
    dx, dy = xs - float(centre[0]), ys - float(centre[1])
    along, across = dx * cos + dy * sin, -dx * sin + dy * cos
    half = length / 2.0
    across = across - float(rng.uniform(-0.04, 0.04)) * length * (1.0 - np.clip(along / half, -1, 1) ** 2)
    taper_length = min(max(3.0 * s, 0.1 * length), 8.0 * s)
    taper = _smoothstep((half - np.abs(along)) / taper_length)
    u = across / width
    inside = (np.abs(u) < 2.0).astype(np.float32) * taper
    lobe = u * np.exp(-(u**2)) * np.sqrt(2.0 * np.e) * inside  # +-1 at u = +-0.71
    crease_line = np.exp(-((u / 0.35) ** 2)) * inside
    # The rendered support: the shaded sides (|lobe|) and the centre line between them.
    alpha = np.maximum(np.abs(lobe), crease_line)
    inside = np.where(alpha >= FAINT * float(alpha.max()), inside, 0.0)
    lobe, crease_line = lobe * (inside > 0), crease_line * (inside > 0)
    shift = {"subtle": 0.6, "medium": 1.0, "strong": 1.6}[contrast] * s * float(rng.uniform(0.8, 1.2))
    pull = -shift * lobe  # both sides drawn towards the crease
    map_x = (xs - pull * sin).astype(np.float32)
    map_y = (ys + pull * cos).astype(np.float32)
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    side = rng.choice([-1.0, 1.0])
    line_sign = -1.0 if rng.random() < 0.65 else 1.0
    # Shading half in proportion to the local brightness (as light on a slope is), half absolute, so
    # that a fold shows on a dark surface too.
    local = 0.5 + 0.5 * _luma(warped) / max(mean, 0.05)
    shading = 0.9 * delta * local * (side * lobe + 0.5 * line_sign * crease_line)
    target = warped + shading[:, :, None]
    # Blend by the support (not the envelope): the shading already fades with distance.
    out = np.where(inside[:, :, None] > 0, image + inside[:, :, None] * (target - image), image)
    mask = alpha >= 0.5 * float(alpha.max()) if alpha.max() > 0 else np.zeros(u.shape, bool)
    return np.clip(out, 0.0, 1.0).astype(np.float32), mask


DEFECTS: dict[str, Defect] = {
    "scratch": scratch,
    "crack": crack,
    "hole": hole,
    "stain": stain,
    "fibre": fibre,
    "worn": worn,
    "fold": fold,
}


def add_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, size: str, contrast: str, strength: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Render a defect of ``kind`` into ``image`` (float32 RGB in [0, 1]): (defective image, bool mask).

    ``strength`` scales the contrast (1: the module's rule). A defect whose mask comes out too small
    (clipped by the border) is drawn again.
    """
    if kind not in DEFECTS:
        raise InspectorError(f"unknown defect kind '{kind}'; choose one of {', '.join(DEFECT_KINDS)}")
    _check_size(size)
    min_area = max(6.0, 20.0 * _scale(image) ** 2)
    for _ in range(20):
        defective, mask = DEFECTS[kind](image, rng, size, contrast, strength)
        if mask.sum() >= min_area:
            break
    return defective, mask
