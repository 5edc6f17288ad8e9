"""The anomaly-probability cap of trained DRAEM/RDNA runs: with the head after a ReLU and its
anomaly-minus-normal weights all negative, no pixel can score above softmax(bias) = sigmoid(b1 - b0).

For each run: that cap, the share of positive anomaly-minus-normal head weights and their sums, and (with
``--scores``) the five highest validation and good-test image scores and the defective test scores'
quantiles, to see images tie at the cap.

Usage:
    python benchmarks/head_ceiling.py runs/realtex/rdna_cpu_*_seed0_shade1200
    python benchmarks/head_ceiling.py runs/realtex/rdna_cpu_burlap_seed0_shade1200 --scores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from inspector.training.checkpoint import load_detector
from inspector.training.data import build_splits
from inspector.training.data.dataset import ImageDataset
from inspector.training.evaluate import score_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="Run directories of draem or rdna.")
    parser.add_argument("--scores", action="store_true", help="Also score the validation and test images.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for run in map(Path, args.runs):
        detector, config, _ = load_detector(run)
        head = detector.segmenter.output
        difference = (head.weight[1] - head.weight[0]).detach()
        cap = torch.sigmoid(head.bias[1] - head.bias[0]).item()
        print(
            f"{run.name}: cap {cap:.5f}, positive weights {float((difference > 0).float().mean()):.3f} "
            f"(sum {float(difference.clamp(min=0).sum()):.3f} against {float(difference.clamp(max=0).sum()):.3f})"
        )
        if not args.scores:
            continue
        splits = build_splits(config)
        val = score_dataset(detector, ImageDataset(splits.val, config.input_size, config.channels), 8)
        test = score_dataset(detector, ImageDataset(splits.test, config.input_size, config.channels), 8)
        defective = np.asarray(test.masks).reshape(len(test.scores), -1).any(axis=1)
        print(f"  validation top 5: {np.round(np.sort(val.scores)[-5:], 4)}")
        print(f"  good test top 5: {np.round(np.sort(test.scores[~defective])[-5:], 4)}")
        quantiles = np.quantile(test.scores[defective], [0.1, 0.25, 0.5, 0.75, 0.9])
        print(f"  defective test quantiles 0.1/0.25/0.5/0.75/0.9: {np.round(quantiles, 4)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
