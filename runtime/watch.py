"""Live inspection: score the newest frame of a source, show or record the overlay, log anomalous frames.

The whole frame loop is :func:`watch`. ``q``/Esc in the window, Ctrl-C and SIGTERM all end it the same
way: the loop finishes its frame, then the events file, the recording and ``summary.json`` are closed and
flushed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.io import FolderLock, atomic_write_text, display_path, make_folder, os_error_text
from inspector.runtime.events import DRAIN_SECONDS, EventPublisher, Sink, frame_event
from inspector.runtime.overlay import (
    OVERLAY_SUFFIX,
    OVERLAYS_DIR,
    SAVE_CHOICES,
    draw_badge,
    free_name,
    render_overlay,
    wants_overlay,
    write_image,
)
from inspector.runtime.result import score_frame
from inspector.runtime.scoring import Scorer
from inspector.runtime.sources import FrameReader, Source

if TYPE_CHECKING:
    from inspector.runtime.live_view import LiveView

EVENTS_NAME = "events.jsonl"
SUMMARY_NAME = "summary.json"
WINDOW_TITLE = "inspector watch (q to quit)"
EVENT_CHOICES = ("anomalous", "all")
HUD_BGR = (50, 50, 50)
DEFAULT_RECORD_FPS = 15.0  # for sources that do not report a frame rate
# A live source's own frame rate is often wrong (FFmpeg says 25 for most MJPEG streams): the recording
# uses the rate measured over the first second (or this many frames, held until then).
MEASURE_SECONDS = 1.0
MEASURE_FRAMES = 30
FPS_TOLERANCE = 0.2  # a reported rate within 20 % of the measured one is taken as the exact nominal value
PROGRESS_SECONDS = 2.0  # how often the progress callback (the headless progress line) is called


def watch(
    source: Source,
    scorer: Scorer,
    out_dir: str | Path,
    *,
    headless: bool = False,
    record: str | Path | None = None,
    realtime: bool = False,
    events: str = "anomalous",
    save: str = "anomalous",
    max_frames: int | None = None,
    notify: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    sinks: list[Sink] | None = None,
    live_view: LiveView | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_seconds: float | None = None,
    drain_seconds: float = DRAIN_SECONDS,
) -> dict[str, Any]:
    """Inspect frames from ``source`` until it ends or the user stops; returns the run summary.

    Live sources (and files with ``realtime``) are read on a capture thread that keeps only the newest
    frame. ``events`` chooses which frames are logged to ``events.jsonl`` (anomalous or all), ``save``
    which overlays are written to ``overlays/`` (all, anomalous or none, as ``inspect --save``); ``record``
    writes every overlay to a video. ``stop`` lets a caller end the run from another thread.

    ``sinks`` (:func:`inspector.runtime.events.build_sinks`) receive every logged event through the on-disk
    queue ``OUT/event_queue.sqlite``, on their own threads; at the end they get up to ``drain_seconds`` to
    take what is queued. ``live_view`` (:class:`inspector.runtime.live_view.LiveView`) is served the
    frames and counts and may change the threshold or pause the run. ``progress`` is called about every
    ``progress_seconds`` (default :data:`PROGRESS_SECONDS`) with the counts so far (:meth:`_Stats.snapshot`).
    """
    if events not in EVENT_CHOICES:
        raise InspectorError(f"--events {events!r}: choose one of {', '.join(EVENT_CHOICES)}")
    if save not in SAVE_CHOICES:
        raise InspectorError(f"--save {save!r}: choose one of {', '.join(SAVE_CHOICES)}")
    out_dir = make_folder(out_dir)
    if record:
        _check_recording_path(Path(record))
    options = _Options(
        headless, record, realtime, events, save, max_frames, sinks or [], live_view, progress,
        PROGRESS_SECONDS if progress_seconds is None else progress_seconds, drain_seconds,
    )  # fmt: skip
    with FolderLock(out_dir):
        return _watch(source, scorer, out_dir, options, notify, stop)


@dataclass
class _Options:
    headless: bool
    record: str | Path | None
    realtime: bool
    events: str
    save: str
    max_frames: int | None
    sinks: list[Sink]
    live_view: LiveView | None
    progress: Callable[[dict[str, Any]], None] | None
    progress_seconds: float
    drain_seconds: float


def _watch(
    source: Source,
    scorer: Scorer,
    out_dir: Path,
    options: _Options,
    notify: Callable[[str], None] | None,
    stop: threading.Event | None,
) -> dict[str, Any]:
    notify = notify or (lambda message: None)
    stop = stop or threading.Event()
    headless, record, realtime, events, save, max_frames = (
        options.headless, options.record, options.realtime, options.events, options.save, options.max_frames
    )  # fmt: skip
    live_view = options.live_view
    events_path = out_dir / EVENTS_NAME
    try:
        event_log = open(events_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
    except OSError as error:
        raise InspectorError(f"cannot write {os_error_text(error)}") from None
    if not headless:
        _open_window()
    reader = FrameReader(
        source, newest_only=source.live or realtime, pace=realtime and not source.live, notify=notify
    )
    stats = _Stats()
    recorder: _Recorder | None = _Recorder(Path(record), source) if record else None
    ended_by = "end of source"
    failure: InspectorError | None = None
    publisher: EventPublisher | None = None
    delivery: dict[str, Any] | None = None
    next_progress = time.monotonic() + options.progress_seconds

    def log_event(event: dict[str, Any], publish: bool) -> None:
        if publish and publisher is not None:
            publisher.publish(event)  # queued on disk first: a crash right after still delivers it
        _append_line(event_log, events_path, json.dumps(event, ensure_ascii=False))

    def report_progress() -> None:
        snapshot = stats.snapshot(reader)
        snapshot["events_waiting"] = publisher.waiting() if publisher is not None else None
        options.progress(snapshot)

    with _stop_on_signals(stop), event_log:
        try:
            if options.sinks:
                publisher = EventPublisher(options.sinks, out_dir, notify).start()
            if live_view is not None:
                live_view.start(scorer.image_threshold)
            reader.start()
            while True:
                if stop.is_set():
                    ended_by = "stopped"
                    break
                if options.progress is not None and time.monotonic() >= next_progress:
                    next_progress = time.monotonic() + options.progress_seconds
                    report_progress()  # also while a camera is silent or the run paused: it is alive
                if live_view is not None:
                    for change in live_view.take_changes(scorer):
                        log_event(change, publish=False)
                    if live_view.paused:
                        time.sleep(0.05)
                        continue
                frame = reader.next(timeout=0.1)
                if frame is None:
                    if reader.ended:
                        break
                    continue
                result = score_frame(scorer, frame, source.name)
                overlay = render_overlay(frame.image, result.inspection)
                stats.add(result.latency, result.anomalous)
                draw_badge(overlay, f"{stats.fps:.1f} FPS  {result.latency * 1000:.0f} ms", HUD_BGR, row=1)
                if recorder:
                    recorder.write(overlay, frame.index, frame.captured_at)
                if wants_overlay(save, result.anomalous):
                    name = free_name(out_dir / OVERLAYS_DIR, f"frame_{frame.index:07d}", OVERLAY_SUFFIX)
                    result.overlay = f"{OVERLAYS_DIR}/{name}"
                    write_image(out_dir / result.overlay, overlay)
                if events == "all" or result.anomalous:
                    log_event(frame_event(result, scorer.image_threshold), publish=True)
                if live_view is not None:
                    live_view.show(overlay, result, stats.snapshot(reader))
                if not headless:
                    cv2.imshow(WINDOW_TITLE, overlay)
                    if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                        ended_by = "stopped"
                        break
                if max_frames and stats.scored >= max_frames:
                    ended_by = "max frames"
                    break
        except KeyboardInterrupt:
            ended_by = "stopped"
        except OSError as error:
            ended_by = "error"
            failure = InspectorError(
                f"cannot write {os_error_text(error)}; stopped after {stats.scored} frames, the events so far "
                f"are in {display_path(events_path)}"
            )
        finally:
            stats.finish()  # the run's time and FPS stop here, before the deliveries' last chance below
            reader.stop()
            if recorder:
                recorder.close()
            if not headless:
                cv2.destroyAllWindows()
            if publisher is not None:
                delivery = publisher.close(options.drain_seconds)
            if live_view is not None:
                live_view.close()
    summary = stats.summary(source, reader, ended_by, record, recorder)
    if delivery is not None:
        summary["events_delivered"] = delivery["delivered"]
        summary["events_waiting"] = delivery["waiting"]
    try:
        atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    except OSError as error:
        failure = failure or InspectorError(f"cannot write {os_error_text(error)}")
    if failure is not None:
        raise failure
    return summary


def _append_line(handle: Any, path: Path, line: str) -> None:
    try:
        handle.write(line + "\n")
        handle.flush()
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error


def _check_recording_path(path: Path) -> None:
    """Fail before the run starts when the recording cannot be written where the user asked."""
    try:
        make_folder(path.parent, "folder")
    except InspectorError as error:
        raise InspectorError(f"cannot write the recording {display_path(path)}: {error}") from None
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as error:
        raise InspectorError(f"cannot write the recording ({os_error_text(error, path)})") from None
    if not existed:
        path.unlink()


class _Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.latencies: list[float] = []
        self.scored = 0
        self.anomalous = 0
        self.fps = 0.0
        self._last = self.started
        self.finished: float | None = None

    def finish(self) -> None:
        self.finished = time.monotonic()

    def add(self, latency: float, anomalous: bool) -> None:
        now = time.monotonic()
        rate = 1.0 / max(now - self._last, 1e-6)
        self.fps = rate if self.scored == 0 else 0.9 * self.fps + 0.1 * rate  # smoothed for a steady display
        self._last = now
        self.scored += 1
        self.anomalous += int(anomalous)
        self.latencies.append(latency)

    def snapshot(self, reader: FrameReader) -> dict[str, Any]:
        """The counts so far, for the progress line and the live view: frames scored, anomalous, good and
        dropped, the smoothed FPS and the latency (last frame, and median of the last 100) in ms."""
        recent = self.latencies[-100:]
        return {
            "frames_scored": self.scored,
            "anomalous": self.anomalous,
            "good": self.scored - self.anomalous,
            "frames_dropped": reader.frames_dropped,
            "fps": round(self.fps, 2),
            "latency_ms": round(recent[-1] * 1000.0, 1) if recent else None,
            "latency_median_ms": round(float(np.median(recent)) * 1000.0, 1) if recent else None,
            "seconds": round(time.monotonic() - self.started, 1),
        }

    def summary(
        self, source: Source, reader: FrameReader, ended_by: str, record: Any, recorder: _Recorder | None
    ) -> dict[str, Any]:
        seconds = (self.finished or time.monotonic()) - self.started
        latencies = np.asarray(self.latencies) * 1000.0 if self.latencies else np.zeros(1)
        return {
            "source": source.name,
            "ended_by": ended_by,
            "frames_read": reader.frames_read,
            "frames_scored": self.scored,
            "frames_dropped": reader.frames_dropped,
            "anomalous": self.anomalous,
            "reconnects": reader.reconnects,
            "seconds": round(seconds, 3),
            "fps": round(self.scored / seconds, 2) if seconds > 0 else None,
            "latency_ms": {
                "median": round(float(np.median(latencies)), 1),
                "p95": round(float(np.percentile(latencies, 95)), 1),
                "max": round(float(latencies.max()), 1),
            },
            "recording": display_path(record) if record else None,
            "recording_fps": recorder.fps if recorder else None,
        }


def measured_fps(frames: list[tuple[int, float]]) -> float | None:
    """The source's frame rate from (frame index, capture time) pairs; None with fewer than two frames.

    Indexes count every frame the source delivered, dropped ones included, so the rate is the source's even
    when the model scores only some of them.
    """
    if len(frames) < 2:
        return None
    (first_index, first_time), (last_index, last_time) = frames[0], frames[-1]
    if last_time <= first_time or last_index <= first_index:
        return None
    return (last_index - first_index) / (last_time - first_time)


def recording_fps(reported: float | None, measured: float | None) -> float:
    """The frame rate to record at: the source's own when it agrees with the measured rate (within 20 %),
    the measured one when the source's is missing or wrong, else :data:`DEFAULT_RECORD_FPS`."""
    if measured is None or not np.isfinite(measured) or measured <= 0:
        return reported or DEFAULT_RECORD_FPS
    if reported and abs(reported - measured) <= FPS_TOLERANCE * measured:
        return reported
    return round(min(max(measured, 0.1), 1000.0), 2)


