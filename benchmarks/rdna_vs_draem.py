"""RDNA against DRAEM: the CPU presets trained on the built-in dataset with the same seeds, then tested.

Each detector trains through ``training.trainer.train`` (the function behind ``inspector train``) from
``configs/<detector>_cpu.yaml``, is calibrated on its validation split and measured on the test split
(``training.evaluate.evaluate_run``, as ``inspector eval``). The table gives image AUROC, pixel AUROC,
pixel AP, AUPRO, the steps trained, the training wall time and CPU time, seconds per step and the load
average of the machine while it ran: on a shared machine wall time grows with the load, CPU time much less.
With several seeds or categories every detector is trained on each (category, seed) and a summary follows:
each detector's mean and standard deviation over the runs, and per metric the mean paired difference
(first detector minus second on the same category and seed) with how many pairs the first won.

Usage:
    python benchmarks/rdna_vs_draem.py                                 # the presets' own budget
    python benchmarks/rdna_vs_draem.py --max-steps 5 --time-limit 1    # a smoke run
    python benchmarks/rdna_vs_draem.py --categories fabric,metal,wood,granite --seeds 0,1 \
        --report runs/bench/seeds.md                                   # 8 pairs, about 40 minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from inspector.config import TrainConfig, load_config
from inspector.training.evaluate import evaluate_run
from inspector.training.trainer import train

REPO = Path(__file__).resolve().parents[1]

DETECTORS = ("rdna", "draem")
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro")
COLUMNS = (
    ("detector", "detector"),
    ("category", "category"),
    ("seed", "seed"),
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("pixel_ap", "pixel AP"),
    ("aupro", "AUPRO"),
    ("steps", "steps"),
    ("train_minutes", "train wall (min)"),
    ("train_cpu_minutes", "train CPU (min)"),
    ("seconds_per_step", "s/step"),
    ("cpu_seconds_per_step", "CPU s/step"),
    ("load", "load avg"),
    ("eval_seconds", "eval (s)"),
)


def benchmark_config(detector: str, category: str, seed: int, args: argparse.Namespace) -> TrainConfig:
    """The detector's CPU preset with the benchmark's seed, data and budget."""
    overrides = {
        "name": f"{detector}_cpu_{category}_seed{seed}",
        "out": args.out,
        "seed": seed,
        "device": "cpu",
        "data.category": category,
        "data.root": args.data,
        "data.workers": args.workers,
        "max_steps": args.max_steps,
        "time_limit_minutes": args.time_limit,
    }
    for setting in args.set:
        key, equals, value = setting.partition("=")
        if not equals:
            raise SystemExit(f"--set {setting}: write KEY=VALUE, e.g. detector_options.adv_seg_weight=0.001")
        overrides[key.strip()] = yaml.safe_load(value)
        overrides["name"] += f"_{key.strip().rpartition('.')[2]}{value.strip()}"
    return load_config(REPO / "configs" / f"{detector}_cpu.yaml", overrides)


def _cpu_seconds() -> float:
    # This process and its reaped children (data-loader workers): the CPU the run really used.
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_one(detector: str, category: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and evaluate one detector; its metrics and timings as a row of the table."""
    config = benchmark_config(detector, category, seed, args)
    print(
        f"== {detector}, {category}, seed {seed}: {config.input_size[0]}x{config.input_size[1]}, "
        f"batch {config.batch_size}, lr {config.lr}, "
        f"max_steps {config.max_steps}, time limit {config.time_limit_minutes} min, options {config.detector_options}",
        flush=True,
    )
    cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
    run_dir = train(config, progress=args.progress, evaluate=False)
    train_seconds, train_cpu = time.perf_counter() - wall_start, _cpu_seconds() - cpu_start
    load = os.getloadavg()[1]  # 5-minute average, over most of the training
    eval_start = time.perf_counter()
    metrics = evaluate_run(run_dir, checkpoint="best", device="cpu", plots=args.plots, log=lambda line: None)
    eval_seconds = time.perf_counter() - eval_start
    with (run_dir / "history.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    steps = int(rows[-1]["step"]) if rows else 0
    loop_seconds = float(rows[-1]["elapsed"]) if rows else train_seconds
    return {
        "detector": detector,
        "category": category,
        "seed": seed,
        "run_dir": str(run_dir),
        "image_auroc": metrics.get("image_auroc"),
        "pixel_auroc": metrics.get("pixel_auroc"),
        "pixel_ap": metrics.get("pixel_ap"),
        "aupro": metrics.get("aupro"),
        "best_step": metrics.get("step"),
        "steps": steps,
        "train_minutes": train_seconds / 60,
        "train_cpu_minutes": train_cpu / 60,
        "seconds_per_step": loop_seconds / max(steps, 1),
        "cpu_seconds_per_step": train_cpu / max(steps, 1),
        "load": load,
        "eval_seconds": eval_seconds,
        "config": config.to_dict(),
    }


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def summary(rows: list[dict], detectors: list[str]) -> list[str]:
    """Markdown lines: each detector's mean and standard deviation over its runs, then the paired
    differences of the first two detectors on the same (category, seed)."""
    lines = ["| detector | runs | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 2)]
    for detector in detectors:
        own = [row for row in rows if row["detector"] == detector]
        cells = []
        for metric in METRICS:
            values = [row[metric] for row in own if row.get(metric) is not None]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}" if values else "")
        lines.append(f"| {detector} | {len(own)} | " + " | ".join(cells) + " |")
    if len(detectors) < 2:
        return lines
    first, second = detectors[:2]
    by_run = {(row["detector"], row["category"], row["seed"]): row for row in rows}
    pairs = [
        (row, by_run[(second, row["category"], row["seed"])])
        for row in rows
        if row["detector"] == first and (second, row["category"], row["seed"]) in by_run
    ]
    if not pairs:
        return lines
    lines += ["", f"| {first} − {second}, paired ({len(pairs)} pairs) | " + " | ".join(METRICS) + " |"]
    lines.append("|" + "---|" * (len(METRICS) + 1))
    differences, wins = [], []
    for metric in METRICS:
        deltas = [
            a[metric] - b[metric] for a, b in pairs if a.get(metric) is not None and b.get(metric) is not None
        ]
        spread = statistics.stdev(deltas) if len(deltas) > 1 else 0.0
        differences.append(f"{statistics.mean(deltas):+.3f} ± {spread:.3f}" if deltas else "")
        wins.append(f"{sum(delta > 0 for delta in deltas)} of {len(deltas)}")
    lines.append("| mean difference ± std | " + " | ".join(differences) + " |")
    lines.append(f"| pairs {first} won | " + " | ".join(wins) + " |")
    return lines


def markdown(rows: list[dict], args: argparse.Namespace, detectors: list[str]) -> str:
    """The results as a markdown table with what was run and on what, and the summary over runs."""
    lines = [
        (
            f"RDNA vs DRAEM, CPU presets (configs/<detector>_cpu.yaml), built-in dataset categories "
            f"`{args.categories}`, seeds {args.seeds}, torch threads {args.threads}, data workers {args.workers}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs."
        ),
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    lines += [
        "",
        (
            "Metrics on the test split with the checkpoint of lowest validation loss; train wall/CPU = the training "
            "loop (data, steps, validation, checkpoints); load avg = the machine's 5-minute load average at the end "
            "of training (2 cores: above 2 means other work shared them)."
        ),
    ]
    if len(rows) > len(detectors):
        lines += ["", *summary(rows, detectors)]
    return "\n".join(lines) + "\n"


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--detectors", default=",".join(DETECTORS), help="comma-separated (default rdna,draem)"
    )
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default 0)")
    parser.add_argument(
        "--categories", default="fabric", help="comma-separated built-in dataset categories (default fabric)"
    )
    parser.add_argument("--data", default=None, help="built-in dataset folder (default data/synthetic)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the presets' max_steps")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="training minutes per detector (override)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--workers", type=int, default=None, help="data-loader workers (default: the presets')"
    )
    parser.add_argument("--out", default="runs/bench", help="folder of the benchmark's runs")
    parser.add_argument(
        "--report",
        default=None,
        help="markdown file to write, rewritten after every run (default OUT/rdna_vs_draem.md)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key for every detector, e.g. detector_options.adv_seg_weight=0.001 (repeatable)",
    )
    parser.add_argument("--plots", action="store_true", help="also write each run's plots")
    parser.add_argument("--progress", action="store_true", help="show the training progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detectors, categories = _names(args.detectors), _names(args.categories)
    try:
        seeds = [int(seed) for seed in _names(args.seeds)]
    except ValueError:
        raise SystemExit(
            f"--seeds {args.seeds}: write whole numbers separated by commas, e.g. 0,1,2"
        ) from None
    report = Path(args.report) if args.report else Path(args.out) / "rdna_vs_draem.md"
    report.parent.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    for category in categories:
        for seed in seeds:
            for detector in detectors:
                rows.append(run_one(detector, category, seed, args))
                # Rewritten after every run: a long benchmark that stops keeps what it measured.
                report.write_text(markdown(rows, args, detectors), encoding="utf-8")
                report.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(markdown(rows, args, detectors))
    print(f"wrote {report} and {report.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
