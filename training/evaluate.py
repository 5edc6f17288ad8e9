"""Evaluation of a trained run: calibrate on the validation split, measure on the test split.

``evaluate_run(run_dir)`` writes ``calibration.json`` (thresholds and normalisation range, the numpy
:func:`inspector.calibration.calibrate`), ``metrics.json`` (the numpy metrics of :mod:`inspector.metrics`)
and ``plots/``. Images are scored through :class:`ImageDataset`, i.e. the shared preprocessing, and the
detector's ``forward``: the same graph that export writes to ONNX.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from inspector.calibration import Calibration, calibrate
from inspector.config import DATA_FORMATS, DataConfig, TrainConfig
from inspector.errors import InspectorError
from inspector.evaluation import ScoredSplit, image_counts, measure_at_calibration, summary_lines
from inspector.training.checkpoint import atomic_write_text, load_detector
from inspector.training.data import Splits, build_splits
from inspector.training.data.dataset import ImageDataset
from inspector.training.data.samples import Sample
from inspector.training.detectors.base import Detector
from inspector.training.device import resolve_device

GRID_ROWS = 4
PRIOR_SAMPLES = 16


@torch.no_grad()
def score_dataset(
    detector: Detector, dataset: ImageDataset, batch_size: int, device: str | torch.device = "cpu"
) -> ScoredSplit:
    """Score every image of ``dataset`` in batches through ``detector.forward`` in eval mode."""
    device = torch.device(device)
    was_training = detector.training
    detector.eval()
    scores, maps, labels, masks = [], [], [], []
    try:
        for batch in DataLoader(dataset, batch_size=max(1, int(batch_size)), shuffle=False, num_workers=0):
            score, anomaly_map = detector(batch["image"].to(device))
            scores.append(score.detach().float().cpu().numpy().reshape(-1))
            maps.append(anomaly_map.detach().float().cpu().numpy()[:, 0])
            labels.append(batch["label"].numpy())
            masks.append(batch["mask"].numpy()[:, 0] > 0.5)
    finally:
        detector.train(was_training)
    if not scores:
        return ScoredSplit.empty(dataset.input_size)
    pixel_truth = np.array([s.label == 0 or s.mask is not None for s in dataset.samples], dtype=bool)
    return ScoredSplit(
        np.concatenate(scores),
        np.concatenate(maps),
        np.concatenate(labels),
        np.concatenate(masks),
        pixel_truth,
    )


def score_samples(
    detector: Detector,
    samples: list[Sample],
    input_size: tuple[int, int] | list[int],
    channels: int,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Raw image scores ``[N]`` and raw anomaly maps ``[N, H, W]`` of samples, through the shared preprocessing.

    Example:
        >>> scores, maps = score_samples(detector, splits.test, (128, 128), 3, batch_size=8, device="cpu")
    """
    scored = score_dataset(detector, ImageDataset(samples, tuple(input_size), channels), batch_size, device)
    return scored.scores, scored.maps


def calibrate_on_validation(
    model: torch.nn.Module,
    config: TrainConfig,
    splits: Splits,
    batch_size: int,
    device: str | torch.device = "cpu",
    **data: Any,
) -> tuple[Calibration, str, ScoredSplit]:
    """Score the validation split (the training split when there is none) with ``model`` and calibrate on it
    with the config's calibration settings; ``data`` is added to the calibration's record.

    Returns the calibration, the split's name and its scores. Raises ``ValueError`` from :func:`calibrate`.
    """
    samples, split = (splits.val, "val") if splits.val else (splits.train, "train")
    scored = score_dataset(
        model, ImageDataset(samples, config.input_size, config.channels), batch_size, device
    )
    with_masks = bool(np.any(scored.labels[scored.pixel_truth] == 1))
    calibration = calibrate(
        scored.scores,
        scored.labels,
        scored.maps,
        masks=scored.masks if with_masks else None,
        method=config.calibration.method,
        false_reject_rate=config.calibration.false_reject_rate,
        pixel_false_positive_rate=config.calibration.pixel_false_positive_rate,
        data={"split": split, **data, **splits.description},
    )
    return calibration, split, scored


