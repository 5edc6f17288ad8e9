"""Does scoring in tiles keep a run's quality? Whole-image vs tiled scoring of a run trained on crops.

    python benchmarks/tiling_quality.py runs/realtex/rdna_cpu_wood_seed0 --overlap 0.25

Scores the run's test split twice with its best checkpoint in torch: whole images at ``input_size`` (what
``inspector eval`` does) and tiled as ``inspector export --tile`` scores them (tiles of ``crop_size``,
stitched, the score recomputed from the stitched map: :class:`inspector.export.tiling.TiledScoring`, the
same numpy stitching the runtime uses). Prints image AUROC, pixel AUROC and AUPRO of both, and how far the
tiled maps and scores lie from the whole-image ones, as JSON. Reads the run and its data; writes nothing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from inspector.export.tiling import TiledScoring, tiling_for_run
from inspector.metrics import pixel_metrics, roc_auc
from inspector.tiling import DEFAULT_OVERLAP
from inspector.training.checkpoint import load_detector
from inspector.training.data import build_splits
from inspector.training.data.dataset import ImageDataset
from inspector.training.evaluate import score_dataset


def quality(scored: Any) -> dict[str, float]:
    keep = scored.pixel_truth
    pixels = pixel_metrics(scored.masks[keep], scored.maps[keep])
    return {
        "image_auroc": roc_auc(scored.labels, scored.scores),
        "pixel_auroc": pixels["pixel_auroc"],
        "aupro": pixels["aupro"],
    }


def compare(run: str, overlap: float, checkpoint: str = "best", batch_size: int = 8) -> dict[str, Any]:
    detector, config, _ = load_detector(run, which=checkpoint)
    tiling = tiling_for_run(detector, config, overlap)
    test = ImageDataset(build_splits(config).test, config.input_size, config.channels)
    whole = score_dataset(detector, test, batch_size)
    tiled = score_dataset(TiledScoring(detector, tiling).eval(), test, batch_size)
    difference = np.abs(tiled.maps - whole.maps)
    return {
        "run": run,
        "checkpoint": checkpoint,
        "test_images": int(len(whole.scores)),
        "tiling": tiling.to_dict(),
        "tiles_per_image": len(tiling.origins()),
        "whole": quality(whole),
        "tiled": quality(tiled),
        "map_abs_difference": {
            "mean": float(difference.mean()),
            "p99": float(np.quantile(difference, 0.99)),
            "max": float(difference.max()),
        },
        "score_abs_difference_max": float(np.abs(tiled.scores - whole.scores).max()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory trained with crop_size (draem or rdna)")
    parser.add_argument(
        "--overlap", type=float, default=DEFAULT_OVERLAP, help="tile overlap, a fraction of the tile"
    )
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = compare(args.run, args.overlap, args.checkpoint)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
