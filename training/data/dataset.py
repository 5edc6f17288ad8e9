"""Torch dataset over :class:`Sample` lists, through the shared preprocessing of ``inspector.preprocess``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from inspector.labelled_data import fit_mask
from inspector.labelled_data import load_mask as load_mask_file
from inspector.preprocess import read_image, resize_image, to_model_input, to_uint8_rgb
from inspector.training.data.samples import Sample


def load_rgb(sample: Sample) -> np.ndarray:
    """The sample's image as RGB ``uint8`` ``[H, W, 3]``, from its file or its array."""
    if isinstance(sample.image, np.ndarray):
        return to_uint8_rgb(sample.image)
    return read_image(sample.image)


def load_mask(sample: Sample, image_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask at ``size`` as float32 ``[1, H, W]`` in {0, 1}.

    The rules (resized as a float and thresholded at 0.5; a mask whose size differs from its image's
    is an error that names the file) are :mod:`inspector.labelled_data`'s, shared with ``eval MODEL``.
    """
    if sample.mask is None:
        return np.zeros((1, *size), dtype=np.float32)
    if isinstance(sample.mask, np.ndarray):
        mask = fit_mask(sample.mask, image_shape, size, sample.name or "in-memory mask")
    else:
        mask = load_mask_file(Path(sample.mask), image_shape, size)
    return mask.astype(np.float32)[None, :, :]


class ImageDataset(Dataset):
    """Model-ready samples: ``image`` float32 ``[C, H, W]`` in [0, 1], ``label``, ``mask`` ``[1, H, W]``."""

    def __init__(self, samples: list[Sample], input_size: tuple[int, int], channels: int) -> None:
        self.samples = samples
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, index: int) -> np.ndarray:
        """The image at the input size, RGB ``uint8`` ``[H, W, 3]`` (what anomaly synthesis works on)."""
        return resize_image(load_rgb(self.samples[index]), self.input_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        rgb = load_rgb(sample)
        image = to_model_input(rgb, self.input_size, self.channels)
        mask = load_mask(sample, rgb.shape[:2], self.input_size)
        return {
            "image": torch.from_numpy(image),
            "label": int(sample.label),
            "mask": torch.from_numpy(mask),
            "index": index,
        }
