"""Checkpoints of a run: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds everything needed to resume training exactly (model, optimizers and schedulers, epoch,
step, best validation loss, RNG states) and to rebuild the detector without the training code's config
(detector name, input size, channels, options). Only tensors and plain containers are stored, so loading
runs no pickled code.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from inspector import __version__
from inspector.config import TrainConfig, config_from_dict, load_config
from inspector.errors import InspectorError
from inspector.training.detectors.base import Detector, build_detector

#: Bumped when a checkpoint written by an older version can no longer be read.
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAMES = ("best", "last")


def checkpoint_path(run_dir: str | Path, which: str) -> Path:
    """``RUN_DIR/checkpoints/<which>.pt`` for ``which`` in ``best`` / ``last``."""
    if which not in CHECKPOINT_NAMES:
        raise InspectorError(f"unknown checkpoint '{which}'; use one of {', '.join(CHECKPOINT_NAMES)}")
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file through ``write(handle)`` so that readers see the old file or the new one, never half.

    The data goes to a temporary file in the same folder, is flushed to disk, then renamed over ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` for a UTF-8 text file."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), where it is skipped.
    with suppress(OSError, AttributeError):
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# --- RNG states as tensors and plain containers -----------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The torch, numpy, python (and CUDA / MPS) random states, in a form ``weights_only`` loads."""
    numpy_state = np.random.get_state(legacy=False)
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    backend = getattr(torch.backends, "mps", None)
    if backend is not None and backend.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (device states only where that device is present)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    backend = getattr(torch.backends, "mps", None)
    if "mps" in state and backend is not None and backend.is_available():
        torch.mps.set_rng_state(state["mps"])


# --- save and load -------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    detector: Detector,
    config: TrainConfig,
    *,
    epoch: int,
    step: int,
    best_val_loss: float | None,
    val_loss: float | None = None,
    elapsed_seconds: float = 0.0,
    steps_per_epoch: int | None = None,
    total_steps: int | None = None,
) -> Path:
    """Write a resumable checkpoint of ``detector`` atomically.

    ``step`` counts the optimisation steps done; ``epoch`` the epoch that step belongs to (0-based).
    """
    state = {
        "format_version": FORMAT_VERSION,
        "inspector_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "detector": config.detector,
        "input_size": [int(v) for v in config.input_size],
        "channels": int(config.channels),
        "detector_options": dict(config.detector_options),
        "config": config.to_dict(),
        "model": {name: tensor.detach().cpu() for name, tensor in detector.state_dict().items()},
        "optimizer": detector.optimizer_state(),
        "epoch": int(epoch),
        "step": int(step),
        "best_val_loss": None if best_val_loss is None else float(best_val_loss),
        "val_loss": None if val_loss is None else float(val_loss),
        "elapsed_seconds": float(elapsed_seconds),
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "rng": rng_state(),
    }
    return atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (on the CPU) with ``weights_only=True``, checking its format version.

    Raises:
        InspectorError: no such file, not a checkpoint, or a format this version cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise InspectorError(f"no checkpoint at {path}; train the run with `inspector train` first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InspectorError(f"{path}: not a readable inspector checkpoint ({reason})") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise InspectorError(f"{path}: not an inspector checkpoint (no format_version or model state)")
    version = state["format_version"]
    if version != FORMAT_VERSION:
        raise InspectorError(
            f"{path}: checkpoint format {version} (written by inspector {state.get('inspector_version', '?')}) "
            f"cannot be read by inspector {__version__} (format {FORMAT_VERSION}); retrain or use the version "
            "that wrote it"
        )
    return state


def run_config(run_dir: str | Path, checkpoint: dict[str, Any] | None = None) -> TrainConfig:
    """The run's resolved configuration: ``config.yaml``, or the copy inside the checkpoint without it."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if path.is_file():
        return load_config(path)
    if checkpoint is not None and isinstance(checkpoint.get("config"), dict):
        return config_from_dict(checkpoint["config"], source=f"{run_dir} checkpoint")
    raise InspectorError(f"{path} not found; is {run_dir} a run directory written by `inspector train`?")


def build_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> Detector:
    """The detector a checkpoint describes, with its weights loaded (on the CPU, in eval mode)."""
    detector = build_detector(
        checkpoint["detector"],
        tuple(checkpoint["input_size"]),
        checkpoint["channels"],
        checkpoint["detector_options"],
    )
    try:
        detector.load_state_dict(checkpoint["model"])
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise InspectorError(
            f"{source}: the weights do not fit detector '{checkpoint['detector']}' with its options ({first})"
        ) from None
    return detector.eval()


def load_detector(run_dir: str | Path, which: str = "best") -> tuple[Detector, TrainConfig, dict[str, Any]]:
    """Rebuild a run's trained detector: ``(detector on the CPU in eval mode, config, checkpoint)``.

    The detector's kind, input size, channels and options come from the checkpoint (they must match the
    weights); everything else (data, calibration) from the run's ``config.yaml``.

    Raises:
        InspectorError: no run directory or checkpoint, an unknown detector, an unreadable or
            incompatible checkpoint.

    Example:
        >>> detector, config, checkpoint = load_detector("runs/rdna_cpu", which="best")
        >>> checkpoint["step"]
        2400
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InspectorError(f"{run_dir}: no such run directory; train one with `inspector train`")
    path = checkpoint_path(run_dir, which)
    if not path.is_file():
        other = "last" if which == "best" else "best"
        hint = (
            f"; {other}.pt exists: pass --checkpoint {other}"
            if checkpoint_path(run_dir, other).is_file()
            else "; train the run with `inspector train` first"
        )
        raise InspectorError(f"no checkpoint at {path}{hint}")
    checkpoint = load_checkpoint(path)
    config = run_config(run_dir, checkpoint)
    detector = build_from_checkpoint(checkpoint, source=str(path))
    # The checkpoint is the authority on what the weights are; keep the config in step with it.
    config.detector = checkpoint["detector"]
    config.input_size = list(checkpoint["input_size"])
    config.channels = int(checkpoint["channels"])
    config.detector_options = dict(checkpoint["detector_options"])
    return detector, config, checkpoint
