"""Recalibrate an exported model on site, torch-free: ``inspector calibrate MODEL.onnx --good DIR``.

The good (and optionally defective) images are scored with the model through the runtime, the image and
pixel thresholds and the normalisation range are computed by :func:`inspector.calibration.calibrate`,
the function a training run's ``inspector eval`` calibrates with, and the model's ``inspector``
metadata is rewritten in place, atomically (:func:`inspector.io.atomic_write_bytes`), through
:mod:`inspector.onnx_metadata` (no ``onnx`` package needed). The calibration it replaces is kept in
``calibration.history``, oldest first, so a recalibration can be inspected (``inspector info``) and undone
by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnxruntime as ort

from inspector import __version__
from inspector.artifact import METADATA_KEY, ModelMetadata
from inspector.calibration import (
    CALIBRATION_METHODS,
    Calibration,
    calibrate,
    too_few_normals,
)
from inspector.config import CalibrationConfig
from inspector.errors import InspectorError
from inspector.io import atomic_write_bytes, display_path
from inspector.labelled_data import FolderNames, folder_images
from inspector.onnx_metadata import NotAnOnnxModelError, read_metadata_props, replace_metadata_prop
from inspector.runtime.evaluate import DEFAULT_BATCH_SIZE, score_labelled
from inspector.runtime.session import ModelSession

#: At most this many earlier calibrations are kept in the metadata (the oldest are dropped first).
HISTORY_LIMIT = 50
#: The defaults of a training run's calibration (``inspector.config.CalibrationConfig``).
DEFAULT_FALSE_REJECT_RATE = CalibrationConfig.false_reject_rate
DEFAULT_PIXEL_FALSE_POSITIVE_RATE = CalibrationConfig.pixel_false_positive_rate


@dataclass
class Recalibration:
    """A new calibration for a model, the one it replaces, and the metadata to write."""

    model_path: Path
    previous: Calibration
    calibration: Calibration
    metadata: dict[str, Any]
    original: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.metadata["calibration"].get("history", [])


def recalibrate(
    session: ModelSession,
    good: str | Path,
    defective: str | Path | None = None,
    mask_dir: str | Path | None = None,
    method: str = "auto",
    false_reject_rate: float | None = None,
    pixel_false_positive_rate: float = DEFAULT_PIXEL_FALSE_POSITIVE_RATE,
    allow_too_few: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_total: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> Recalibration:
    """Score the folders with ``session``'s model and compute its new calibration (nothing is written).

    ``method`` ``auto`` is ``f1`` with defective images and ``quantile`` without, as in training.
    ``false_reject_rate`` (quantile only) defaults to the model's earlier target, else 0.01.

    Raises:
        InspectorError: an empty or missing folder, masks without defective images, a false-reject rate
            the good images are too few to resolve (unless ``allow_too_few``), a rate given to the f1
            method, or data the method cannot use.
    """
    if method not in CALIBRATION_METHODS:
        raise InspectorError(f"--method {method!r}: choose one of {', '.join(CALIBRATION_METHODS)}")
    chosen = method if method != "auto" else ("f1" if defective is not None else "quantile")
    if chosen == "f1" and defective is None:
        raise InspectorError("--method f1 needs defective images: give --defective DIR (or use quantile)")
    if chosen == "f1" and false_reject_rate is not None:
        raise InspectorError(
            "--false-reject-rate sets the quantile method's target, but with --defective the method is f1; "
            "pass --method quantile to calibrate to the rate"
        )
    previous_target = session.calibration.target if session.calibration.method == "quantile" else None
    rate = false_reject_rate if false_reject_rate is not None else previous_target
    rate = DEFAULT_FALSE_REJECT_RATE if rate is None else float(rate)
    if not 0.0 < rate < 1.0:
        raise InspectorError(f"--false-reject-rate {rate:g} must be between 0 and 1, e.g. 0.01")
    if not 0.0 < pixel_false_positive_rate < 1.0:
        raise InspectorError(
            f"--pixel-false-positive-rate {pixel_false_positive_rate:g} must be between 0 and 1, e.g. 0.001"
        )

    images = folder_images(
        Path(good),
        Path(defective) if defective is not None else None,
        Path(mask_dir) if mask_dir is not None else None,
        names=FolderNames("--good", "--defective", "--mask-dir"),
    )
    normals = sum(1 for image in images if image.label == 0)
    warnings: list[str] = []
    if chosen == "quantile":
        shortfall = too_few_normals(normals, rate, hint="more good images")
        if shortfall and not allow_too_few:
            raise InspectorError(
                f"{display_path(good)}: {shortfall}, or pass --allow-too-few to accept the weaker promise"
            )
        if shortfall:
            warnings.append(shortfall)
    if on_total:
        on_total(len(images))
    scored = score_labelled(session, images, batch_size, on_batch)
    with_masks = bool((scored.labels[scored.pixel_truth] == 1).any())
    used = {"split": "calibrate", "good": str(good)}
    if defective is not None:
        used["defective"] = str(defective)
    if mask_dir is not None:
        used["masks"] = str(mask_dir)
    try:
        calibration = calibrate(
            scored.scores,
            scored.labels,
            scored.maps,
            masks=scored.masks if with_masks else None,
            method=chosen,
            false_reject_rate=rate,
            pixel_false_positive_rate=pixel_false_positive_rate,
            data=used,
        )
    except ValueError as error:
        raise InspectorError(f"cannot calibrate {display_path(session.path)}: {error}") from None
    original = _current_metadata(session)
    return Recalibration(
        session.path,
        session.calibration,
        calibration,
        recalibrated_metadata(original, calibration),
        original,
        warnings,
    )


def recalibrated_metadata(metadata: dict[str, Any], calibration: Calibration) -> dict[str, Any]:
    """``metadata`` (the model's ``inspector`` JSON object) with ``calibration``'s thresholds and range,
    the calibration they replace appended to ``calibration.history`` (at most :data:`HISTORY_LIMIT`).

    Every other field, unknown ones included, is kept as it was.
    """
    updated = json.loads(json.dumps(metadata))  # a deep copy of plain JSON values
    old = updated.get("calibration") or {}
    earlier = [entry for entry in old.get("history") or [] if isinstance(entry, dict)]
    replaced = {key: value for key, value in old.items() if key != "history"}
    replaced.update(
        image_threshold=updated.get("image_threshold"),
        pixel_threshold=updated.get("pixel_threshold"),
        normalization=updated.get("normalization"),
    )
    replaced.setdefault("calibrated", updated.get("created"))
    stored = calibration.to_dict()
    updated.update(
        image_threshold=stored["image_threshold"],
        pixel_threshold=stored["pixel_threshold"],
        normalization={
            "image": [stored["image_min"], stored["image_max"]],
            "pixel": [stored["pixel_min"], stored["pixel_max"]],
        },
        calibration={
            "method": stored["method"],
            "target": stored["target"],
            "data": stored["data"],
            "calibrated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "by": f"inspector calibrate {__version__}",
            "history": (earlier + [replaced])[-HISTORY_LIMIT:],
        },
    )
    return updated


def write_recalibrated(recalibration: Recalibration) -> Path:
    """Rewrite the model file with the new metadata, atomically: the previous file or the new one, never
    a half-written one. The new bytes are loaded in onnxruntime and their metadata validated first.

    Raises:
        InspectorError: the file changed since it was scored, or the result would not load.
    """
    path = recalibration.model_path
    data = path.read_bytes()
    try:
        current = read_metadata_props(data).get(METADATA_KEY)
    except NotAnOnnxModelError as error:
        raise InspectorError(f"{display_path(path)}: {error}") from None
    if current is None or json.loads(current) != recalibration.original:
        raise InspectorError(
            f"{display_path(path)} changed while it was being calibrated; run `inspector calibrate` again"
        )
    text = json.dumps(recalibration.metadata, sort_keys=True)
    ModelMetadata.from_json(text, display_path(path))  # the runtime will read what we write
    updated = replace_metadata_prop(data, METADATA_KEY, text)
    _check_loads(updated, text, path)
    return atomic_write_bytes(path, updated)


def _current_metadata(session: ModelSession) -> dict[str, Any]:
    """The model's ``inspector`` metadata as the file holds it (fields this version does not know kept)."""
    text = session.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    return json.loads(text)


def _check_loads(data: bytes, text: str, path: Path) -> None:
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types
        raise InspectorError(
            f"{display_path(path)}: the recalibrated model would not load ({str(error).splitlines()[0]}); "
            "nothing was written"
        ) from None
    if session.get_modelmeta().custom_metadata_map.get(METADATA_KEY) != text:
        raise InspectorError(f"{display_path(path)}: the metadata did not round-trip; nothing was written")