def evaluate_run(
    run_dir: str | Path,
    data_overrides: dict[str, Any] | None = None,
    checkpoint: str = "best",
    device: str | None = None,
    plots: bool = True,
    log=print,
) -> dict[str, Any]:
    """Calibrate a run on its validation split and measure it on its test split.

    Writes ``calibration.json``, ``metrics.json`` and ``plots/`` into ``run_dir`` and returns the metrics.
    ``data_overrides`` replace fields of the run's ``data`` config (e.g. ``{"root": "/new/place"}``).

    Raises:
        InspectorError: no run or checkpoint, unreadable data, or data the calibration cannot use.

    Example:
        >>> metrics = evaluate_run("runs/rdna_cpu")
        >>> round(metrics["image_auroc"], 3)
        0.987
    """
    started = time.monotonic()
    run_dir = Path(run_dir)
    detector, config, state = load_detector(run_dir, which=checkpoint)
    if data_overrides:
        config.data = _override_data(config.data, data_overrides)
    torch_device = resolve_device(device or config.device)
    detector.to(torch_device).eval()
    splits = build_splits(config)
    notes: list[str] = []
    if checkpoint == "best" and detector.recompute_batchnorm and "batchnorm_refreshed_images" not in state:
        notes.append(
            "best.pt keeps the batch-norm statistics of training, not ones recomputed for its weights "
            f"(training was interrupted, or by an older version): `inspector train --resume {run_dir}` finishes "
            "the run and recomputes them"
        )
    batch_size = config.batch_size

    # Calibration: on the validation split (held out of the training normals, never the test set).
    if not splits.val:
        notes.append("no validation images: calibrated on the training images (thresholds may be too low)")
    try:
        calibration, calibration_split, val = calibrate_on_validation(
            detector, config, splits, batch_size, torch_device
        )
    except ValueError as error:
        raise InspectorError(
            f"cannot calibrate {run_dir} on its {'val' if splits.val else 'train'} split: {error}"
        ) from None
    atomic_write_text(run_dir / "calibration.json", json.dumps(calibration.to_dict(), indent=2) + "\n")
    if "warning" in calibration.data:
        notes.append(calibration.data["warning"])

    # Test metrics at the calibrated thresholds.
    test_set = ImageDataset(splits.test, config.input_size, config.channels)
    test = score_dataset(detector, test_set, batch_size, torch_device)
    metrics = measure_at_calibration(test, calibration, notes)
    metrics.update(
        {
            "image_threshold": calibration.image_threshold,
            "pixel_threshold": calibration.pixel_threshold,
            "calibration": {
                "method": calibration.method,
                "target": calibration.target,
                "promised_false_reject_rate": calibration.data.get("promised_false_reject_rate"),
                "split": calibration_split,
            },
            "images": image_counts(test, len(val.labels)),
            "detector": config.detector,
            "checkpoint": checkpoint,
            "step": state.get("step"),
            "epoch": state.get("epoch"),
            "data": dict(splits.description),
            "input_size": list(config.input_size),
            "device": torch_device.type,
            "notes": notes,
        }
    )
    training_summary = run_dir / "training.json"
    if training_summary.is_file():
        metrics["training"] = json.loads(training_summary.read_text(encoding="utf-8"))

    if plots:
        metrics["plots"] = _make_plots(run_dir, detector, test_set, test, calibration, torch_device, notes)
    metrics["seconds"] = round(time.monotonic() - started, 2)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    for line in summary_lines(metrics, run_dir):
        log(line)
    return metrics


def _override_data(data: DataConfig, overrides: dict[str, Any]) -> DataConfig:
    unknown = sorted(set(overrides) - set(DataConfig.__dataclass_fields__))
    if unknown:
        raise InspectorError(f"unknown data option(s) {', '.join(unknown)}")
    data = dataclasses.replace(data, **{key: value for key, value in overrides.items() if value is not None})
    if data.format not in DATA_FORMATS:
        raise InspectorError(f"data format '{data.format}' unknown; use one of {', '.join(DATA_FORMATS)}")
    return data


def _grid_rows(dataset: ImageDataset, count: int) -> list[int]:
    """A few test images to show: one anomalous image of each defect kind first, then normal ones."""
    chosen: list[int] = []
    seen: set[str] = set()
    for index, sample in enumerate(dataset.samples):
        if sample.label == 1 and sample.defect not in seen:
            seen.add(sample.defect)
            chosen.append(index)
    normals = [index for index, sample in enumerate(dataset.samples) if sample.label == 0]
    chosen = chosen[: max(count - 1, 1)] if normals else chosen[:count]
    chosen += normals[: count - len(chosen)]
    return chosen[:count]


def _make_plots(
    run_dir: Path,
    detector: Detector,
    test_set: ImageDataset,
    test: ScoredSplit,
    calibration: Calibration,
    device: torch.device,
    notes: list[str],
) -> list[str]:
    try:
        from inspector.training import plots
    except ImportError as error:  # matplotlib is part of the [train] extra
        notes.append(f"plots skipped ({error}); install inspector[train]")
        return []
    folder = run_dir / "plots"
    written = [plots.plot_loss_curves(run_dir / "history.csv", folder / "loss_curves.png")]
    written.append(plots.plot_roc(test.labels, test.scores, folder / "roc.png"))
    written.append(
        plots.plot_score_histogram(
            test.labels, test.scores, calibration.image_threshold, folder / "score_histogram.png"
        )
    )
    rows = _grid_rows(test_set, GRID_ROWS)
    if rows:
        images = torch.stack([test_set[index]["image"] for index in rows])
        with torch.no_grad():
            visuals = {
                name: value.float().cpu().numpy()
                for name, value in detector.visuals(images.to(device)).items()
            }
        columns: dict[str, np.ndarray] = dict(visuals)
        columns["anomaly map"] = calibration.normalize_anomaly_maps(test.maps[rows])
        if test.pixel_truth[rows].any() and test.masks[rows].any():
            columns["ground truth"] = test.masks[rows].astype(np.float32)
        names = [test_set.samples[index].name or str(index) for index in rows]
        scores = calibration.normalize_image_scores(test.scores[rows])
        titles = [f"{name}\nscore {score:.2f}" for name, score in zip(names, scores)]
        written.append(plots.plot_sample_grid(images.numpy(), columns, titles, folder / "samples.png"))
    with torch.no_grad():
        prior = detector.prior_samples(PRIOR_SAMPLES)
    if prior is not None:
        written.append(plots.plot_image_grid(prior.float().cpu().numpy(), folder / "prior_samples.png"))
    return [str(path.relative_to(run_dir)) for path in written if path is not None]
