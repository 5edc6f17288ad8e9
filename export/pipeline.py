"""``inspector export --onnx``: run directory -> checked, self-describing ``model.onnx`` (+ ``components/``).

Order of work: validate the inputs, export every graph in memory, refuse training-only structure in the
scoring graph, simplify it (onnxslim), check each graph (``onnx.checker``, then onnxruntime against torch),
count its cost, and for ``--quantize int8`` / ``--precision fp16`` convert the checked float32 graph and check
the result against torch too; only then write files, components first and the model last, each atomically.
A failed check writes nothing. The model is ``model.onnx`` (fp32), ``model-int8.onnx`` or ``model-fp16.onnx``.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from inspector.artifact import METADATA_KEY, PRECISIONS, ModelMetadata
from inspector.calibration import Calibration
from inspector.config import TrainConfig
from inspector.errors import InspectorError
from inspector.export.graph_audit import count_cost, training_only_nodes
from inspector.export.onnx_export import DEFAULT_OPSET, ExportedGraph, export_component, export_scoring_graph
from inspector.export.parity import (
    DEFAULT_BATCH_SIZES,
    ParityError,
    ParityReport,
    check_onnx,
    component_parity,
    folder_images,
    scoring_parity,
    split_images,
)
from inspector.export.precision import CALIBRATION_IMAGES, quantize_int8, to_float16
from inspector.export.writer import COMPONENT_METADATA_KEY, with_metadata
from inspector.io import atomic_write_bytes, check_writable_folder
from inspector.training.detectors.base import Detector

MODEL_FILE = "model.onnx"
#: The model file of each precision (fp32 keeps the name every earlier export used).
MODEL_FILES = {"fp32": MODEL_FILE, "int8": "model-int8.onnx", "fp16": "model-fp16.onnx"}
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
    tolerance: float | None = None,
    parity_images: str | Path | None = None,
    log: Callable[[str], None] = print,
    tile: bool = False,
    precision: str = "fp32",
    simplify: bool = True,
    calibration_images: str | Path | None = None,
) -> ExportResult:
    """Export a trained run to ``out_dir/model.onnx`` (default ``RUN_DIR/export``), checked for parity.

    ``precision`` "int8" writes ``model-int8.onnx``, calibrated on the run's normal training images (or the
    folder ``calibration_images``); "fp16" writes ``model-fp16.onnx``. ``tolerance`` None: the fp32 check
    allows the measured float32 noise (``inspector.export.parity``); ``simplify``: onnxslim the graph.

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
    if tolerance is not None and not tolerance > 0:
        raise InspectorError(f"--tolerance must be > 0, got {tolerance}")
    if precision not in PRECISIONS:
        raise InspectorError(f"precision {precision!r} is not supported; choose {', '.join(PRECISIONS)}")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "export"
    model_path = out_dir / MODEL_FILES[precision]
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
    # Parity and int8 calibration images are read as the runtime reads them: at the whole-image size, then
    # (tiled) cut into the tiles the graph will see at that scale.
    images, source, trained_on, normals = _parity_inputs(config, parity_images, precision == "int8")
    if precision == "int8":
        normals = _calibration_inputs(config, calibration_images, normals)
    tiling = None
    if tile:
        from inspector.export.tiling import tile_for_export, tiles_of

        tiling, calibration, config = tile_for_export(detector, config, log=log)
        source = f"{len(images)} tiles cut from {source}"
        images = tiles_of(images, tiling, len(images))
        if normals is not None:  # tiles are smaller than images: as many as whole images, at least
            normals = tiles_of(normals, tiling, max(len(normals), CALIBRATION_IMAGES))
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
        precision=precision,
        simplify=simplify,
        calibration_images=normals,
        normalization=metadata.normalization,
    )
    metadata.parity = checked.parity.to_dict()
    metadata.precision = precision
    metadata.cost = checked.cost or None
    metadata.extra = _extra(config, checkpoint, state, opset, checked.components, notes)
    metadata.extra.update(checked.details)

    component_paths = _write_components(out_dir, checked.components, config.detector, opset, force)
    atomic_write_bytes(
        model_path, with_metadata(checked.model.onnx_bytes, {METADATA_KEY: metadata.to_json()})
    )
    log(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.2f} MB, {precision}, opset {opset})")
    for path in component_paths:
        log(f"wrote {path}")
    return ExportResult(model_path, metadata, checked.parity, component_paths, notes)


