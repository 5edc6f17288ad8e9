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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inspector.errors import InspectorError
from inspector.runtime.overlay import draw_badge, render_overlay, write_image
from inspector.runtime.scoring import Inspection, Scorer
from inspector.runtime.sources import FrameReader, Source

EVENTS_NAME = "events.jsonl"
SUMMARY_NAME = "summary.json"
WINDOW_TITLE = "inspector watch (q to quit)"
EVENT_CHOICES = ("anomalous", "all")
SAVE_CHOICES = ("anomalous", "none")
HUD_BGR = (50, 50, 50)
DEFAULT_RECORD_FPS = 15.0  # for sources that do not report a frame rate


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
) -> dict[str, Any]:
    """Inspect frames from ``source`` until it ends or the user stops; returns the run summary.

    Live sources (and files with ``realtime``) are read on a capture thread that keeps only the newest
    frame. ``events`` chooses which frames are logged to ``events.jsonl`` (anomalous or all), ``save``
    whether overlays of anomalous frames are written to ``anomalies/``; ``record`` writes every overlay to a
    video. ``stop`` lets a caller end the run from another thread.
    """
    if events not in EVENT_CHOICES or save not in SAVE_CHOICES:
        raise InspectorError(f"--events is one of {EVENT_CHOICES} and --save one of {SAVE_CHOICES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    notify = notify or (lambda message: None)
    stop = stop or threading.Event()
    if not headless:
        _open_window()
    reader = FrameReader(
        source, newest_only=source.live or realtime, pace=realtime and not source.live, notify=notify
    )
    stats = _Stats()
    recorder: _Recorder | None = _Recorder(Path(record), source) if record else None
    ended_by = "end of source"
    with _stop_on_signals(stop), open(out_dir / EVENTS_NAME, "a", encoding="utf-8") as event_log:
        reader.start()
        try:
            while True:
                if stop.is_set():
                    ended_by = "stopped"
                    break
                frame = reader.next(timeout=0.1)
                if frame is None:
                    if reader.ended:
                        break
                    continue
                inspection = scorer.score([frame.image])[0]
                overlay = render_overlay(frame.image, inspection)
                latency = time.monotonic() - frame.captured_at
                stats.add(latency, inspection.anomalous)
                draw_badge(overlay, f"{stats.fps:.1f} FPS  {latency * 1000:.0f} ms", HUD_BGR, row=1)
                if recorder:
                    recorder.write(overlay, frame.index)
                overlay_name = None
                if inspection.anomalous and save == "anomalous":
                    overlay_name = f"anomalies/frame_{frame.index:07d}.jpg"
                    write_image(out_dir / overlay_name, overlay)
                if events == "all" or inspection.anomalous:
                    event_log.write(
                        json.dumps(
                            _event(source, frame.index, inspection, latency, overlay_name), ensure_ascii=False
                        )
                        + "\n"
                    )
                    event_log.flush()
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
        finally:
            reader.stop()
            if recorder:
                recorder.close()
            if not headless:
                cv2.destroyAllWindows()
    summary = stats.summary(source, reader, ended_by, record)
    temporary = out_dir / (SUMMARY_NAME + ".tmp")
    temporary.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, out_dir / SUMMARY_NAME)
    return summary


def _event(
    source: Source, index: int, inspection: Inspection, latency: float, overlay: str | None
) -> dict[str, Any]:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "source": source.name,
        "frame": index,
        "label": inspection.label,
        "score": round(inspection.score, 6),
        "raw_score": float(inspection.raw_score),
        "regions": [region.to_dict() for region in inspection.defect_regions],
        "latency_ms": round(latency * 1000.0, 1),
        "overlay": overlay,
    }


class _Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.latencies: list[float] = []
        self.scored = 0
        self.anomalous = 0
        self.fps = 0.0
        self._last = self.started

    def add(self, latency: float, anomalous: bool) -> None:
        now = time.monotonic()
        rate = 1.0 / max(now - self._last, 1e-6)
        self.fps = rate if self.scored == 0 else 0.9 * self.fps + 0.1 * rate  # smoothed for a steady display
        self._last = now
        self.scored += 1
        self.anomalous += int(anomalous)
        self.latencies.append(latency)

    def summary(self, source: Source, reader: FrameReader, ended_by: str, record: Any) -> dict[str, Any]:
        seconds = time.monotonic() - self.started
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
            "recording": str(record) if record else None,
        }


class _Recorder:
    """Writes overlays to a video at the source's frame rate, opened on the first frame (at its size).

    A frame that follows dropped ones is repeated in their place, so the recording keeps the source's
    timeline instead of playing fast when the model is slower than the camera.
    """

    def __init__(self, path: Path, source: Source):
        self.path = path
        self.source = source
        self._writer: cv2.VideoWriter | None = None
        self._last_index = 0
        self._max_repeat = 1

    def write(self, image: np.ndarray, frame_index: int) -> None:
        if self._writer is None:
            fps = self.source.fps or DEFAULT_RECORD_FPS
            fourcc = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*fourcc), fps, (image.shape[1], image.shape[0])
            )
            if not self._writer.isOpened():
                raise InspectorError(f"{self.path}: cannot write a video here (use .mp4 or .avi)")
            self._last_index = frame_index - 1
            self._max_repeat = max(1, round(2 * fps))  # after a long stall, hold the frame 2 s at most
        for _ in range(min(max(1, frame_index - self._last_index), self._max_repeat)):
            self._writer.write(image)
        self._last_index = frame_index

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


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
