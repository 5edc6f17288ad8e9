"""`inspector watch`: live inspection of a camera, video file, stream or folder, without torch."""

from __future__ import annotations

from pathlib import Path

import click

from inspector.commands.options import (
    echo_warning,
    max_megapixels_option,
    megapixels_to_pixels,
    model_option,
    pixel_threshold_option,
    runtime_device_option,
    save_option,
    strict_device_option,
    threads_option,
    threshold_option,
)


@click.command("watch", short_help="Score a camera, video, stream or folder live, with heatmaps.")
@model_option
@click.option(
    "--camera",
    type=click.IntRange(min=0),
    default=None,
    help="Camera index (0 is the first camera) [default when no --source is given].",
)
@click.option(
    "--source",
    default=None,
    help="Video file, RTSP/HTTP stream URL, folder of images or camera index, instead of --camera.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/watch"),
    show_default=True,
    help="Folder for events.jsonl (appended to across runs), overlays/ and summary.json.",
)
@click.option("--headless", is_flag=True, help="No window: only write events, overlays and the recording.")
@click.option(
    "--record",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also record every overlay frame to this video (.mp4 or .avi), at the source's frame rate "
    "(measured over the first second for a camera or stream).",
)
@click.option(
    "--realtime",
    is_flag=True,
    help="Play a video file or folder at its own frame rate like a camera, dropping frames the "
    "model cannot keep up with (live sources always do).",
)
@click.option(
    "--fps",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Frame rate of a folder source played with --realtime [default: 25].",
)
@click.option(
    "--events",
    type=click.Choice(("anomalous", "all")),
    default="anomalous",
    show_default=True,
    help="Which scored frames are written to events.jsonl.",
)
@save_option("anomalous")
@click.option(
    "--max-frames", type=click.IntRange(min=1), default=None, help="Stop after scoring this many frames."
)
@max_megapixels_option
@threshold_option
@pixel_threshold_option
@runtime_device_option
@strict_device_option
@threads_option
def watch_command(
    model_path: str,
    camera: int | None,
    source: str | None,
    out_dir: Path,
    headless: bool,
    record: Path | None,
    realtime: bool,
    fps: float | None,
    events: str,
    save: str,
    max_frames: int | None,
    max_megapixels: float,
    threshold: float,
    pixel_threshold: float,
    device: str,
    strict_device: bool,
    threads: int,
) -> None:
    """Score the newest frame of a camera, video, stream or folder and show the heatmap overlay with FPS
    and latency. Press q (or Ctrl-C, or send SIGTERM) to stop; everything is flushed on the way out.

    A camera or stream that drops is reopened with backoff; the end of a video file ends the run.

    \b
    Example:
      inspector watch --model model.onnx --source line.mp4 --headless --record annotated.mp4
    """
    from inspector.runtime.scoring import Scorer
    from inspector.runtime.session import load_model, threads_per_worker
    from inspector.runtime.sources import open_source
    from inspector.runtime.watch import watch

    if camera is not None and source is not None:
        raise click.UsageError("give either --camera or --source, not both")
    spec = source if source is not None else (camera if camera is not None else 0)
    frame_source = open_source(spec, fps=fps, max_pixels=megapixels_to_pixels(max_megapixels))
    _, threads = threads_per_worker(1, threads)  # one model call at a time: --threads 0 gives it every core
    scorer = Scorer(
        load_model(model_path, device, strict_device, threads, warn=echo_warning), threshold, pixel_threshold
    )
    summary = watch(
        frame_source,
        scorer,
        out_dir,
        headless=headless,
        record=record,
        realtime=realtime,
        events=events,
        save=save,
        max_frames=max_frames,
        notify=_note,
    )
    latency = summary["latency_ms"]
    click.echo(
        f"{summary['frames_scored']} frames scored ({summary['frames_dropped']} dropped to stay current), "
        f"{summary['anomalous']} anomalous, {summary['fps'] or 0:.1f} FPS, latency median "
        f"{latency['median']:.0f} ms (p95 {latency['p95']:.0f} ms); {summary['ended_by']}"
    )
    click.echo(
        f"events: {out_dir / 'events.jsonl'}; summary: {out_dir / 'summary.json'}"
        + (f"; overlays: {out_dir / 'overlays'}" if save != "none" else "")
        + (f"; recording: {record} at {summary['recording_fps']:g} fps" if summary["recording_fps"] else "")
    )


def _note(message: str) -> None:
    click.echo(f"watch: {message}", err=True)
