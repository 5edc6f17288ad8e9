"""``inspector eval RUN_DIR``: calibrate a trained run on its validation split and measure it on its test
split (torch). ``inspector eval MODEL.onnx --data DIR``: measure an exported model at its stored
calibration on labelled images (torch-free). Both report the same metrics from the same functions
(:mod:`inspector.evaluation`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from inspector.commands.options import (
    DEVICES_RUNTIME,
    DEVICES_TORCH,
    data_format_option,
    echo_warning,
    progress_option,
    strict_device_option,
    threads_option,
)
from inspector.errors import InspectorError

METRICS_NAME = "metrics.json"


def _log(line: str) -> None:
    click.echo(line, err=line.startswith("warning:"))


@click.command("eval", short_help="Measure a trained run or an exported model on test images.")
@click.argument("target", metavar="RUN_DIR|MODEL", type=click.Path(path_type=Path))
@click.option(
    "--data",
    "data_root",
    type=click.Path(path_type=str),
    default=None,
    help="Dataset folder: for a RUN_DIR, one to use instead of the run's own (data.root); for a MODEL "
    "(required), an MVTec category, a folder of categories with --category, or a folder holding good/, "
    "defective/ and optionally masks/.",
)
@data_format_option
@click.option("--category", default=None, help="Category inside --data (MVTec or built-in).")
@click.option(
    "--checkpoint",
    type=click.Choice(["best", "last"]),
    default=None,
    help="Which checkpoint of the run to evaluate [default: best] (RUN_DIR only).",
)
@click.option(
    "--device",
    type=click.Choice(sorted(set(DEVICES_TORCH) | set(DEVICES_RUNTIME))),
    default=None,
    help="Where to compute: for a RUN_DIR a torch device (auto, cpu, cuda, mps; default the config's), for "
    "a MODEL an onnxruntime one (auto, cpu, cuda, tensorrt, coreml, directml, openvino; default auto).",
)
@strict_device_option
@threads_option
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per model call (MODEL only; a run uses its config's) [default: 8].",
)
@click.option("--no-plots", is_flag=True, help="Skip plots/ (metrics and calibration only; RUN_DIR only).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to write metrics.json to (MODEL only; a RUN_DIR's go into the run).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@progress_option
def eval_command(
    target: Path,
    data_root: str | None,
    data_format: str | None,
    category: str | None,
    checkpoint: str | None,
    device: str | None,
    strict_device: bool,
    threads: int,
    batch_size: int | None,
    no_plots: bool,
    out_dir: Path | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """RUN_DIR (a trained run): score its validation images to calibrate the image and pixel thresholds
    (calibration.json), then its test images for image AUROC / AP / F1 and, with defect masks, pixel
    AUROC / AP, AUPRO and F1 (metrics.json), and draw plots/.

    MODEL (an exported model.onnx): score the labelled images of --data and report the same metrics at
    the calibration stored in the model, on the base install (no torch).

    \b
    Examples:
      inspector eval runs/rdna_cpu
      inspector eval model.onnx --data data/mvtec/bottle
      inspector eval model.onnx --data station2/   (holding good/, defective/, masks/)
    """
    if target.is_file() or target.suffix.lower() == ".onnx":
        given = {"--format": data_format, "--checkpoint": checkpoint, "--no-plots": no_plots or None}
        _refuse_options(given, "a MODEL", "they apply to a RUN_DIR")
        metrics = _evaluate_model(
            target,
            data_root,
            category,
            device,
            strict_device,
            threads,
            batch_size,
            out_dir,
            no_progress,
            as_json,
        )
    else:
        given = {
            "--out": out_dir,
            "--batch-size": batch_size,
            "--threads": threads or None,
            "--strict-device": strict_device or None,
        }
        _refuse_options(given, "a RUN_DIR", "they apply to an exported MODEL")
        metrics = _evaluate_run(
            target, data_root, data_format, category, checkpoint, device, no_plots, quiet=as_json
        )
    if as_json:
        click.echo(json.dumps(metrics, indent=2, sort_keys=True))


def _refuse_options(given: dict[str, Any], form: str, reason: str) -> None:
    wrong = [name for name, value in given.items() if value is not None]
    if wrong:
        raise InspectorError(f"{', '.join(wrong)} cannot be used when evaluating {form} ({reason})")


def _evaluate_run(
    run_dir: Path,
    data_root: str | None,
    data_format: str | None,
    category: str | None,
    checkpoint: str | None,
    device: str | None,
    no_plots: bool,
    quiet: bool,
) -> dict[str, Any]:
    if device is not None and device not in DEVICES_TORCH:
        raise InspectorError(
            f"--device {device} is an onnxruntime device; a run is evaluated with torch: {'|'.join(DEVICES_TORCH)}"
        )
    from inspector.training.evaluate import evaluate_run

    overrides = {"root": data_root, "format": data_format, "category": category}
    return evaluate_run(
        run_dir,
        data_overrides={key: value for key, value in overrides.items() if value is not None},
        checkpoint=checkpoint or "best",
        device=device,
        plots=not no_plots,
        log=(lambda line: click.echo(line, err=True)) if quiet else _log,
    )


def _evaluate_model(
    model_path: Path,
    data_root: str | None,
    category: str | None,
    device: str | None,
    strict_device: bool,
    threads: int,
    batch_size: int | None,
    out_dir: Path | None,
    no_progress: bool,
    as_json: bool,
) -> dict[str, Any]:
    if device is not None and device not in DEVICES_RUNTIME:
        raise InspectorError(
            f"--device {device} is a torch device; an exported model runs on onnxruntime: {'|'.join(DEVICES_RUNTIME)}"
        )
    if data_root is None:
        raise InspectorError(
            "evaluating a model needs --data DIR: an MVTec category, or a folder holding good/ and defective/ "
            "(and optionally masks/)"
        )
    from inspector.commands.inspect import ProgressBar
    from inspector.evaluation import summary_lines
    from inspector.io import atomic_write_text, check_writable_folder
    from inspector.runtime.evaluate import DEFAULT_BATCH_SIZE, evaluate_model
    from inspector.runtime.session import load_model

    if out_dir is not None:
        check_writable_folder(out_dir, "--out folder")  # before scoring, not after
    session = load_model(model_path, device or "auto", strict_device, threads, warn=echo_warning)
    log = (lambda line: click.echo(line, err=True)) if as_json else _log  # stdout: the JSON alone
    bar = ProgressBar(no_progress, label="scoring")
    try:
        metrics = evaluate_model(
            session,
            data_root,
            category,
            batch_size or DEFAULT_BATCH_SIZE,
            on_total=bar.start,
            on_batch=bar.advance_by,
        )
    finally:
        bar.close()
    for line in summary_lines(metrics):
        log(line)
    if out_dir is not None:
        path = atomic_write_text(out_dir / METRICS_NAME, json.dumps(metrics, indent=2) + "\n")
        log(f"wrote {path}")
    return metrics
