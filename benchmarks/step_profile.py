"""Seconds per training step of the CPU presets' networks alone (no data loading, no validation), float32
against bfloat16 autocast, on one fixed batch of a real-texture category.

Usage (an idle machine):
    python benchmarks/step_profile.py --data data/realtex --category wood --threads 2
    python benchmarks/step_profile.py --presets rdna_cpu,rdna_edge,draem_cpu,draem_edge
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import default_collate

from inspector.config import load_config
from inspector.training.data import build_splits, training_datasets
from inspector.training.detectors.base import build_detector


def seconds_per_step(preset: str, args: argparse.Namespace, bfloat16: bool) -> float:
    config = load_config(
        preset,
        {
            "data.format": "mvtec",
            "data.root": args.data,
            "data.category": args.category,
            "data.anomaly_source": f"{args.data}/_anomaly_source",
            "device": "cpu",
        },
    )
    detector = build_detector(
        config.detector, tuple(config.input_size), config.channels, config.detector_options
    )
    train_set, _ = training_datasets(config, build_splits(config), True)
    detector.configure_optimizers(config.lr, 1000)
    detector.to(memory_format=torch.channels_last).train()
    batch = default_collate([train_set[index] for index in range(config.batch_size)])
    batch = {
        key: value.to(memory_format=torch.channels_last)
        if torch.is_tensor(value) and value.dim() == 4
        else value
        for key, value in batch.items()
    }
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        for _ in range(3):  # warm-up
            detector.training_step(batch)
        started = time.perf_counter()
        for _ in range(args.steps):
            detector.training_step(batch)
    return (time.perf_counter() - started) / args.steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="data/realtex", help="The real-texture dataset.")
    parser.add_argument("--category", default="wood")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    parser.add_argument("--presets", default="rdna_cpu,draem_cpu", help="comma-separated preset names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for preset in args.presets.split(","):
        fp32 = seconds_per_step(preset, args, bfloat16=False)
        bf16 = seconds_per_step(preset, args, bfloat16=True)
        print(
            f"{preset}: float32 {fp32:.3f} s/step, bfloat16 autocast {bf16:.3f} s/step ({fp32 / bf16:.2f}x)"
        )


if __name__ == "__main__":
    main()
