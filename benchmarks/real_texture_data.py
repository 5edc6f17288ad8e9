"""Fetch the texture packages and write the real-texture benchmark (MVTec AD layout) and its anomaly source.

    python benchmarks/real_texture_data.py --out data/realtex
    python benchmarks/real_texture_data.py --out data/realtex --categories wood,paper --preview preview.png

The textures come from Debian's gimp-data, gimp-data-extras and krita-data, downloaded with
``apt-get download`` into the cache folder and unpacked there (run ``apt-get update`` first on a fresh
system); nothing else is downloaded. Writes ``<out>/<category>/...`` for each category and
``<out>/_anomaly_source/`` (give it to training as ``--anomaly-source``). Categories marked ``dev`` are
for choosing settings: report results on the others. ``--preview`` writes a contact sheet: per category,
a few normal images, then one image of each defect kind with its mask's outline in red.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.training.data.defects import DEFECT_KINDS
from inspector.training.data.real_textures import (
    CATEGORIES,
    DEFECTS_FILE,
    category_by_name,
    fetch_texture_packages,
    generate_real_texture_dataset,
    write_anomaly_source,
)

ANOMALY_SOURCE = "_anomaly_source"


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # gray PNGs come back as 3 equal channels
    if image is None:
        raise InspectorError(f"{path}: cannot be read")
    return image


def write_preview(
    out_root: Path, categories: list[str], path: Path, normals: int = 3, example: int = 4, thumb: int = 256
) -> None:
    """A contact sheet: one row per category, ``normals`` normal images then, for each defect kind, its
    ``example``-th image (index 4 = medium size, medium contrast) with the mask outlined in red, 2 pixels
    outside it so that the defect itself stays visible."""
    rows = []
    for name in categories:
        base = out_root / name
        tiles = []
        for index in range(normals):
            tiles.append(cv2.resize(_read(base / "train" / "good" / f"{index:03d}.png"), (thumb, thumb)))
        for kind in DEFECT_KINDS:
            image = cv2.resize(_read(base / "test" / kind / f"{example:03d}.png"), (thumb, thumb))
            mask = cv2.imread(
                str(base / "ground_truth" / kind / f"{example:03d}_mask.png"), cv2.IMREAD_GRAYSCALE
            )
            mask = cv2.resize(mask, (thumb, thumb), interpolation=cv2.INTER_NEAREST)
            around = cv2.dilate((mask > 127).astype(np.uint8), np.ones((5, 5), np.uint8))
            contours, _ = cv2.findContours(around, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(image, contours, -1, (0, 0, 255), 1)
            tiles.append(image)
        row = np.hstack(tiles)
        label = f"{name}{' (dev)' if category_by_name(name).dev else ''}"
        cv2.putText(row, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(row, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    header = np.full((22, rows[0].shape[1], 3), 255, np.uint8)
    titles = ["normal"] * normals + list(DEFECT_KINDS)
    for column, title in enumerate(titles):
        cv2.putText(
            header, title, (column * thumb + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.vstack([header, *rows])):
        raise InspectorError(f"{path}: could not be written")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/realtex"), help="dataset folder (default data/realtex)"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("~/.cache/inspector/texture-packages"),
        help="where the .deb packages are downloaded and unpacked (default ~/.cache/inspector/texture-packages)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--categories", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--preview", type=Path, default=None, help="write a contact sheet PNG here")
    args = parser.parse_args(argv)
    try:
        names = [name.strip() for name in args.categories.split(",") if name.strip()] or [
            c.name for c in CATEGORIES
        ]
        for name in names:
            category_by_name(name)
        root = fetch_texture_packages(args.cache)
        started = time.perf_counter()
        folders = generate_real_texture_dataset(
            root, args.out, categories=names, size=args.size, seed=args.seed
        )
        generated = time.perf_counter() - started
        source = write_anomaly_source(root, args.out / ANOMALY_SOURCE)
        if args.preview:
            write_preview(args.out, names, args.preview)
    except InspectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"textures: {root}")
    for folder in folders:
        category = category_by_name(folder.name)
        records = json.loads((folder / DEFECTS_FILE).read_text(encoding="utf-8"))
        train = len(list((folder / "train" / "good").glob("*.png")))
        good = len(list((folder / "test" / "good").glob("*.png")))
        role = "dev     " if category.dev else "reported"
        colour = "gray  " if category.gray else "colour"
        print(
            f"  {category.name:8s} {role} {colour} train {train}, test good {good}, defective {len(records)}"
            f" ({len(DEFECT_KINDS)} kinds)  {category.material}"
        )
    print(f"written under {args.out} in {generated:.1f} s (categories already up to date are kept)")
    print(
        f"anomaly source: {source} ({len(list(source.glob('*.png')))} textures; train with --anomaly-source {source})"
    )
    if args.preview:
        print(f"preview: {args.preview}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
