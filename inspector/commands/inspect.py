"""`inspector inspect FOLDER`: score every image of a folder with an exported model, without torch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from inspector.commands.options import (
    batch_size_option,
    echo_warning,
    max_megapixels_option,
    megapixels_to_pixels,
    model_option,
    pixel_threshold_option,
    progress_option,
    runtime_device_option,
    save_option,
    strict_device_option,
    threads_option,
    threshold_option,
    workers_option,
)
from inspector.exit_codes import EXIT_ANOMALY, EXIT_INTERRUPTED


@click.command("inspect", short_help="Score a folder of images: reports, heatmaps, regions.")
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@model_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for report.csv, report.jsonl, summary.json, report.html and overlays "
    "[default: runs/inspect/<FOLDER name>].",
)
@click.option("--recursive", "-r", is_flag=True, help="Also inspect images in sub-folders.")
@save_option("all")
@click.option("--masks", "save_masks", is_flag=True, help="Also write the plain defect masks to OUT/masks/.")
@click.option(
    "--resume", is_flag=True, help="Continue an interrupted run: skip images already in the report."
)
@click.option("--force", is_flag=True, help="Start over, replacing a report already in --out.")
@threshold_option
@pixel_threshold_option
@runtime_device_option
@strict_device_option
@threads_option
@batch_size_option
@workers_option
@max_megapixels_option
@click.option(
    "--fail-on-anomaly",
    is_flag=True,
    help="Exit with code 1 when any image is anomalous (for scripts and CI gates).",
)
@progress_option
def inspect_command(
    folder: Path,
    model_path: str,
    out_dir: Path | None,
    recursive: bool,
    save: str,
    save_masks: bool,
    resume: bool,
    force: bool,
    threshold: float,
    pixel_threshold: float,
    device: str,
    strict_device: bool,
    threads: int,
    batch_size: int,
    workers: int,
    max_megapixels: float,
    fail_on_anomaly: bool,
    no_progress: bool,
) -> None:
    """Score every image in FOLDER (or one image file): report.csv and report.jsonl with normalised and raw
    scores, labels and defect regions, a heatmap overlay per image in OUT/overlays/ (named after the image:
    photos/part_01.png -> overlays/part_01.jpg), summary.json, and report.html: the results at a glance
    (counts per folder, score histogram, every flagged image with its overlay, the slowest images), one
    file readable offline.

    Unreadable files (corrupt, not regular files, too many pixels) are listed in the report with the
    reason and the run goes on; the run's own output is never read as input, and one run at a time writes
    into --out. Ctrl-C keeps every finished image; run the same command with --resume to finish.

    \b
    Example:
      inspector inspect photos/ --model model.onnx --save anomalous --fail-on-anomaly
    """
    from inspector.runtime.folder import inspect_folder
    from inspector.runtime.scoring import Scorer
    from inspector.runtime.session import load_model, threads_per_worker

    workers, threads = threads_per_worker(workers, threads)
    scorer = Scorer(
        load_model(model_path, device, strict_device, threads, warn=echo_warning), threshold, pixel_threshold
    )
    out_dir = out_dir or Path("runs") / "inspect" / (folder.resolve().stem or "images")
    bar = ProgressBar(no_progress)
    try:
        summary = inspect_folder(
            folder,
            scorer,
            out_dir,
            recursive=recursive,
            save=save,
            save_masks=save_masks,
            resume=resume,
            force=force,
            batch_size=batch_size,
            workers=workers,
            max_pixels=megapixels_to_pixels(max_megapixels),
            on_total=bar.start,
            on_record=bar.advance,
        )
    except KeyboardInterrupt:
        bar.close()
        click.echo(
            f"interrupted: finished images are in {out_dir / 'report.csv'}; "
            "run the same command with --resume to finish",
            err=True,
        )
        click.get_current_context().exit(EXIT_INTERRUPTED)
    finally:
        bar.close()
    run = summary["this_run"]
    rate = f" ({run['images_per_second']:.1f} images/s)" if run["images_per_second"] else ""
    click.echo(
        f"{summary['scored']} scored, {summary['anomalous']} anomalous, {summary['unreadable']} unreadable"
        + (f" ({summary['resumed']} from the earlier run)" if summary["resumed"] else "")
        + f"; this run: {run['images']} images in {run['seconds']:.1f} s{rate}"
    )
    click.echo(f"report: {out_dir / 'report.html'} (and report.csv, report.jsonl, summary.json)")
    if save != "none":
        click.echo(f"overlays: {out_dir / 'overlays'}")
    if fail_on_anomaly and summary["anomalous"]:
        click.get_current_context().exit(EXIT_ANOMALY)


class ProgressBar:
    """A click progress bar on stderr that opens once the number of images to score is known (also used
    by ``calibrate`` and ``eval MODEL``)."""

    def __init__(self, quiet: bool, label: str = "inspecting"):
        self.quiet = quiet
        self.label = label
        self._bar = None

    def start(self, total: int) -> None:
        if not self.quiet and total:
            self._bar = click.progressbar(
                length=total, label=self.label, file=sys.stderr, show_pos=True, show_eta=True
            )
            self._bar.__enter__()

    def advance(self, _record: dict) -> None:
        self.advance_by(1)

    def advance_by(self, count: int) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
