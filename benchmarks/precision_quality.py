"""What int8 and fp16 exports cost in detection quality: the same runs exported at each precision, evaluated
on the same labelled test images with the torch-free ``inspector eval MODEL`` (the metrics ``eval RUN``
gives), and the image verdicts of each precision compared with float32's through ``inspector inspect``.

Quality does not depend on the machine's load (no timing here); the speed of the same files is measured by
``inspector bench`` (README, "Edge speed").

Usage:
    python benchmarks/precision_quality.py runs/realtex/rdna_cpu_{wood,canvas}_seed0 --data data/realtex \
        --report benchmarks/results/precision_quality.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

PRECISIONS = {"fp32": [], "int8": ["--quantize", "int8"], "fp16": ["--precision", "fp16"]}
FILES = {"fp32": "model.onnx", "int8": "model-int8.onnx", "fp16": "model-fp16.onnx"}
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def inspector(*args: str) -> str:
    """Run one inspector command; its stdout (a failure stops the benchmark with the command's output)."""
    done = subprocess.run(
        [sys.executable, "-m", "inspector", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(
            f"inspector {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def verdicts(model: Path, images: Path, out: Path) -> dict[str, str]:
    """Path -> label of every test image, as ``inspect`` reports it."""
    inspector(
        "inspect",
        str(images),
        "--model",
        str(model),
        "--out",
        str(out),
        "--save",
        "none",
        "-q",
        "--recursive",
    )
    labels = {}
    with open(out / "report.jsonl", encoding="utf-8") as report:
        for line in report:
            record = json.loads(line)
            labels[record["path"]] = record["label"]
    return labels


def measure(run_dir: Path, data: Path, work: Path) -> dict:
    """Metrics per precision and the image verdicts changed against float32 for one run."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    category = config["data"]["category"]
    out = work / run_dir.name
    row: dict = {"run": run_dir.name, "category": category}
    labels = {}
    for precision, options in PRECISIONS.items():
        inspector("export", str(run_dir), "--out", str(out), "--no-components", "--force", *options)
        model = out / FILES[precision]
        metrics = json.loads(inspector("eval", str(model), "--data", str(data / category), "--json"))
        row[precision] = {name: metrics.get(name) for name in METRICS}
        labels[precision] = verdicts(model, data / category / "test", out / f"inspect-{precision}")
    for precision in ("int8", "fp16"):
        changed = sum(labels[precision][path] != labels["fp32"][path] for path in labels["fp32"])
        row[precision]["image_decisions_changed"] = changed
        row[precision]["images"] = len(labels["fp32"])
    return row


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# Detection quality of int8 and fp16 exports",
        "",
        f"Command: `{command}`",
        "",
        "| run | precision | image AUROC | pixel AUROC | AUPRO | image verdicts changed vs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        for precision in PRECISIONS:
            values = row[precision]
            changed = (
                f"{values['image_decisions_changed']} of {values['images']}" if precision != "fp32" else "-"
            )
            cells = " | ".join(f"{values[name]:.3f}" if values[name] is not None else "-" for name in METRICS)
            lines.append(f"| {row['run']} | {precision} | {cells} | {changed} |")
    for precision in ("int8", "fp16"):
        drops = [row["fp32"]["image_auroc"] - row[precision]["image_auroc"] for row in rows]
        share = sum(row[precision]["image_decisions_changed"] for row in rows) / sum(
            row[precision]["images"] for row in rows
        )
        lines.append(
            f"\n{precision}: image AUROC change against fp32, median {-statistics.median(drops):+.3f}, "
            f"worst {-max(drops):+.3f}; image verdicts changed {100 * share:.2f} % of all test images."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="Trained run directories (draem or rdna).")
    parser.add_argument("--data", type=Path, required=True, help="The MVTec-layout root the runs trained on.")
    parser.add_argument("--report", type=Path, default=None, help="Markdown report (a .json beside it).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = []
        for run_dir in args.runs:
            rows.append(measure(run_dir, args.data, Path(work)))
            print(json.dumps(rows[-1]), flush=True)
    text = markdown(rows, "python " + " ".join(sys.argv))
    print(text)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
        args.report.with_suffix(".json").write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
