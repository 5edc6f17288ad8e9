"""Model-only versus end-to-end `inspect` throughput, in one run, on the same images.

    python benchmarks/runtime_throughput.py --model runs/<name>/export/model.onnx [--images DIR]
    python benchmarks/runtime_throughput.py --detector draem --size 256 \
        --detector-options '{"reconstruction_width": 16, "segmentation_width": 8}'
    python benchmarks/runtime_throughput.py            # a generated conv model, no torch needed

Without --model, the model is either a registry detector with untrained weights exported through the
project's export path (--detector; needs the [train] extra), or a U-Net-shaped conv graph written with
onnx.helper (about 5 GFLOP per 256x256 image). Untrained models get thresholds at quantiles of their own
scores on the images (99th percentile of pixels, 75th of images), so the share of anomalous images and of
heatmap pixels, which drives overlay cost, is like a calibrated model's. Prints a README-ready table and the
JSON of every repeat (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inspector.artifact import INPUT_NAME, MAP_OUTPUT, METADATA_KEY, SCORE_OUTPUT, ModelMetadata
from inspector.calibration import Calibration
from inspector.preprocess import prepare_batch, read_image
from inspector.runtime.bench import benchmark, write_sample_images
from inspector.runtime.folder import DEFAULT_BATCH_SIZE, list_images
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model, threads_per_worker


def conv_model_bytes(size: int = 256, width: int = 40, seed: int = 0) -> bytes:
    """A U-Net-shaped scoring graph: 3 scales of ReLU convs, sigmoid map, max of its 21x21 mean filter."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []

    def conv(name: str, source: str, c_in: int, c_out: int, stride: int = 1, relu: bool = True) -> str:
        kernel = rng.normal(0, np.sqrt(2.0 / (9 * c_in)), (c_out, c_in, 3, 3)).astype(np.float32)
        weights.extend(
            [
                numpy_helper.from_array(kernel, f"{name}.w"),
                numpy_helper.from_array(np.zeros(c_out, np.float32), f"{name}.b"),
            ]
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [source, f"{name}.w", f"{name}.b"],
                [f"{name}.c"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        if not relu:
            return f"{name}.c"
        nodes.append(helper.make_node("Relu", [f"{name}.c"], [name]))
        return name

    def upsample(name: str, source: str) -> str:
        weights.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), f"{name}.scales"))
        nodes.append(helper.make_node("Resize", [source, "", f"{name}.scales"], [name], mode="nearest"))
        return name

    w = width
    e1 = conv("e1b", conv("e1a", INPUT_NAME, 3, w // 2), w // 2, w // 2)
    e2 = conv("e2b", conv("e2a", e1, w // 2, w, stride=2), w, w)
    e3 = conv("e3b", conv("e3a", e2, w, 2 * w, stride=2), 2 * w, 2 * w)
    d2 = conv("d2", upsample("u2", e3), 2 * w, w)
    nodes.append(helper.make_node("Concat", [d2, e2], ["cat2"], axis=1))
    d1 = conv("d1", upsample("u1", conv("d2b", "cat2", 2 * w, w)), w, w // 2)
    nodes.append(helper.make_node("Sigmoid", [conv("head", d1, w // 2, 1, relu=False)], [MAP_OUTPUT]))
    nodes.append(
        helper.make_node(
            "AveragePool",
            [MAP_OUTPUT],
            ["smoothed"],
            kernel_shape=[21, 21],
            pads=[10, 10, 10, 10],
            count_include_pad=0,
        )
    )
    nodes.append(helper.make_node("ReduceMax", ["smoothed"], [SCORE_OUTPUT], axes=[1, 2, 3], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "conv-benchmark",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])],
        [
            helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(MAP_OUTPUT, TensorProto.FLOAT, ["N", 1, size, size]),
        ],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def detector_model_bytes(name: str, size: int, options: dict) -> bytes:
    """A registry detector with untrained weights, exported by the project's own export path."""
    import torch

    from inspector.export.onnx_export import export_scoring_graph
    from inspector.training.detectors import build_detector

    torch.manual_seed(0)
    return export_scoring_graph(build_detector(name, (size, size), 3, options)).onnx_bytes


def gflop_per_image(onnx_bytes: bytes) -> float:
    """Multiply-adds x 2 of the Conv/ConvTranspose/Gemm/MatMul nodes, from inferred shapes at batch 1."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {
        value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*model.graph.value_info, *model.graph.output, *model.graph.input]
    }
    initializers = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    total = 0.0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and node.input[1] in initializers:
            kernel = initializers[node.input[1]]
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            if node.op_type == "Conv":
                out = shapes.get(node.output[0])
                total += 2.0 * np.prod(out[1:]) * kernel[1] * np.prod(kernel[2:]) if out else 0.0
            else:
                source = shapes.get(node.input[0])
                total += (
                    2.0 * np.prod(source[1:]) * kernel[1] * np.prod(kernel[2:]) / groups if source else 0.0
                )
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in initializers:
            weight = initializers[node.input[1]]
            total += 2.0 * float(np.prod(weight))
    return total / 1e9


def quantile_calibration(onnx_bytes: bytes, images: list[np.ndarray], size: int) -> Calibration:
    """Thresholds at the 75th percentile of image scores and the 99th of pixels (untrained weights)."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    scores, maps = session.run(
        [SCORE_OUTPUT, MAP_OUTPUT], {INPUT_NAME: prepare_batch(images, (size, size), 3)}
    )
    return Calibration(
        image_threshold=float(np.quantile(scores, 0.75)),
        pixel_threshold=float(np.quantile(maps, 0.99)),
        image_min=float(scores.min()),
        image_max=float(scores.max()),
        pixel_min=float(maps.min()),
        pixel_max=float(maps.max()),
        method="quantile",
        target=0.25,
        data={"note": "benchmark only: untrained weights, benchmark images"},
    )


def write_with_metadata(
    onnx_bytes: bytes, path: Path, detector: str, size: int, calibration: Calibration
) -> Path:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    metadata = ModelMetadata.from_calibration(
        detector, (size, size), 3, calibration, trained_on={"dataset": "none (untrained weights, benchmark)"}
    )
    model.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=metadata.to_json()))
    onnx.save(model, str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported model.onnx to measure")
    parser.add_argument(
        "--detector", help="instead: a registry detector with untrained weights (needs torch)"
    )
    parser.add_argument("--detector-options", default="{}", help="JSON options of --detector (e.g. widths)")
    parser.add_argument("--size", type=int, default=256, help="input size of a generated or --detector model")
    parser.add_argument("--images", help="folder of images (default: generated at the model's input size)")
    parser.add_argument("--count", type=int, default=64, help="generated images (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats; medians reported")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--workers", type=int, default=0, help="model calls side by side (0: one per core)")
    parser.add_argument("--threads", type=int, default=0, help="threads per call (0: the cores / workers)")
    parser.add_argument("--save", default="all", choices=("all", "anomalous", "none"))
    parser.add_argument("--json", help="also write the result JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        images = Path(args.images) if args.images else None
        description, gflop = args.model, None
        model_path = Path(args.model) if args.model else None
        if model_path is None:
            if images is None:
                images = scratch / "images"
                write_sample_images(images, args.count, (args.size, args.size))
            if args.detector:
                onnx_bytes = detector_model_bytes(args.detector, args.size, json.loads(args.detector_options))
                name = args.detector
            else:
                onnx_bytes, name = conv_model_bytes(args.size), "conv-benchmark"
            gflop = gflop_per_image(onnx_bytes)
            decoded = [read_image(path) for _, path in list_images(images, recursive=True)[:32]]
            calibration = quantile_calibration(onnx_bytes, decoded, args.size)
            model_path = write_with_metadata(onnx_bytes, scratch / "model.onnx", name, args.size, calibration)
            description = (
                f"{name} {args.detector_options if args.detector else ''} untrained, "
                f"{args.size}x{args.size}, {gflop:.1f} GFLOP/image"
            ).replace("  ", " ")
        workers, threads = threads_per_worker(args.workers, args.threads)
        result = benchmark(
            Scorer(load_model(model_path, device="cpu", threads=threads)),
            images=images,
            count=args.count,
            repeats=args.repeats,
            batch_size=args.batch_size,
            workers=workers,
            save=args.save,
            single_call=Scorer(load_model(model_path, device="cpu")) if workers > 1 else None,
        )
    result.update(
        model=description,
        gflop_per_image=round(gflop, 2) if gflop else None,
        cpu_cores=os.cpu_count(),
        generated_images=not args.images,
    )
    height, width = result["image_sizes"][0]
    result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]  # other programs on the machine
    print(
        "| model | images | model-only (img/s) | end-to-end inspect (img/s) | ratio | CPU ms/img model, "
        "end-to-end (ratio) | model-only, one call at a time on all cores (img/s) |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {result['model']} | {result['images']} x {width}x{height} | {result['model_only_median']:.1f} "
        f"| {result['end_to_end_median']:.1f} | {result['ratio']:.0%} | {result['model_only_cpu_ms_per_image']:.1f}, "
        f"{result['end_to_end_cpu_ms_per_image']:.1f} ({result['cpu_ratio']:.0%}) "
        f"| {result.get('single_call_median', 'n/a')} |"
    )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
