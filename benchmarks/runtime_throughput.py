"""Model-only versus end-to-end `inspect` throughput, in one run, on the same images.

    python benchmarks/runtime_throughput.py [--model runs/<name>/export/model.onnx] [--images DIR]

With no --model, a convolutional encoder-decoder of realistic cost (about 4.8 GFLOP per 256x256 image, in
the range of the CPU presets of the detectors) is generated with onnx.helper, random weights, and the
artifact metadata, so the benchmark needs neither torch nor a trained run. Prints a README-ready table
and the JSON of all repeats (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspector.artifact import INPUT_NAME, MAP_OUTPUT, METADATA_KEY, SCORE_OUTPUT, ModelMetadata  # noqa: E402
from inspector.calibration import Calibration  # noqa: E402
from runtime.bench import benchmark  # noqa: E402
from runtime.folder import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS  # noqa: E402
from runtime.scoring import Scorer  # noqa: E402
from runtime.session import load_model  # noqa: E402


def build_conv_model(path: Path, size: int = 256, width: int = 40, seed: int = 0) -> tuple[Path, float]:
    """Write a U-Net-shaped scoring graph (3 scales, ReLU convs, sigmoid map, 21x21 mean-filter max score).

    Returns the path and the multiply-add count per image in GFLOP (2 x MACs).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    flops = 0.0

    def conv(name: str, source: str, c_in: int, c_out: int, stride: int, scale: int, relu: bool = True) -> str:
        nonlocal flops
        w = rng.normal(0, np.sqrt(2.0 / (9 * c_in)), (c_out, c_in, 3, 3)).astype(np.float32)
        weights.extend([numpy_helper.from_array(w, f"{name}.w"),
                        numpy_helper.from_array(np.zeros(c_out, np.float32), f"{name}.b")])
        out_size = size // scale
        flops += 2.0 * 9 * c_in * c_out * out_size * out_size
        nodes.append(helper.make_node("Conv", [source, f"{name}.w", f"{name}.b"], [f"{name}.c"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        if not relu:
            return f"{name}.c"
        nodes.append(helper.make_node("Relu", [f"{name}.c"], [name]))
        return name

    def upsample(name: str, source: str) -> str:
        scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), f"{name}.scales")
        weights.append(scales)
        nodes.append(helper.make_node("Resize", [source, "", f"{name}.scales"], [name], mode="nearest"))
        return name

    w = width
    e1 = conv("e1b", conv("e1a", INPUT_NAME, 3, w // 2, 1, 1), w // 2, w // 2, 1, 1)
    e2 = conv("e2b", conv("e2a", e1, w // 2, w, 2, 2), w, w, 1, 2)
    e3 = conv("e3b", conv("e3a", e2, w, 2 * w, 2, 4), 2 * w, 2 * w, 1, 4)
    d2 = conv("d2", upsample("u2", e3), 2 * w, w, 1, 2)
    nodes.append(helper.make_node("Concat", [d2, e2], ["cat2"], axis=1))
    d2b = conv("d2b", "cat2", 2 * w, w, 1, 2)
    d1 = conv("d1", upsample("u1", d2b), w, w // 2, 1, 1)
    logits = conv("head", d1, w // 2, 1, 1, 1, relu=False)
    nodes.append(helper.make_node("Sigmoid", [logits], [MAP_OUTPUT]))
    nodes.append(helper.make_node("AveragePool", [MAP_OUTPUT], ["smoothed"], kernel_shape=[21, 21],
                                  pads=[10, 10, 10, 10], count_include_pad=0))
    nodes.append(helper.make_node("ReduceMax", ["smoothed"], [SCORE_OUTPUT], axes=[1, 2, 3], keepdims=0))
    graph = helper.make_graph(
        nodes, "conv-benchmark",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info(MAP_OUTPUT, TensorProto.FLOAT, ["N", 1, size, size])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    calibration = Calibration(image_threshold=0.5, pixel_threshold=0.5, image_min=0.0, image_max=1.0,
                              pixel_min=0.0, pixel_max=1.0, method="none")
    metadata = ModelMetadata.from_calibration("conv-benchmark", (size, size), 3, calibration,
                                              trained_on={"dataset": "none (random weights)"})
    helper.set_model_props(model, {METADATA_KEY: metadata.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path, flops / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model.onnx to measure (default: a generated conv model)")
    parser.add_argument("--images", help="folder of images (default: generated at the model's input size)")
    parser.add_argument("--count", type=int, default=64, help="generated images (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats; medians reported")
    parser.add_argument("--size", type=int, default=256, help="input size of the generated model")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: one per core)")
    parser.add_argument("--save", default="all", choices=("all", "anomalous", "none"))
    parser.add_argument("--json", help="also write the result JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        gflop = None
        model_path = args.model
        if not model_path:
            model_path, gflop = build_conv_model(Path(scratch) / "conv.onnx", size=args.size)
        scorer = Scorer(load_model(model_path, device="cpu", threads=args.threads))
        result = benchmark(scorer, images=args.images, count=args.count, repeats=args.repeats,
                           batch_size=args.batch_size, workers=args.workers, save=args.save)
    result["generated_model_gflop_per_image"] = round(gflop, 2) if gflop else None
    result["cpu_cores"] = os.cpu_count()
    if not args.model:
        result["model"] = f"generated conv model, {gflop:.1f} GFLOP/image at {args.size}x{args.size}"
    print(f"| model | images | model-only (img/s) | end-to-end inspect (img/s) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| {result['model']} | {result['images']} x {result['image_sizes'][0][0]}x{result['image_sizes'][0][1]} "
          f"| {result['model_only_median']:.1f} | {result['end_to_end_median']:.1f} | {result['ratio']:.0%} |")
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
