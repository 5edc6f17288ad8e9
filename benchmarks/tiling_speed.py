"""What scoring a camera frame costs with a tiled model (``inspector export RUN --tile``), stage by stage.

    python benchmarks/tiling_speed.py --model runs/cam/export-tiled/model.onnx \\
        --whole-model runs/cam/export/model.onnx --frame 2048x2048 --threads 2

For each model: the median milliseconds per frame (over ``--repeats`` passes of ``--frames`` random frames,
given as arrays: no file decoding) of ``prepare`` (the whole frame resized to the model's image size), the
model calls alone (every tile, ``TILE_PIXELS_PER_CALL`` pixels per call, as the runtime batches them),
stitching plus the score recomputed from the stitched map, ``finish`` (normalisation and regions on the
frame), and the whole of ``Scorer.score`` end to end. ``--whole-model`` times an untiled export of the same
run (the frame resized to its input) on the same frames for comparison. Prints a markdown table, and with
``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model
from inspector.runtime.tiling import TILE_PIXELS_PER_CALL


def _median_ms(function: Callable[[], Any], repeats: int, count: int) -> float:
    """Median over ``repeats`` passes of one call of ``function``, in milliseconds per frame (``count``)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append((time.perf_counter() - started) * 1000.0 / count)
    return statistics.median(times)


def time_model(path: Path, frames: list[np.ndarray], repeats: int, threads: int) -> dict[str, Any]:
    scorer = Scorer(load_model(path, device="cpu", threads=threads))
    session, tiling = scorer.session, scorer.tiling
    count = len(frames)
    scorer.score(frames[:1])  # warm-up: onnxruntime allocates on its first call
    prepared = scorer.prepare(frames)
    raw_scores, raw_maps = scorer.infer(prepared)
    result: dict[str, Any] = {
        "model": str(path),
        "input_size": list(session.input_size),
        "image_size": list(session.image_size),
        "threads": session.threads,
        "prepare_ms": _median_ms(lambda: scorer.prepare(frames), repeats, count),
    }
    if tiling is not None:
        height, width = tiling.tile
        tiles = np.stack(
            [
                image[:, top : top + height, left : left + width]
                for image in prepared.images
                for top, left in tiling.origins()
            ]
        )
        chunk = max(1, TILE_PIXELS_PER_CALL // (height * width))

        def model_calls() -> None:
            for start in range(0, len(tiles), chunk):
                session.run(tiles[start : start + chunk])

        result["tiles_per_frame"] = len(tiling.origins())
        result["model_ms"] = _median_ms(model_calls, repeats, count)
        result["stitch_and_score_ms"] = max(
            0.0, _median_ms(lambda: scorer.infer(prepared), repeats, count) - result["model_ms"]
        )
    else:
        result["tiles_per_frame"] = 0
        result["model_ms"] = _median_ms(lambda: scorer.infer(prepared), repeats, count)
        result["stitch_and_score_ms"] = 0.0

    def finish_all() -> None:
        for index, frame in enumerate(frames):
            scorer.finish(frame.shape, raw_scores[index], raw_maps[index])

    result["finish_ms"] = _median_ms(finish_all, repeats, count)
    result["end_to_end_ms"] = _median_ms(lambda: scorer.score(frames), repeats, count)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a tiled model.onnx (export --tile)")
    parser.add_argument("--whole-model", type=Path, help="an untiled export of the same run, for comparison")
    parser.add_argument("--frame", default="2048x2048", help="frame WIDTHxHEIGHT (default 2048x2048)")
    parser.add_argument("--frames", type=int, default=4, help="frames per pass (one Scorer.score call)")
    parser.add_argument("--repeats", type=int, default=5, help="passes; the median is reported")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: one per core)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    width, height = (int(side) for side in args.frame.lower().split("x"))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(args.frames)]
    models = [args.model] + ([args.whole_model] if args.whole_model else [])
    rows = [time_model(path, frames, args.repeats, args.threads) for path in models]
    report = {"frame": [height, width], "frames": args.frames, "repeats": args.repeats, "models": rows}
    print(f"frames {width}x{height}, {args.frames} per pass, median of {args.repeats} passes, ms per frame\n")
    print("| model | input | image size | tiles | prepare | model | stitch + score | finish | end to end |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {'x'.join(map(str, row['input_size']))} | "
            f"{'x'.join(map(str, row['image_size']))} | {row['tiles_per_frame']} | {row['prepare_ms']:.1f} | "
            f"{row['model_ms']:.1f} | {row['stitch_and_score_ms']:.1f} | {row['finish_ms']:.1f} | "
            f"{row['end_to_end_ms']:.1f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
