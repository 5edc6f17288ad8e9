"""The one normalisation of raw scores and the one anomalous/normal decision, shared by evaluation, the
export's parity check and the runtime."""

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


#: A normalised score or map value at the calibrated threshold.
CALIBRATED = 0.5


def is_anomalous(normalised: np.ndarray | float, threshold: float = CALIBRATED) -> np.ndarray:
    """The anomalous/normal decision on normalised scores or maps: strictly above ``threshold``.

    A score equal to the calibrated threshold is normal: the quantile calibration's promise is about
    normal parts scoring *above* its threshold.
    """
    return np.asarray(normalised) > threshold
