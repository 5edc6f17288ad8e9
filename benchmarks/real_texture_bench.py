"""Detection quality on real surfaces: train a preset on each real-texture category, test it, and break the
results down by defect kind and stratum.

The dataset comes from ``benchmarks/real_texture_data.py`` (texture photographs that Debian packages ship,
with scratches, cracks, holes, stains, fibres, worn patches and folds rendered in, graded by size and
contrast; none of them is what DRAEM's synthetic anomalies look like). Each run trains through
``inspector.training.trainer.train`` (what ``inspector train`` runs), calibrated on its validation split of
good images, then:

- image AUROC, pixel AUROC, AUPRO, the false-reject rate of the good test images at the calibrated
  threshold (from ``metrics.json``, as ``inspector eval``);
- per defect kind and per stratum (size small/medium/large, contrast subtle/medium/strong): image AUROC of
  the good test images against those defects, and the share of them flagged at the calibrated threshold;
- region recall and precision at the calibrated pixel threshold with the run's minimum region area: a
  ground-truth defect is found when a predicted region touches it; a predicted region is right when it
  touches a defect.

Choose settings on the ``dev`` categories only (``--dev``); report the others (the default).

Usage:
    python benchmarks/real_texture_data.py --out data/realtex          # once: builds the dataset
    python benchmarks/real_texture_bench.py --config rdna_cpu --seeds 0,1 --jobs 2 \
        --report benchmarks/results/realtex_rdna_cpu.md
    python benchmarks/real_texture_bench.py --config rdna_cpu --seeds 0,1 --include a.json --include b.json \
        --report merged.md                                              # one report of earlier runs
    python benchmarks/real_texture_bench.py --dev --config draem_cpu --set max_steps=300 --set crop_size=128
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

METRICS = ("image_auroc", "pixel_auroc", "aupro", "false_reject_rate", "region_recall", "region_precision")
STRATA = {"size": ("small", "medium", "large"), "contrast": ("subtle", "medium", "strong")}


def run_config(category: str, seed: int, args: argparse.Namespace):
    from inspector.config import load_config

    overrides = {
        "name": f"{Path(args.config).stem}_{category}_seed{seed}{args.tag}",
        "out": args.out,
        "seed": seed,
        "device": "cpu",
        "data.format": "mvtec",
        "data.root": args.data,
        "data.category": category,
        "data.anomaly_source": args.anomaly_source,
    }
    for setting in args.set:
        key, equals, value = setting.partition("=")
        if not equals:
            raise SystemExit(f"--set {setting}: write KEY=VALUE, e.g. crop_size=128")
        overrides[key.strip()] = yaml.safe_load(value)
    return load_config(args.config, overrides)


def run_one(category: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and test one (category, seed); the row of the report."""
    import torch

    from inspector.training.trainer import train

    torch.set_num_threads(args.threads)
    config = run_config(category, seed, args)
    run_dir = Path(config.out) / config.name
    if args.reuse and (run_dir / "metrics.json").is_file():
        pass
    else:
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        cpu_before = time.process_time()
        train(config, progress=False, log=lambda line: None)
        (run_dir / "cpu_seconds.txt").write_text(f"{time.process_time() - cpu_before:.1f}\n")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row = {
        "category": category,
        "seed": seed,
        **{name: metrics.get(name) for name in METRICS[:4]},
        "detection_rate": metrics.get("detection_rate"),
        "steps": metrics.get("training", {}).get("steps"),
        "train_minutes": metrics.get("training", {}).get("minutes"),
    }
    row.update(breakdown(run_dir, category, args))
    return row


