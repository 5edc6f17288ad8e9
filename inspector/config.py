"""Training configuration: plain dataclasses with defaults, read from YAML, overridden from the CLI.

A run directory keeps the fully resolved configuration as ``config.yaml``; loading it back gives the
same object.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from inspector.artifact import INPUT_SIDE_LIMITS
from inspector.calibration import CALIBRATION_METHODS
from inspector.errors import InspectorError
from inspector.io import atomic_write_text, display_path

DATA_FORMATS = ("synthetic", "mvtec", "folder", "mnist", "fashion-mnist", "cifar10", "class-folder")
#: A YAML file may expand to at most this many values once its aliases are followed (a 1 KB "billion
#: laughs" file expands to 10^9); real configs have a few dozen.
MAX_YAML_VALUES = 10_000
MAX_YAML_BYTES = 1_000_000


@dataclass
class DataConfig:
    """Where the images come from.

    ``format``: ``synthetic`` (the built-in generated MVTec-style set, made under ``root`` if missing),
    ``mvtec`` (``root/<category>/train/good`` ...), ``folder`` (``normal_dir``, optional ``abnormal_dir``,
    ``mask_dir``, ``normal_test_dir``), or a one-class set (``mnist``, ``fashion-mnist``, ``cifar10``,
    ``class-folder``) with ``normal_class``.
    """

    format: str = "synthetic"
    root: str | None = None
    category: str | None = None
    normal_dir: str | None = None
    abnormal_dir: str | None = None
    mask_dir: str | None = None
    normal_test_dir: str | None = None
    normal_class: int | None = None
    anomaly_source: str | None = None
    #: Share of synthetic anomalies drawn as thin curve segments (scratch- and crack-like) instead of
    #: DRAEM's Perlin blobs.
    line_anomaly_probability: float = 0.0
    #: Share of synthetic anomalies drawn as smooth shade and softness changes (stains, wear) instead of
    #: pasted texture.
    shade_anomaly_probability: float = 0.0
    val_fraction: float = 0.1
    train_limit: int | None = None
    test_limit: int | None = None
    workers: int = 2


@dataclass
class CalibrationConfig:
    """How thresholds are chosen: ``auto`` uses F1 when validation has anomalies, else ``quantile``."""

    method: str = "auto"
    false_reject_rate: float = 0.01
    pixel_false_positive_rate: float = 0.001
    #: Defect regions smaller than this many pixels of the model's anomaly map (at ``input_size``) are not
    #: reported; stored in the model metadata for the runtime.
    min_region_area: int = 16


@dataclass
class TrainConfig:
    """Everything a training run needs; ``detector_options`` go to the detector's constructor."""

    name: str = "run"
    detector: str = "rdna"
    detector_options: dict[str, Any] = field(default_factory=dict)
    input_size: list[int] = field(default_factory=lambda: [128, 128])
    channels: int = 3
    data: DataConfig = field(default_factory=DataConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    epochs: int = 10
    max_steps: int | None = None
    time_limit_minutes: float | None = None
    #: Train on random square crops of this side from images read at ``input_size`` (fully convolutional
    #: detectors); scoring always sees the whole ``input_size`` image. None: no crops.
    crop_size: int | None = None
    #: ``last.pt`` is written at least this often during training (Ctrl-C, SIGTERM and the end always
    #: write it too); ``checkpoint_every_steps`` adds a step cadence.
    checkpoint_every_seconds: float = 60.0
    checkpoint_every_steps: int | None = None
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    out: str = "runs"
    val_every_steps: int = 200

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig` with every key checked for its type and range.

    Raises:
        InspectorError: one line naming the file and the key: an unknown key, a value of the wrong type
            (``epochs: ten``) or out of range (``lr: -1``), a run name that is not one folder name.
    """
    values = dict(values or {})
    kwargs = _checked_fields(TrainConfig, values, source, prefix="")
    config = TrainConfig(**kwargs)
    _check_ranges(config, source)
    return config


def _checked_fields(kind: type, values: dict[str, Any], source: str, prefix: str) -> dict[str, Any]:
    """The values of dataclass ``kind``, each converted to and checked against its field's type."""
    hints = typing.get_type_hints(kind)
    unknown = [key for key in values if key not in hints]
    if unknown:
        raise InspectorError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; known: {', '.join(prefix + key for key in hints)}"
        )
    checked: dict[str, Any] = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if value is None:
                checked[key] = hint()
            elif not isinstance(value, dict):
                raise InspectorError(
                    f"{source}: {prefix}{key} must be a mapping of keys, got {_shown(value)}"
                )
            else:
                checked[key] = hint(**_checked_fields(hint, value, source, prefix=f"{prefix}{key}."))
        elif key == "name" and kind is TrainConfig:
            checked[key] = check_run_name(value, source)
        elif key == "input_size" and isinstance(value, int) and not isinstance(value, bool):
            checked[key] = [value, value]  # one side: a square, as --input-size 128
        else:
            checked[key] = _converted(value, hint, f"{prefix}{key}", source)
    return checked


def _converted(value: Any, hint: Any, key: str, source: str) -> Any:
    """``value`` as the type ``hint`` (int, float, str, bool, optional, list[...], dict[str, ...], Any)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _converted(value, inner[0], key, source)

    def fail(wanted: str) -> InspectorError:
        return InspectorError(f"{source}: {key} must be {wanted}, got {_shown(value)}")

    if hint is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            raise fail("a whole number")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                raise fail("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail("a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise fail("text")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail("a list")
        return [_converted(item, args[0], f"{key}[{index}]", source) for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(item, str) for item in value):
            raise fail("a mapping with text keys")
        return dict(value)
    raise fail(str(hint))  # a field type this checker does not know: a programming error, said plainly


def _check_ranges(config: TrainConfig, source: str) -> None:
    """Each key's range, by its dotted name."""
    low, high = INPUT_SIDE_LIMITS
    size = config.input_size
    smallest = min(size) if len(size) == 2 else high
    rules: dict[str, tuple[Callable[[Any], bool], str]] = {
        "input_size": (
            lambda v: len(v) == 2 and all(low <= side <= high for side in v),
            f"[height, width] with each side from {low} to {high}",
        ),
        "channels": (lambda v: v in (1, 3), "1 or 3"),
        "detector": (bool, "a detector name"),
        "epochs": (lambda v: v >= 1, "at least 1"),
        "max_steps": (lambda v: v is None or v >= 1, "at least 1 (or null: no limit)"),
        "time_limit_minutes": (lambda v: v is None or v > 0, "above 0 (or null: no limit)"),
        "crop_size": (
            lambda v: v is None or 8 <= v <= smallest,
            f"from 8 to the input size's smaller side ({smallest}), or null for no crops",
        ),
        "checkpoint_every_seconds": (lambda v: v > 0, "above 0"),
        "checkpoint_every_steps": (lambda v: v is None or v >= 1, "at least 1 (or null)"),
        "batch_size": (lambda v: v >= 1, "at least 1"),
        "lr": (lambda v: v > 0, "above 0"),
        "seed": (lambda v: 0 <= v < 2**32, "from 0 to 2^32 - 1"),
        "device": (bool, "a device name (auto, cpu, cuda, mps)"),
        "out": (bool, "a folder"),
        "val_every_steps": (lambda v: v >= 1, "at least 1"),
        "data.format": (lambda v: v in DATA_FORMATS, f"one of {', '.join(DATA_FORMATS)}"),
        "data.normal_class": (lambda v: v is None or v >= 0, "0 or more"),
        "data.val_fraction": (lambda v: 0 <= v < 1, "from 0 to below 1"),
        "data.train_limit": (lambda v: v is None or v >= 1, "at least 1 (or null: all)"),
        "data.test_limit": (lambda v: v is None or v >= 1, "at least 1 (or null: all)"),
        "data.workers": (lambda v: v >= 0, "0 or more"),
        "data.line_anomaly_probability": (lambda v: 0 <= v <= 1, "from 0 to 1"),
        "data.shade_anomaly_probability": (lambda v: 0 <= v <= 1, "from 0 to 1"),
        "calibration.method": (
            lambda v: v in CALIBRATION_METHODS,
            f"one of {', '.join(CALIBRATION_METHODS)}",
        ),
        "calibration.false_reject_rate": (lambda v: 0 < v < 1, "between 0 and 1"),
        "calibration.pixel_false_positive_rate": (lambda v: 0 < v < 1, "between 0 and 1"),
        "calibration.min_region_area": (lambda v: v >= 0, "0 or more"),
    }
    for key, (valid, wanted) in rules.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not valid(value):
            raise InspectorError(f"{source}: {key} must be {wanted}, got {_shown(value)}")


def check_run_name(name: Any, source: str = "config") -> str:
    """``name`` when it is one folder name: not empty, not ``.`` or ``..``, no ``/`` or ``\\``, no control
    characters; the run is written to ``OUT/NAME`` and nowhere else.

    Raises:
        InspectorError: naming the rule it breaks.
    """
    if not isinstance(name, str) or not name.strip():
        raise InspectorError(
            f"{source}: name (the run's folder name) must be non-empty text, got {_shown(name)}"
        )
    if name in (".", "..") or any(sep in name for sep in ("/", "\\")) or any(ord(c) < 32 for c in name):
        raise InspectorError(
            f"{source}: name {_shown(name)} must be one folder name (no '/', '\\', '.' or '..'); the run goes "
            "into OUT/NAME, and --out chooses OUT"
        )
    return name


def _shown(value: Any) -> str:
    text = "nothing (an empty value)" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def preset_names() -> list[str]:
    """The presets installed with inspector (``rdna_cpu``, ``draem_paper``, ...), sorted."""
    folder = resources.files("inspector.configs")
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of the installed preset ``name`` (``rdna_cpu`` or ``rdna_cpu.yaml``)."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if stem not in preset_names():
        raise InspectorError(f"no preset named '{name}'; presets: {', '.join(preset_names())}")
    return Path(str(resources.files("inspector.configs") / f"{stem}.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file's path: an existing file as given, else the installed preset of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.exists():
        raise InspectorError(f"config {path} is not a file")
    if path.parent == Path(".") and (path.suffix in ("", ".yaml")):
        return preset_path(path.name)
    raise InspectorError(f"config file {path} not found; presets: {', '.join(preset_names())}")


def read_yaml(path: str | Path) -> Any:
    """A YAML file's data (plain values only: tags that build objects are refused), with its size bounded:
    at most :data:`MAX_YAML_BYTES` bytes and :data:`MAX_YAML_VALUES` values once aliases are followed.

    Raises:
        InspectorError: unreadable, not valid YAML, too large, or aliases that expand too far or into
            themselves.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_YAML_BYTES + 1)
    except OSError as error:
        raise InspectorError(f"{display_path(path)}: cannot be read ({error.strerror or error})") from None
    if len(text) > MAX_YAML_BYTES:
        raise InspectorError(f"{display_path(path)}: larger than {MAX_YAML_BYTES // 1000} KB; not a config")
    try:
        data = yaml.safe_load(text.decode("utf-8"))
        size = _expanded_size(data, set(), {})
    except UnicodeDecodeError as error:
        raise InspectorError(f"{display_path(path)}: not UTF-8 text ({error.reason})") from None
    except yaml.YAMLError as error:
        raise InspectorError(f"{display_path(path)}: not valid YAML ({_one_line(error)})") from None
    except RecursionError:
        raise InspectorError(f"{display_path(path)}: nested too deeply to be a config") from None
    if size > MAX_YAML_VALUES:
        raise InspectorError(
            f"{display_path(path)}: expands to more than {MAX_YAML_VALUES} values through its aliases "
            "(&anchor / *alias); write the values out"
        )
    return data


def _expanded_size(value: Any, open_ids: set[int], sizes: dict[int, int]) -> int:
    """How many values ``value`` holds with every alias written out (shared objects counted each time)."""
    if not isinstance(value, (dict, list)):
        return 1
    key = id(value)
    if key in sizes:
        return sizes[key]
    if key in open_ids:
        return MAX_YAML_VALUES + 1  # an alias inside its own anchor: infinite
    open_ids.add(key)
    items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
    total = 1
    for item in items:
        total += _expanded_size(item, open_ids, sizes)
        if total > MAX_YAML_VALUES:
            break
    open_ids.discard(key)
    sizes[key] = total
    return total


def _one_line(error: Exception) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config or preset (or the defaults when ``path`` is None) and apply dotted ``overrides``.

    ``path`` is a YAML file or the name of an installed preset (``rdna_cpu``, see :func:`preset_names`).

    Example:
        >>> config = load_config("rdna_cpu", {"data.category": "wood"})
    """
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        values = read_yaml(path)
        if not isinstance(values, dict):
            raise InspectorError(f"{display_path(path)}: the top level must be a mapping")
        source = display_path(path)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        target = values
        *parents, leaf = dotted.split(".")
        for parent in parents:
            if not isinstance(target.get(parent), dict):
                target[parent] = {}
            target = target[parent]
        target[leaf] = value
    return config_from_dict(values, source)
