"""``inspector export --onnx``: run directory -> checked, self-describing ``model.onnx`` (+ ``components/``).

Order of work: validate the inputs, export every graph in memory, check each (``onnx.checker``, then
onnxruntime against torch), and only then write files, components first and ``model.onnx`` last, each
atomically. A failed check writes nothing.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from inspector.artifact import METADATA_KEY, ModelMetadata
from inspector.calibration import Calibration
from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.export.onnx_export import DEFAULT_OPSET, ExportedGraph, export_component, export_scoring_graph
from inspector.export.parity import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_TOLERANCE,
    ParityError,
    ParityReport,
    check_onnx,
    component_parity,
    folder_images,
    scoring_parity,
    split_images,
)
from inspector.export.writer import COMPONENT_METADATA_KEY, with_metadata
from inspector.io import atomic_write_bytes, check_writable_folder
from inspector.training.detectors.base import Detector

MODEL_FILE = "model.onnx"
COMPONENTS_DIR = "components"
#: The oldest opset we export to: 13 has every op these graphs use with today's semantics.
MIN_OPSET = 13
MAX_OPSET = onnx.defs.onnx_opset_version()


@dataclass
class ExportResult:
    """What an export wrote and measured."""

    model_path: Path
    metadata: ModelMetadata
    parity: ParityReport
    component_paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    components: bool = True,
    checkpoint: str = "best",
    allow_uncalibrated: bool = False,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    parity_images: str | Path | None = None,
    log: Callable[[str], None] = print,
    tile: bool = False,
) -> ExportResult:
    """Export a trained run to ``out_dir/model.onnx`` (default ``RUN_DIR/export``), checked for parity.

    ``tile``: a run trained on crops is exported as a graph of one crop that scores whole images in tiles,
    recalibrated on tiled scores (:mod:`inspector.export.tiling`).

    Raises:
        InspectorError: bad input (no run, no checkpoint, unknown detector or checkpoint version, never
            calibrated without ``allow_uncalibrated``, output exists without ``force``, bad options).
        ParityError: an exported graph fails ``onnx.checker`` or differs from torch beyond the tolerance.

    Example:
        >>> result = export_run("runs/demo-rdna", opset=17)
        >>> result.model_path
        PosixPath('runs/demo-rdna/export/model.onnx')
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InspectorError(f"{run_dir}: no such run directory; train one with `inspector train`")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InspectorError(
            f"--opset {opset} is not supported; choose {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})"
        )
    if not tolerance > 0:
        raise InspectorError(f"--tolerance must be > 0, got {tolerance}")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    model_path = out_dir / MODEL_FILE
    if model_path.exists() and not force:
        raise InspectorError(f"{model_path} already exists; pass --force to replace it, or --out DIR")
    check_writable_folder(out_dir, "export folder")  # before minutes of work, not after

    from inspector.training.checkpoint import load_detector

    detector, config, state = load_detector(run_dir, which=checkpoint)
    detector = detector.cpu().eval()
    calibration, notes = _calibration(run_dir, allow_uncalibrated)
    for note in notes:
        log(f"warning: {note}")
    log(f"loaded {config.detector} from {run_dir} ({checkpoint} checkpoint{_step_text(state)})")
    tiling = None
    if tile:
        from inspector.export.tiling import tile_for_export

        tiling, calibration, config = tile_for_export(detector, config, log=log)

    images, source, trained_on = _parity_inputs(config, parity_images)
    metadata = ModelMetadata.from_calibration(
        config.detector,
        config.input_size,
        config.channels,
        calibration,
        trained_on,
        min_region_area=config.calibration.min_region_area,
    )
    metadata.tiling = tiling.to_dict() if tiling is not None else None
    checked = export_detector(
        detector,
        images,
        metadata.image_threshold,
        metadata.pixel_threshold,
        source,
        opset=opset,
        components=components,
        tolerance=tolerance,
        log=log,
    )
    metadata.parity = checked.parity.to_dict()
    metadata.extra = _extra(config, checkpoint, state, opset, checked.components, notes)

    component_paths = _write_components(out_dir, checked.components, config.detector, opset, force)
    atomic_write_bytes(
        model_path, with_metadata(checked.model.onnx_bytes, {METADATA_KEY: metadata.to_json()})
    )
    log(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.2f} MB, opset {opset})")
    for path in component_paths:
        log(f"wrote {path}")
    return ExportResult(model_path, metadata, checked.parity, component_paths, notes)


@dataclass
class CheckedExport:
    """A detector's graphs, exported in memory and checked: the fused model and its components."""

    model: ExportedGraph
    parity: ParityReport
    components: list[ExportedGraph]


