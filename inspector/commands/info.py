"""``inspector info MODEL.onnx``: what an exported model is, takes and returns, and how it was checked.

Torch-free: it reads the file with onnxruntime (the base install); ``onnx``, when installed, only adds the
opset as the graph itself declares it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from inspector.artifact import INPUT_NAME, METADATA_KEY, MODEL_HINT, ModelMetadata, check_input_shape
from inspector.errors import ArtifactError, InspectorError
from inspector.io import check_regular_file

COMPONENT_METADATA_KEY = "inspector_component"  # written by export/writer.py for components/*.onnx
# onnxruntime's element names, as numpy (and the artifact contract in docs/architecture.md) spell them.
_NUMPY_NAMES = {"float": "float32", "double": "float64", "float16": "float16"}


def read_model_info(path: str | Path) -> dict[str, Any]:
    """Inputs, outputs, opset, metadata and available providers of an ONNX file, as plain values.

    ``metadata`` is the validated ``inspector`` metadata (or None), ``metadata_error`` why it is unusable,
    ``component`` the metadata of a component file (or None).

    Raises:
        InspectorError: the file is missing or is not an ONNX model onnxruntime can load.
    """
    import onnxruntime as ort

    path = check_regular_file(path, "model file", MODEL_HINT)
    try:
        session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001  (onnxruntime raises its own types for unreadable models)
        raise InspectorError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})") from None
    custom = session.get_modelmeta().custom_metadata_map
    info: dict[str, Any] = {
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "inputs": [_tensor(item) for item in session.get_inputs()],
        "outputs": [_tensor(item) for item in session.get_outputs()],
        "metadata": None,
        "metadata_error": None,
        "component": None,
        "providers_available": ort.get_available_providers(),
        "onnxruntime": ort.__version__,
    }
    if COMPONENT_METADATA_KEY in custom and METADATA_KEY not in custom:
        try:
            component = json.loads(custom[COMPONENT_METADATA_KEY])
        except (json.JSONDecodeError, RecursionError):
            component = None
        if not isinstance(component, dict) or not all(
            isinstance(component.get(key), str) for key in ("component", "detector", "description")
        ):
            raise InspectorError(
                f"{path}: its '{COMPONENT_METADATA_KEY}' metadata is unreadable; re-export it"
            )
        info["component"] = component
    else:
        try:
            metadata = ModelMetadata.from_json(custom.get(METADATA_KEY), str(path))
            image_input = next((item for item in session.get_inputs() if item.name == INPUT_NAME), None)
            if image_input is not None:
                check_input_shape(image_input.shape, metadata, str(path))
            info["metadata"] = json.loads(metadata.to_json())
        except ArtifactError as error:
            info["metadata_error"] = str(error)
    info["opset"] = _declared_opset(path)
    if info["opset"] is None:
        source = info["metadata"] or info["component"] or {}
        info["opset"] = source.get("extra", {}).get("opset") or source.get("opset")
    return info


def _tensor(item: Any) -> dict[str, Any]:
    shape = [dim if isinstance(dim, int) else (dim or "?") for dim in item.shape]
    element = item.type.replace("tensor(", "").rstrip(")")
    return {"name": item.name, "type": _NUMPY_NAMES.get(element, element), "shape": shape}


def _declared_opset(path: Path) -> int | None:
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(os.fspath(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _shape(tensor: dict[str, Any]) -> str:
    return f"{tensor['name']} {tensor['type']} [{', '.join(map(str, tensor['shape']))}]"


def _pairs(info: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("file", f"{info['path']} ({info['size_bytes'] / 1e6:.2f} MB)")]
    metadata, component = info["metadata"], info["component"]
    if component:
        rows.append(("component", f"{component['component']} of {component['detector']}"))
        rows.append(("description", component["description"]))
    if metadata:
        trained_on = ", ".join(f"{key} {value}" for key, value in metadata["trained_on"].items() if value)
        rows.append(("detector", f"{metadata['detector']} (trained on {trained_on or 'unknown data'})"))
        rows.append(
            (
                "input size",
                (
                    f"{metadata['input_size'][0]}x{metadata['input_size'][1]}, "
                    f"{metadata['channels']} channel(s), values in [0, 1]"
                ),
            )
        )
        if metadata.get("tiling"):
            rows.append(("tiling", _tiling_text(metadata["tiling"])))
    rows += [("input" if i == 0 else "", _shape(tensor)) for i, tensor in enumerate(info["inputs"])]
    rows += [("outputs" if i == 0 else "", _shape(tensor)) for i, tensor in enumerate(info["outputs"])]
    rows.append(("opset", str(info["opset"])))
    if metadata:  # precision and cost: written by export (export/graph_audit.py); older models lack them
        cost = metadata.get("cost") or {}
        rows.append(("precision", f"{metadata.get('precision', 'fp32')} inside; input and outputs float32"))
        rows.append(
            (
                "cost",
                f"{cost['parameters'] / 1e6:.3g} M parameters, {2 * cost['macs'] / 1e9:.3g} GFLOP per image "
                f"({cost['macs'] / 1e9:.3g} G multiply-accumulates, {cost.get('counted_by', 'counted at export')})"
                if cost
                else "not recorded (exported before inspector counted it)",
            )
        )
    if metadata:
        calibration = metadata["calibration"]
        described = calibration.get("method", "none")
        if calibration.get("target") is not None:
            described += f", target {calibration['target']}"
        if calibration.get("data"):
            described += f", data {json.dumps(calibration['data'], sort_keys=True)}"
        if calibration.get("calibrated"):
            described += f"; calibrated {calibration['calibrated']}"
        rows.append(("calibration", described))
        rows += _history_rows(calibration.get("history"))
        rows.append(
            (
                "thresholds",
                f"image {metadata['image_threshold']:.6g}, pixel {metadata['pixel_threshold']:.6g} (raw)",
            )
        )
        norm = metadata["normalization"]
        rows.append(
            (
                "normalization",
                (
                    f"image [{norm['image'][0]:.6g}, {norm['image'][1]:.6g}], "
                    f"pixel [{norm['pixel'][0]:.6g}, {norm['pixel'][1]:.6g}] (raw min, max)"
                ),
            )
        )
        rows.append(("regions", f"at least {metadata.get('min_region_area', 0)} map pixels"))
        rows.append(("parity", _parity_text(metadata.get("parity"))))
        components = metadata.get("extra", {}).get("components") or {}
        rows.append(("components", ", ".join(item["file"] for item in components.values()) or "none"))
        rows.append(
            (
                "created",
                (
                    f"{metadata['created']} by inspector {metadata['inspector_version']}, "
                    f"schema {metadata['schema']}"
                ),
            )
        )
    rows.append(
        ("providers", f"{', '.join(info['providers_available'])} (onnxruntime {info['onnxruntime']})")
    )
    if metadata:
        rows.append(("", "all the metadata, with the preprocessing a client must reproduce: --json"))
    return rows


def _tiling_text(values: dict[str, Any]) -> str:
    """One line for a tiled model: the scale it scores at, the tiles and the score window."""
    from inspector.tiling import Tiling

    tiling = Tiling.from_dict(values)
    (height, width), (tile_h, tile_w), (stride_h, stride_w) = tiling.image_size, tiling.tile, tiling.stride
    return (
        f"frames resized to {height}x{width}, scored in {len(tiling.origins())} tiles of {tile_h}x{tile_w} "
        f"(stride {stride_h}x{stride_w}), score window {tiling.score_window}"
    )


def _history_rows(history: Any) -> list[tuple[str, str]]:
    """The calibrations a model had before (``inspector calibrate`` keeps them), oldest first."""
    if not isinstance(history, list) or not history:
        return []
    rows = [("history", f"{len(history)} earlier calibration(s), oldest first")]
    for entry in history:
        if not isinstance(entry, dict):
            continue
        try:
            text = str(entry.get("method", "none"))
            if entry.get("target") is not None:
                text += f", target {entry['target']:g}"
            text += (
                f": image {entry['image_threshold']:.6g}, pixel {entry['pixel_threshold']:.6g} (raw); "
                f"calibrated {entry.get('calibrated') or 'at export'}"
            )
        except (KeyError, TypeError, ValueError):
            text = "recorded in a form this version cannot read (see --json)"
        rows.append(("", text))
    return rows


def _parity_text(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "not recorded"
    try:
        diff = parity["max_abs_diff"]
        return (
            f"max |diff| score {diff['score']:.3g}, anomaly_map {diff['anomaly_map']:.3g} on {parity['images']} "
            f"images at batch {', '.join(map(str, parity['batch_sizes']))}; {parity['image_decision_flips']} "
            f"image and {parity['pixel_decision_flips']} pixel decisions changed "
            f"({'passed' if parity['passed'] else 'FAILED'})"
        )
    except (KeyError, TypeError, ValueError):
        return "recorded in a form this version cannot read (see the metadata below)"


@click.command("info", short_help="Show an exported model: metadata, inputs, outputs, providers.")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=str))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print everything, the whole metadata included, as one JSON object.",
)
def info_command(model_path: str, as_json: bool) -> None:
    """Show what MODEL (an exported model.onnx or a component) is: detector, inputs and outputs, opset,
    calibration and thresholds, parity figures, and the onnxruntime providers available here.

    The table shows the metadata's fields; --json prints all of it as one JSON object. Exits 2 when the
    file is not an inspector model (no or unreadable `inspector` metadata).

    Example: inspector info runs/demo-rdna/export/model.onnx
    """
    from inspector.commands.options import echo_warning
    from inspector.runtime.session import warn_onnxruntime_clash

    warn_onnxruntime_clash(echo_warning)
    info = read_model_info(model_path)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        for key, value in _pairs(info):
            click.echo(f"{key:<14}{value}")
    if info["metadata_error"]:
        raise InspectorError(info["metadata_error"])
