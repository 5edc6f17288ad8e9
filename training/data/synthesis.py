"""DRAEM/RDNA anomaly synthesis: paste augmented texture into normal images through Perlin-noise masks.

For each normal image ``x`` (rotated by U(-90, 90) degrees with probability ``rotate_probability``; the
rotated image is also the reconstruction target), half of the samples get a synthetic anomaly::

    A      = texture from the anomaly source, through 3 of DRAEM's 10 augmentations
    M      = Perlin mask (independent power-of-two scales per axis, rotated, thresholded)
    beta   ~ U(0, beta_max)
    x_aug  = x (1 - M) + (1 - beta) A M + beta x M

and the other half stay clean (zero mask). With ``shade_probability`` that share of the anomalies is a
smooth change of the surface instead of pasted texture (see :func:`shade_change`). With ``crop_size``
each item is a random square crop of the image (the anomaly drawn at the crop's size): fully
convolutional nets train on crops at the cost of the crop and score whole images. Every item draws from
its own generator seeded by ``(seed, epoch, index)``: data-loader workers never share a random stream,
and a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from inspector.preprocess import to_model_input
from inspector.training.data.anomaly_source import AnomalySource
from inspector.training.data.dataset import ImageDataset
from inspector.training.data.perlin import perlin_line_mask, perlin_mask, rotate

Augmenter = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: Memory for decoded training images per dataset copy (each data-loader worker holds its own).
IMAGE_CACHE_BYTES = 1 << 30


def _gamma_per_channel(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # albumentations' RandomGamma draws one gamma for all channels; DRAEM's draws one per channel.
    levels = np.arange(256, dtype=np.float32) / 255.0
    gammas = rng.uniform(0.5, 2.0, size=3)
    return np.stack(
        [cv2.LUT(image[:, :, c], np.round(255.0 * levels ** gammas[c]).astype(np.uint8)) for c in range(3)],
        axis=2,
    )


class _Seeded:
    """An albumentations transform drawing its randomness from the item's generator.

    A class rather than a closure so that the dataset pickles (spawn and forkserver workers need it).
    """

    def __init__(self, transform: A.BasicTransform) -> None:
        self.transform = transform

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.transform.set_random_seed(int(rng.integers(2**32)))
        return self.transform(image=image)["image"]


def draem_augmenters() -> list[Augmenter]:
    """DRAEM's ten texture augmentations (albumentations, plus a hand-written per-channel gamma)."""
    return [
        _gamma_per_channel,
        _Seeded(A.RandomBrightnessContrast(brightness_limit=(-30 / 255, 30 / 255), contrast_limit=0.2, p=1)),
        _Seeded(A.Sharpen(alpha=(0.0, 1.0), lightness=(0.75, 1.5), p=1)),
        # albumentations' hue unit is OpenCV's (2 degrees): +-35 is DRAEM's +-50 on a 0-255 hue scale.
        _Seeded(A.HueSaturationValue(hue_shift_limit=35, sat_shift_limit=50, val_shift_limit=0, p=1)),
        _Seeded(A.Solarize(threshold_range=(32 / 255, 128 / 255), p=1)),
        _Seeded(A.Posterize(num_bits=(1, 8), p=1)),
        _Seeded(A.InvertImg(p=1)),
        _Seeded(A.AutoContrast(p=1)),
        _Seeded(A.Equalize(p=1)),
        _Seeded(A.Affine(rotate=(-45, 45), border_mode=cv2.BORDER_REFLECT_101, p=1)),
    ]