def export_detector(
    detector: Detector,
    images: np.ndarray,
    image_threshold: float,
    pixel_threshold: float,
    image_source: str,
    opset: int = DEFAULT_OPSET,
    components: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    log: Callable[[str], None] = print,
) -> CheckedExport:
    """Export any registered detector's scoring graph (and components) and prove it equal to torch.

    ``images`` are model input [N, C, H, W] from :func:`inspector.preprocess.prepare_batch`; the thresholds
    are those the decisions are compared at.

    Raises:
        ParityError: a graph fails ``onnx.checker``, or onnxruntime and torch differ beyond ``tolerance``.
    """
    detector = detector.cpu().eval()
    model = export_scoring_graph(detector, opset)
    check_onnx(model.onnx_bytes, MODEL_FILE)
    report = scoring_parity(
        detector,
        model.onnx_bytes,
        images,
        image_threshold,
        pixel_threshold,
        image_source,
        DEFAULT_BATCH_SIZES,
        tolerance,
    )
    log(report.summary())
    if not report.passed:
        raise ParityError(f"{MODEL_FILE}: {report.failure()}; nothing was written")
    exported = []
    if components:
        for name, component in sorted(detector.components().items()):
            graph = export_component(name, component, opset)
            check_onnx(graph.onnx_bytes, f"{COMPONENTS_DIR}/{name}.onnx")
            component_parity(name, component, graph.onnx_bytes, tolerance=tolerance)
            exported.append(graph)
    return CheckedExport(model, report, exported)


def _calibration(run_dir: Path, allow_uncalibrated: bool) -> tuple[Calibration | None, list[str]]:
    path = run_dir / "calibration.json"
    if not path.is_file():
        if not allow_uncalibrated:
            raise InspectorError(
                f"{run_dir}: the run was never calibrated (no calibration.json); run `inspector eval {run_dir}` "
                "first, or pass --allow-uncalibrated to export with calibration: none"
            )
        note = (
            f"{run_dir} has no calibration.json: exporting with calibration: none (raw thresholds 0.5, "
            f"normalisation [0, 1]); calibrate with `inspector eval {run_dir}` and export again"
        )
        return None, [note]
    try:
        return Calibration.load(path), []
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as error:
        raise InspectorError(
            f"{path}: not a valid calibration ({error}); run `inspector eval {run_dir}` again"
        ) from None


def _parity_inputs(config: TrainConfig, parity_images: str | Path | None) -> tuple[Any, str, dict[str, Any]]:
    """Parity images (the run's data, or a folder) and what the model was trained on."""
    trained_on = {"dataset": config.data.format, "category": config.data.category}
    if parity_images is not None:
        images, source = folder_images(parity_images, config.input_size, config.channels)
        return images, source, trained_on
    from inspector.training.data import build_splits

    try:
        splits = build_splits(config)
    except InspectorError as error:
        raise InspectorError(
            f"cannot read the run's data to check the export ({error}); "
            "pass --parity-images DIR with a few images of the same kind"
        ) from None
    images, source = split_images(splits, config.input_size, config.channels)
    return images, source, dict(splits.description) or trained_on


def _write_components(
    out_dir: Path, graphs: list[ExportedGraph], detector_name: str, opset: int, force: bool
) -> list[Path]:
    folder = out_dir / COMPONENTS_DIR
    written = []
    for graph in graphs:
        description = {
            "detector": detector_name,
            "component": graph.name,
            "inputs": graph.input_names,
            "outputs": graph.output_names,
            "description": graph.description,
            "opset": opset,
        }
        data = with_metadata(
            graph.onnx_bytes, {COMPONENT_METADATA_KEY: json.dumps(description, sort_keys=True)}
        )
        written.append(atomic_write_bytes(folder / f"{graph.name}.onnx", data))
    if force and folder.is_dir():
        # Components of a previously exported model must not sit next to the new model.
        for stale in folder.glob("*.onnx"):
            if stale not in written:
                stale.unlink()
    return written


def _extra(
    config: TrainConfig,
    checkpoint: str,
    state: dict[str, Any],
    opset: int,
    components: list[ExportedGraph],
    notes: list[str],
) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "opset": opset,
        "exporter": f"torch.onnx legacy TorchScript exporter (dynamo=False), torch {torch.__version__}",
        "onnx": onnx.__version__,
        "python": platform.python_version(),
        "checkpoint": checkpoint,
        "detector_options": dict(config.detector_options),
        "components": {
            graph.name: {
                "file": f"{COMPONENTS_DIR}/{graph.name}.onnx",
                "inputs": graph.input_names,
                "outputs": graph.output_names,
                "description": graph.description,
            }
            for graph in components
        },
    }
    for key in ("step", "epoch"):
        if isinstance(state.get(key), int):
            extra[f"checkpoint_{key}"] = state[key]
    if notes:
        extra["warnings"] = notes
    return extra


def _step_text(state: dict[str, Any]) -> str:
    step = state.get("step")
    return f", step {step}" if isinstance(step, int) else ""
