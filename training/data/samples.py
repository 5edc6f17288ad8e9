"""What every dataset reader produces: lists of samples split into train / validation / test."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One image with its label and (optional) ground-truth mask.

    ``image``: a file path, or an in-memory RGB/gray ``uint8`` array (one-class sets read from idx or
    pickle files). ``mask``: a mask file, a boolean ``[H, W]`` array, or None (no pixel ground truth; an
    anomalous sample without a mask is scored at image level only).
    """

    image: Path | np.ndarray
    label: int = 0
    mask: Path | np.ndarray | None = None
    name: str = ""
    defect: str = "good"


@dataclass
class Splits:
    """Train (normals only), validation (from the training normals, never the test set) and test.

    ``description`` says what the data is, e.g. ``{"dataset": "mvtec", "category": "bottle"}``; it is
    stored in the run and in the exported model's ``trained_on``.
    """

    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def has_pixel_ground_truth(self) -> bool:
        return any(sample.mask is not None for sample in self.test if sample.label == 1)


def split_validation(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of the training normals (at least one image) as the validation split."""
    if len(samples) < 2:
        return samples, []
    order = np.random.default_rng(seed).permutation(len(samples))
    count = min(len(samples) - 1, max(1, round(fraction * len(samples))))
    val_index = set(order[:count].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_index]
    val = [s for i, s in enumerate(samples) if i in val_index]
    return train, val