class _Recorder:
    """Writes overlays to a video at the source's frame rate, opened at the first frame's size.

    A frame that follows dropped ones is repeated in their place, so the recording keeps the source's
    timeline instead of playing fast when the model is slower than the camera. For a live source the first
    second of frames is held while its real frame rate is measured (see :func:`recording_fps`).
    """

    def __init__(self, path: Path, source: Source):
        self.path = path
        self.source = source
        self.fps: float | None = None
        self._writer: cv2.VideoWriter | None = None
        self._held: list[tuple[np.ndarray, int, float]] = []
        self._last_index = 0
        self._max_repeat = 1

    def write(self, image: np.ndarray, frame_index: int, captured_at: float = 0.0) -> None:
        if self._writer is not None:
            self._append(image, frame_index)
            return
        if not self.source.live:
            self._open(self.source.fps or DEFAULT_RECORD_FPS, image, frame_index)
            self._append(image, frame_index)
            return
        self._held.append((image, frame_index, captured_at))
        span = captured_at - self._held[0][2]
        if span >= MEASURE_SECONDS or len(self._held) >= MEASURE_FRAMES:
            self._flush_held()

    def close(self) -> None:
        if self._held:
            self._flush_held()
        if self._writer is not None:
            self._writer.release()

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        rate = measured_fps([(index, at) for _, index, at in held])
        self._open(recording_fps(self.source.fps, rate), held[0][0], held[0][1])
        for image, index, _ in held:
            self._append(image, index)

    def _open(self, fps: float, image: np.ndarray, frame_index: int) -> None:
        fourcc = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
        self._writer = cv2.VideoWriter(
            str(self.path), cv2.VideoWriter_fourcc(*fourcc), fps, (image.shape[1], image.shape[0])
        )
        if not self._writer.isOpened():
            raise InspectorError(f"{display_path(self.path)}: cannot write a video here (use .mp4 or .avi)")
        self.fps = fps
        self._last_index = frame_index - 1
        self._max_repeat = max(1, round(2 * fps))  # after a long stall, hold the frame 2 s at most

    def _append(self, image: np.ndarray, frame_index: int) -> None:
        assert self._writer is not None
        for _ in range(min(max(1, frame_index - self._last_index), self._max_repeat)):
            self._writer.write(image)
        self._last_index = frame_index


def _open_window() -> None:
    # Without a display, OpenCV's Qt/GTK backends abort the whole process instead of raising: check first.
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise InspectorError(
            "no display here (DISPLAY is not set); use --headless to write events and "
            "overlays without a window"
        )
    try:
        cv2.namedWindow(WINDOW_TITLE, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise InspectorError(
            "cannot open a window here (no display, or OpenCV built without GUI); use --headless"
        ) from None


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop`` so the loop ends between frames; a second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request_stop(signum: int, _frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
