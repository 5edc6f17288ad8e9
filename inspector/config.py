"""Training configuration: plain dataclasses with defaults, read from YAML, overridden from the CLI.

A run directory keeps the fully resolved configuration as ``config.yaml``; loading it back gives the
same object.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from inspector.errors import InspectorError

DATA_FORMATS = ("synthetic", "mvtec", "folder", "mnist", "fashion-mnist", "cifar10", "class-folder")


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
    #: Defect regions smaller than this many pixels (at the image's own resolution, per 256x256 of it)
    #: are not reported; stored in the model metadata for the runtime.
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
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig`, rejecting unknown keys with a message that names them."""
    values = dict(values or {})
    nested = {"data": DataConfig, "calibration": CalibrationConfig}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in TrainConfig.__dataclass_fields__:
            raise InspectorError(
                f"{source}: unknown key '{key}'; known: {', '.join(TrainConfig.__dataclass_fields__)}"
            )
        if key in nested:
            kwargs[key] = _nested(nested[key], value, f"{source}: {key}")
        else:
            kwargs[key] = value
    config = TrainConfig(**kwargs)
    config.input_size = [int(v) for v in config.input_size]
    if config.data.format not in DATA_FORMATS:
        raise InspectorError(
            f"{source}: data.format '{config.data.format}' unknown; use one of {', '.join(DATA_FORMATS)}"
        )
    if config.channels not in (1, 3):
        raise InspectorError(f"{source}: channels must be 1 or 3, got {config.channels}")
    return config


def _nested(kind: type, value: Any, source: str) -> Any:
    if value is None:
        return kind()
    if not isinstance(value, dict):
        raise InspectorError(f"{source} must be a mapping")
    unknown = set(value) - set(kind.__dataclass_fields__)
    if unknown:
        raise InspectorError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    return kind(**value)


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
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise InspectorError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(values, dict):
            raise InspectorError(f"{path}: the top level must be a mapping")
        source = str(path)
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
