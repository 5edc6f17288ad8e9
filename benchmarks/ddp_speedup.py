"""Speed-up of training on several processes (torchrun, gloo or NCCL) over one, on the same total batch.

Each setting ``PxT`` trains the same config for the same steps as ``inspector train`` does: ``P`` processes
(``P`` > 1: ``inspector train --devices P``, torchrun on this machine) of ``T`` torch threads each
(``OMP_NUM_THREADS``), every step on the config's total batch (each process computes ``batch / P`` of it).
The rate is taken from rank 0's ``history.csv``: steps per second between the end of the warm-up and the
step before the last (the last one includes the final validation), so process start-up, data reading and
evaluation are left out. The first setting is the reference of the speed-up column.

On a CPU compare ``1x2`` (one process, 2 threads) with ``2x1`` (two processes, one thread each) on 2 cores,
``1x4`` / ``2x2`` / ``4x1`` on 4. With ``--device cuda`` ``P`` is the number of GPUs (``1x1,2x1``...).

Usage:
    python benchmarks/ddp_speedup.py                                  # rdna_cpu, 1x1, 1x2, 2x1, 60 steps
    python benchmarks/ddp_speedup.py --settings 1x4,2x2,4x1 --batch-size 16 --report speedup.md
    python benchmarks/ddp_speedup.py --tiny                           # a smoke run of the script itself
    python benchmarks/ddp_speedup.py --device cuda --settings 1x1,2x1 --config rdna_paper
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from inspector.config import load_config
from inspector.training.data.synthetic import generate_dataset

TINY_OPTIONS = {"reconstruction_width": 4, "segmentation_width": 4, "discriminator_width": 4}


def parse_settings(text: str) -> list[tuple[int, int]]:
    """``"1x2,2x1"`` -> ``[(1, 2), (2, 1)]`` (processes, threads per process)."""
    settings = []
    for part in text.split(","):
        processes, _, threads = part.strip().lower().partition("x")
        settings.append((int(processes), int(threads or 1)))
    return settings


def write_config(args: argparse.Namespace, data_root: Path, folder: Path) -> Path:
    """The benchmark's config file: the chosen config on the given data, validation only at the end."""
    config = load_config(args.config)
    values = config.to_dict()
    values.update(
        {
            "name": "speedup",
            "out": str(folder / "runs"),
            "device": args.device,
            "epochs": 10_000,
            "max_steps": args.steps,
            "time_limit_minutes": None,
            "val_every_steps": 10 * args.steps,
            "seed": 0,
        }
    )
    if args.batch_size is not None:
        values["batch_size"] = args.batch_size
    values["data"] = {**values["data"], "format": "synthetic", "root": str(data_root), "category": "fabric"}
    values["data"]["workers"] = 0
    if args.tiny:
        values.update({"detector_options": TINY_OPTIONS, "input_size": [32, 32], "crop_size": None})
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path


def steps_per_second(history: Path, warmup: int) -> tuple[float, int]:
    """Rank 0's training rate after ``warmup`` steps, without the last step (it validates)."""
    with history.open(newline="", encoding="utf-8") as handle:
        rows = [(int(row["step"]), float(row["elapsed"])) for row in csv.DictReader(handle)]
    rows = rows[:-1]
    if len(rows) <= warmup + 1:
        raise SystemExit(f"{history}: {len(rows)} timed steps; use --steps larger than --warmup + 2")
    (first_step, first_time), (last_step, last_time) = rows[warmup], rows[-1]
    return (last_step - first_step) / max(last_time - first_time, 1e-9), last_step - first_step


def run_setting(config: Path, processes: int, threads: int, folder: Path) -> dict:
    """Train once with ``processes`` x ``threads``; return the measured rate."""
    out = folder / f"{processes}x{threads}"
    command = [sys.executable, "-m", "inspector", "train", "--config", str(config), "--out", str(out)]
    command += ["--no-progress", "--no-eval"]
    if processes > 1:
        command += ["--devices", str(processes)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.monotonic()
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"setting {processes}x{threads} failed:\n{result.stdout}\n{result.stderr}")
    (run_dir,) = [path for path in out.iterdir() if path.is_dir()]
    return {
        "processes": processes,
        "threads": threads,
        "wall_seconds": round(wall, 2),
        "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--config", default="rdna_cpu", help="preset or YAML file to train (default rdna_cpu)"
    )
    parser.add_argument("--settings", default="1x1,1x2,2x1", help="PROCESSESxTHREADS, comma-separated")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="total batch per step (default the config's)"
    )
    parser.add_argument("--steps", type=int, default=60, help="steps per setting (default 60)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the rate (default 5)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (gloo) or cuda (nccl)")
    parser.add_argument(
        "--data", type=Path, default=None, help="built-in dataset folder (default: generated)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="32 px, width-4 nets, few steps: checks the script"
    )
    parser.add_argument("--report", type=Path, default=None, help="also write the table (and JSON) here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.warmup = min(args.steps, 6), min(args.warmup, 1)
    settings = parse_settings(args.settings)

    with tempfile.TemporaryDirectory(prefix="ddp_speedup_") as temporary:
        folder = Path(temporary)
        data_root = args.data
        if data_root is None:
            size = 32 if args.tiny else 256
            data_root = generate_dataset(
                folder / "data",
                ["fabric"],
                image_size=size,
                train_count=16 if args.tiny else 64,
                test_good=2,
                test_defect_per_kind=1,
            )
        config = write_config(args, data_root, folder)
        batch = yaml.safe_load(config.read_text())["batch_size"]
        results = []
        for processes, threads in settings:
            print(
                f"training {processes} process(es) x {threads} thread(s), total batch {batch} ...", flush=True
            )
            result = run_setting(config, processes, threads, folder)
            rate, timed = steps_per_second(Path(result["run_dir"]) / "history.csv", args.warmup)
            result.update(steps_per_second=round(rate, 4), timed_steps=timed, total_batch=batch)
            del result["run_dir"]
            results.append(result)

    reference = results[0]["steps_per_second"]
    lines = [
        f"config {args.config}{' (tiny)' if args.tiny else ''}, device {args.device}, total batch {batch}, "
        f"{args.steps} steps per setting ({args.warmup} warm-up), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs",
        "",
        "| processes x threads | steps/s | images/s | speed-up | wall (s, with start-up) |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        rate = result["steps_per_second"]
        lines.append(
            f"| {result['processes']} x {result['threads']} | {rate:.3f} | {rate * batch:.1f} | "
            f"{rate / reference:.2f} | {result['wall_seconds']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(table + "\n", encoding="utf-8")
        args.report.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