class SyntheticAnomalyDataset(Dataset):
    """Training items with synthetic anomalies over the normal images of ``base``.

    Items: ``image`` ``[C, H, W]`` in [0, 1] (the normal image, possibly rotated: the reconstruction
    target), ``augmented`` ``[C, H, W]``, ``mask`` ``[1, H, W]`` in {0, 1}, ``has_anomaly`` (float
    scalar), ``label`` and ``index``. Call :meth:`set_epoch` before each epoch for fresh anomalies (with
    ``persistent_workers`` the workers keep the epoch they started with).
    """

    def __init__(
        self,
        base: ImageDataset,
        source: AnomalySource,
        seed: int,
        anomaly_probability: float = 0.5,
        rotate_probability: float = 0.3,
        beta_max: float = 0.8,
        crop_size: int | None = None,
        line_probability: float = 0.0,
        shade_probability: float = 0.0,
    ) -> None:
        self.base = base
        self.source = source
        self.seed = int(seed)
        self.anomaly_probability = anomaly_probability
        self.rotate_probability = rotate_probability
        self.beta_max = beta_max
        self.crop_size = crop_size
        self.line_probability = line_probability
        self.shade_probability = shade_probability
        self.epoch = 0
        # Decoded normal images at the input size, kept while they fit (decoding is most of an item's cost).
        self._images: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self.augmenters = draem_augmenters()

    def set_epoch(self, epoch: int) -> None:
        """Draw the anomalies of ``epoch`` (the same epoch and index always give the same item)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def augment_texture(self, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Three of the ten augmentations, chosen without replacement, applied in a random order."""
        for choice in rng.choice(len(self.augmenters), size=3, replace=False):
            texture = self.augmenters[int(choice)](texture, rng)
        return texture

    def paste_texture(
        self, image: np.ndarray, region: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """DRAEM's anomaly: an augmented source texture beta-blended into ``image`` inside ``region``."""
        size = image.shape[1:]
        texture = self.augment_texture(self.source.sample(rng, size), rng)
        # Blending in the model's channels equals blending in RGB then converting: luma is linear.
        anomaly = to_model_input(texture, size, self.base.channels)
        beta = rng.uniform(0.0, self.beta_max)
        mask = region[None, :, :]
        return image * (1.0 - mask) + (1.0 - beta) * anomaly * mask + beta * image * mask, mask

    def _normal_image(self, index: int) -> np.ndarray:
        image = self._images.get(index)
        if image is None:
            image = self.base.load_uint8(index)
            if self._cached_bytes + image.nbytes <= IMAGE_CACHE_BYTES:
                self._images[index] = image
                self._cached_bytes += image.nbytes
        return image

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        rgb = self._normal_image(index)
        size = rgb.shape[:2]
        if rng.random() < self.rotate_probability:
            # Reflected borders keep the rotated image a plausible normal surface (no black corners).
            rgb = rotate(rgb, rng.uniform(-90.0, 90.0), border=cv2.BORDER_REFLECT_101)
        if self.crop_size is not None:
            rgb = _random_crop(rgb, self.crop_size, rng)
            size = rgb.shape[:2]
        channels = self.base.channels
        image = to_model_input(rgb, size, channels)
        augmented, mask = image, np.zeros((1, *size), np.float32)
        if rng.random() < self.anomaly_probability:
            region = _non_empty_mask(size, rng, self.line_probability)
            # The extra draw only when shades are on: older configs keep their random stream.
            if region is not None and self.shade_probability > 0 and rng.random() < self.shade_probability:
                augmented, mask = shade_change(image, region, rng)
            elif region is not None:
                augmented, mask = self.paste_texture(image, region, rng)
        return {
            "image": torch.from_numpy(image),
            "augmented": torch.from_numpy(np.ascontiguousarray(augmented, dtype=np.float32)),
            "mask": torch.from_numpy(mask),
            "has_anomaly": torch.tensor(float(mask.any()), dtype=torch.float32),
            "label": int(self.base.samples[index].label),
            "index": int(index),
        }


def shade_change(
    image: np.ndarray, region: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A smooth, low-contrast change inside ``region``: the surface's shade moved (and, half the time,
    its texture softened), with a feathered edge.

    Pasted textures are busy and usually strong; stains, wear and creases are none of that. ``image`` is
    ``[C, H, W]`` in [0, 1], ``region`` a ``[H, W]`` {0, 1} mask; returns the changed image and its
    ``[1, H, W]`` mask (where the feathered weight reaches one half).
    """
    feather = rng.uniform(0.5, 2.5)
    alpha = cv2.GaussianBlur(region, (0, 0), feather)
    mask = (alpha >= 0.5).astype(np.float32)
    if mask.any():
        # Parts of the region too thin to reach one half after feathering would be changed but unlabelled:
        # the change stays within two feather widths of the mask.
        reach = 2 * int(np.ceil(feather))
        alpha *= cv2.dilate(
            mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * reach + 1, 2 * reach + 1))
        )
    else:  # a region of specks only: changed with hard edges
        alpha, mask = region, region
    target = image
    if rng.random() < 0.5:  # rubbed or worn: the fine texture smoothed away
        sigma = rng.uniform(1.0, 4.0)
        target = np.stack([cv2.GaussianBlur(plane, (0, 0), sigma) for plane in image])
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.03, 0.2)
    tint = 1.0 + rng.uniform(-0.5, 0.5, size=len(image)) if len(image) == 3 else np.ones(len(image))
    target = np.clip(target + (shift * tint)[:, None, None], 0.0, 1.0)
    changed = image + alpha[None] * (target - image)
    return changed.astype(np.float32), mask[None]


def _random_crop(image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape[:2]
    side_y, side_x = min(side, height), min(side, width)
    top, left = int(rng.integers(height - side_y + 1)), int(rng.integers(width - side_x + 1))
    return image[top : top + side_y, left : left + side_x]


def _non_empty_mask(
    size: tuple[int, int], rng: np.random.Generator, line_probability: float = 0.0, tries: int = 4
) -> np.ndarray | None:
    # About 5 % of Perlin masks are empty at threshold 0.5; redrawing keeps the anomalous half anomalous.
    make = perlin_line_mask if rng.random() < line_probability else perlin_mask
    for _ in range(tries):
        region = make(size, rng)
        if region.any():
            return region
    return None
