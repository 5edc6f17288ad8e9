"""The one normalisation of raw scores, shared by evaluation and the runtime."""

from __future__ import annotations

import numpy as np


def normalize(raw: np.ndarray | float, threshold: float, minimum: float, maximum: float) -> np.ndarray:
    """Map raw scores so that the calibrated threshold sits at 0.5, clipped to [0, 1].

    normalised = clip((raw - threshold) / (maximum - minimum) + 0.5, 0, 1). Works element-wise on image
    scores and on anomaly maps alike.

    Example:
        >>> float(normalize(2.0, threshold=2.0, minimum=0.0, maximum=4.0))
        0.5
    """
    span = float(maximum) - float(minimum)
    if not np.isfinite(span) or span <= 0.0:
        span = 1.0  # a degenerate calibration (all scores equal) still puts the threshold at 0.5
    values = (np.asarray(raw, dtype=np.float32) - np.float32(threshold)) / np.float32(span) + np.float32(0.5)
    return np.clip(values, 0.0, 1.0)
