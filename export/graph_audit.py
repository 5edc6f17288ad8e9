"""What an exported scoring graph contains: training-only structure (refused) and its cost (counted).

Training-only structure: dropout, random sampling (a VAE's reparameterisation noise, a GAN's instance
noise) and batch norm in training mode would make a score depend on chance or on the batch. The export
traces each detector in eval mode, which drops them; this check proves it on the graph itself, for every
detector, so a future detector that samples in ``forward`` fails its export instead of scoring noisily.
Discriminators that do not score (RDNA's two, for instance) are absent by construction: the graph is the
trace of ``forward``; the parameter count below shows what is in it.

Cost: parameters and multiply-accumulates per image counted by onnx-tool (its shape inference and per-op
profile) on the fp32 graph, stored in the metadata so that ``inspector info`` shows it on the base install.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from inspector.artifact import INPUT_NAME

#: Operators that only make sense while training, or that draw random numbers.
TRAINING_ONLY_OPS = (
    "Dropout",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Bernoulli",
    "Multinomial",
)


def training_only_nodes(onnx_bytes: bytes) -> list[str]:
    """``"<op> <node name>"`` for every training-only node of the graph (empty when it has none)."""
    found = []
    for node in onnx.load_from_string(onnx_bytes).graph.node:
        train_mode = node.op_type == "BatchNormalization" and any(
            attribute.name == "training_mode" and attribute.i == 1 for attribute in node.attribute
        )
        if node.op_type in TRAINING_ONLY_OPS or train_mode:
            found.append(f"{node.op_type} {node.name or '(unnamed)'}")
    return found


def count_cost(onnx_bytes: bytes, input_shape: list[int]) -> dict[str, Any]:
    """Parameters and MACs per image of a float graph, counted by onnx-tool at ``input_shape`` [1, C, H, W].

    Returns ``{"parameters", "macs", "gflops", "counted_by"}`` (``gflops`` = 2 MACs / 1e9), or ``{}`` when
    onnx-tool is not installed or cannot profile the graph (the cost is then left out of the metadata;
    nothing else depends on it).
    """
    try:
        import onnx_tool
    except ImportError:
        return {}
    try:
        model = onnx_tool.Model(onnx.load_from_string(onnx_bytes), {"verbose": False})
        graph = model.graph
        graph.shape_infer({INPUT_NAME: np.zeros(input_shape, dtype=np.float32)})
        graph.profile()
        macs = int(graph.macs[0])
    except Exception:  # noqa: BLE001  (a graph onnx-tool cannot profile still exports, without a cost)
        return {}
    return {
        "parameters": int(graph.params),
        "macs": macs,
        "gflops": round(2 * macs / 1e9, 4),
        "input_shape": [int(size) for size in input_shape],
        "counted_by": f"onnx-tool {getattr(onnx_tool, 'VERSION', '?')}",
    }
