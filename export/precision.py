"""Graph transformations after the torch export: simplification, float16 and static int8 quantisation.

Every function takes and returns serialized ONNX bytes and carries the model's ``metadata_props`` over
unchanged, so the calibrated thresholds, normalisation and preprocessing survive each step.

- Simplification: ``onnxslim`` (pure Python, maintained, in the ``train`` extra). It folds the shape
  arithmetic the tracer writes (Shape/Gather/Concat/Constant chains) and any batch norm left after a
  convolution, and removes identities; outputs are numerically the same graph.
- float16: onnxruntime's own converter (``onnxruntime.transformers.float16``, shipped in the onnxruntime
  wheel, so no extra package). Inputs and outputs stay float32 (``keep_io_types``): the runtime feeds and
  reads float32 as for any model, only the weights and activations inside are float16.
- int8: ``onnxruntime.quantization.quantize_static`` in QDQ format, calibrated (MinMax) on normal training
  images of the run, weights signed int8 per output channel, activations unsigned int8. The convolutions
  next to the image stay float (see :func:`float_boundary_nodes`): measured on a trained ``rdna_cpu`` model at
  256x256 (README, "Smaller and faster files") that halved the pixel decisions int8 changes. Fully connected
  layers (Gemm, MatMul: the VAEs' and BiGAN's latent layers, a small share of their MACs) stay float too:
  OpenCV 5.0's DNN module cannot run a QDQ Gemm/MatMul (``tests/test_other_runtimes.py`` records it), and
  a model file that only some runtimes load is worth less than those few MACs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx

from inspector.artifact import INPUT_NAME
from inspector.errors import InspectorError

#: Operators whose weights make them worth quantising (and that the boundary rule looks at).
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Weighted operators kept float in every int8 graph (OpenCV's DNN cannot run them quantised).
FLOAT_OPS = ("Gemm", "MatMul")
#: Normal training images the int8 calibration sees (batches of 4).
CALIBRATION_IMAGES = 32


def _with_props_of(source: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the ``metadata_props`` of ``source`` (a transformation may drop or keep them)."""
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    return model


def simplify(onnx_bytes: bytes) -> bytes:
    """The graph simplified by onnxslim (constant folding, shape-arithmetic removal, conv/batch-norm fusion).

    Raises:
        InspectorError: onnxslim is not installed (it comes with the ``train`` extra).
    """
    try:
        import onnxslim
    except ImportError:
        raise InspectorError(
            "graph simplification needs onnxslim: pip install 'inspector-vision[train]' "
            "(or pip install onnxslim), or export with --no-simplify"
        ) from None
    original = onnx.load_from_string(onnx_bytes)
    slimmed = onnxslim.slim(onnx.load_from_string(onnx_bytes))
    return _with_props_of(original, slimmed).SerializeToString()


def to_float16(onnx_bytes: bytes) -> bytes:
    """Weights and activations in float16; ``image`` input and outputs still float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    original = onnx.load_from_string(onnx_bytes)
    converted = OnnxModel(convert_float_to_float16(onnx.load_from_string(onnx_bytes), keep_io_types=True))
    # The converter appends the input/output casts at the end of the node list; onnx.checker (and some
    # runtimes) want the nodes in topological order.
    converted.topological_sort()
    return _with_props_of(original, converted.model).SerializeToString()


def float_boundary_nodes(model: onnx.ModelProto) -> list[str]:
    """Weighted nodes that touch the image: kept float in the int8 graph.

    A weighted node (:data:`WEIGHTED_OPS`) is on the boundary when, through weight-free nodes only, it reads
    the graph input (a first layer), or its result reaches a graph output or meets the image again (the
    reconstruction that DRAEM/RDNA concatenate with the image, the VAEs subtract from it). Those layers see
    or produce values on the image's own scale, where 8 bits (1/255 steps) are as coarse as the
    differences the detector looks for; there are few of them and their channel counts are small.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        for name in node.output:
            producer[name] = node
    outputs = {output.name for output in model.graph.output}

    def reads_image(node: onnx.NodeProto, seen: set[str]) -> bool:
        for name in node.input:
            if name == INPUT_NAME:
                return True
            upstream = producer.get(name)
            if upstream is not None and upstream.op_type not in WEIGHTED_OPS and upstream.name not in seen:
                seen.add(upstream.name)
                if reads_image(upstream, seen):
                    return True
        return False

    def reaches_output_or_image(node: onnx.NodeProto, seen: set[str]) -> bool:
        for name in node.output:
            if name in outputs:
                return True
            for downstream in consumers.get(name, []):
                if downstream.op_type in WEIGHTED_OPS or downstream.name in seen:
                    continue
                seen.add(downstream.name)
                if INPUT_NAME in downstream.input or reads_image(downstream, set()):
                    return True
                if reaches_output_or_image(downstream, seen):
                    return True
        return False

    return [
        node.name
        for node in model.graph.node
        if node.op_type in WEIGHTED_OPS and (reads_image(node, set()) or reaches_output_or_image(node, set()))
    ]


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """The weighted nodes an int8 graph keeps float: the image's boundary and the fully connected layers."""
    boundary = float_boundary_nodes(model)
    return boundary + [
        node.name for node in model.graph.node if node.op_type in FLOAT_OPS and node.name not in boundary
    ]


def quantize_int8(
    onnx_bytes: bytes,
    calibration_images: np.ndarray,
    per_channel: bool = True,
    keep_float: Sequence[str] | None = None,
) -> bytes:
    """Static int8 QDQ quantisation calibrated on ``calibration_images`` [N, C, H, W] (normal images).

    Weights: signed int8, per output channel (``per_channel``); activations: unsigned int8, ranges from
    MinMax calibration; the nodes named in ``keep_float`` (default :func:`float_nodes`) stay float32.
    """
    if len(calibration_images) == 0:
        raise InspectorError(
            "int8 quantisation needs normal training images to calibrate on; none were found"
        )
    batches = [
        np.ascontiguousarray(calibration_images[start : start + 4], dtype=np.float32)
        for start in range(0, len(calibration_images), 4)
    ]
    original = onnx.load_from_string(onnx_bytes)
    # quantize_static logs, on the root logger, a suggestion to run its pre-processing (shape inference and
    # onnxruntime's graph optimisation): onnxslim has folded the graph already, and the int8 parity check
    # judges the result, so the suggestion is only noise on the export's output.
    root = logging.getLogger()
    quiet = _DropMessages("pre-processing before quantization")
    root.addFilter(quiet)
    try:
        kept = float_nodes(original) if keep_float is None else list(keep_float)
        quantized = _quantize_static(onnx_bytes, batches, per_channel, kept)
    finally:
        root.removeFilter(quiet)
    return _with_props_of(original, quantized).SerializeToString()


class _DropMessages(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _quantize_static(
    onnx_bytes: bytes, batches: list[np.ndarray], per_channel: bool, float_nodes: list[str]
) -> onnx.ModelProto:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Batches(CalibrationDataReader):
        def __init__(self, items: Iterable[np.ndarray]) -> None:
            self._items = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._items, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="inspector-int8-") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        quantize_static(
            str(source),
            str(target),
            _Batches(batches),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=float_nodes,
        )
        return onnx.load(str(target))
