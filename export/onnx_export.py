"""Torch -> ONNX for a detector's fused scoring graph and for each of its components.

We use the legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) on purpose: these detectors
are plain conv nets with no data-dependent control flow, which tracing captures exactly; it needs no
``onnxscript``; and it gives a dynamic batch axis from a ``dynamic_axes`` mapping. The export is in memory
(bytes): nothing is written to disk until the graph has passed the checker and the parity check.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import onnx
import torch
from torch import nn

from inspector.artifact import INPUT_NAME, MAP_OUTPUT, SCORE_OUTPUT
from inspector.training.detectors.base import Component, Detector

#: Default ONNX opset: supported by every onnxruntime >= 1.14 and by the legacy exporter for all ops we use.
DEFAULT_OPSET = 17
BATCH_AXIS = "batch"

# torch >= 2.9 announces, on every legacy export, that dynamo is now the default and that an internal
# context manager is deprecated. We chose the legacy exporter deliberately, so those two lines are noise;
# every other warning (TracerWarning above all, which can mean a shape was frozen) still reaches the user.
_KNOWN_DEPRECATIONS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed\. Please remove usage of this function",
)


@dataclass
class ExportedGraph:
    """One exported graph: its serialized ONNX model and what it takes and returns."""

    name: str
    onnx_bytes: bytes
    input_names: list[str]
    output_names: list[str]
    description: str


class ScoringGraph(nn.Module):
    """The detector's ``forward`` with its outputs named and typed as the artifact contract says."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, anomaly_map = self.detector(image)
        return score.reshape(-1).float(), anomaly_map.float()


def export_graph(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    opset: int = DEFAULT_OPSET,
) -> bytes:
    """Trace ``module`` on ``example_inputs`` into ONNX bytes with a dynamic first (batch) axis everywhere.

    Example:
        >>> onnx_bytes = export_graph(detector.reconstructor, (torch.rand(2, 3, 64, 64),), ["image"], ["reconstruction"])
    """
    module = module.eval()
    buffer = io.BytesIO()
    dynamic_axes = {name: {0: BATCH_AXIS} for name in [*input_names, *output_names]}
    with warnings.catch_warnings(), torch.no_grad():
        for message in _KNOWN_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(
            module,
            example_inputs,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
        # The tracer sometimes names a static output dimension after another axis (a reconstruction came
        # out as [batch, 3, batch, ...]); the declared shapes are what tools downstream trust, so they are
        # set from what the module really returns: dynamic batch first, every other dimension fixed.
        outputs = module(*example_inputs)
    outputs = (outputs,) if isinstance(outputs, torch.Tensor) else outputs
    return _declare_output_shapes(buffer.getvalue(), [list(output.shape) for output in outputs])


def _declare_output_shapes(onnx_bytes: bytes, shapes: list[list[int]]) -> bytes:
    model = onnx.load_from_string(onnx_bytes)
    for output, shape in zip(model.graph.output, shapes):
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for axis, size in enumerate(shape):
            dim = dims.add()
            if axis == 0:
                dim.dim_param = BATCH_AXIS
            else:
                dim.dim_value = int(size)
    return model.SerializeToString()


def export_scoring_graph(detector: Detector, opset: int = DEFAULT_OPSET) -> ExportedGraph:
    """The fused scoring graph: ``image`` [N, C, H, W] -> raw ``score`` [N] and raw ``anomaly_map`` [N, 1, H, W]."""
    channels, (height, width) = detector.channels, detector.input_size
    onnx_bytes = export_graph(
        ScoringGraph(detector),
        detector.example_images(2),  # batch 2, not 1: the tracer must not take the batch for a constant
        [INPUT_NAME],
        [SCORE_OUTPUT, MAP_OUTPUT],
        opset,
    )
    return ExportedGraph(
        name="model",
        onnx_bytes=onnx_bytes,
        input_names=[INPUT_NAME],
        output_names=[SCORE_OUTPUT, MAP_OUTPUT],
        description=f"image [N,{channels},{height},{width}] RGB/gray in [0,1] -> raw score [N], "
        f"raw anomaly_map [N,1,{height},{width}]",
    )


def export_component(name: str, component: Component, opset: int = DEFAULT_OPSET) -> ExportedGraph:
    """One component of a detector (its own inputs and outputs, dynamic batch)."""
    onnx_bytes = export_graph(
        component.module, component.example_inputs(2), component.input_names, component.output_names, opset
    )
    return ExportedGraph(
        name=name,
        onnx_bytes=onnx_bytes,
        input_names=list(component.input_names),
        output_names=list(component.output_names),
        description=component.description,
    )


def export_components(detector: Detector, opset: int = DEFAULT_OPSET) -> list[ExportedGraph]:
    """Every entry of ``detector.components()``, exported, in a stable (sorted) order."""
    return [
        export_component(name, component, opset) for name, component in sorted(detector.components().items())
    ]
