"""The real-texture benchmark: normal images cut from texture photographs that Debian packages ship, with
defects rendered into them (exact masks), in the MVTec AD layout.

The built-in dataset (:mod:`synthetic`) draws its surfaces procedurally, which makes it easy. Here each
category is a photographed material (wood, burlap, reptile leather, plaster, paper, canvas, sand, marble,
...) from ``gimp-data``, ``gimp-data-extras`` or ``krita-data``. Nothing from the packages is kept in the
repository: :func:`fetch_texture_packages` downloads and unpacks them with apt (no other network access).

Normal images vary as photographs of one surface do: crop position, scale (+-20 %), rotation (small for
directional or relief-shaded materials, any angle for isotropic ones), lighting gradient and vignetting,
exposure and white balance, occasional slight defocus and sensor noise. Train and test images come from
the same distribution. Defects (:mod:`defects`) are graded by size and contrast, balanced over each kind.

Layout written (as MVTec AD), per category::

    <out>/<category>/train/good/000.png
    <out>/<category>/test/good/000.png
    <out>/<category>/test/<kind>/000.png
    <out>/<category>/ground_truth/<kind>/000_mask.png
    <out>/<category>/defects.json      test/<kind>/000.png -> {kind, size, contrast, area_px}
    <out>/<category>/generated.json    generator version, parameters and ``dev`` (an old copy is replaced)

Two categories are marked ``dev``: use them to choose settings and report only the others.

Example:
    >>> root = fetch_texture_packages("~/.cache/inspector/texture-packages")
    >>> generate_real_texture_dataset(root, "data/realtex")
    >>> write_anomaly_source(root, "data/realtex/_anomaly_source")   # --anomaly-source for DRAEM
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import zlib
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.preprocess import read_image

from .defects import CONTRASTS, DEFECT_KINDS, SIZES, add_defect
from .generated import MARKER, write_generated_category
from .gimp_pattern import is_pattern_name, read_gimp_pattern
from .procedural import to_uint8

#: The Debian packages the textures come from.
TEXTURE_PACKAGES = ("gimp-data", "gimp-data-extras", "krita-data")
GIMP = "usr/share/gimp/2.0/patterns"
KRITA = "usr/share/krita/patterns"
#: Written in each generated category; bump when the images change so that old copies are replaced.
GENERATOR_VERSION = 1
DEFECTS_FILE = "defects.json"
#: Split ids in each image's seed: train, test/good, then one per defect kind (2 + its index).
TRAIN_SPLIT, TEST_GOOD_SPLIT = 0, 1

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class Category:
    """A normal surface: one texture file (or a few of one material) and how it is photographed.

    ``scale`` is output pixels per texture pixel at 256x256 (small patterns are enlarged so that their
    structure is not too fine); ``max_rotation`` in degrees (180: any angle); ``tint`` maps a gray texture
    between a dark and a light colour; ``contrast`` scales the texture about its mean; ``brightness`` sets
    its mean luminance; ``gray`` categories are written as single-channel PNGs; ``defect_strength``
    scales the defects' contrast where the general rule (:mod:`defects`) makes them too easy to see.
    """

    name: str
    material: str
    files: tuple[str, ...]
    scale: float
    max_rotation: float
    gray: bool
    dev: bool = False
    tint: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    contrast: float = 1.0
    brightness: float | None = None
    defect_strength: float = 1.0


CATEGORIES: tuple[Category, ...] = (
    Category(
        "wood",
        "planed wood (gray photograph tinted brown)",
        (f"{KRITA}/16_texture-woody.png",),
        scale=0.6,
        max_rotation=3.0,
        gray=False,
        tint=((0.28, 0.16, 0.08), (0.82, 0.62, 0.40)),
        contrast=0.65,
    ),
    Category(
        "burlap",
        "coarse jute weave",
        (f"{GIMP}/Fabric/burlap.pat",),
        scale=2.2,
        max_rotation=3.0,
        gray=False,
        brightness=0.3,
    ),
    Category(
        "leather",
        "embossed reptile leather (gray photograph tinted brown)",
        (f"{KRITA}/22_texture-reptile.png",),
        scale=0.55,
        max_rotation=8.0,
        gray=False,
        tint=((0.16, 0.09, 0.05), (0.68, 0.47, 0.31)),
        contrast=0.8,
    ),
    Category(
        "plaster",
        "rough plaster / concrete wall",
        (f"{KRITA}/Rough_Wall_With_Impasto.png",),
        scale=0.8,
        max_rotation=5.0,  # relief lit from one side: a large rotation would move the light
        gray=True,
        contrast=0.8,
    ),
    Category(
        "paper",
        "pastel paper with fibres",
        (f"{KRITA}/HR_PastelPaper_02.pat",),
        scale=0.7,
        max_rotation=180.0,
        gray=False,
    ),
    Category(
        "canvas",
        "linen canvas, fine weave",
        (f"{KRITA}/01_canvas.png",),
        scale=1.5,
        max_rotation=3.0,
        gray=True,
        contrast=0.6,
        defect_strength=0.7,  # a regular weave hides defects less than its fine contrast suggests
    ),
    Category(
        "sand",
        "fine sand / sandpaper",
        (f"{KRITA}/Sand_fine.png",),
        scale=0.8,
        max_rotation=180.0,
        gray=True,
        contrast=0.9,
    ),
    Category(
        "marble",
        "polished pink marble",
        (f"{GIMP}/Stone/pink_marble.pat",),
        scale=2.0,
        max_rotation=180.0,
        gray=False,
    ),
    Category(
        "stucco",
        "beige stucco wall",
        (f"{KRITA}/HR_Wall_Paper.pat",),
        scale=0.8,
        max_rotation=5.0,
        gray=False,
        dev=True,
    ),
    Category(
        "granite",
        "dark granite with light veins",
        (f"{GIMP}/Stone/granite1.pat",),
        scale=2.0,
        max_rotation=180.0,
        gray=True,
        dev=True,
    ),
)

#: The stand-in for DTD: textures DRAEM pastes as synthetic anomalies while training. None of them is a
#: category's file, nor a near twin of a category's material (the other planed woods, marbles, granites,
#: canvases, papers and walls are left out), so the detector is not taught that its own surface is
#: anomalous; rock, bark, parquet, cork, weaves, metals, foliage and drawn patterns give variety.
ANOMALY_TEXTURES: tuple[str, ...] = tuple(
    f"{GIMP}/{name}"
    for name in (
        "Animal/leopard.pat", "Food/java.pat", "Food/choc_swirl.pat", "Legacy/fibers.pat",
        "Legacy/blueweb.pat", "Legacy/nops.pat", "Legacy/recessed.pat", "Plant/leaves.pat", "Sky/sky.pat",
        "Sky/lightning.pat", "Stone/Craters.pat", "Stone/Moonfoot.pat", "Stone/brick.pat",
        "Stone/cracked.pat", "Stone/ground1.pat", "Stone/rock.pat", "Stone/stone33.pat", "Stone/terra.pat",
        "Water/pool.pat", "Water/rain.pat", "Wood/bark.pat", "Wood/corkboard.pat", "Wood/parque1.pat",
        "Wood/walnut.pat", "3dweave.pat", "blackoil.pat", "blob1.pat", "bluecanyons.pat", "bluemetal.pat",
        "cashew.pat", "chains.pat", "coins.pat", "colored_rock.pat", "crystals.pat", "dirt.pat",
        "drymud.pat", "dunes.pat", "eggcarton.pat", "goldcloth.pat", "greyweave.pat", "leaves3.pat",
        "metallica.pat", "money.pat", "pebbles.pat", "rust.pat", "sandytext.pat", "silver.pat",
        "torrents.pat", "worn_metal_chex.pat", "woodblind.pat", "cow.pat", "icechex.pat", "redmess.pat",
    )
) + tuple(
    f"{KRITA}/{name}"
    for name in (
        "08_bump-relief.png", "09_drawed_crosshatched.png", "11_drawed_furry.png", "13_drawed_swirl.png",
        "14_texture-rock.png", "17_texture-melt.png", "18_texture-bark.png", "19_texture-crackle.png",
        "20_texture-vegetal.png", "21_texture-chainmail.png", "26_brush-marks.png", "Crumpled_Paper.pat",
        "fractal_pattern.pat", "Stripes08.pat", "hexacolBW__2.pat",
    )
)  # fmt: skip


def category_by_name(name: str) -> Category:
    for category in CATEGORIES:
        if category.name == name:
            return category
    raise InspectorError(
        f"unknown real-texture category '{name}'; choose from {', '.join(c.name for c in CATEGORIES)}"
    )


def _category_files(texture_root: Path) -> set[Path]:
    return {texture_root / name for category in CATEGORIES for name in category.files}


# --- fetching the packages ------------------------------------------------------------------------


def _missing_files(texture_root: Path, names: Sequence[str]) -> list[str]:
    return [name for name in names if not (texture_root / name).is_file()]


def _run(command: list[str], cwd: Path, hint: str) -> None:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise InspectorError(
            f"`{' '.join(command)}` could not run ({error.strerror or error}); {hint}"
        ) from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit code {result.returncode}"
        raise InspectorError(f"`{' '.join(command)}` failed ({reason}); {hint}")


def fetch_texture_packages(cache_dir: str | Path) -> Path:
    """The texture root (a folder holding ``usr/share/...``) for the benchmark, fetched if needed.

    If ``cache_dir`` already holds every category's texture, it is returned as it is. Otherwise the
    packages are downloaded with ``apt-get download`` into ``cache_dir/debs`` (no root needed) and
    unpacked into ``cache_dir`` with ``dpkg-deb -x``.

    Raises:
        InspectorError: apt-get or dpkg-deb missing or failing (e.g. the package lists need
            ``apt-get update``), or the packages lack a category's texture file.
    """
    root = Path(cache_dir).expanduser()
    needed = [name for category in CATEGORIES for name in category.files]
    if not _missing_files(root, needed):
        return root
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise InspectorError(
                f"{tool} not found: the real-texture benchmark fetches {', '.join(TEXTURE_PACKAGES)} with apt "
                f"(Debian/Ubuntu); or unpack those packages yourself into {root}"
            )
    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in TEXTURE_PACKAGES if not list(debs.glob(f"{name}_*.deb"))]
    if wanted:
        _run(
            ["apt-get", "download", *wanted],
            debs,
            "run `apt-get update` first (as root) so that apt knows the packages, and check the network",
        )
    for package in TEXTURE_PACKAGES:
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            raise InspectorError(
                f"apt-get download left no {package}_*.deb in {debs}; run `apt-get update` first"
            )
        _run(["dpkg-deb", "-x", str(found[-1]), str(root)], root, f"delete {found[-1]} and run again")
    missing = _missing_files(root, needed)
    if missing:
        raise InspectorError(
            f"the texture packages in {debs} lack {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; this generator expects Debian 12's gimp-data 2.10 and krita-data 5.1"
        )
    return root


# --- textures -------------------------------------------------------------------------------------


def read_texture(path: str | Path) -> np.ndarray:
    """A texture file (``.pat`` or an image) as RGB ``uint8`` ``[H, W, 3]``."""
    return read_gimp_pattern(path) if is_pattern_name(path) else read_image(path)


def _resize_seamless(texture: np.ndarray, factor: float) -> np.ndarray:
    """Resize a tileable texture by about ``factor`` so that it still tiles: resized as a 3x3 tiling and
    cut back to the middle tile, whose size is a whole number of pixels."""
    h, w = texture.shape[:2]
    new_h, new_w = max(4, round(h * factor)), max(4, round(w * factor))
    if (new_h, new_w) == (h, w):
        return texture
    tiled = np.tile(texture, (3, 3, 1))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(tiled, (3 * new_w, 3 * new_h), interpolation=interpolation)
    return np.ascontiguousarray(resized[new_h : 2 * new_h, new_w : 2 * new_w])


def prepare_textures(category: Category, texture_root: str | Path, size: int) -> list[np.ndarray]:
    """The category's textures as float32 RGB in [0, 1], toned (tint, contrast, brightness, gray) and
    resized to the category's scale for ``size``-pixel images."""
    textures = []
    for name in category.files:
        path = Path(texture_root) / name
        if not path.is_file():
            raise InspectorError(
                f"{path}: texture of category '{category.name}' not found; fetch the packages with "
                "fetch_texture_packages() (benchmarks/real_texture_data.py does)"
            )
        texture = read_texture(path).astype(np.float32) / 255.0
        luma = texture @ _LUMA
        if category.tint is not None:
            dark, light = (np.asarray(colour, np.float32) for colour in category.tint)
            texture = dark + luma[:, :, None] * (light - dark)
        elif category.gray:
            texture = np.repeat(luma[:, :, None], 3, axis=2)
        mean = float((texture @ _LUMA).mean())
        texture = mean + category.contrast * (texture - mean)
        if category.brightness is not None:
            texture = texture * (category.brightness / max(mean, 1e-3))
        texture = np.clip(texture, 0.0, 1.0).astype(np.float32)
        textures.append(_resize_seamless(texture, category.scale * size / 256.0))
    return textures


