"""One `source` idea for live inspection: a camera index, a video file, an RTSP/HTTP stream or a folder.

:func:`open_source` turns what the user typed into a :class:`Source`; :class:`FrameReader` reads it on
its own thread. For live sources (and for files played in real time) the reader keeps only the newest
frame, so latency stays bounded when inference is slower than the camera; a dropped camera or stream is
reopened with backoff. Otherwise every frame is handed over and the end of the file ends the run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import ImageReadError, InspectorError
from inspector.io import display_path, is_image_name, list_images
from inspector.preprocess import DEFAULT_MAX_PIXELS, read_image, to_uint8_rgb

log = logging.getLogger("inspector.runtime")

# FFmpeg prints its own lines ("[tcp @ 0x...] Connection refused") straight to the process's stderr; a
# source that cannot be opened gets our one-line message instead. OpenCV reads this when it first uses
# FFmpeg; a user who sets either variable keeps FFmpeg's logging.
if not ({"OPENCV_FFMPEG_LOGLEVEL", "OPENCV_FFMPEG_DEBUG"} & set(os.environ)):
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET

STREAM_TIMEOUT_MS = 5000  # a stalled network stream is noticed (and reopened) after this long
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0


@dataclass
class Frame:
    """One frame as RGB ``uint8``, its number in the source (gaps are dropped frames) and read time;
    ``name`` is the image file's path (relative to the folder) for a folder source, else None."""

    image: np.ndarray
    index: int
    captured_at: float
    name: str | None = None


class Source:
    """Frames from somewhere. ``live`` sources (cameras, streams) are reopened when they drop."""

    name: str = ""
    live: bool = False
    fps: float | None = None
    #: The name of the frame :meth:`read` returned last (a folder source's file), else None.
    frame_name: str | None = None

    def open(self) -> None:
        """Open the source; raise :class:`InspectorError` naming it when that is impossible."""

    def read(self) -> np.ndarray | None:
        """The next frame as RGB ``uint8``, or None at the end of a file or when a live source drops."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device, file or connection."""


class CaptureSource(Source):
    """A camera index, a video file or a stream URL through ``cv2.VideoCapture``."""

    def __init__(self, target: int | str, live: bool):
        self.target = target
        self.live = live
        self.name = f"camera {target}" if isinstance(target, int) else str(target)
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        if isinstance(self.target, str) and "://" in self.target:
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
            ]
        else:
            params = []
        # OpenCV logs every backend it tries; a failure gets our one-line message instead.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            capture = cv2.VideoCapture(self.target, cv2.CAP_ANY, params)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not capture.isOpened():
            capture.release()
            what = "camera" if isinstance(self.target, int) else "video or stream"
            raise InspectorError(f"{self.name}: cannot open this {what}; check the index, path or URL")
        if isinstance(self.target, int):
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver's own queue would add stale frames
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else None
        self._capture = capture

    def read(self) -> np.ndarray | None:
        if self._capture is None:
            return None
        ok, frame = self._capture.read()
        if not ok or frame is None:
            return None
        return to_uint8_rgb(frame, bgr=True)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FolderSource(Source):
    """The images of a folder (or one image file) in name order, as frames; unreadable ones (corrupt, not
    regular files, more than ``max_pixels`` pixels) are skipped with a warning. ``keys`` name the files
    in results (paths relative to the folder; default: the paths as given)."""

    def __init__(
        self,
        paths: list[Path],
        name: str,
        fps: float | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        keys: list[str] | None = None,
    ):
        self.paths = paths
        self.keys = keys if keys is not None else [display_path(path) for path in paths]
        self.name = name
        self.fps = fps
        self.max_pixels = max_pixels
        self.skipped = 0
        self._next = 0

    def open(self) -> None:
        if not self.paths:
            raise InspectorError(f"{self.name}: no image files in this folder")
        self._next = 0

    def read(self) -> np.ndarray | None:
        while self._next < len(self.paths):
            path = self.paths[self._next]
            self._next += 1
            try:
                image = read_image(path, self.max_pixels)
                self.frame_name = self.keys[self._next - 1]
                return image
            except ImageReadError as error:
                reason = str(error)
            except Exception as error:  # noqa: BLE001 - no file, however broken, may end the source
                reason = f"{display_path(path)}: cannot be read ({type(error).__name__}: {error})"
            self.skipped += 1
            log.warning("skipped %s", reason)
        return None


