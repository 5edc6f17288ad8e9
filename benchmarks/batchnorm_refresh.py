"""Batch-norm statistics refreshed after training: one run's best.pt scored as saved, then refreshed.

Trains the RDNA CPU preset (``configs/rdna_cpu.yaml``) on the built-in data with the refresh switched off,
evaluates ``best.pt``, then refreshes it with ``training.batchnorm.refresh_best_batchnorm`` (what
``inspector train`` does when training ends) and evaluates again: the same weights, only the statistics
differ.

Usage:
    python benchmarks/batchnorm_refresh.py                                  # momentum 0.1, 1-minute limit
    python benchmarks/batchnorm_refresh.py --momentum 0.5 --time-limit 10   # the preset as shipped
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from inspector.config import load_config
from inspector.training.batchnorm import refresh_best_batchnorm
from inspector.training.detectors.rdna import RDNA
from inspector.training.evaluate import evaluate_run
from inspector.training.trainer import train

REPO = Path(__file__).resolve().parents[1]

METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--momentum", type=float, default=0.1, help="batch-norm momentum (preset: 0.5)")
    parser.add_argument("--time-limit", type=float, default=1.0, help="training minutes (preset: 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--category", default="fabric", help="built-in dataset category")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default="runs/bench", help="folder of the benchmark's run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = load_config(
        REPO / "configs" / "rdna_cpu.yaml",
        {
            "name": f"rdna_bn{args.momentum:g}_limit{args.time_limit:g}_seed{args.seed}",
            "out": args.out,
            "seed": args.seed,
            "device": "cpu",
            "data.category": args.category,
            "time_limit_minutes": args.time_limit,
            "detector_options.batchnorm_momentum": args.momentum,
        },
    )
    RDNA.recompute_batchnorm = False  # train as before the refresh existed, to score best.pt as saved
    run_dir = train(config, progress=False, evaluate=False)
    rows = {"as saved": evaluate_run(run_dir, device="cpu", plots=False, log=lambda line: None)}
    started = time.perf_counter()
    images, layers = refresh_best_batchnorm(run_dir)
    refresh_seconds = time.perf_counter() - started
    rows["refreshed"] = evaluate_run(run_dir, device="cpu", plots=False, log=lambda line: None)

    steps = rows["as saved"].get("step")
    print(
        f"\nRDNA CPU preset, batch-norm momentum {args.momentum:g}, time limit {args.time_limit:g} min, "
        f"seed {args.seed}, category {args.category}; best.pt from step {steps}; refresh: {layers} layers "
        f"on {images} training images in {refresh_seconds:.1f} s\n"
    )
    print("| best.pt statistics | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, metrics in rows.items():
        print(f"| {name} | " + " | ".join(f"{metrics[key]:.3f}" for key in METRICS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
