"""Throughput of a model alone in onnxruntime versus end-to-end folder inspection on the same images.

Model-only time covers ``session.run`` on batches prepared in advance; end-to-end time covers the whole
`inspect` run (listing, decoding, preprocessing, inference, regions, overlays, reports). The two are
measured alternately, ``repeats`` times, and compared by their medians.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector.io import list_images
from inspector.preprocess import read_image
from inspector.runtime.folder import DEFAULT_BATCH_SIZE, inspect_folder
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import physical_cores


def write_sample_images(folder: str | Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Write ``count`` textured PNG images of ``size`` (h, w), every fourth with a bright scratch."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    height, width = size
    paths = []
    for index in range(count):
        noise = rng.normal(0.0, 1.0, (height // 4 + 1, width // 4 + 1, 3)).astype(np.float32)
        texture = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
        image = np.clip(128 + 25 * texture + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)
        if index % 4 == 0:
            start = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            end = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, start, end, (245, 245, 245), max(2, width // 64))
        path = folder / f"sample_{index:04d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@dataclass
class Measurement:
    """Images per second (wall clock) and CPU milliseconds per image (all threads of this process)."""

    images_per_second: float
    cpu_ms_per_image: float


def model_only_throughput(scorer: Scorer, batches: list[np.ndarray], workers: int = 1) -> Measurement:
    """``session.run`` alone over already-prepared batches, ``workers`` calls side by side (as `inspect`)."""
    images = sum(len(batch) for batch in batches)
    started, cpu_started = time.perf_counter(), time.process_time()
    if workers == 1:
        for batch in batches:
            scorer.infer(batch)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(scorer.infer, batches))
    return Measurement(
        images / (time.perf_counter() - started), (time.process_time() - cpu_started) * 1000.0 / images
    )


def end_to_end_throughput(
    folder: Path, scorer: Scorer, out_dir: Path, batch_size: int, workers: int, save: str = "all"
) -> Measurement:
    """A whole `inspect` run of ``folder``: listing, decoding, inference, regions, overlays, reports."""
    started, cpu_started = time.perf_counter(), time.process_time()
    summary = inspect_folder(
        folder, scorer, out_dir, recursive=True, force=True, batch_size=batch_size, workers=workers, save=save
    )
    images = summary["this_run"]["images"]
    return Measurement(
        images / (time.perf_counter() - started), (time.process_time() - cpu_started) * 1000.0 / images
    )


def benchmark(
    scorer: Scorer,
    images: str | Path | None = None,
    count: int = 64,
    repeats: int = 3,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 0,
    save: str = "all",
    single_call: Scorer | None = None,
) -> dict[str, Any]:
    """Measure model-only and end-to-end throughput on the same images; medians over ``repeats``.

    Both run ``workers`` model calls side by side (0: one per core), so the ratio is the share of the
    model's own throughput that the whole pipeline keeps. ``single_call`` (the same model with all cores
    given to each call, one call at a time: onnxruntime's defaults) adds a second model-only figure and
    the end-to-end ratio to it.
    ``images`` is searched recursively (e.g. the built-in dataset's ``data/synthetic/fabric/test``); with
    none, ``count`` sample images at the model's image size (a tiled model's camera size) are generated.
    """
    workers = workers or physical_cores()
    with tempfile.TemporaryDirectory(prefix="inspector-bench-") as scratch:
        scratch = Path(scratch)
        folder = Path(images) if images else scratch / "images"
        if not images:
            # A tiled model scores camera-size images in tiles: samples at its image size, not one tile's.
            write_sample_images(folder, count, scorer.session.image_size)
        paths = [path for _, path in list_images(folder, recursive=True)]
        decoded = [read_image(path) for path in paths]
        batches = [scorer.prepare(decoded[i : i + batch_size]) for i in range(0, len(decoded), batch_size)]
        sizes = sorted({(image.shape[0], image.shape[1]) for image in decoded})
        del decoded
        # Warm-up: first-run allocations are not the model's speed.
        model_only_throughput(scorer, batches[:workers], workers)
        if single_call is not None:
            model_only_throughput(single_call, batches[:1])
        model_only, end_to_end, single = [], [], []
        for _ in range(repeats):
            model_only.append(model_only_throughput(scorer, batches, workers))
            end_to_end.append(
                end_to_end_throughput(folder, scorer, scratch / "out", batch_size, workers, save)
            )
            if single_call is not None:
                single.append(model_only_throughput(single_call, batches))
    model_median = statistics.median(m.images_per_second for m in model_only)
    e2e_median = statistics.median(m.images_per_second for m in end_to_end)
    model_cpu = statistics.median(m.cpu_ms_per_image for m in model_only)
    e2e_cpu = statistics.median(m.cpu_ms_per_image for m in end_to_end)
    result = {
        "model": str(scorer.session.path),
        "providers": scorer.session.providers,
        "input_size": list(scorer.session.input_size),
        "image_size": list(scorer.session.image_size),
        "images": len(paths),
        "image_sizes": [list(size) for size in sizes[:5]],
        "generated_images": not images,
        "batch_size": batch_size,
        "workers": workers,
        "threads_per_call": scorer.session.threads,
        "save": save,
        "repeats": repeats,
        "model_only_images_per_second": [round(m.images_per_second, 2) for m in model_only],
        "end_to_end_images_per_second": [round(m.images_per_second, 2) for m in end_to_end],
        "model_only_median": round(model_median, 2),
        "end_to_end_median": round(e2e_median, 2),
        "ratio": round(e2e_median / model_median, 4),
        # CPU time is less disturbed by other programs than wall time: the share the pipeline adds.
        "model_only_cpu_ms_per_image": round(model_cpu, 2),
        "end_to_end_cpu_ms_per_image": round(e2e_cpu, 2),
        "cpu_ratio": round(model_cpu / e2e_cpu, 4),
    }
    if single_call is not None:
        result["single_call_threads"] = single_call.session.threads
        result["single_call_images_per_second"] = [round(m.images_per_second, 2) for m in single]
        single_median = statistics.median(m.images_per_second for m in single)
        result["single_call_median"] = round(single_median, 2)
        result["single_call_ratio"] = round(e2e_median / single_median, 4)
    return result
