"""The model-artifact contract between export and runtime (see DESIGN.md).

``model.onnx`` carries a JSON object under the ONNX ``metadata_props`` key ``inspector``. This module
defines that object, builds it from a calibration and validates it when a model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from inspector import __version__
from inspector.calibration import Calibration
from inspector.errors import ArtifactError

METADATA_KEY = "inspector"
SCHEMA_VERSION = 1
INPUT_NAME = "image"
SCORE_OUTPUT = "score"
MAP_OUTPUT = "anomaly_map"

_REQUIRED = (
    "schema",
    "detector",
    "input_size",
    "channels",
    "image_threshold",
    "pixel_threshold",
    "normalization",
    "calibration",
    "trained_on",
    "created",
    "inspector_version",
)


@dataclass
class ModelMetadata:
    """What travels inside ``model.onnx``: enough to preprocess, score, threshold and normalise.

    Thresholds and the normalisation range are raw values, as calibrated; ``normalization`` holds
    ``{"image": [min, max], "pixel": [min, max]}``; ``calibration`` holds the method, its target and the
    data it used (``{"method": "none"}`` for an uncalibrated export).
    """

    detector: str
    input_size: list[int]
    channels: int
    image_threshold: float
    pixel_threshold: float
    normalization: dict[str, list[float]]
    calibration: dict[str, Any]
    trained_on: dict[str, Any]
    schema: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    inspector_version: str = __version__
    parity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_calibration(
        cls,
        detector: str,
        input_size: tuple[int, int] | list[int],
        channels: int,
        calibration: Calibration | None,
        trained_on: dict[str, Any],
    ) -> ModelMetadata:
        """Build metadata from a run's calibration (``None``: uncalibrated, thresholds at 0.5 of [0, 1])."""
        if calibration is None:
            return cls(
                detector=detector,
                input_size=[int(v) for v in input_size],
                channels=int(channels),
                image_threshold=0.5,
                pixel_threshold=0.5,
                normalization={"image": [0.0, 1.0], "pixel": [0.0, 1.0]},
                calibration={"method": "none"},
                trained_on=trained_on,
            )
        return cls(
            detector=detector,
            input_size=[int(v) for v in input_size],
            channels=int(channels),
            image_threshold=float(calibration.image_threshold),
            pixel_threshold=float(calibration.pixel_threshold),
            normalization={
                "image": [float(calibration.image_min), float(calibration.image_max)],
                "pixel": [float(calibration.pixel_min), float(calibration.pixel_max)],
            },
            calibration={
                "method": calibration.method,
                "target": calibration.target,
                "data": calibration.data,
            },
            trained_on=trained_on,
        )

    def to_calibration(self) -> Calibration:
        """The thresholds and normalisation range as a :class:`Calibration` (for the shared normaliser)."""
        image_min, image_max = self.normalization["image"]
        pixel_min, pixel_max = self.normalization["pixel"]
        return Calibration(
            image_threshold=self.image_threshold,
            pixel_threshold=self.pixel_threshold,
            image_min=image_min,
            image_max=image_max,
            pixel_min=pixel_min,
            pixel_max=pixel_max,
            method=str(self.calibration.get("method", "none")),
            target=self.calibration.get("target"),
            data=dict(self.calibration.get("data") or {}),
        )

    def to_json(self) -> str:
        values = asdict(self)
        if values["parity"] is None:
            del values["parity"]
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None, source: str = "model") -> ModelMetadata:
        """Parse and validate the ``inspector`` metadata of a model file.

        Raises:
            ArtifactError: no metadata, not JSON, fields missing, or a schema this version cannot read.
        """
        if not text:
            raise ArtifactError(
                f"{source}: no '{METADATA_KEY}' metadata in the model; export it with `inspector export --onnx`"
            )
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ArtifactError(f"{source}: '{METADATA_KEY}' metadata is not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ArtifactError(f"{source}: '{METADATA_KEY}' metadata must be a JSON object")
        schema = values.get("schema")
        if schema != SCHEMA_VERSION:
            raise ArtifactError(
                f"{source}: metadata schema {schema!r} is not supported by inspector {__version__} "
                f"(reads schema {SCHEMA_VERSION}); re-export the model with this version"
            )
        missing = [name for name in _REQUIRED if name not in values]
        if missing:
            raise ArtifactError(f"{source}: metadata lacks {', '.join(missing)}; re-export the model")
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        metadata = cls(**known)
        if len(metadata.input_size) != 2 or metadata.channels not in (1, 3):
            raise ArtifactError(
                f"{source}: metadata input_size {metadata.input_size} / channels {metadata.channels} are invalid"
            )
        return metadata
