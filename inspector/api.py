"""The Python API for programs that embed the runtime: load an exported model, score images, iterate over
a camera, video, stream or folder. Torch-free (numpy, OpenCV, onnxruntime), like ``inspect`` and ``watch``.

Example:
    >>> from inspector import load_model
    >>> model = load_model("model.onnx")                    # device="auto", threshold=0.5 (as calibrated)
    >>> result = model.score("part.png")                     # a path, an RGB array, or a list of them
    >>> result.anomalous, result.score, result.raw_score, result.regions
    >>> for result in model.stream(0):                       # camera 0; or "line.mp4", "rtsp://...", "photos/"
    ...     if result.anomalous:
    ...         result.save(f"defect_{result.frame}.jpg")   # the heatmap overlay

Everything here is a thin layer over :mod:`inspector.runtime`: :func:`inspector.runtime.session.load_model`,
:class:`~inspector.runtime.scoring.Scorer`, :func:`~inspector.runtime.sources.open_source` and
:class:`~inspector.runtime.sources.FrameReader`, the pieces ``inspector inspect`` and ``inspector watch``
run on, so a result here equals theirs for the same image and thresholds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inspector.errors import InspectorError
from inspector.normalization import CALIBRATED
from inspector.preprocess import DEFAULT_MAX_PIXELS, read_image, to_uint8_rgb

if TYPE_CHECKING:
    from inspector.runtime.result import Result
    from inspector.runtime.scoring import Scorer
    from inspector.runtime.session import ModelSession

#: What :meth:`Model.score` takes for one image: an image file's path, or an array ``[H, W]``,
#: ``[H, W, 3]`` or ``[H, W, 4]`` (RGB unless ``bgr=True``; uint8, uint16 or float in [0, 1]).
Image = str | os.PathLike | np.ndarray
DEFAULT_BATCH_SIZE = 8


def load_model(
    path: str | os.PathLike[str],
    *,
    device: str = "auto",
    threshold: float = CALIBRATED,
    pixel_threshold: float = CALIBRATED,
    threads: int = 0,
    strict_device: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Model:
    """Open an exported ``model.onnx`` for scoring; see :class:`Model` for the arguments.

    Raises:
        InspectorError: the file is missing or not an ONNX model, or ``device`` is unavailable with
            ``strict_device``; ``ArtifactError`` (a subclass) when its inspector metadata is missing or wrong.
    """
    return Model(
        path,
        device=device,
        threshold=threshold,
        pixel_threshold=pixel_threshold,
        threads=threads,
        strict_device=strict_device,
        warn=warn,
    )


class Model:
    """An exported model ready to score images and sources.

    ``device``: auto (CUDA, then CoreML, DirectML, OpenVINO, then the CPU, whichever this onnxruntime
    offers), cpu, cuda, tensorrt, coreml, directml or openvino; a device that is missing falls back to the
    CPU with a warning (``strict_device``: an error). ``threshold`` and ``pixel_threshold`` are normalised
    (0.5 = the calibration stored in the model; higher flags less) and can be changed later.
    ``threads``: onnxruntime threads per model call, 0 = one per physical core. ``warn`` receives
    one-line warnings (default: the ``inspector.runtime`` logger).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device: str = "auto",
        threshold: float = CALIBRATED,
        pixel_threshold: float = CALIBRATED,
        threads: int = 0,
        strict_device: bool = False,
        warn: Callable[[str], None] | None = None,
    ):
        from inspector.runtime.scoring import Scorer
        from inspector.runtime.session import load_model as open_session
        from inspector.runtime.session import threads_per_worker

        _, threads = threads_per_worker(1, threads)
        self._warn = warn
        self.scorer: Scorer = Scorer(
            open_session(path, device, strict_device, threads, warn=warn), threshold, pixel_threshold
        )

    # --- what the model is ---------------------------------------------------------------------------

    @property
    def session(self) -> ModelSession:
        """The onnxruntime session with the validated metadata and calibration."""
        return self.scorer.session

    @property
    def path(self) -> Path:
        return self.session.path

    @property
    def metadata(self) -> dict:
        """The model's ``inspector`` metadata as plain values (what ``inspector info --json`` shows)."""
        import json

        return json.loads(self.session.metadata.to_json())

    @property
    def input_size(self) -> tuple[int, int]:
        """The model's input (height, width); images of any size are resized to it, never cropped (a tiled
        model's input is one tile: see :attr:`tiling`)."""
        return self.session.input_size

    @property
    def tiling(self) -> dict | None:
        """How a tiled model (``inspector export --tile``) scores an image, else None: each image is
        resized whole to ``image_size`` (the scale the model was trained at), cut into ``tile``-sized
        tiles at most ``stride`` apart, and their maps stitched; maps, regions and overlays come from the
        stitched map, the score from it as the detector defines its score. Nothing to set: :meth:`score`,
        :meth:`stream` and :meth:`predict` do it."""
        tiling = self.session.tiling
        return tiling.to_dict() if tiling is not None else None

    @property
    def providers(self) -> list[str]:
        """The onnxruntime execution providers in use, first = preferred."""
        return list(self.session.providers)

    @property
    def threshold(self) -> float:
        """The normalised image threshold (0.5 = calibrated); set it to change sensitivity."""
        return self.scorer.image_threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        from inspector.runtime.scoring import check_threshold

        self.scorer.image_threshold = check_threshold(value, "threshold")

    @property
    def pixel_threshold(self) -> float:
        """The normalised pixel threshold (0.5 = calibrated): sets the defect mask and regions."""
        return self.scorer.pixel_threshold

    @pixel_threshold.setter
    def pixel_threshold(self, value: float) -> None:
        from inspector.runtime.scoring import check_threshold

        self.scorer.pixel_threshold = check_threshold(value, "pixel_threshold")

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r}, providers={self.providers}, threshold={self.threshold})"

    # --- scoring ---------------------------------------------------------------------------------------

    def score(
        self,
        images: Image | Sequence[Image],
        *,
        bgr: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_megapixels: float = DEFAULT_MAX_PIXELS / 1e6,
    ) -> Result | list[Result]:
        """Score one image (a :class:`~inspector.runtime.result.Result`) or several (a list, in order).

        An image is a file path or an array: ``[H, W]`` gray, ``[H, W, 3]`` RGB, ``[H, W, 4]`` RGBA, in
        uint8, uint16 or float in [0, 1]; ``bgr=True`` for arrays in OpenCV's BGR order (``cv2.imread``,
        ``VideoCapture.read``). A ``[N, H, W, C]`` array is N images. Several images run ``batch_size``
        per model call.

        Raises:
            ImageReadError: a file that is missing, not an image, or declares more than
                ``max_megapixels`` megapixels (checked before decoding).
        """
        from inspector.runtime.result import Result

        single = isinstance(images, (str, os.PathLike)) or (
            isinstance(images, np.ndarray) and images.ndim < 4
        )
        items = [images] if single else list(images)
        if batch_size < 1:
            raise InspectorError("batch_size must be at least 1")
        max_pixels = max(1, int(max_megapixels * 1e6))
        results: list[Result] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            decoded = [_as_rgb(item, bgr, max_pixels) for item in chunk]
            inspections = self.scorer.score(decoded)
            for item, image, inspection in zip(chunk, decoded, inspections):
                path = os.fspath(item) if isinstance(item, (str, os.PathLike)) else None
                results.append(Result(inspection, image=image, path=path))
        return results[0] if single else results

    def stream(
        self,
        source: str | int | os.PathLike[str],
        *,
        realtime: bool = False,
        fps: float | None = None,
        max_frames: int | None = None,
        recursive: bool = False,
        max_megapixels: float = DEFAULT_MAX_PIXELS / 1e6,
    ) -> Iterator[Result]:
        """Score a source frame by frame, as a generator of results (what ``inspector watch`` scores).

        ``source``: a camera index (``0``), a stream URL (``rtsp://``, ``http://``), a video file, a folder
        of images (``recursive`` for its sub-folders) or one image file. A camera or stream yields the
        newest frame each time (frames the caller is too slow for are dropped: see ``result.frame``) and
        is reopened with backoff when it drops; a file or folder yields every frame in order, or with
        ``realtime`` plays at its own frame rate (``fps`` for a folder) dropping frames like a camera.
        Unreadable images of a folder are skipped with a warning. Stops at the end of a file or folder,
        after ``max_frames``, or when the caller stops iterating (the source is released either way).

        Raises:
            InspectorError: the source does not exist or cannot be opened (raised on the first ``next``).
        """
        from inspector.runtime.result import score_frame
        from inspector.runtime.sources import FrameReader, open_source

        opened = open_source(
            source, fps=fps, max_pixels=max(1, int(max_megapixels * 1e6)), recursive=recursive
        )
        reader = FrameReader(
            opened,
            newest_only=opened.live or realtime,
            pace=realtime and not opened.live,
            notify=self._warn,
        ).start()
        scored = 0
        try:
            while max_frames is None or scored < max_frames:
                frame = reader.next(timeout=0.1)
                if frame is None:
                    if reader.ended:
                        return
                    continue
                scored += 1
                yield score_frame(self.scorer, frame, opened.name)
        finally:
            reader.stop()

    def predict(
        self, source: Image | Sequence[Image] | int, *, stream: bool = False, **options
    ) -> list[Result] | Iterator[Result]:
        """Score whatever ``source`` is, as ultralytics' ``model.predict(source, stream=...)`` does.

        An array or a list of images or paths goes through :meth:`score`; a camera index, URL, video,
        folder or image file through :meth:`stream`. ``stream=True`` returns a generator (results one at a
        time, for cameras and long videos), otherwise a list. ``options`` go to :meth:`score` or
        :meth:`stream`.

        Raises:
            InspectorError: ``stream=False`` on a camera or stream without ``max_frames`` (a list of a
                source that never ends would never be returned).
        """
        if isinstance(source, (np.ndarray, list, tuple)):
            results = self.score(source, **options)
            results = results if isinstance(results, list) else [results]
            return iter(results) if stream else results
        if not stream and _is_live(source) and options.get("max_frames") is None:
            raise InspectorError(
                f"{source}: a camera or stream never ends; use predict(source, stream=True) or max_frames=N"
            )
        generator = self.stream(source, **options)
        return generator if stream else list(generator)

    __call__ = predict


def _is_live(source: object) -> bool:
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    return isinstance(source, int) or text.strip().isdigit() or "://" in text


def _as_rgb(item: Image, bgr: bool, max_pixels: int) -> np.ndarray:
    if isinstance(item, (str, os.PathLike)):
        return read_image(item, max_pixels)
    array = np.asarray(item)
    if array.ndim not in (2, 3):
        raise InspectorError(f"an image array is [H, W] or [H, W, C], not shape {array.shape}")
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3 and not bgr:
        return np.ascontiguousarray(array)  # already what the scorer takes: no copy
    return to_uint8_rgb(array, bgr=bgr)
