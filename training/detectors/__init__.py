"""Detectors: importing this package registers every detector module below."""

from inspector.training.detectors.base import (
    Component,
    Detector,
    build_detector,
    detector_names,
    get_detector_class,
    register,
)

__all__ = ["Component", "Detector", "build_detector", "detector_names", "get_detector_class", "register"]

# One import per detector module; each registers itself with @register.
from inspector.training.detectors import (
    advvae,  # noqa: F401
    alocc,  # noqa: F401
    bigan,  # noqa: F401
    draem,  # noqa: F401
    memvae,  # noqa: F401
    rdna,  # noqa: F401
)