def sample_surface(
    category: Category, textures: Sequence[np.ndarray], size: int, rng: np.random.Generator
) -> np.ndarray:
    """A view of the surface: a random crop of the (tiled) texture, scaled +-20 % and rotated, before
    lighting and camera effects. Float32 RGB ``[size, size, 3]``."""
    texture = textures[int(rng.integers(len(textures)))]
    h, w = texture.shape[:2]
    zoom = float(rng.uniform(0.8, 1.2))  # output pixels per texture pixel, around the prepared scale
    angle = float(np.deg2rad(rng.uniform(-category.max_rotation, category.max_rotation)))
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    offset_x, offset_y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    centre = (size - 1) / 2.0
    # Output pixel -> texture pixel; BORDER_WRAP tiles the seamless texture (cubic interpolation has a bug
    # with BORDER_WRAP in OpenCV, so linear: the texture was resized with care beforehand).
    to_texture = np.float32(
        [
            [cos, -sin, offset_x - cos * centre + sin * centre],
            [sin, cos, offset_y - sin * centre - cos * centre],
        ]
    )
    return cv2.warpAffine(
        texture,
        to_texture,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_WRAP,
    )


def photograph(image: np.ndarray, rng: np.random.Generator, gray: bool) -> np.ndarray:
    """Lighting and camera: exposure, white balance, a lighting gradient, vignetting, sometimes a slight
    defocus, and sensor noise. Float32 RGB in [0, 1]."""
    h, w = image.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys, xs = ys / max(h - 1, 1) * 2 - 1, xs / max(w - 1, 1) * 2 - 1
    gain = 1.0 + float(np.clip(rng.normal(0.0, 0.03), -0.07, 0.07))
    balance = np.ones(3, np.float32) if gray else (1.0 + rng.normal(0.0, 0.008, 3)).astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = float(rng.uniform(0.0, 0.05)) * (xs * np.cos(direction) + ys * np.sin(direction)) / 2.0
    vignette = float(rng.uniform(0.0, 0.05)) * (xs**2 + ys**2) / 2.0
    light = (1.0 + ramp - vignette)[:, :, None] * (gain * balance)
    out = image * light
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(0.35, 0.8)))
    sigma = float(rng.uniform(0.004, 0.01))
    if gray:
        noise = np.repeat(rng.standard_normal((h, w, 1), dtype=np.float32), 3, axis=2)
    else:
        noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    return np.clip(out + sigma * noise, 0.0, 1.0).astype(np.float32)


