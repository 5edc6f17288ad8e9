"""Data-pipeline throughput: DRAEM anomaly synthesis samples per second, to set against the model step.

Reads the built-in dataset (``fabric`` at 256x256, generated under ``data/synthetic`` if missing), resizes
to the input size and synthesises anomalies exactly as training does, single process and through a
DataLoader with worker processes. Anomaly textures come from the generated fallback (in memory) or from a
folder of 512x512 JPEG files, as DTD's images are read (decode + resize on every sample).

    python benchmarks/data_pipeline.py                       # 128 and 256, 0 and 2 workers, both sources
    python benchmarks/data_pipeline.py --sizes 128 --workers 2 --batches 40

Importable: ``measure_pipeline(size, workers, batches)`` returns the median samples/s (wall clock, so it
depends on what else the machine runs); ``cpu_ms_per_sample(size)`` the CPU time one sample costs, which
does not.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch
from torch.utils.data import DataLoader

from inspector.config import load_config
from inspector.training.data.anomaly_source import (
    GENERATED_TEXTURE_COUNT,
    AnomalySource,
    generated_textures,
)
from inspector.training.data.dataset import ImageDataset
from inspector.training.data.synthesis import SyntheticAnomalyDataset
from inspector.training.data.synthetic import build_synthetic_splits

REPO = Path(__file__).resolve().parents[1]

_TEXTURES: dict[str, AnomalySource] = {}


def _source(kind: str) -> AnomalySource:
    """The generated fallback in memory, or the same textures as JPEG files read on every sample."""
    if kind not in _TEXTURES:
        if kind == "generated":
            _TEXTURES[kind] = AnomalySource.from_images(
                generated_textures(GENERATED_TEXTURE_COUNT, 256, seed=0)
            )
        else:
            folder = Path(tempfile.mkdtemp(prefix="inspector-textures-")) / "images"
            for index, texture in enumerate(generated_textures(64, 512, seed=1)):
                path = folder / f"class{index % 8}" / f"texture_{index:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), cv2.cvtColor(texture, cv2.COLOR_RGB2BGR))
            _TEXTURES[kind] = AnomalySource(folder)
    return _TEXTURES[kind]


def measure_pipeline(
    size: int,
    workers: int,
    batches: int,
    batch_size: int = 8,
    source: str = "generated",
    repeats: int = 3,
    data_root: str | None = None,
) -> float:
    """Median over ``repeats`` of training samples/s at ``size`` x ``size`` with ``workers`` processes.

    Each repeat is a fresh epoch; the first batch (worker start-up) is not timed.
    """
    config = load_config(None, {"data.root": data_root, "input_size": [size, size]})
    splits = build_synthetic_splits(config)
    base = ImageDataset(splits.train, (size, size), config.channels)
    dataset = SyntheticAnomalyDataset(base, _source(source), seed=0)
    rates = []
    for repeat in range(repeats):
        dataset.set_epoch(repeat)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
        iterator = iter(loader)
        next(iterator)
        start, samples = time.perf_counter(), 0
        for _ in range(batches):
            try:
                samples += len(next(iterator)["image"])
            except StopIteration:  # a short epoch: time what there was
                break
        rates.append(samples / (time.perf_counter() - start))
        del iterator
    return statistics.median(rates)


def cpu_ms_per_sample(
    size: int, samples: int = 64, source: str = "generated", data_root: str | None = None
) -> float:
    """CPU time one training sample costs in this process (milliseconds): robust to other processes' load."""
    config = load_config(None, {"data.root": data_root, "input_size": [size, size]})
    base = ImageDataset(build_synthetic_splits(config).train, (size, size), config.channels)
    dataset = SyntheticAnomalyDataset(base, _source(source), seed=0)
    dataset[0]
    start = time.process_time()
    for index in range(samples):
        dataset[index % len(dataset)]
    return (time.process_time() - start) / samples * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,256", help="input sizes, comma-separated")
    parser.add_argument("--workers", default="0,2", help="DataLoader worker counts, comma-separated")
    parser.add_argument("--sources", default="generated,folder", help="anomaly sources: generated, folder")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per repeat")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-root", default=None, help="built-in dataset folder (default data/synthetic)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workers = [int(w) for w in args.workers.split(",")]

    print(f"# data pipeline, {platform.node()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"# batch {args.batch_size}, {args.batches} timed batches, median of {args.repeats} repeats")
    print(
        "| input | anomaly source | CPU ms/sample | "
        + " | ".join(f"samples/s, {w} workers" for w in workers)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(workers))
    for size in (int(s) for s in args.sizes.split(",")):
        for source in args.sources.split(","):
            cost = cpu_ms_per_sample(size, source=source, data_root=args.data_root)
            rates = [
                measure_pipeline(size, w, args.batches, args.batch_size, source, args.repeats, args.data_root)
                for w in workers
            ]
            cells = " | ".join(f"{rate:.0f}" for rate in rates)
            print(f"| {size}x{size} | {source} | {cost:.1f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
