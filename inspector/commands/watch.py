"""`inspector watch`: live inspection of a camera, video file, stream or folder, without torch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from inspector.commands.options import (
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
@click.option(
    "--publish",
    "publish",
    metavar="mqtt://HOST[:PORT]/TOPIC",
    multiple=True,
    help="Publish every event written to events.jsonl to this MQTT topic (QoS 1; mqtts:// for TLS; "
    "needs pip install 'inspector-vision[line]'). Events wait in OUT/event_queue.sqlite while the broker "
    "is down and are sent in order when it is back. Repeatable.",
)
@click.option(
    "--webhook",
    "webhooks",
    metavar="URL",
    multiple=True,
    help="POST every event as JSON to this http(s) URL (a 2xx answer acknowledges it; queued and retried "
    "in order otherwise). Repeatable.",
)
@click.option(
    "--exec",
    "commands",
    metavar="COMMAND",
    multiple=True,
    help="Run COMMAND for every event with the event JSON on standard input, in the --out folder "
    "(exit code 0 acknowledges it; queued and retried in order otherwise). Repeatable.",
)
@click.option(
    "--serve",
    metavar="[HOST:]PORT",
    default=None,
    help="Serve a live view (overlay stream, FPS, latency, counts, latest anomalies, sensitivity "
    "control, pause) at http://HOST:PORT/; HOST defaults to 127.0.0.1, any other address needs --token.",
)
@click.option(
    "--token",
    metavar="TOKEN",
    envvar="INSPECTOR_TOKEN",
    default=None,
    help="Access token of the --serve page (or INSPECTOR_TOKEN, which other users cannot see in the "
    "process list); generated and printed when --serve binds an address other than 127.0.0.1 "
    "(localhost, ::1) and none is given.",
)
@max_megapixels_option
@threshold_option
@pixel_threshold_option
@runtime_device_option
@strict_device_option
@threads_option
@progress_option
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
    publish: tuple[str, ...],
    webhooks: tuple[str, ...],
    commands: tuple[str, ...],
    serve: str | None,
    token: str | None,
    no_progress: bool,
) -> None:
    """Score the newest frame of a camera, video, stream or folder and show the heatmap overlay with FPS
    and latency. Press q (or Ctrl-C, or send SIGTERM) to stop; everything is flushed on the way out.

    A camera or stream that drops is reopened with backoff; the end of a video file ends the run.

    Headless, a progress line on stderr gives FPS, latency and counts as the run goes. Events can go to
    the line as they happen (--publish, --webhook, --exec), and --serve shows the run in a browser.

    \b
    Examples:
      inspector watch --model model.onnx --source line.mp4 --headless --record annotated.mp4
      inspector watch --model model.onnx --camera 0 --headless --serve 8080 \\
          --publish mqtt://broker:1883/line1/inspector --exec "python reject_gate.py"
    """
    from inspector.runtime.events import build_sinks
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
    sinks = build_sinks(publish, webhooks, commands, cwd=out_dir)
    live_view = None
    if serve is not None:
        from inspector.runtime.live_view import LiveView, describe, parse_bind

        host, port = parse_bind(serve)
        live_view = LiveView(out_dir, host, port, token=token, source_name=frame_source.name)
        click.echo(describe(live_view), err=True)
    progress = None if no_progress or not headless else _ProgressLine()
    try:
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
            notify=progress.note if progress is not None else _note,
            sinks=sinks,
            live_view=live_view,
            progress=progress,
        )
    finally:
        if live_view is not None:
            live_view.close()
        if progress is not None:
            progress.end()
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
    for key, delivered in summary.get("events_delivered", {}).items():
        waiting = summary["events_waiting"][key]
        click.echo(
            f"{key}: {delivered} events delivered"
            + (f", {waiting} wait in {out_dir / 'event_queue.sqlite'} for the next run" if waiting else "")
        )


def _note(message: str) -> None:
    click.echo(f"watch: {message}", err=True)


class _ProgressLine:
    """The headless progress line on stderr: rewritten in place on a terminal, one line per update else."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = False

    def __call__(self, snapshot: dict) -> None:
        latency = snapshot["latency_median_ms"]
        line = (
            f"watch: {snapshot['frames_scored']} frames ({snapshot['good']} good, {snapshot['anomalous']} "
            f"anomalous, {snapshot['frames_dropped']} dropped), {snapshot['fps']:.1f} FPS, latency "
            f"{latency if latency is not None else 0:.0f} ms"
        )
        if snapshot.get("events_waiting"):
            line += f", {snapshot['events_waiting']} events waiting for delivery"
        if self.tty:
            click.echo("\r\x1b[K" + line, err=True, nl=False)
        else:
            click.echo(line, err=True)
        self.shown = True

    def note(self, message: str) -> None:
        """A message (a reconnect, a destination down) on its own line, not glued to the progress line."""
        if self.tty and self.shown:
            click.echo("\r\x1b[K", err=True, nl=False)
        _note(message)

    def end(self) -> None:
        if self.tty and self.shown:
            click.echo("", err=True)
