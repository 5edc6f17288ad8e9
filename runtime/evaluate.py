"""Score labelled images with an exported model, and measure it: ``inspector eval MODEL.onnx``, torch-free.

The images go through the runtime's path (``inspector.preprocess`` and the onnxruntime session), the
metrics and their summary through the functions ``inspector eval RUN`` uses
(:mod:`inspector.evaluation`), at the calibration stored in the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspector.evaluation import ScoredSplit, image_counts, measure_at_calibration
from inspector.labelled_data import LabelledImage, dataset_images, load_mask
from inspector.preprocess import read_image
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import ModelSession

DEFAULT_BATCH_SIZE = 8


def score_labelled(
    session: ModelSession,
    images: Sequence[LabelledImage],
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> ScoredSplit:
    """Raw scores and maps of labelled images, with their labels and masks at the maps' size.

    Images go from file to raw outputs as in ``inspector inspect``: :func:`inspector.preprocess.read_image`,
    then :meth:`Scorer.prepare` and :meth:`Scorer.infer`.

    ``on_batch`` gets the number of images of each finished batch (for a progress bar).

    Raises:
        InspectorError: an image or mask that cannot be read (the message names the file).
    """
    if not images:
        return ScoredSplit.empty(session.input_size)
    scorer = Scorer(session)  # the runtime's own path from images to raw scores and maps
    scores, maps, masks = [], [], []
    for start in range(0, len(images), max(1, int(batch_size))):
        chunk = images[start : start + max(1, int(batch_size))]
        decoded = [read_image(item.path) for item in chunk]
        batch_scores, batch_maps = scorer.infer(scorer.prepare(decoded))
        scores.append(np.asarray(batch_scores, np.float32).reshape(len(chunk)))
        maps.append(np.asarray(batch_maps, np.float32))
        size = batch_maps.shape[-2:]  # masks at the maps' size, where the pixel metrics compare them
        for item, image in zip(chunk, decoded):
            masks.append(
                np.zeros(size, bool) if item.mask is None else load_mask(item.mask, image.shape[:2], size)
            )
        if on_batch:
            on_batch(len(chunk))
    return ScoredSplit(
        scores=np.concatenate(scores),
        maps=np.concatenate(maps),
        labels=np.array([item.label for item in images], dtype=np.int64),
        masks=np.stack(masks),
        pixel_truth=np.array([item.label == 0 or item.mask is not None for item in images], dtype=bool),
    )


def evaluate_model(
    session: ModelSession,
    data: str | Path,
    category: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_total: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Measure an exported model on the labelled images of ``data`` at its stored calibration.

    ``data`` is an MVTec category (or a folder of them with ``category``; by default the model's own
    category when the folder has it) or a folder holding ``good/``, ``defective/`` and optionally
    ``masks/`` (:func:`inspector.labelled_data.dataset_images`). Returns the metrics under the keys of
    ``metrics.json`` that ``inspector eval RUN`` writes.

    Raises:
        InspectorError: data the layouts do not fit, or an unreadable image or mask.
    """
    started = time.monotonic()
    metadata = session.metadata
    images, description = dataset_images(data, category, metadata.trained_on.get("category"))
    if on_total:
        on_total(len(images))
    test = score_labelled(session, images, batch_size, on_batch)
    calibration = session.calibration
    notes: list[str] = []
    if calibration.method == "none":
        notes.append(
            "the model is uncalibrated (calibration: none): the rates are at raw thresholds 0.5; "
            f"calibrate it with `inspector calibrate {session.path} --good DIR`"
        )
    metrics = measure_at_calibration(test, calibration, notes)
    stored = metadata.calibration
    metrics.update(
        {
            "image_threshold": calibration.image_threshold,
            "pixel_threshold": calibration.pixel_threshold,
            "calibration": {
                "method": calibration.method,
                "target": calibration.target,
                "promised_false_reject_rate": calibration.data.get("promised_false_reject_rate"),
                "split": calibration.data.get("split", "stored"),
            },
            "images": image_counts(test, _calibration_images(stored)),
            "detector": metadata.detector,
            "model": str(session.path),
            "data": description,
            "input_size": list(metadata.input_size),
            "device": session.providers[0] if session.providers else "unknown",
            "notes": notes,
        }
    )
    metrics["seconds"] = round(time.monotonic() - started, 2)
    return metrics


def _calibration_images(stored: dict[str, Any]) -> int | None:
    data = stored.get("data") or {}
    counts = [data.get(key) for key in ("normal", "anomalous")]
    return sum(counts) if all(isinstance(count, int) for count in counts) else None
