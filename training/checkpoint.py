"""Checkpoints of a run: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds everything needed to resume training exactly (model, optimizers and schedulers, epoch,
step, best validation loss, RNG states) and to rebuild the detector without the training code's config
(detector name, input size, channels, options). Only tensors and plain containers are stored, so loading
runs no pickled code.
"""

from __future__ import annotations

import pickle
import random
import re
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from inspector import __version__
from inspector.config import TrainConfig, config_from_dict, load_config
from inspector.errors import InspectorError
from inspector.io import atomic_write, atomic_write_text, display_path  # noqa: F401 - the trainer writes through these
from inspector.training.detectors.base import Detector, build_detector
from inspector.training.detectors.renamed import upgrade_options

#: Bumped when a checkpoint written by an older version can no longer be read.
FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_NAMES = ("best", "last")
#: What every checkpoint holds, and the type each entry must have.
_STRUCTURE: dict[str, tuple[type, ...]] = {
    "detector": (str,),
    "input_size": (list, tuple),
    "channels": (int,),
    "detector_options": (dict,),
    "config": (dict,),
    "model": (dict,),
    "optimizer": (dict,),
    "epoch": (int,),
    "step": (int,),
    "best_val_loss": (float, int, type(None)),
    "elapsed_seconds": (float, int),
    "rng": (dict,),
}


def checkpoint_path(run_dir: str | Path, which: str) -> Path:
    """``RUN_DIR/checkpoints/<which>.pt`` for ``which`` in ``best`` / ``last``."""
    if which not in CHECKPOINT_NAMES:
        raise InspectorError(f"unknown checkpoint '{which}'; use one of {', '.join(CHECKPOINT_NAMES)}")
    return Path(run_dir) / CHECKPOINT_DIR / f"{which}.pt"


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
    return save_state(path, state)


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically; a failed write (a full disk) is the ``OSError`` that
    names the file, not the ``RuntimeError`` torch's zip writer turns it into."""

    def write(handle: IO[bytes]) -> None:
        recorder = _WriteErrors(handle)
        try:
            torch.save(state, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise

    return atomic_write(path, write)


class _WriteErrors:
    """A binary file that remembers the first error of its writes."""

    def __init__(self, handle: IO[bytes]):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.handle.flush()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint (on the CPU) with ``weights_only=True``, checking its format version and structure.

    Raises:
        InspectorError: no such file, not a checkpoint, a file holding pickled code (refused), a format this
            version cannot read, or an entry missing or of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise InspectorError(f"no checkpoint at {path}; train the run with `inspector train` first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says it all
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message advises loading with weights_only=False, which a user must never do: say it ourselves.
        code = re.search(r"GLOBAL ([\w.]+)", str(error))
        if code:
            raise InspectorError(
                f"{display_path(path)}: refused: it holds pickled Python code ({code.group(1)}), not only tensors "
                "and plain values, and loading it could run that code; use a checkpoint written by `inspector train`"
            ) from None
        raise InspectorError(
            f"{display_path(path)}: not a readable inspector checkpoint ({_torch_reason(error)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise InspectorError(
            f"{display_path(path)}: not a readable inspector checkpoint ({_first_line(error)})"
        ) from None
    check_checkpoint(state, display_path(path))
    # Options saved under names an older version used still build the detector (weights are unchanged).
    state["detector_options"] = upgrade_options(state["detector"], state["detector_options"])
    return state


def _torch_reason(error: Exception) -> str:
    """The line of a torch loading error that says what is wrong, without torch's advice."""
    advice = ("weights_only", "weights only", "torch.load", "file an issue", "trusted source")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not any(word in line.lower() for word in advice)]
    return useful[0] if useful else "not a file of tensors and plain values"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def check_checkpoint(state: Any, source: str = "checkpoint") -> None:
    """A loaded checkpoint's format version and structure: every entry present with its type.

    Raises:
        InspectorError: not a checkpoint, a format this version cannot read, or an entry missing or of
            the wrong type (a damaged file, or one not written by ``inspector train``).
    """
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise InspectorError(f"{source}: not an inspector checkpoint (no format_version or model state)")
    version = state["format_version"]
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise InspectorError(
            f"{source}: checkpoint format {version!r} (written by inspector {state.get('inspector_version', '?')}) "
            f"cannot be read by inspector {__version__} (format {FORMAT_VERSION}); retrain or use the version "
            "that wrote it"
        )
    missing = [key for key in _STRUCTURE if key not in state]
    if missing:
        raise InspectorError(
            f"{source}: damaged or not written by `inspector train`: it lacks {', '.join(missing)}"
        )
    for key, kinds in _STRUCTURE.items():
        if not isinstance(state[key], kinds) or (isinstance(state[key], bool) and bool not in kinds):
            raise InspectorError(
                f"{source}: damaged: '{key}' is {type(state[key]).__name__}, expected "
                f"{' or '.join(kind.__name__ for kind in kinds)}"
            )
    size = state["input_size"]
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise InspectorError(f"{source}: damaged: input_size {list(size)!r} is not [height, width]")
    if state["channels"] not in (1, 3):
        raise InspectorError(f"{source}: damaged: channels {state['channels']!r} is not 1 or 3")
    if not all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in state["model"].items()
    ):
        raise InspectorError(f"{source}: damaged: 'model' must map parameter names to tensors")
    rng = state["rng"]
    if not all(
        isinstance(rng.get(key), kind)
        for key, kind in (("torch", torch.Tensor), ("numpy", dict), ("python", dict))
    ):
        raise InspectorError(f"{source}: damaged: 'rng' lacks the torch, numpy or python random state")


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
