"""End-to-end `inspect` throughput at batch 1 (one model call at a time on every core: a camera's case) with
the folder pipeline of an earlier commit and the current one, alternating on the same images, against the
model alone; medians of the repeats.

The earlier pipeline is read from git (``git show REV:runtime/folder.py``) and loaded beside the current
one, so both run in one process on the same session and images.

Usage (an idle machine; say its load next to the figures):
    python benchmarks/inspect_pipeline.py --model EDGE/model.onnx --before 6fa6b86 --save none
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inspector.preprocess import read_image
from inspector.runtime import folder as current
from inspector.runtime.bench import model_only_throughput, write_sample_images
from inspector.runtime.overlay import SAVE_CHOICES
from inspector.runtime.scoring import Scorer
from inspector.runtime.session import load_model


def load_pipeline(revision: str, scratch: Path):
    """``runtime/folder.py`` as it was at ``revision``, as a module."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{revision}:runtime/folder.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    path = scratch / "folder_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("folder_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["folder_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="An exported model.onnx.")
    parser.add_argument("--before", required=True, help="The git revision of the earlier pipeline.")
    parser.add_argument("--count", type=int, default=32, help="Generated images at the model's size.")
    parser.add_argument("--repeats", type=int, default=9, help="Alternating repeats; medians are reported.")
    parser.add_argument("--save", choices=SAVE_CHOICES, default="none", help="Which overlays inspect writes.")
    args = parser.parse_args(argv)
    print(f"load average before the run: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    scorer = Scorer(load_model(args.model, threads=0))
    with tempfile.TemporaryDirectory(prefix="inspect-pipeline-") as scratch:
        scratch = Path(scratch)
        before = load_pipeline(args.before, scratch)
        paths = write_sample_images(scratch / "images", args.count, scorer.session.image_size)
        batches = [scorer.prepare([read_image(path)]) for path in paths]
        model_only_throughput(scorer, batches[:4])  # warm-up
        pipelines = {f"inspect, pipeline of {args.before}": before, "inspect, current pipeline": current}
        measured: dict[str, list[float]] = {"model only": [], **{name: [] for name in pipelines}}
        for _ in range(args.repeats):
            measured["model only"].append(model_only_throughput(scorer, batches).images_per_second)
            for name, module in pipelines.items():
                started = time.perf_counter()
                module.inspect_folder(
                    scratch / "images", scorer, scratch / "out", force=True, batch_size=1, workers=1,
                    save=args.save,
                )  # fmt: skip
                measured[name].append(args.count / (time.perf_counter() - started))
    model_only = statistics.median(measured["model only"])
    for name, values in measured.items():
        median = statistics.median(values)
        print(
            f"{name}: median {median:.1f} img/s (min {min(values):.1f}, max {max(values):.1f}), "
            f"{median / model_only:.3f} of the model alone"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
