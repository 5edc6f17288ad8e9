"""Load an exported model into onnxruntime: validate its metadata and pick the execution provider."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inspector.artifact import (
    INPUT_NAME,
    MAP_OUTPUT,
    METADATA_KEY,
    MODEL_HINT,
    SCORE_OUTPUT,
    ModelMetadata,
    check_input_shape,
)
from inspector.calibration import Calibration
from inspector.errors import ArtifactError, InspectorError
from inspector.io import check_regular_file
from inspector.tiling import Tiling

log = logging.getLogger("inspector.runtime")

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class Provider:
    """An onnxruntime execution provider and the package a user installs to get it."""

    name: str
    package: str


PROVIDERS = {
    "cpu": Provider(CPU, "onnxruntime"),
    "cuda": Provider("CUDAExecutionProvider", "onnxruntime-gpu"),
    "tensorrt": Provider("TensorrtExecutionProvider", "onnxruntime-gpu with the TensorRT libraries"),
    "coreml": Provider(
        "CoreMLExecutionProvider", "onnxruntime on macOS (the Apple-silicon wheels), or onnxruntime-silicon"
    ),
    "directml": Provider("DmlExecutionProvider", "onnxruntime-directml (Windows)"),
    "openvino": Provider("OpenVINOExecutionProvider", "onnxruntime-openvino"),
}
# `auto` takes the first of these that this onnxruntime build offers.
AUTO_ORDER = ("cuda", "coreml", "directml", "openvino", "cpu")
# Providers that a requested one is stacked on, so that operators it cannot run still have a home.
_STACK = {
    "tensorrt": ("tensorrt", "cuda", "cpu"),
    "cuda": ("cuda", "cpu"),
    "coreml": ("coreml", "cpu"),
    "directml": ("directml", "cpu"),
    "openvino": ("openvino", "cpu"),
    "cpu": ("cpu",),
}
#: The distributions that install the ``onnxruntime`` module, one per provider family. They overwrite each
#: other's files, so exactly one may be installed (README, "Install groups").
ONNXRUNTIME_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-silicon",
    "onnxruntime-qnn",
    "onnxruntime-rocm",
    "onnxruntime-migraphx",
    "onnxruntime-training",
)


def choose_providers(
    device: str, available: Sequence[str], strict: bool = False
) -> tuple[list[str], str | None]:
    """The provider list for ``device`` given the ``available`` providers, and a warning if it fell back.

    ``auto`` prefers CUDA, then CoreML, then the CPU and never warns. A named device that this onnxruntime
    build lacks falls back to the CPU with a warning naming the package that provides it, or raises
    :class:`InspectorError` when ``strict``.

    Example:
        >>> choose_providers("cuda", ["CPUExecutionProvider"])[0]
        ['CPUExecutionProvider']
    """
    if device == "auto":
        chosen = next((name for name in AUTO_ORDER if PROVIDERS[name].name in available), "cpu")
        return _stack(chosen, available), None
    if device not in PROVIDERS:
        raise InspectorError(f"unknown device {device!r}; choose one of auto, {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[device]
    if wanted.name in available:
        return _stack(device, available), None
    message = (
        f"device '{device}' is not available in this onnxruntime build ({wanted.name} missing); "
        f"install {wanted.package} to use it"
    )
    if strict:
        raise InspectorError(message + " (or drop --strict-device to fall back to the CPU)")
    return [CPU], message + "; running on the CPU"


def onnxruntime_clash(installed: Sequence[str] | None = None, in_use: str | None = None) -> str | None:
    """A one-line warning when more than one onnxruntime distribution is installed, else None.

    ``onnxruntime`` and ``onnxruntime-gpu`` (or ``-directml``, ``-openvino``...) all install the one
    ``onnxruntime`` module; the files of whichever was installed last are the ones Python imports, so
    "install onnxruntime-gpu instead" leaves the CPU build in charge when ``onnxruntime`` came later (a
    reinstall or upgrade of ``inspector-vision`` brings it back). ``installed`` and ``in_use`` default to
    what ``importlib.metadata`` finds and the package name the imported build declares.
    """
    if installed is None:
        installed = installed_onnxruntime_distributions()
    if len(installed) < 2:
        return None
    if in_use is None:
        in_use = _onnxruntime_build_name()
    keep = in_use if in_use in installed and in_use != "onnxruntime" else None
    keep = keep or next((name for name in installed if name != "onnxruntime"), installed[0])
    names = " and ".join(installed) if len(installed) == 2 else ", ".join(installed)
    winner = f"{in_use}'s won" if in_use else "which won is unknown"
    return (
        f"{names} are {'both' if len(installed) == 2 else 'all'} installed and overwrite each other's files: "
        f"{winner} (providers: {', '.join(ort.get_available_providers())}); keep one: "
        f"pip uninstall -y {' '.join(installed)} && pip install {keep}"
    )


def installed_onnxruntime_distributions() -> list[str]:
    """The onnxruntime distributions installed in this environment (see :data:`ONNXRUNTIME_DISTRIBUTIONS`)."""
    installed = []
    for name in ONNXRUNTIME_DISTRIBUTIONS:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        installed.append(name)
    return installed


def _onnxruntime_build_name() -> str | None:
    """The distribution whose files make up the imported onnxruntime (its build says so), or None."""
    try:
        from onnxruntime.capi import build_and_package_info
    except ImportError:
        return None
    name = getattr(build_and_package_info, "package_name", None)
    return name.replace("_", "-").lower() if isinstance(name, str) else None


_clash_checked = False


def warn_onnxruntime_clash(warn: Callable[[str], None]) -> None:
    """Give :func:`onnxruntime_clash`'s warning once per process."""
    global _clash_checked
    if _clash_checked:
        return
    _clash_checked = True
    message = onnxruntime_clash()
    if message:
        warn(message)