def breakdown(run_dir: Path, category: str, args: argparse.Namespace) -> dict:
    """Per-kind and per-stratum image AUROC and detection rate, and region recall/precision."""
    import cv2

    from inspector.calibration import Calibration
    from inspector.metrics import roc_auc
    from inspector.normalization import CALIBRATED
    from inspector.runtime.scoring import RegionGrid
    from inspector.training.checkpoint import load_detector
    from inspector.training.data import build_splits
    from inspector.training.data.dataset import ImageDataset
    from inspector.training.evaluate import score_dataset

    detector, config, _ = load_detector(run_dir)
    calibration = Calibration.load(run_dir / "calibration.json")
    min_area = config.calibration.min_region_area
    splits = build_splits(config)
    samples = splits.test
    scored = score_dataset(detector, ImageDataset(samples, config.input_size, config.channels), 8)
    scores, maps = scored.scores, scored.maps
    flagged = calibration.flag_images(scores)
    defects = json.loads((Path(args.data) / category / "defects.json").read_text())
    category_dir = Path(args.data) / category

    # Regions exactly as the runtime finds them (inspector.runtime.scoring): normalised map, the pixel
    # threshold, the minimum area, and only on images judged anomalous.
    kinds, strata, good = [], [], []
    found: dict[str, list[bool]] = {}
    found_by_pixels: list[bool] = []  # the pixel threshold alone, whatever the image verdict
    right, predicted, good_with_regions, good_with_pixel_regions = 0, 0, 0, 0
    for sample, anomaly_map, truth, anomalous in zip(samples, maps, scored.masks, flagged):
        relative = Path(sample.image).resolve().relative_to(category_dir.resolve()).as_posix()
        info = defects.get(relative)
        good.append(info is None)
        kinds.append(None if info is None else info["kind"])
        strata.append(None if info is None else (info["size"], info["contrast"]))
        grid = RegionGrid.build(
            calibration.normalize_anomaly_maps(anomaly_map), anomaly_map.shape[-2:], CALIBRATED, min_area
        )
        pixel_regions = grid.regions()
        pixel_mask = grid.mask if pixel_regions else np.zeros_like(grid.mask)
        regions = pixel_regions if anomalous else []
        region_mask = pixel_mask if anomalous else np.zeros_like(grid.mask)
        good_with_regions += bool(info is None and regions)
        good_with_pixel_regions += bool(info is None and pixel_regions)
        count, labels = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
        for index in range(1, count):
            hit = bool(region_mask[labels == index].any())
            found_by_pixels.append(bool(pixel_mask[labels == index].any()))
            for key in ("all", f"size:{info['size']}", f"contrast:{info['contrast']}"):
                found.setdefault(key, []).append(hit)
        if regions:
            region_count, region_labels = cv2.connectedComponents(region_mask.view(np.uint8), connectivity=8)
            for index in range(1, region_count):
                predicted += 1
                right += bool(truth[region_labels == index].any())

    scores = np.asarray(scores, np.float64)
    good = np.asarray(good)
    row: dict = {
        "region_recall": float(np.mean(found["all"])) if found.get("all") else None,
        "region_precision": right / predicted if predicted else None,
        "regions_on_good_images": good_with_regions,
        # What the image verdict costs the regions: recall and good images with regions when every image
        # got its regions from the pixel threshold alone.
        "region_recall_pixels_alone": float(np.mean(found_by_pixels)) if found_by_pixels else None,
        "good_images_with_regions_pixels_alone": good_with_pixel_regions,
        **{f"region recall {key}": float(np.mean(hits)) for key, hits in found.items() if key != "all"},
    }
    groups: dict[str, np.ndarray] = {}
    for kind in sorted({k for k in kinds if k}):
        groups[f"kind:{kind}"] = np.asarray([k == kind for k in kinds])
    for axis, levels in STRATA.items():
        position = 0 if axis == "size" else 1
        for level in levels:
            groups[f"{axis}:{level}"] = np.asarray([s is not None and s[position] == level for s in strata])
    # Image-score aggregations of the same maps, to choose one without retraining (dev categories only).
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.asarray(maps, np.float32))[:, None]
    everyone = np.concatenate([np.zeros(good.sum()), np.ones((~good).sum())])
    order = np.concatenate([np.flatnonzero(good), np.flatnonzero(~good)])
    for window in (1, 5, 9, 15, 21):
        pooled = F.avg_pool2d(tensor, window, stride=1, padding=window // 2, count_include_pad=False)
        aggregated = pooled.flatten(1).max(dim=1).values.numpy()
        row[f"aggregation mean{window}-max"] = roc_auc(everyone, aggregated[order])
    for fraction in (0.001, 0.01):
        flat = tensor.flatten(1)
        count = max(1, int(flat.shape[1] * fraction))
        aggregated = flat.topk(count, dim=1).values.mean(dim=1).numpy()
        row[f"aggregation top{fraction:g}-mean"] = roc_auc(everyone, aggregated[order])
    for name, members in groups.items():
        if not members.any():
            continue
        labels = np.concatenate([np.zeros(good.sum()), np.ones(members.sum())])
        values = np.concatenate([scores[good], scores[members]])
        row[f"auroc {name}"] = roc_auc(labels, values)
        row[f"flagged {name}"] = float(np.mean(flagged[members]))
    return row


def _run_packed(task: tuple) -> dict:
    return run_one(*task)


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(rows: list[dict], args: argparse.Namespace, wall_minutes: float) -> str:
    rows = sorted(rows, key=lambda row: (row["category"], row["seed"]))
    lines = [
        f"# Real-texture benchmark: `{args.config}` {' '.join('--set ' + s for s in args.set)}",
        "",
        f"Command: `python benchmarks/real_texture_bench.py {' '.join(args.argv)}`  ",
        f"{len(rows) - args.included} runs in {wall_minutes:.1f} min wall"
        + (
            f" (and {args.included} rows from the --include reports, with their own conditions)"
            if args.included
            else ""
        )
        + (" (--reuse: finished runs were scored again, not trained again)" if args.reuse else "")
        + f", {args.jobs} at a time with {args.threads} torch "
        f"thread(s) each; load average at the start {args.load_at_start}; {platform.processor() or platform.machine()}.",
        "",
        "| category | seed | image AUROC | pixel AUROC | AUPRO | false rejects | region recall | region precision | steps | train min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row["category"],
            row["seed"],
            *(row.get(name) for name in METRICS),
            row["steps"],
            row["train_minutes"],
        ]
        lines.append("| " + " | ".join(_format(cell) for cell in cells) + " |")
    lines += ["", "Medians over seeds, per category:", ""]
    lines.append(
        "| category | image AUROC | pixel AUROC | AUPRO | false rejects | region recall | defective images "
        "flagged | region recall, pixel threshold alone | good images with regions, pixel threshold alone |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    categories = sorted({row["category"] for row in rows})
    diagnostics = ("detection_rate", "region_recall_pixels_alone", "good_images_with_regions_pixels_alone")
    for category in categories + ["all"]:
        selected = [row for row in rows if category in ("all", row["category"])]
        cells = [_median([row.get(name) for row in selected]) for name in (*METRICS[:5], *diagnostics)]
        lines.append(
            f"| {'**median of all runs**' if category == 'all' else category} | "
            + " | ".join(_format(c) for c in cells)
            + " |"
        )
    lines += [
        "",
        "Per defect kind and stratum (median over all runs): image AUROC against the good test images, "
        "and the share flagged at the calibrated threshold:",
        "",
    ]
    lines.append("| group | image AUROC | flagged | region recall |")
    lines.append("|---|---|---|---|")
    groups = sorted(
        {key[len("auroc ") :] for row in rows for key in row if key.startswith("auroc ")},
        key=lambda name: (not name.startswith("kind:"), name),
    )
    for group in groups:
        cells = [
            _median([row.get(f"{prefix} {group}") for row in rows])
            for prefix in ("auroc", "flagged", "region recall")
        ]
        lines.append(f"| {group} | " + " | ".join(_format(cell) for cell in cells) + " |")
    aggregations = sorted({key for row in rows for key in row if key.startswith("aggregation ")})
    if aggregations:
        lines += [
            "",
            "Image AUROC of other image-score aggregations of the same maps (median over runs):",
            "",
        ]
        lines += ["| aggregation | image AUROC |", "|---|---|"]
        lines += [
            f"| {key[len('aggregation ') :]} | {_format(_median([row.get(key) for row in rows]))} |"
            for key in aggregations
        ]
    return "\n".join(lines) + "\n"


def _median(values: list) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default="data/realtex", help="The real-texture dataset (real_texture_data.py)."
    )
    parser.add_argument(
        "--anomaly-source", default=None, help="Anomaly textures (default: DATA/_anomaly_source)."
    )
    parser.add_argument("--config", default="rdna_cpu", help="A preset name or a YAML config.")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config override (repeatable).")
    parser.add_argument("--categories", default=None, help="Comma-separated; default: the reported ones.")
    parser.add_argument("--dev", action="store_true", help="The dev categories (for choosing settings).")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds.")
    parser.add_argument("--jobs", type=int, default=1, help="Runs at once, each in its own process.")
    parser.add_argument(
        "--threads", type=int, default=None, help="Torch threads per run (default: cores / jobs)."
    )
    parser.add_argument("--out", default="runs/realtex", help="Where the runs go.")
    parser.add_argument("--tag", default="", help="Suffix of the run names (to keep variants apart).")
    parser.add_argument("--reuse", action="store_true", help="Reuse finished runs instead of training again.")
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        help="An earlier report's .json of the same config (repeatable): its rows join this report, and "
        "the category/seed pairs it holds are not trained again.",
    )
    parser.add_argument("--report", default=None, help="Markdown report (a .json beside it holds every row).")
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else os.sys.argv[1:]
    args.anomaly_source = args.anomaly_source or str(Path(args.data) / "_anomaly_source")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    args.load_at_start = " ".join(f"{value:.2f}" for value in os.getloadavg())
    # Each generated category says whether it is a dev category in its generated.json.
    catalogue = {
        marker.parent.name: json.loads(marker.read_text())
        for marker in sorted(Path(args.data).glob("*/generated.json"))
        if (marker.parent / "train" / "good").is_dir()  # a category, not the anomaly-source folder
    }
    if not catalogue:
        raise SystemExit(
            f"no real-texture dataset in {args.data}; build it: python benchmarks/real_texture_data.py"
        )
    if args.categories:
        categories = [name for name in args.categories.split(",") if name]
    else:
        categories = [name for name, info in catalogue.items() if bool(info.get("dev")) == args.dev]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows: list[dict] = [row for path in args.include for row in json.loads(Path(path).read_text())]
    args.included = len(rows)
    done = {(row["category"], row["seed"]) for row in rows}
    tasks = [
        (category, seed, args) for seed in seeds for category in categories if (category, seed) not in done
    ]
    started = time.monotonic()

    def report() -> None:
        if args.report:
            path = Path(args.report)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(markdown(rows, args, (time.monotonic() - started) / 60))
            path.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")

    if args.jobs == 1:
        for task in tasks:
            rows.append(run_one(*task))
            print(
                json.dumps(
                    {
                        k: v
                        for k, v in rows[-1].items()
                        if not k.startswith(("auroc ", "flagged ", "aggregation "))
                    }
                ),
                flush=True,
            )
            report()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            for row in pool.map(_run_packed, tasks):
                rows.append(row)
                print(
                    json.dumps(
                        {
                            k: v
                            for k, v in row.items()
                            if not k.startswith(("auroc ", "flagged ", "aggregation "))
                        }
                    ),
                    flush=True,
                )
                report()
    report()
    print(markdown(rows, args, (time.monotonic() - started) / 60))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