def _streams(seed: int, category_index: int, split: int, index: int) -> list[np.random.Generator]:
    """The image's generator ``default_rng([seed, category, split, index])``, split into three independent
    streams (surface, defect, camera), so that an image with a defect and the same image without it share
    their surface and camera exactly."""
    sequence = np.random.SeedSequence([seed, category_index, split, index])
    return [np.random.default_rng(child) for child in sequence.spawn(3)]


def render_sample(
    category: Category,
    textures: Sequence[np.ndarray],
    size: int,
    seed: int,
    split: int,
    index: int,
    defect: tuple[str, str, str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (float32 RGB in [0, 1]) and, with ``defect`` = (kind, size, contrast), its bool mask.

    The same call without ``defect`` gives the defect-free version of the same image.
    """
    surface_rng, defect_rng, camera_rng = _streams(seed, CATEGORIES.index(category), split, index)
    surface = sample_surface(category, textures, size, surface_rng)
    mask = None
    if defect is not None:
        kind, size_stratum, contrast = defect
        surface, mask = add_defect(
            surface, kind, defect_rng, size_stratum, contrast, category.defect_strength
        )
    return photograph(surface, camera_rng, category.gray), mask


def strata(index: int) -> tuple[str, str]:
    """(size, contrast) of a kind's ``index``-th image: every pair once in each run of nine."""
    return SIZES[index % len(SIZES)], CONTRASTS[(index // len(SIZES)) % len(CONTRASTS)]


# --- writing --------------------------------------------------------------------------------------


def _write_png(path: Path, image: np.ndarray, gray: bool) -> None:
    pixels = to_uint8(image)
    pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY if gray else cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), pixels):
        raise InspectorError(f"{path}: could not be written; check that the folder is writable")


def _write_category(
    target: Path,
    category: Category,
    textures: Sequence[np.ndarray],
    size: int,
    train_count: int,
    test_good_count: int,
    defects_per_kind: int,
    seed: int,
) -> None:
    for split, folder, count in (
        (TRAIN_SPLIT, target / "train" / "good", train_count),
        (TEST_GOOD_SPLIT, target / "test" / "good", test_good_count),
    ):
        folder.mkdir(parents=True)
        for index in range(count):
            image, _ = render_sample(category, textures, size, seed, split, index)
            _write_png(folder / f"{index:03d}.png", image, category.gray)
    records = {}
    for kind_index, kind in enumerate(DEFECT_KINDS):
        (target / "test" / kind).mkdir(parents=True)
        (target / "ground_truth" / kind).mkdir(parents=True)
        for index in range(defects_per_kind):
            size_stratum, contrast = strata(index)
            image, mask = render_sample(
                category, textures, size, seed, 2 + kind_index, index, (kind, size_stratum, contrast)
            )
            name = f"{index:03d}.png"
            _write_png(target / "test" / kind / name, image, category.gray)
            cv2.imwrite(
                str(target / "ground_truth" / kind / f"{index:03d}_mask.png"), mask.astype(np.uint8) * 255
            )
            records[f"test/{kind}/{name}"] = {
                "kind": kind,
                "size": size_stratum,
                "contrast": contrast,
                "area_px": int(mask.sum()),
            }
    (target / DEFECTS_FILE).write_text(json.dumps(records, indent=1), encoding="utf-8")


def _fingerprint(paths: Sequence[Path]) -> list[str]:
    return [f"{path.name}:{zlib.crc32(path.read_bytes()):08x}" for path in paths]


def generate_real_texture_dataset(
    texture_root: str | Path,
    out_root: str | Path,
    categories: Sequence[str] | None = None,
    size: int = 256,
    train_count: int = 200,
    test_good_count: int = 40,
    defects_per_kind: int = 9,
    seed: int = 0,
) -> list[Path]:
    """Write the benchmark under ``out_root`` (all categories by default); returns the category folders.

    Deterministic for a seed: each image comes from its own generator (seed, category index in
    :data:`CATEGORIES`, split, index). A category already written with the same parameters and textures
    is kept; one written otherwise is replaced. Each category is written to a temporary folder and renamed
    into place, so an interrupted run leaves no half-written category.
    """
    texture_root, out_root = Path(texture_root), Path(out_root)
    chosen = [category_by_name(name) for name in categories] if categories is not None else list(CATEGORIES)
    out_root.mkdir(parents=True, exist_ok=True)
    folders = []
    for category in chosen:
        paths = [texture_root / name for name in category.files]
        textures = prepare_textures(category, texture_root, size)
        parameters = {
            "generator": "real_textures",
            "generator_version": GENERATOR_VERSION,
            "category": category.name,
            "dev": category.dev,  # read by benchmarks to pick the reported categories
            "settings": dataclasses.asdict(category),
            "textures": _fingerprint(paths),
            "size": int(size),
            "train_count": int(train_count),
            "test_good_count": int(test_good_count),
            "defects_per_kind": int(defects_per_kind),
            "defect_kinds": list(DEFECT_KINDS),
            "seed": int(seed),
        }
        target = out_root / category.name
        folders.append(target)
        write_generated_category(
            target,
            parameters,
            lambda folder, category=category, textures=textures: _write_category(
                folder, category, textures, size, train_count, test_good_count, defects_per_kind, seed
            ),
        )
    return folders


# --- the anomaly source (DRAEM's stand-in for DTD) ------------------------------------------------


def anomaly_texture_files(texture_root: str | Path) -> list[Path]:
    """The anomaly-source textures present under ``texture_root`` (none of them a category's file)."""
    texture_root = Path(texture_root)
    files = [texture_root / name for name in ANOMALY_TEXTURES if (texture_root / name).is_file()]
    if not files:
        raise InspectorError(
            f"no anomaly-source textures under {texture_root}; fetch the packages with fetch_texture_packages()"
        )
    overlap = set(files) & _category_files(texture_root)
    if overlap:  # a guard on the lists above
        raise InspectorError(f"anomaly-source textures overlap the categories: {sorted(map(str, overlap))}")
    return files


def write_anomaly_source(texture_root: str | Path, out_dir: str | Path, min_size: int = 256) -> Path:
    """Write the anomaly-source textures as PNGs into ``out_dir`` (for ``--anomaly-source out_dir``).

    Patterns smaller than ``min_size`` are tiled up to it (DRAEM resizes a whole texture to the image
    size, which would blur a small one). Kept if already written from the same files.
    """
    out_dir = Path(out_dir)
    files = anomaly_texture_files(texture_root)
    parameters = {
        "generator_version": GENERATOR_VERSION,
        "min_size": min_size,
        "textures": _fingerprint(files),
    }
    marker = out_dir / MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == parameters:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not marker.is_file():
        raise InspectorError(
            f"{out_dir} exists and was not made by write_anomaly_source; choose another folder"
        )
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for path in files:
        texture = read_texture(path)
        h, w = texture.shape[:2]
        texture = np.tile(texture, (-(-min_size // h), -(-min_size // w), 1))
        source = "krita" if KRITA in path.as_posix() else "gimp"
        target = out_dir / f"{source}-{path.stem}.png"
        if not cv2.imwrite(str(target), cv2.cvtColor(texture, cv2.COLOR_RGB2BGR)):
            raise InspectorError(f"{target}: could not be written; check that the folder is writable")
    marker.write_text(json.dumps(parameters, indent=2), encoding="utf-8")
    return out_dir
