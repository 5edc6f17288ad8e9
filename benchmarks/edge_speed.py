"""Edge speed of exported models, side by side in one run on the same images: parameters and GFLOP (from the
model's metadata, counted at export by onnx-tool), then ``inspector bench`` at batch 1 (one stream, one
model call at a time on every core: a camera's case) and at batch 8 with one model call per core (a folder's
best throughput), model only and end to end through ``inspect``'s path, medians of the repeats.

Usage (an idle machine; say its load next to the figures):
    python benchmarks/edge_speed.py --count 16 --repeats 3 --repeats-for draem_paper=1 \
        --model draem_paper=/tmp/edge/paper/model.onnx --model rdna_cpu=/tmp/edge/model.onnx \
        --model rdna_cpu-int8=/tmp/edge/model-int8.onnx --report benchmarks/results/edge_speed.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

#: (name, batch size, model calls side by side, onnxruntime threads per call)
SETTINGS = (("batch 1, 1 call x all cores", 1, 1, 0), ("batch 8, 1 call per core", 8, 0, 0))


def inspector_json(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "inspector", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"inspector {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return json.loads(done.stdout)


def measure(label: str, model: Path, images: Path | None, count: int, repeats: int) -> dict:
    metadata = inspector_json("info", str(model), "--json").get("metadata") or {}
    cost = metadata.get("cost") or {}
    row = {
        "model": label,
        "file": str(model),
        "precision": metadata.get("precision", "fp32"),
        "input_size": metadata.get("input_size"),
        "parameters_millions": cost.get("parameters", 0) / 1e6 if cost else None,
        "gflop": 2 * cost["macs"] / 1e9 if cost else None,
        "settings": {},
    }
    source = ["--images", str(images)] if images else ["--count", str(count)]
    for name, batch, workers, threads in SETTINGS:
        result = inspector_json(
            "bench", "--model", str(model), *source, "--batch-size", str(batch), "--workers", str(workers),
            "--threads", str(threads), "--repeats", str(repeats), "--save", "none", "--device", "cpu", "--json",
        )  # fmt: skip
        row["settings"][name] = {
            "model_only_fps": result["model_only_median"],
            "end_to_end_fps": result["end_to_end_median"],
            "ratio": result["ratio"],
            "model_only_ms": 1000.0 / result["model_only_median"],
        }
        print(json.dumps({"model": label, "setting": name, **row["settings"][name]}), flush=True)
    return row


def markdown(rows: list[dict], command: str, load: str) -> str:
    lines = [
        "# Edge speed of exported models (onnxruntime, CPU)",
        "",
        f"Command: `{command}`  ",
        f"Load average before the run: {load}.",
        "",
        "| model | precision | input | M params | GFLOP | setting | model only img/s | ms/img | end to end img/s | e2e / model |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        size = "x".join(str(v) for v in row["input_size"] or [])
        params = f"{row['parameters_millions']:.2f}" if row["parameters_millions"] is not None else "-"
        gflop = f"{row['gflop']:.2f}" if row["gflop"] is not None else "-"
        for name, values in row["settings"].items():
            lines.append(
                f"| {row['model']} | {row['precision']} | {size} | {params} | {gflop} | {name} | "
                f"{values['model_only_fps']:.1f} | {values['model_only_ms']:.1f} | {values['end_to_end_fps']:.1f} | "
                f"{values['ratio']:.2f} |"
            )
    base = rows[0]
    for row in rows[1:]:
        for name in row["settings"]:
            ratio = row["settings"][name]["model_only_fps"] / base["settings"][name]["model_only_fps"]
            lines.append(f"\n{row['model']} against {base['model']}, {name}, model only: {ratio:.1f}x")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", required=True, help="LABEL=PATH of an exported model.")
    parser.add_argument("--images", type=Path, default=None, help="Folder of images (default: generated).")
    parser.add_argument("--count", type=int, default=32, help="Generated images when no --images is given.")
    parser.add_argument("--repeats", type=int, default=5, help="Repeats per setting; medians reported.")
    parser.add_argument(
        "--repeats-for", action="append", default=[], help="LABEL=N: fewer repeats for a slow model."
    )
    parser.add_argument("--report", type=Path, default=None, help="Markdown report (a .json beside it).")
    args = parser.parse_args()
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    repeats = {label: int(n) for label, _, n in (item.partition("=") for item in args.repeats_for)}
    rows = []
    for item in args.model:
        label, equals, path = item.partition("=")
        if not equals:
            raise SystemExit(f"--model {item}: write LABEL=PATH")
        rows.append(measure(label, Path(path), args.images, args.count, repeats.get(label, args.repeats)))
    text = markdown(rows, "python " + " ".join(sys.argv), load)
    print(text)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
        args.report.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
