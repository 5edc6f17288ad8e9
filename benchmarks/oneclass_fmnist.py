"""One-class Fashion-MNIST benchmark: each class in turn is normal, the 10,000 test images are scored.

For every detector of the one-class family (alocc, bigan, memvae, advvae) and a raw-pixel OC-SVM
baseline, train on the normal class's training images for a fixed wall-clock budget, score the whole
test split and report the image AUROC per class, the mean, the budget and the wall time, next to the
published numbers for the same protocol.

Usage:
    python benchmarks/oneclass_fmnist.py                              # all classes, all detectors, 180 s
    python benchmarks/oneclass_fmnist.py --classes 0,6 --detectors alocc,ocsvm --budget-seconds 60
    python benchmarks/oneclass_fmnist.py --clock cpu --threads 1 --jobs 2   # two runs at once on 2 cores

Data: ``apt-get install -y dataset-fashion-mnist`` (or ``--root`` a folder with the four idx files).
Each detector's settings come from ``configs/<detector>_fmnist.yaml`` (or ``<detector>_mnist.yaml``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from inspector.config import TrainConfig, load_config
from inspector.errors import InspectorError
from inspector.metrics import average_precision, fpr_at_tpr, roc_auc
from inspector.preprocess import prepare_batch
from inspector.training.batchnorm import REFRESH_IMAGES, recompute_batchnorm
from inspector.training.data import build_splits
from inspector.training.data.dataset import load_rgb
from inspector.training.detectors import build_detector, detector_names

REPO = Path(__file__).resolve().parents[1]

FAMILY = ("alocc", "bigan", "memvae", "advvae")
BASELINE = "ocsvm"
#: Published one-class Fashion-MNIST AUROC (%), from the GEOM (NeurIPS 2018) and GOAD (ICLR 2020) papers.
PUBLISHED = {
    "GEOM": [99.4, 97.6, 91.1, 89.9, 92.1, 93.4, 83.3, 98.9, 90.8, 99.2, 93.5],
    "GOAD": [94.1, 98.5, 90.8, 91.6, 91.4, 94.8, 83.4, 97.9, 98.9, 99.2, 94.1],
    "Deep SVDD (GOAD's table)": [98.2, 90.3, 90.7, 94.2, 89.4, 91.8, 83.4, 98.8, 91.9, 99.0, 92.8],
}
CLOCKS = {
    "wall": (time.perf_counter, "wall-clock time"),
    "cpu": (time.process_time, "CPU time of this process"),
}
PUBLISHED_MEANS = {
    "OC-SVM raw pixels (GEOM)": 92.8,
    "OC-SVM on CAE features (GEOM)": 91.7,
    "ADGAN (GEOM)": 88.4,
    "DSEBM (GEOM)": 86.6,
}


def detector_config(detector: str, normal_class: int, root: str | None) -> TrainConfig:
    """The detector's Fashion-MNIST config (or its 28x28 MNIST one) for one normal class."""
    overrides = {"data.format": "fashion-mnist", "data.normal_class": normal_class, "data.root": root}
    for name in (f"{detector}_fmnist.yaml", f"{detector}_mnist.yaml"):
        if (REPO / "configs" / name).is_file():
            return load_config(REPO / "configs" / name, overrides)
    return load_config(None, {"detector": detector, "input_size": [28, 28], "channels": 1, **overrides})


def parse_variant(spec: str) -> tuple[str, dict]:
    """``alocc:score=reconstruction/rec_weight=100`` -> ("alocc", {"score": "reconstruction", "rec_weight": 100})."""
    name, _, options = spec.partition(":")
    overrides = {}
    for item in filter(None, options.split("/")):
        key, equals, value = item.partition("=")
        if not equals:
            raise InspectorError(f"detector variant '{spec}': write options as key=value, separated by '/'")
        overrides[key.strip()] = yaml.safe_load(value)
    return name.strip(), overrides


def variant_config(spec: str, normal_class: int, root: str | None) -> TrainConfig:
    """The config of a detector variant: detector options, or top-level keys such as lr and batch_size."""
    name, overrides = parse_variant(spec)
    config = detector_config(name, normal_class, root)
    for key, value in overrides.items():
        if key in TrainConfig.__dataclass_fields__:
            setattr(config, key, value)
        else:
            config.detector_options[key] = value
    return config


def to_tensor(samples: list, config: TrainConfig) -> torch.Tensor:
    """Samples -> model input ``[N, C, H, W]`` through the project's one preprocessing path."""
    images = [load_rgb(sample) for sample in samples]
    return torch.from_numpy(prepare_batch(images, config.input_size, config.channels))


