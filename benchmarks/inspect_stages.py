"""What each stage of `inspector inspect` costs per image, timed one by one on one thread.

    python benchmarks/inspect_stages.py --model runs/demo-rdna/export/model.onnx --images data/synthetic/fabric/test

The stages are the ones a worker of `inspect` runs for every image (runtime/folder.py): read the file,
decode it, preprocess, run the model (batch of one here), normalise and find regions, draw the overlay,
encode and write it. Prints the median milliseconds per image of each over ``--repeats`` passes, and the
share of the model's time that the rest adds. Lines in parentheses are timed for comparison and not added:
the connected components on the whole-image mask with OpenCV's default algorithm and with the BBDT one that
the runtime uses (part of "normalise + regions"), and with Pillow installed, its decoding.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector.preprocess import decode_image
from inspector.runtime.folder import list_images
from inspector.runtime.overlay import render_overlay, write_image
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model


def _pillow_decoder() -> Callable[[bytes], Any] | None:
    try:
        import io

        from PIL import Image
    except ImportError:
        return None

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    return decode


def _default_components(mask: np.ndarray) -> Any:
    return cv2.connectedComponentsWithStats(mask, connectivity=8)


def _bbdt_components(mask: np.ndarray) -> Any:
    return cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_BBDT)


def measure(model: Path, images: Path, repeats: int) -> dict[str, float]:
    """Median milliseconds per image of each stage."""
    cv2.setNumThreads(1)
    scorer = Scorer(load_model(model, device="cpu", threads=1))
    paths = [path for _, path in list_images(images, recursive=True)]
    pillow = _pillow_decoder()
    times: dict[str, list[float]] = {}

    def timed(stage: str, function: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        result = function(*args)
        times.setdefault(stage, []).append((time.perf_counter() - started) * 1000.0)
        return result

    with tempfile.TemporaryDirectory(prefix="inspector-stages-") as scratch:
        for _ in range(repeats):
            for index, path in enumerate(paths):
                data = timed("read file", np.fromfile, path, np.uint8)
                image = timed("decode (OpenCV)", decode_image, data)
                if pillow is not None:
                    timed("(decode, Pillow)", pillow, data.tobytes())
                batch = timed("preprocess", scorer.prepare, [image])
                raw_scores, raw_maps = timed("model", scorer.infer, batch)
                inspection = timed(
                    "normalise + regions", scorer.finish, image.shape, raw_scores[0], raw_maps[0]
                )
                if inspection.grid is not None:
                    mask = inspection.grid.mask.view(np.uint8)
                    timed("(components, OpenCV's default)", _default_components, mask)
                    timed("(components, BBDT as used)", _bbdt_components, mask)
                overlay = timed("draw overlay", render_overlay, image, inspection)
                timed("encode + write JPEG", write_image, Path(scratch) / f"{index}.jpg", overlay)
    return {stage: statistics.median(values) for stage, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="model.onnx from `inspector export --onnx`")
    parser.add_argument("--images", type=Path, required=True, help="folder of images, searched recursively")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images (default 3)")
    args = parser.parse_args()
    medians = measure(args.model, args.images, args.repeats)
    for stage, milliseconds in medians.items():
        print(f"{stage:34s} {milliseconds:7.2f} ms")
    # Stages in parentheses are parts of another stage or alternatives, timed for comparison only.
    pipeline = sum(ms for stage, ms in medians.items() if stage != "model" and not stage.startswith("("))
    print(
        f"{'all but the model':34s} {pipeline:7.2f} ms ({pipeline / medians['model']:.0%} of the model's time)"
    )


if __name__ == "__main__":
    main()