def open_source(
    spec: str | int | os.PathLike[str],
    fps: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    recursive: bool = False,
) -> Source:
    """Build the source a user named: a camera index (``0``), a URL (``rtsp://…``, ``http://…``), a folder
    of images (its sub-folders too with ``recursive``), an image file or a video file. ``fps`` paces
    folders played in real time; images of a folder declaring more than ``max_pixels`` pixels are skipped
    undecoded.

    Raises:
        InspectorError: the spec names nothing that exists.
    """
    if isinstance(spec, int) or str(spec).strip().isdigit():
        return CaptureSource(int(spec), live=True)
    spec = os.fspath(spec)
    if "://" in spec:
        return CaptureSource(spec, live=True)
    path = Path(spec)
    if path.is_dir() or (path.is_file() and is_image_name(path.name)):
        listed = list_images(path, recursive)
        return FolderSource(
            [image for _, image in listed],
            name=display_path(path),
            fps=fps,
            max_pixels=max_pixels,
            keys=[key for key, _ in listed],
        )
    if path.is_file():
        return CaptureSource(str(path), live=False)
    raise InspectorError(f"{spec}: no such camera index, video file, image folder or stream URL")


class FrameReader:
    """Reads a source on a capture thread and hands frames to one consumer.

    With ``newest_only`` a slot holds just the newest frame (older ones are dropped and counted); otherwise
    the reader waits until the consumer took the previous frame, so none are lost. ``pace`` plays a file
    at its own frame rate, like a camera. Live sources that stop delivering are reopened with backoff.
    """

    def __init__(
        self,
        source: Source,
        newest_only: bool,
        pace: bool = False,
        notify: Callable[[str], None] | None = None,
    ):
        self.source = source
        self.newest_only = newest_only
        self.pace = pace
        self.notify = notify or log.warning
        self.frames_read = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.ended = False
        self._backoff = FIRST_BACKOFF_S
        self._slot: Frame | None = None
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> FrameReader:
        """Open the source (errors surface here, in the caller's thread) and start capturing."""
        self.source.open()
        self._thread.start()
        return self

    def next(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet taken; None when the source ended, the reader stopped, or on timeout."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._slot is not None or self.ended or self._stop.is_set(), timeout
            )
            frame, self._slot = self._slot, None
            self._changed.notify_all()
            return frame

    def stop(self, timeout: float = 2.0) -> None:
        """Stop capturing and release the source."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.source.close()  # a capture thread stuck in a blocking read keeps its handle (daemon thread)

    def _run(self) -> None:
        started = time.monotonic()
        fps = self.source.fps or 25.0
        try:
            while not self._stop.is_set():
                image = self.source.read()
                if image is None:
                    if self.source.live and self._reopen():
                        continue
                    break
                self._backoff = FIRST_BACKOFF_S  # frames flow again: the next drop starts from a short wait
                if self.pace:
                    due = started + self.frames_read / fps
                    self._stop.wait(max(0.0, due - time.monotonic()))
                self._hand_over(Frame(image, self.frames_read, time.monotonic(), self.source.frame_name))
                self.frames_read += 1
        except Exception as error:  # noqa: BLE001 - a crashed capture thread must end the run, not hang it
            self.notify(f"{self.source.name}: capture failed ({error}); stopping")
        finally:
            with self._changed:
                self.ended = True
                self._changed.notify_all()

    def _hand_over(self, frame: Frame) -> None:
        with self._changed:
            if self.newest_only:
                if self._slot is not None:
                    self.frames_dropped += 1
            else:
                self._changed.wait_for(lambda: self._slot is None or self._stop.is_set())
            self._slot = frame
            self._changed.notify_all()

    def _reopen(self) -> bool:
        """Reopen a dropped live source with doubling backoff until it works or the reader is stopped."""
        self.source.close()
        while not self._stop.is_set():
            self.notify(f"{self.source.name}: no frames; reopening in {self._backoff:.1f} s")
            if self._stop.wait(self._backoff):
                return False
            self._backoff = min(self._backoff * 2.0, MAX_BACKOFF_S)
            try:
                self.source.open()
            except InspectorError:
                continue
            self.reconnects += 1
            self.notify(f"{self.source.name}: reopened")
            return True
        return False
