"""One scored image or frame, and the one record that reports and event logs are written from.

A :class:`Result` wraps the :class:`~inspector.runtime.scoring.Inspection` of one image with where it came
from (a file of a folder, a frame of a camera, video, stream or folder) and what was written for it
(overlay, mask). ``inspector inspect`` writes :meth:`Result.to_record` to ``report.jsonl``/``report.csv``,
``inspector watch`` to ``events.jsonl``, and the Python API (:mod:`inspector.api`) returns results.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from inspector.runtime.scoring import DefectRegion, Inspection, Scorer
from inspector.runtime.sources import Frame

STATUS_OK = "ok"
STATUS_UNREADABLE = "unreadable"


@dataclass
class Result:
    """The verdict on one image or frame, where it came from, and what was written for it.

    ``inspection`` is None when the image could not be read (``error`` says why). Every context field is
    optional: ``path`` (the file, relative to the inspected folder), ``source`` and ``frame`` (a watched
    source and the frame's number in it; gaps are frames dropped to stay current), ``time`` (when it was
    scored, UTC ISO 8601), ``seconds`` (this image's processing time), ``latency`` (capture to verdict, in
    seconds), ``overlay`` and ``mask`` (files written, relative to the output folder). ``image`` is the
    decoded RGB image, kept for :meth:`plot` and :meth:`save` (None once a pipeline released it).
    """

    inspection: Inspection | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    path: str | None = None
    source: str | None = None
    frame: int | None = None
    time: str | None = None
    seconds: float | None = None
    latency: float | None = None
    overlay: str | None = None
    mask: str | None = None
    error: str | None = None

    # --- the verdict ---------------------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        """True when the image was read and scored."""
        return self.inspection is not None

    @property
    def status(self) -> str:
        return STATUS_OK if self.ok else STATUS_UNREADABLE

    @property
    def score(self) -> float | None:
        """The normalised image score in [0, 1]; the calibrated threshold is 0.5."""
        return None if self.inspection is None else self.inspection.score

    @property
    def raw_score(self) -> float | None:
        """The score as the model computed it (compare it with the metadata's raw ``image_threshold``)."""
        return None if self.inspection is None else self.inspection.raw_score

    @property
    def anomalous(self) -> bool:
        """The verdict: the normalised score above the image threshold (False for an unreadable image)."""
        return self.inspection is not None and self.inspection.anomalous

    @property
    def verdict(self) -> str | None:
        """``"anomalous"``, ``"normal"``, or None for an unreadable image."""
        return None if self.inspection is None else self.inspection.label

    label = verdict

    @property
    def anomaly_map(self) -> np.ndarray | None:
        """The normalised anomaly map at the model's resolution, float32 ``[h, w]`` in [0, 1]."""
        return None if self.inspection is None else self.inspection.anomaly_map

    @property
    def regions(self) -> list[DefectRegion]:
        """Defect regions of an anomalous image in original pixels, largest first (none on a normal one)."""
        return [] if self.inspection is None else self.inspection.defect_regions

    @property
    def width(self) -> int | None:
        return None if self.inspection is None else self.inspection.image_size[1]

    @property
    def height(self) -> int | None:
        return None if self.inspection is None else self.inspection.image_size[0]

    def full_anomaly_map(self) -> np.ndarray:
        """The normalised anomaly map laid onto the original image, float32 ``[H, W]``."""
        return self._scored().full_anomaly_map()

    def defect_mask(self) -> np.ndarray:
        """Defect pixels of the original image, bool ``[H, W]``."""
        return self._scored().defect_mask()

    # --- pictures --------------------------------------------------------------------------------------

    def plot(self) -> np.ndarray:
        """The heatmap overlay on the original image as a BGR ``uint8`` array (for ``cv2.imshow``/``imwrite``)."""
        from inspector.runtime.overlay import render_overlay

        if self.image is None:
            raise ValueError("this result does not hold its image any more; score the image again to draw it")
        return render_overlay(self.image, self._scored())

    def save(self, path: str | Path) -> Path:
        """Write :meth:`plot` to ``path`` (``.jpg`` or ``.png``); returns the path."""
        from inspector.runtime.overlay import write_image

        write_image(path, self.plot())
        return Path(path)

    # --- the record -------------------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The result as plain JSON values: one line of ``report.jsonl`` (``inspect``) or ``events.jsonl``
        (``watch``).

        Always present: ``status`` (ok, unreadable), ``label`` (anomalous, normal, or null), ``score``
        (normalised), ``raw_score``, ``width``, ``height``, ``regions`` (x, y, width, height, area, peak in
        original pixels), ``overlay``, ``mask``, ``error``. Present when known: ``time``, ``source``,
        ``frame``, ``path``, ``time_ms`` (processing time), ``latency_ms`` (capture to verdict).
        """
        record: dict[str, Any] = {}
        context = (("time", self.time), ("source", self.source), ("frame", self.frame), ("path", self.path))
        record.update((key, value) for key, value in context if value is not None)
        record.update(
            status=self.status,
            label=self.verdict,
            score=None if self.score is None else round(self.score, 6),
            raw_score=None if self.raw_score is None else float(self.raw_score),
            width=self.width,
            height=self.height,
            regions=[region.to_dict() for region in self.regions],
        )
        if self.seconds is not None:
            record["time_ms"] = round(self.seconds * 1000.0, 2)
        if self.latency is not None:
            record["latency_ms"] = round(self.latency * 1000.0, 1)
        record.update(overlay=self.overlay, mask=self.mask, error=self.error)
        return record

    def _scored(self) -> Inspection:
        if self.inspection is None:
            raise ValueError(f"{self.path or 'this image'} was not scored: {self.error}")
        return self.inspection


def now_utc() -> str:
    """The current time as ``Result.time`` writes it: UTC, ISO 8601, milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def score_frame(scorer: Scorer, frame: Frame, source_name: str) -> Result:
    """Score one frame of a source: what ``inspector watch`` and :meth:`inspector.api.Model.stream` both do."""
    inspection = scorer.score([frame.image])[0]
    return Result(
        inspection,
        image=frame.image,
        path=frame.name,
        source=source_name,
        frame=frame.index,
        time=now_utc(),
        latency=time.monotonic() - frame.captured_at,
    )
