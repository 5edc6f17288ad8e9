"""The model-artifact contract between export and runtime (see docs/architecture.md, section 4).

``model.onnx`` carries a JSON object under the ONNX ``metadata_props`` key ``inspector``. This module
defines that object, builds it from a calibration and validates it when a model is loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
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
#: The smallest and largest model input side (pixels) a config or a model file may declare.
INPUT_SIDE_LIMITS = (8, 8192)
#: The preprocessing of ``inspector.preprocess.to_model_input``, stated for clients in other languages.
PREPROCESSING = {
    "decode": "8-bit RGB; 16-bit scaled by 255/65535; gray and palette expanded; alpha dropped; EXIF orientation applied",
    "resize": "whole image to input_size (no crop); OpenCV INTER_AREA when either side shrinks, else INTER_LINEAR",
    "color": "RGB order; with channels 1, ITU-R BT.601 luma of the resized RGB",
    "range": "float32, value / 255, in [0, 1]",
    "layout": "NCHW",
    "anomaly_map": "at input_size; resized to the original image bilinearly",
}
#: The arithmetic an exported graph may use inside (metadata ``precision``).
PRECISIONS = ("fp32", "fp16", "int8")
#: What a user who has no model file yet should do.
MODEL_HINT = "export one with `inspector export RUN_DIR --onnx`"

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
    #: Defect regions smaller than this (in the model map's pixels, at ``input_size``) are not reported.
    min_region_area: int = 0
    #: What a client outside Python must do to an image before the graph (docs/architecture.md, section 4).
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(PREPROCESSING))
    extra: dict[str, Any] = field(default_factory=dict)
    #: Tiled scoring (``inspector.tiling.Tiling.to_dict``; ``export --tile``); None: the whole image at
    #: ``input_size``. Models written before the field existed load as None.
    tiling: dict[str, Any] | None = None
    #: The graph's arithmetic inside (its input and outputs are float32 at every precision): fp32, fp16
    #: or int8 (``export --precision fp16`` / ``--quantize int8``). Older models load as fp32.
    precision: str = "fp32"
    #: Parameters and multiply-accumulates per image of the float32 graph, counted by a tool at export
    #: (``{"parameters", "macs", "gflops", "input_shape", "counted_by"}``); None when not counted.
    cost: dict[str, Any] | None = None

    @classmethod
    def from_calibration(
        cls,
        detector: str,
        input_size: tuple[int, int] | list[int],
        channels: int,
        calibration: Calibration | None,
        trained_on: dict[str, Any],
        min_region_area: int = 0,
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
                min_region_area=int(min_region_area),
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
            min_region_area=int(min_region_area),
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
        if values["tiling"] is None:
            del values["tiling"]
        if values["cost"] is None:
            del values["cost"]
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None, source: str = "model") -> ModelMetadata:
        """Parse and validate the ``inspector`` metadata of a model file.

        Raises:
            ArtifactError: no metadata, not JSON, a schema this version cannot read, or a field missing, of
                the wrong type or out of range (a NaN threshold, an input size given as text...).
        """
        if not text:
            raise ArtifactError(
                f"{source}: no '{METADATA_KEY}' metadata in the model; export it with `inspector export --onnx`"
            )
        try:
            values = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as error:
            raise ArtifactError(f"{source}: '{METADATA_KEY}' metadata is not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ArtifactError(f"{source}: '{METADATA_KEY}' metadata must be a JSON object")
        schema = values.get("schema")
        if schema != SCHEMA_VERSION or isinstance(schema, bool):
            raise ArtifactError(
                f"{source}: metadata schema {schema!r} is not supported by inspector {__version__} "
                f"(reads schema {SCHEMA_VERSION}); re-export the model with this version"
            )
        missing = [name for name in _REQUIRED if name not in values]
        if missing:
            raise ArtifactError(f"{source}: metadata lacks {', '.join(missing)}; re-export the model")
        _check_fields(values, source)
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)


def check_input_shape(shape: Sequence[object], metadata: ModelMetadata, source: str = "model") -> None:
    """The graph's ``image`` input ``[N, C, H, W]`` must agree with the metadata where its sizes are fixed.

    Raises:
        ArtifactError: another rank, or a fixed channel count, height or width other than the metadata's.
    """
    expected = [metadata.channels, *metadata.input_size]
    fixed = list(shape[1:])
    if len(shape) != 4 or any(isinstance(dim, int) and dim != want for dim, want in zip(fixed, expected)):
        dims = ", ".join(str(dim) if isinstance(dim, int) else "?" for dim in shape)
        raise ArtifactError(
            f"{source}: the graph's input '{INPUT_NAME}' is [{dims}] but its metadata says "
            f"[N, {expected[0]}, {expected[1]}, {expected[2]}]; re-export the model"
        )


def _check_fields(values: dict[str, Any], source: str) -> None:
    """Each metadata field's type and range, so a broken file fails at load with the field's name."""

    def fail(name: str, wanted: str) -> None:
        shown = json.dumps(values[name])
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ArtifactError(
            f"{source}: metadata field '{name}' must be {wanted}, got {shown}; re-export the model"
        )

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    def pair(value: Any) -> bool:
        return (
            isinstance(value, list)
            and len(value) == 2
            and all(number(v) for v in value)
            and value[0] <= value[1]
        )

    low, high = INPUT_SIDE_LIMITS
    if not isinstance(values["detector"], str) or not values["detector"]:
        fail("detector", "a non-empty string")
    size = values["input_size"]
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and low <= v <= high for v in size)
    ):
        fail("input_size", f"[height, width], integers from {low} to {high}")
    if values["channels"] not in (1, 3) or isinstance(values["channels"], bool):
        fail("channels", "1 or 3")
    for name in ("image_threshold", "pixel_threshold"):
        if not number(values[name]):
            fail(name, "a finite number")
    normalization = values["normalization"]
    if not (
        isinstance(normalization, dict) and all(pair(normalization.get(key)) for key in ("image", "pixel"))
    ):
        fail("normalization", '{"image": [min, max], "pixel": [min, max]} of finite numbers, min <= max')
    calibration = values["calibration"]
    if not (isinstance(calibration, dict) and isinstance(calibration.get("method"), str)):
        fail("calibration", 'an object with a "method"')
    if not (calibration.get("target") is None or number(calibration["target"])):
        fail("calibration", 'an object whose "target" is a finite number or null')
    if not isinstance(calibration.get("data", {}), (dict, type(None))):
        fail("calibration", 'an object whose "data" is an object')
    for name in ("trained_on",):
        if not isinstance(values[name], dict):
            fail(name, "an object")
    for name in ("created", "inspector_version"):
        if not isinstance(values[name], str):
            fail(name, "a string")
    if values.get("parity") is not None and not isinstance(values["parity"], dict):
        fail("parity", "an object or null")
    if "extra" in values and not isinstance(values["extra"], dict):
        fail("extra", "an object")
    if "preprocessing" in values and not isinstance(values["preprocessing"], dict):
        fail("preprocessing", "an object")
    if values.get("precision", "fp32") not in PRECISIONS:
        fail("precision", f"one of {', '.join(PRECISIONS)}")
    cost = values.get("cost")
    if cost is not None and not (
        isinstance(cost, dict) and all(number(cost.get(key)) for key in ("parameters", "macs"))
    ):
        fail("cost", 'an object with "parameters" and "macs" numbers, or null')
    if values.get("tiling") is not None:
        from inspector.tiling import Tiling

        try:
            tiling = Tiling.from_dict(values["tiling"])
        except ValueError as error:
            raise ArtifactError(f"{source}: metadata field 'tiling' {error}; re-export the model") from None
        if list(tiling.tile) != values["input_size"]:
            fail("tiling", f"an object whose tile equals input_size {values['input_size']}")
    area = values.get("min_region_area", 0)
    if not (isinstance(area, int) and not isinstance(area, bool) and 0 <= area <= high * high):
        fail("min_region_area", f"an integer from 0 to {high * high}")
