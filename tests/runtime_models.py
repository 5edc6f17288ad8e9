"""Small ONNX models that follow the artifact contract, built with the onnx package alone (no torch).

The model scores brightness deviation: anomaly_map = mean over channels of |image - 0.5|, score = its
maximum. A mid-gray part is normal; a bright or dark spot is a defect exactly where it was painted.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from inspector.artifact import INPUT_NAME, MAP_OUTPUT, METADATA_KEY, SCORE_OUTPUT, ModelMetadata
from inspector.calibration import Calibration

# Raw map values lie in [0, 0.5]; calibrated so that raw 0.25 (a clearly visible spot) is the threshold.
RAW_THRESHOLD = 0.25


def contract_metadata(input_size: tuple[int, int], channels: int) -> ModelMetadata:
    calibration = Calibration(
        image_threshold=RAW_THRESHOLD,
        pixel_threshold=RAW_THRESHOLD,
        image_min=0.0,
        image_max=0.5,
        pixel_min=0.0,
        pixel_max=0.5,
        method="quantile",
        target=0.01,
        data={"split": "test-fixture"},
    )
    return ModelMetadata.from_calibration(
        "mean-abs-deviation", input_size, channels, calibration, trained_on={"dataset": "tests"}
    )


def build_deviation_model(
    path: Path,
    input_size: tuple[int, int] = (32, 32),
    channels: int = 3,
    metadata: str | None | ModelMetadata = "contract",
) -> Path:
    """Write the deviation model; ``metadata`` None writes none, a string other than "contract" is raw JSON."""
    height, width = input_size
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "half"], ["centred"]),
        helper.make_node("Abs", ["centred"], ["deviation"]),
        helper.make_node("ReduceMean", ["deviation"], [MAP_OUTPUT], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", [MAP_OUTPUT], [SCORE_OUTPUT], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "deviation",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", channels, height, width])],
        [
            helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(MAP_OUTPUT, TensorProto.FLOAT, ["N", 1, height, width]),
        ],
        initializer=[helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata == "contract":
        metadata = contract_metadata(input_size, channels)
    if isinstance(metadata, ModelMetadata):
        metadata = metadata.to_json()
    if metadata is not None:
        helper.set_model_props(model, {METADATA_KEY: metadata})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