def _stack(device: str, available: Sequence[str]) -> list[str]:
    return [PROVIDERS[name].name for name in _STACK[device] if PROVIDERS[name].name in available] or [CPU]


class ModelSession:
    """An exported model ready to run: onnxruntime session, validated metadata and its calibration.

    Example:
        >>> session = load_model("model.onnx")
        >>> raw_scores, raw_maps = session.run(prepare_batch(images, session.input_size, session.channels))
    """

    def __init__(self, path: Path, session: ort.InferenceSession, metadata: ModelMetadata, device: str):
        self.path = path
        self.session = session
        self.metadata = metadata
        self.device = device
        self.calibration: Calibration = metadata.to_calibration()
        self.providers: list[str] = session.get_providers()
        #: How the model scores a whole image in tiles (``export --tile``); None: the whole image at once.
        self.tiling: Tiling | None = Tiling.from_dict(metadata.tiling) if metadata.tiling else None

    @property
    def input_size(self) -> tuple[int, int]:
        """The graph's input (height, width): the whole image's size, or one tile's for a tiled model."""
        return int(self.metadata.input_size[0]), int(self.metadata.input_size[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """The (height, width) a whole image is resized to before scoring: the tiling's ``image_size``
        for a tiled model, else :attr:`input_size`. Anomaly maps come back at this size."""
        return self.tiling.image_size if self.tiling is not None else self.input_size

    @property
    def channels(self) -> int:
        return int(self.metadata.channels)

    @property
    def threads(self) -> int:
        """onnxruntime's intra-op threads per call (0: onnxruntime's own choice)."""
        return int(self.session.get_session_options().intra_op_num_threads)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores ``[N]`` and raw anomaly maps ``[N, h, w]`` for a model-input batch ``[N, C, H, W]``."""
        scores, maps = self.session.run([SCORE_OUTPUT, MAP_OUTPUT], {INPUT_NAME: batch})
        scores = np.asarray(scores, dtype=np.float32).reshape(len(batch))
        maps = np.asarray(maps, dtype=np.float32)
        return scores, maps.reshape(len(batch), maps.shape[-2], maps.shape[-1])


def _warn(message: str) -> None:
    log.warning(message)


def load_model(
    path: str | Path,
    device: str = "auto",
    strict_device: bool = False,
    threads: int = 0,
    warn: Callable[[str], None] | None = None,
) -> ModelSession:
    """Open ``model.onnx`` for inference on ``device`` (auto, cpu, cuda, coreml, tensorrt, openvino).

    ``threads`` sets onnxruntime's intra-op threads (0: one per physical core, see :func:`default_threads`). ``warn``
    receives the one-line fallback warning (default: the ``inspector.runtime`` logger).

    Raises:
        InspectorError: the file is missing, not a regular file or not an ONNX model, or the device is
            unavailable with ``strict_device``.
        ArtifactError: the model lacks the ``inspector`` metadata, has an unknown schema or a field out of
            range, or its inputs and outputs do not follow the artifact contract (and its metadata).
    """
    path = check_regular_file(path, "model file", MODEL_HINT)
    warn = warn or _warn
    warn_onnxruntime_clash(warn)
    providers, warning = choose_providers(device, ort.get_available_providers(), strict_device)
    if warning:
        warn(warning)
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads) if threads > 0 else default_threads()
    options.log_severity_level = 3  # onnxruntime's own provider-fallback chatter is replaced by ours
    # With spinning, idle inference threads busy-wait between batches and starve the threads that decode
    # the next images; without it, decode and inference overlap on small machines.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if providers[0] == PROVIDERS["directml"].name:
        # DirectML supports neither memory patterns nor parallel execution (onnxruntime's DirectML page).
        options.enable_mem_pattern = False
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # onnxruntime's provider notice; ours follows below
            session = ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)
    except Exception as error:  # noqa: BLE001 - onnxruntime's own exception types derive from Exception only
        raise InspectorError(f"{path}: not a loadable ONNX model ({str(error).splitlines()[0]})") from None
    metadata = ModelMetadata.from_json(
        session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), source=str(path)
    )
    _check_signature(session, metadata, path)
    requested = providers[0]
    if requested != CPU and requested not in session.get_providers():
        # The provider is in the build but could not start (missing CUDA libraries, no GPU, ...).
        message = f"{requested} is installed but could not start (GPU driver or libraries missing?)"
        if strict_device and device != "auto":
            raise InspectorError(message + "; check the driver and libraries or drop --strict-device")
        warn(message + "; running on the CPU")
    return ModelSession(path, session, metadata, device)


def default_threads() -> int:
    """One inference thread per physical core this process may use (0 on systems where that is unknown).

    Left at 0, onnxruntime picks the same count but also pins its threads to cores; a pinned thread cannot
    move off a core that a decode thread is using, and the whole operator waits for it. Giving the count
    explicitly leaves placement to the OS scheduler.
    """
    return physical_cores() if hasattr(os, "sched_getaffinity") else 0  # macOS, Windows: onnxruntime's own


def physical_cores() -> int:
    """Physical cores this process may use (logical CPUs where the topology is unknown); at least 1."""
    if not hasattr(os, "sched_getaffinity"):
        return os.cpu_count() or 1
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(("cpu", str(cpu)))  # no topology information: count logical CPUs
    return max(1, len(cores))


def threads_per_worker(workers: int, threads: int = 0) -> tuple[int, int]:
    """(workers, inference threads per model call) for a throughput run: 0 picks one worker per core and
    divides the cores among the workers, so the model calls that run side by side never oversubscribe."""
    workers = workers or physical_cores()
    return workers, threads or max(1, physical_cores() // workers)


def _check_signature(session: ort.InferenceSession, metadata: ModelMetadata, path: Path) -> None:
    inputs = {item.name: item for item in session.get_inputs()}
    outputs = {item.name for item in session.get_outputs()}
    if INPUT_NAME not in inputs:
        raise ArtifactError(f"{path}: the model has no input named '{INPUT_NAME}' (has {', '.join(inputs)})")
    missing = [name for name in (SCORE_OUTPUT, MAP_OUTPUT) if name not in outputs]
    if missing:
        raise ArtifactError(f"{path}: the model lacks the output(s) {', '.join(missing)}; re-export it")
    if inputs[INPUT_NAME].type != "tensor(float)":
        raise ArtifactError(
            f"{path}: the model input '{INPUT_NAME}' is {inputs[INPUT_NAME].type}, not float32"
        )
    check_input_shape(inputs[INPUT_NAME].shape, metadata, str(path))