@dataclass
class CheckedExport:
    """A detector's graphs, exported in memory and checked: the fused model and its components."""

    model: ExportedGraph
    parity: ParityReport
    components: list[ExportedGraph]
    #: Parameters and MACs per image of the float32 graph (``graph_audit.count_cost``; empty without onnx-tool).
    cost: dict[str, Any] = field(default_factory=dict)
    #: What was done to the graph (simplification, conversion) and the fp32 parity of a converted model.
    details: dict[str, Any] = field(default_factory=dict)
    #: The checked float32 graph (``model`` itself at fp32; what fp16/int8 were converted from otherwise).
    fp32_model: ExportedGraph | None = None


def export_detector(
    detector: Detector,
    images: np.ndarray,
    image_threshold: float,
    pixel_threshold: float,
    image_source: str,
    opset: int = DEFAULT_OPSET,
    components: bool = True,
    tolerance: float | None = None,
    log: Callable[[str], None] = print,
    precision: str = "fp32",
    simplify: bool = True,
    calibration_images: np.ndarray | None = None,
    normalization: dict[str, list[float]] | None = None,
) -> CheckedExport:
    """Export any registered detector's scoring graph (and components) and prove it equal to torch.

    ``images`` are model input [N, C, H, W] from :func:`inspector.preprocess.prepare_batch`; the thresholds
    are those the decisions are compared at. The float32 graph is always checked first; ``precision``
    "int8" (needs ``calibration_images``, normal images as model input) or "fp16" then converts it and checks
    the converted graph against torch with that precision's limits, judged on ``normalization`` (the
    metadata's calibrated ranges).

    Raises:
        ParityError: training-only structure in the scoring graph, a graph fails ``onnx.checker``, or
            onnxruntime and torch differ beyond what the precision allows.
    """
    detector = detector.cpu().eval()
    name = MODEL_FILES.get(precision, MODEL_FILE)
    model = export_scoring_graph(detector, opset)
    check_onnx(model.onnx_bytes, name)
    training_only = training_only_nodes(model.onnx_bytes)
    if training_only:
        raise ParityError(
            f"{name}: the scoring graph holds training-only structure ({', '.join(training_only[:5])}); "
            "the detector's forward must not sample or drop out in eval mode; nothing was written"
        )
    details: dict[str, Any] = {"graph_nodes": {"exported": _node_count(model.onnx_bytes)}}
    if simplify:
        model = _simplified(model)
        check_onnx(model.onnx_bytes, name)
        details["graph_nodes"]["simplified"] = _node_count(model.onnx_bytes)
        details["simplified_by"] = _onnxslim_version()
    torch_outputs: dict = {}  # torch's outputs on the parity images, computed once for both checks
    report = scoring_parity(
        detector,
        model.onnx_bytes,
        images,
        image_threshold,
        pixel_threshold,
        image_source,
        DEFAULT_BATCH_SIZES,
        tolerance,
        torch_cache=torch_outputs,
    )
    log(report.summary())
    if not report.passed:
        raise ParityError(f"{name}: {report.failure()}; nothing was written")
    channels, (height, width) = detector.channels, detector.input_size
    cost = count_cost(model.onnx_bytes, [1, channels, height, width])
    fp32_model = model
    if precision != "fp32":
        details["fp32_parity"] = report.to_dict()
        converted, details[precision] = _converted(model, precision, calibration_images)
        check_onnx(converted.onnx_bytes, name)
        report = scoring_parity(
            detector,
            converted.onnx_bytes,
            images,
            image_threshold,
            pixel_threshold,
            image_source,
            DEFAULT_BATCH_SIZES,
            precision=precision,
            normalization=normalization,
            torch_cache=torch_outputs,
        )
        log(report.summary())
        if not report.passed:
            raise ParityError(f"{name}: {report.failure()}; nothing was written")
        model = converted
    exported = []
    if components:
        for component_name, component in sorted(detector.components().items()):
            graph = export_component(component_name, component, opset)
            check_onnx(graph.onnx_bytes, f"{COMPONENTS_DIR}/{component_name}.onnx")
            component_parity(component_name, component, graph.onnx_bytes, tolerance=tolerance)
            exported.append(graph)
    return CheckedExport(model, report, exported, cost, details, fp32_model)


