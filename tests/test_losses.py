"""The training losses against independent computations."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from inspector.training.losses import focal_loss, gaussian_window, ssim, ssim_loss


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM written from the formula: Gaussian 11x11, sigma 1.5, zero padding, data range 1."""
    coords = np.arange(11) - 5.0
    g = np.exp(-(coords**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    values = []
    for channel in range(a.shape[0]):
        x, y = a[channel].astype(np.float64), b[channel].astype(np.float64)

        def blur(image: np.ndarray) -> np.ndarray:
            return ndimage.correlate(image, window, mode="constant", cval=0.0)

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        c1, c2 = 0.01**2, 0.03**2
        values.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_gaussian_window_is_normalised_and_symmetric():
    window = gaussian_window()
    assert window.shape == (11, 11)
    assert float(window.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(window, window.T) and int(window.argmax()) == 5 * 11 + 5


def test_ssim_of_identical_images_is_one_and_loss_zero():
    image = torch.rand(2, 3, 24, 24)
    assert float(ssim(image, image)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim_loss(image, image)) == pytest.approx(0.0, abs=1e-5)


def test_ssim_matches_formula_with_fixed_data_range_on_a_dark_image():
    # A dark pair (values in [0, 0.1]): a per-image range guess would change the constants, a fixed one must not.
    generator = torch.Generator().manual_seed(0)
    clean = 0.1 * torch.rand(1, 3, 20, 28, generator=generator)
    noisy = (clean + 0.03 * torch.randn(1, 3, 20, 28, generator=generator)).clamp(0, 1)
    expected = _reference_ssim(clean[0].numpy(), noisy[0].numpy())
    assert float(ssim(noisy, clean)) == pytest.approx(expected, abs=1e-4)
    assert float(ssim(noisy, clean)) < 0.99


def test_ssim_loss_grows_with_noise():
    clean = torch.rand(1, 1, 32, 32)
    slightly = (clean + 0.02 * torch.randn_like(clean)).clamp(0, 1)
    very = (clean + 0.3 * torch.randn_like(clean)).clamp(0, 1)
    assert float(ssim_loss(slightly, clean)) < float(ssim_loss(very, clean))


def test_focal_loss_matches_formula_per_pixel():
    # Two pixels: a normal pixel predicted normal with p=0.9, an anomalous pixel predicted anomalous with p=0.3.
    probabilities = torch.tensor([[[[0.9, 0.7]], [[0.1, 0.3]]]])  # [1, 2, 1, 2]
    mask = torch.tensor([[[[0.0, 1.0]]]])
    expected = (-(0.1**2) * math.log(0.9) - (0.7**2) * math.log(0.3)) / 2
    assert float(focal_loss(probabilities.log(), mask)) == pytest.approx(expected, rel=1e-5)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    logits = torch.randn(2, 2, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.7).float()
    cross_entropy = torch.nn.functional.cross_entropy(logits, mask[:, 0].long())
    assert float(focal_loss(logits, mask, gamma=0.0)) == pytest.approx(float(cross_entropy), rel=1e-4)


def test_focal_loss_is_small_when_confident_and_right_large_when_wrong():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    right = (torch.cat([1 - mask, mask], dim=1) * 0.98 + 0.01).log()
    wrong = (torch.cat([mask, 1 - mask], dim=1) * 0.98 + 0.01).log()
    assert float(focal_loss(right, mask)) < 1e-4
    assert float(focal_loss(wrong, mask)) > 1.0


def test_focal_loss_keeps_its_gradient_on_confidently_wrong_pixels():
    # A pixel whose true class has probability e^-30: clamping p at 1e-6 would give it no gradient at all.
    logits = torch.tensor([[[[15.0]], [[-15.0]]]], requires_grad=True)
    focal_loss(logits, torch.ones(1, 1, 1, 1)).backward()
    assert logits.grad is not None and float(logits.grad.abs().max()) > 0.5