@torch.no_grad()
def score_all(detector: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    detector.eval()
    return torch.cat(
        [detector(images[i : i + batch_size])[0] for i in range(0, len(images), batch_size)]
    ).numpy()


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUROC (the table), average precision and the false-positive rate at 95 % true-positive rate (the JSON)."""
    return {
        "auroc": roc_auc(labels, scores),
        "average_precision": average_precision(labels, scores),
        "fpr_at_95_tpr": fpr_at_tpr(labels, scores, 0.95),
    }


def run_detector(
    name: str, normal_class: int, budget: float, root: str | None, seed: int, clock=time.perf_counter
) -> dict:
    """Train ``name`` on one normal class within ``budget`` seconds of ``clock``; AUROC on the whole test split."""
    config = variant_config(name, normal_class, root)
    splits = build_splits(config)
    train, val = to_tensor(splits.train, config), to_tensor(splits.val, config)
    test = to_tensor(splits.test, config)
    labels = np.array([sample.label for sample in splits.test])
    torch.manual_seed(seed)
    detector = build_detector(
        config.detector, tuple(config.input_size), config.channels, config.detector_options
    )
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    detector.configure_optimizers(config.lr, total_steps)
    generator = torch.Generator().manual_seed(seed)
    start, wall_start, step, stopped_by = clock(), time.perf_counter(), 0, "steps"
    detector.train()
    while step < total_steps:
        order = torch.randperm(len(train), generator=generator)
        for first in range(0, len(order) - config.batch_size + 1, config.batch_size):
            detector.training_step({"image": train[order[first : first + config.batch_size]]})
            step += 1
            if step % config.val_every_steps == 0 and len(val):
                detector.eval()
                for i in range(0, len(val), 500):
                    detector.validation_loss({"image": val[i : i + 500]})
                detector.train()
                if getattr(detector, "should_stop", False):
                    stopped_by = "rho"
            if clock() - start >= budget:
                stopped_by = "budget"
            if step >= total_steps or stopped_by != "steps":
                break
        if stopped_by != "steps":
            break
        detector.step_schedulers()
    train_seconds, train_wall = clock() - start, time.perf_counter() - wall_start
    metrics = image_metrics(labels, score_all(detector, test))
    if detector.recompute_batchnorm:  # as `inspector train` does when training ends
        before = metrics["auroc"]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:REFRESH_IMAGES]
        size = config.batch_size
        recompute_batchnorm(
            detector, [train[order[i : i + size]] for i in range(0, len(order) - size + 1, size)]
        )
        metrics = {
            **image_metrics(labels, score_all(detector, test)),
            "auroc_before_batchnorm_refresh": before,
        }
    return {
        **metrics,
        "steps": step,
        "train_seconds": train_seconds,
        "stopped_by": stopped_by,
        "epochs": step / steps_per_epoch,
        "train_wall_seconds": train_wall,
    }


def run_ocsvm(normal_class: int, root: str | None, seed: int) -> dict:
    """Raw-pixel OC-SVM (RBF, gamma 'scale', nu 0.1) on the same normal training images."""
    from sklearn.svm import OneClassSVM

    config = load_config(
        None,
        {
            "data.format": "fashion-mnist",
            "data.normal_class": normal_class,
            "data.root": root,
            "input_size": [28, 28],
            "channels": 1,
            "seed": seed,
        },
    )
    splits = build_splits(config)
    train = to_tensor(splits.train, config).flatten(1).numpy()
    test = to_tensor(splits.test, config).flatten(1).numpy()
    labels = np.array([sample.label for sample in splits.test])
    start, cpu_start = time.perf_counter(), time.process_time()
    model = OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(train)
    return {
        **image_metrics(labels, -model.score_samples(test)),
        "steps": 0,
        "epochs": 1.0,
        "stopped_by": "converged",
        "train_seconds": time.process_time() - cpu_start,
        "train_wall_seconds": time.perf_counter() - start,
    }


def run_task(name: str, normal_class: int, args: argparse.Namespace) -> tuple[str, int, dict]:
    """One (detector, normal class) run; the wall time includes loading the data and scoring the test split."""
    start = time.perf_counter()
    if name == BASELINE:
        result = run_ocsvm(normal_class, args.root, args.seed)
    else:
        result = run_detector(
            name, normal_class, args.budget_seconds, args.root, args.seed, CLOCKS[args.clock][0]
        )
    return name, normal_class, {**result, "wall_seconds": time.perf_counter() - start}


def run_packed_task(task: tuple[str, int, argparse.Namespace]) -> tuple[str, int, dict]:
    return run_task(*task)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def markdown(results: dict, classes: list[int], budget: float, threads: int, wall: dict, clock: str) -> str:
    header = (
        "| detector | "
        + " | ".join(str(c) for c in classes)
        + " | mean | budget / class | wall time (sum over classes) |"
    )
    lines = [
        (
            f"One-class Fashion-MNIST, image AUROC (%) on the 10,000 test images; {threads} torch thread(s), "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; budget {budget:.0f} s of "
            f"{CLOCKS[clock][1]} for training, per class and detector."
        ),
        "",
        header,
        "|" + "---|" * (len(classes) + 4),
    ]
    for name, per_class in results.items():
        values = [per_class[c]["auroc"] * 100 for c in classes]
        budget_text = "n/a (fits to convergence)" if name == BASELINE else f"{budget:.0f} s"
        lines.append(
            f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {np.mean(values):.1f} | "
            f"{budget_text} | {wall[name]:.0f} s |"
        )
    lines += ["", "Training steps per class (epochs), and what ended training:", ""]
    for name, per_class in results.items():
        cells = ", ".join(
            f"{c}: {r['steps']} ({r['epochs']:.1f} ep, {r['train_wall_seconds']:.0f} s wall, {r['stopped_by']})"
            for c, r in per_class.items()
        )
        lines.append(f"- {name}: {cells}")
    lines += [
        "",
        "Published, same protocol (%):",
        "",
        "| method | " + " | ".join(str(c) for c in range(10)) + " | mean |",
        "|" + "---|" * 12,
    ]
    for method, values in PUBLISHED.items():
        lines.append(f"| {method} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines.append("")
    lines.append("Means only: " + ", ".join(f"{k} {v}" for k, v in PUBLISHED_MEANS.items()) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9", help="normal classes to run, e.g. 0,6")
    parser.add_argument(
        "--detectors",
        default=",".join((*FAMILY, BASELINE)),
        help="detectors (and 'ocsvm') to run; a variant overrides options: 'alocc:score=reconstruction'",
    )
    parser.add_argument(
        "--budget-seconds", type=float, default=180.0, help="training budget per class and detector"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="what the budget counts: wall-clock seconds, or this process's CPU seconds (fair on a "
        "shared machine: with --threads 1, 180 CPU s is at most 3 minutes of 2 cores)",
    )
    parser.add_argument("--root", default=None, help="folder with the idx files (default: Debian's install)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(detector, class) runs at once, each in its own process with --threads threads",
    )
    parser.add_argument(
        "--out", default="bench_out/oneclass_fmnist.md", help="markdown table to write (+ .json)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    classes = [int(c) for c in args.classes.split(",") if c.strip()]
    wanted = [d.strip() for d in args.detectors.split(",") if d.strip()]
    known = set(detector_names()) | {BASELINE}
    unknown = [d for d in wanted if d.partition(":")[0] not in known]
    if unknown:
        print(
            f"error: unknown detector(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}",
            file=sys.stderr,
        )
        return 2
    tasks = [(name, normal_class) for name in wanted for normal_class in classes]
    results: dict[str, dict[int, dict]] = {name: {} for name in wanted}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def save(partial: bool) -> None:
        # Rewritten after every task: a crash or Ctrl-C keeps every class already measured.
        wall = {
            name: sum(r["wall_seconds"] for r in per_class.values()) for name, per_class in results.items()
        }
        done = {name: per_class for name, per_class in results.items() if per_class}
        payload = {
            "budget_seconds": args.budget_seconds,
            "clock": args.clock,
            "threads": args.threads,
            "jobs": args.jobs,
            "command": " ".join(sys.argv),
            "partial": partial,
            "elapsed_seconds": time.perf_counter() - started,
            "wall_seconds": wall,
            "results": done,
        }
        out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
        if not partial:
            table = markdown(done, classes, args.budget_seconds, args.threads, wall, args.clock)
            elapsed = (
                f"\nWhole run: {payload['elapsed_seconds']:.0f} s of wall time, {args.jobs} run(s) at once.\n"
            )
            out.write_text(table + elapsed, encoding="utf-8")

    pool = None
    if args.jobs == 1:
        outcomes = (run_task(name, c, args) for name, c in tasks)
    else:
        # A fresh interpreter per worker: no forked torch state.
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(args.jobs, initializer=torch.set_num_threads, initargs=(args.threads,))
        outcomes = pool.imap_unordered(run_packed_task, [(name, c, args) for name, c in tasks])
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the workers too, like Ctrl-C
    try:
        for name, normal_class, result in outcomes:
            results[name][normal_class] = result
            print(
                f"{name} class {normal_class}: AUROC {result['auroc']:.4f} after {result['steps']} steps "
                f"({result['train_seconds']:.0f} s, {result['stopped_by']})",
                flush=True,
            )
            save(partial=True)
    except InspectorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the runs finished so far are in {out.with_suffix('.json')}", file=sys.stderr)
        return 130
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    for name in wanted:  # table rows in the order asked for, classes in order
        results[name] = {c: results[name][c] for c in classes}
    save(partial=False)
    print(out.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
