"""Which convolutions are worth int8 in a thin network at batch 1: the fp32 file against int8 files that
keep different sets of convolutions float (every one at the image's boundary stays float, as in
``inspector export --quantize int8``), timed alternately in onnxruntime (2 threads, batch 1), with each
file's largest score difference and 99.9th-percentile map difference against fp32 on the calibration
images.

Usage (an idle machine; say its load next to the figures):
    python benchmarks/int8_thin_layers.py --model EDGE/model.onnx --images data/realtex/wood/train/good
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from inspector.export.precision import float_nodes, quantize_int8
from inspector.preprocess import read_image
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model


def convolutions(model: onnx.ModelProto) -> list[tuple[str, int, int, bool]]:
    """(name, input channels, output channels, depthwise) of every Conv node."""
    weights = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in weights:
            continue
        groups = next((attribute.i for attribute in node.attribute if attribute.name == "group"), 1)
        out_channels, in_per_group = weights[node.input[1]][:2]
        found.append((node.name, in_per_group * groups, out_channels, groups > 1))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="An exported fp32 model.onnx.")
    parser.add_argument("--images", required=True, help="Normal images to calibrate on (the first 32).")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=60, help="Model calls per repeat.")
    args = parser.parse_args(argv)
    print(f"load average before the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    scorer = Scorer(load_model(args.model))
    calibration = scorer.prepare([read_image(path) for path in sorted(Path(args.images).glob("*.png"))[:32]])
    model = onnx.load(args.model)
    boundary = float_nodes(model)
    convs = convolutions(model)
    depthwise = {name for name, _, _, is_depthwise in convs if is_depthwise}
    variants: dict[str, set[str]] = {"int8 as exported": set(), "depthwise float": depthwise}
    for limit in (16, 32):
        thin = {name for name, inputs, outputs, _ in convs if min(inputs, outputs) < limit}
        variants[f"under {limit} channels float"] = thin
        variants[f"under {limit} channels and depthwise float"] = thin | depthwise
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {"fp32": ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])}
    with tempfile.TemporaryDirectory() as scratch:
        for name, kept in variants.items():
            path = Path(scratch) / f"{len(sessions)}.onnx"
            path.write_bytes(
                quantize_int8(
                    Path(args.model).read_bytes(), calibration, keep_float=sorted(set(boundary) | kept)
                )
            )
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = sessions["fp32"].get_inputs()[0].name
    reference = sessions["fp32"].run(None, {feed: calibration[:8]})
    for name, session in sessions.items():
        score, anomaly_map = session.run(None, {feed: calibration[:8]})
        print(
            f"{name}: score max |diff| {float(np.abs(score - reference[0]).max()):.4f}, map p99.9 |diff| "
            f"{float(np.quantile(np.abs(anomaly_map - reference[1]), 0.999)):.4f}"
        )
    one = calibration[:1]
    speeds: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.repeats):
        for name, session in sessions.items():
            for _ in range(5):
                session.run(None, {feed: one})
            started = time.perf_counter()
            for _ in range(args.calls):
                session.run(None, {feed: one})
            speeds[name].append(args.calls / (time.perf_counter() - started))
    for name, values in speeds.items():
        print(
            f"{name}: median {statistics.median(values):.1f} img/s (min {min(values):.1f}, max {max(values):.1f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
