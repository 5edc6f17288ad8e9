"""Which torch device a run uses: ``auto`` picks the fastest one present."""

from __future__ import annotations

import torch

from inspector.errors import InspectorError

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for ``name``: ``auto`` prefers CUDA, then Apple's MPS, then the CPU.

    Raises:
        InspectorError: an unknown name, or a requested device that this machine does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    name = (name or "auto").lower()
    if name not in DEVICE_NAMES:
        raise InspectorError(f"unknown device '{name}'; use one of {', '.join(DEVICE_NAMES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InspectorError(
            "device 'cuda' requested but no CUDA GPU is usable here (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu or auto"
        )
    if name == "mps" and not _mps_available():
        raise InspectorError(
            "device 'mps' requested but Apple's MPS is not available here; use --device cpu or auto"
        )
    return torch.device(name)