def _node_count(onnx_bytes: bytes) -> int:
    return len(onnx.load_from_string(onnx_bytes).graph.node)


def _onnxslim_version() -> str:
    import onnxslim

    return f"onnxslim {onnxslim.__version__}"


def _simplified(graph: ExportedGraph) -> ExportedGraph:
    from inspector.export.precision import simplify

    return replace(graph, onnx_bytes=simplify(graph.onnx_bytes))


def _converted(
    graph: ExportedGraph, precision: str, calibration_images: np.ndarray | None
) -> tuple[ExportedGraph, dict[str, Any]]:
    """The checked float32 graph in ``precision``, and how it was converted (for the metadata)."""
    import onnxruntime

    if precision == "fp16":
        details = {
            "converted_by": f"onnxruntime.transformers.float16 (onnxruntime {onnxruntime.__version__})",
            "inputs_outputs": "float32 (keep_io_types)",
        }
        return replace(graph, onnx_bytes=to_float16(graph.onnx_bytes)), details
    if calibration_images is None or len(calibration_images) == 0:
        raise InspectorError(
            "int8 quantisation needs normal images to calibrate on; pass --calibration-images DIR"
        )
    from inspector.export.precision import float_nodes

    details = {
        "quantized_by": f"onnxruntime.quantization.quantize_static (onnxruntime {onnxruntime.__version__})",
        "format": "QDQ",
        "weights": "int8, per channel",
        "activations": "uint8, MinMax calibration",
        "calibration_images": int(len(calibration_images)),
        "float_nodes": float_nodes(onnx.load_from_string(graph.onnx_bytes)),
    }
    return replace(graph, onnx_bytes=quantize_int8(graph.onnx_bytes, calibration_images)), details


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


def _parity_inputs(
    config: TrainConfig, parity_images: str | Path | None, want_normals: bool = False
) -> tuple[Any, str, dict[str, Any], np.ndarray | None]:
    """Parity images (the run's data, or a folder), what the model was trained on, and (``want_normals``)
    normal training images to calibrate an int8 graph on, when the run's data can be read."""
    trained_on = {"dataset": config.data.format, "category": config.data.category}
    if parity_images is not None and not want_normals:
        images, source = folder_images(parity_images, config.input_size, config.channels)
        return images, source, trained_on, None
    from inspector.training.data import build_splits

    try:
        splits = build_splits(config)
    except InspectorError as error:
        if parity_images is not None:
            images, source = folder_images(parity_images, config.input_size, config.channels)
            return images, source, trained_on, None
        raise InspectorError(
            f"cannot read the run's data to check the export ({error}); "
            "pass --parity-images DIR with a few images of the same kind"
        ) from None
    normals = training_normals(splits, config.input_size, config.channels) if want_normals else None
    if parity_images is not None:
        images, source = folder_images(parity_images, config.input_size, config.channels)
    else:
        images, source = split_images(splits, config.input_size, config.channels)
    return images, source, dict(splits.description) or trained_on, normals


def training_normals(
    splits: Any, input_size: Any, channels: int, count: int = CALIBRATION_IMAGES
) -> np.ndarray:
    """Up to ``count`` normal training images, spread evenly over the training split, as model input."""
    from inspector.preprocess import prepare_batch
    from inspector.training.data.dataset import load_rgb

    train = list(splits.train)
    if not train:
        return np.zeros((0, channels, *input_size), dtype=np.float32)
    picks = sorted({int(index) for index in np.linspace(0, len(train) - 1, min(count, len(train)))})
    return prepare_batch([load_rgb(train[index]) for index in picks], input_size, channels)


def _calibration_inputs(
    config: TrainConfig, calibration_images: str | Path | None, normals: np.ndarray | None
) -> np.ndarray:
    """The images an int8 graph is calibrated on: ``--calibration-images DIR`` or the run's training normals."""
    if calibration_images is not None:
        images, _ = folder_images(calibration_images, config.input_size, config.channels, CALIBRATION_IMAGES)
        return images
    if normals is None or len(normals) == 0:
        raise InspectorError(
            "--quantize int8 calibrates on the run's normal training images, which cannot be read here; "
            "pass --calibration-images DIR with normal images of the same kind"
        )
    return normals


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
