"""``inspector calibrate MODEL.onnx --good DIR``: recalibrate an exported model on site, without torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from inspector.commands.options import (
    batch_size_option,
    echo_warning,
    progress_option,
    runtime_device_option,
    strict_device_option,
    threads_option,
)

if TYPE_CHECKING:
    from inspector.calibration import Calibration

_FOLDER = click.Path(file_okay=False, path_type=Path)


@click.command("calibrate", short_help="Recalibrate an exported model's thresholds on new good images.")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--good",
    required=True,
    type=_FOLDER,
    help="Folder of good parts as the station sees them now (searched recursively).",
)
@click.option(
    "--defective",
    type=_FOLDER,
    default=None,
    help="Folder of defective parts (sub-folders name the defect kinds); with it the thresholds are "
    "F1-optimal (--method auto).",
)
@click.option(
    "--mask-dir",
    type=_FOLDER,
    default=None,
    help="Masks of the --defective images, named <image stem>.png or <image stem>_mask.png; with them the "
    "pixel threshold is F1-optimal too.",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "f1", "quantile"]),
    default="auto",
    show_default=True,
    help="auto: f1 with --defective, else quantile (a training run's rule); quantile: the image threshold "
    "that rejects at most --false-reject-rate of good parts.",
)
@click.option(
    "--false-reject-rate",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=None,
    help="Target share of good parts flagged (quantile method) [default: the model's earlier target, "
    "else 0.01].",
)
@click.option(
    "--pixel-false-positive-rate",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.001,
    show_default=True,
    help="Share of good pixels above the pixel threshold, when it is not F1-optimal (no masks).",
)
@click.option(
    "--allow-too-few",
    is_flag=True,
    help="Calibrate even when the good images are too few to resolve --false-reject-rate (the threshold "
    "is then their highest score, and the weaker rate it promises is recorded).",
)
@click.option("--dry-run", is_flag=True, help="Show the new thresholds without writing the model.")
@runtime_device_option
@strict_device_option
@threads_option
@batch_size_option
@progress_option
def calibrate_command(
    model_path: Path,
    good: Path,
    defective: Path | None,
    mask_dir: Path | None,
    method: str,
    false_reject_rate: float | None,
    pixel_false_positive_rate: float,
    allow_too_few: bool,
    dry_run: bool,
    device: str,
    strict_device: bool,
    threads: int,
    batch_size: int,
    no_progress: bool,
) -> None:
    """Score the --good images (and --defective ones, with --mask-dir their masks) with MODEL, compute
    new image and pixel thresholds and normalisation range with the calibration a training run uses, and
    rewrite MODEL in place, atomically. The calibration it replaces is kept in the model's metadata
    (calibration.history; `inspector info MODEL` lists it). For a new station, new lighting or a new
    batch of material; runs on the base install (no torch).

    \b
    Example:
      inspector calibrate model.onnx --good station2/good --false-reject-rate 0.01
    """
    from inspector.commands.inspect import ProgressBar
    from inspector.io import check_writable_folder
    from inspector.runtime.calibrate import recalibrate, write_recalibrated
    from inspector.runtime.session import load_model

    session = load_model(model_path, device, strict_device, threads, warn=echo_warning)
    if not dry_run:  # the new file is written next to the model, then renamed over it
        check_writable_folder(model_path.parent, "model's folder")
    bar = ProgressBar(no_progress, label="scoring")
    try:
        result = recalibrate(
            session,
            good,
            defective,
            mask_dir,
            method=method,
            false_reject_rate=false_reject_rate,
            pixel_false_positive_rate=pixel_false_positive_rate,
            allow_too_few=allow_too_few,
            batch_size=batch_size,
            on_total=bar.start,
            on_batch=bar.advance_by,
        )
    finally:
        bar.close()
    for warning in result.warnings:
        echo_warning(warning)
    for line in change_lines(result.previous, result.calibration):
        click.echo(line)
    if dry_run:
        click.echo(f"dry run: {model_path} was not changed")
        return
    write_recalibrated(result)
    click.echo(
        f"wrote {model_path}; the {len(result.history)} earlier calibration(s) are in its metadata "
        f"(`inspector info {model_path}`)"
    )


def change_lines(previous: Calibration, calibration: Calibration) -> list[str]:
    """What a recalibration changes, old -> new, in raw values."""
    data = calibration.data
    how = calibration.method
    if calibration.target is not None:
        how += f", target false-reject rate {calibration.target:g}"
    if data.get("promised_false_reject_rate") is not None:
        how += f", promised {data['promised_false_reject_rate']:.3g}"
    counts = f"{data.get('normal', 0)} good" + (
        f" and {data['anomalous']} defective" if data.get("anomalous") else ""
    )

    def pair(low: float, high: float) -> str:
        return f"[{low:.6g}, {high:.6g}]"

    return [
        f"calibrated on {counts} images ({how})",
        f"  image threshold  {previous.image_threshold:.6g} -> {calibration.image_threshold:.6g} (raw)",
        f"  pixel threshold  {previous.pixel_threshold:.6g} -> {calibration.pixel_threshold:.6g} (raw)",
        f"  image range      {pair(previous.image_min, previous.image_max)} -> "
        f"{pair(calibration.image_min, calibration.image_max)}",
        f"  pixel range      {pair(previous.pixel_min, previous.pixel_max)} -> "
        f"{pair(calibration.pixel_min, calibration.pixel_max)}",
    ]
