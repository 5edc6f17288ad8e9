"""Training losses shared by the detectors: SSIM, focal loss and the adversarial (GAN) terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """A normalised 2-D Gaussian window ``[size, size]`` that sums to 1."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    profile = torch.exp(-(coords**2) / (2 * sigma**2))
    profile = profile / profile.sum()
    return profile[:, None] * profile[None, :]


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    window_size: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Mean structural similarity of two ``[N, C, H, W]`` batches (per channel, Gaussian window).

    ``data_range`` is the span of valid pixel values; images here live in [0, 1], so it is fixed at 1
    rather than guessed from each image (a guess makes the loss depend on image content).

    Example:
        >>> x = torch.rand(2, 3, 32, 32)
        >>> float(ssim(x, x))
        1.0
    """
    channels = prediction.shape[1]
    window = gaussian_window(window_size, sigma).to(prediction)
    window = window.expand(channels, 1, window_size, window_size)
    padding = window_size // 2

    def blur(tensor: torch.Tensor) -> torch.Tensor:
        return F.conv2d(tensor, window, padding=padding, groups=channels)

    mean_p, mean_t = blur(prediction), blur(target)
    var_p = blur(prediction * prediction) - mean_p**2
    var_t = blur(target * target) - mean_t**2
    covariance = blur(prediction * target) - mean_p * mean_t
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    similarity = ((2 * mean_p * mean_t + c1) * (2 * covariance + c2)) / (
        (mean_p**2 + mean_t**2 + c1) * (var_p + var_t + c2)
    )
    return similarity.mean()


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - SSIM``: 0 for identical images, up to 2 for anti-correlated ones."""
    return 1.0 - ssim(prediction, target)


def focal_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of two-class ``logits`` ``[N, 2, H, W]`` against a ``mask`` ``[N, 1, H, W]`` in {0, 1}.

    Per pixel ``-(1 - p_t)^gamma * log(p_t)`` where ``p_t`` is the softmax probability of the true class,
    averaged over pixels: easy, confidently right pixels (most of the background) weigh almost nothing.
    Computed from the logits (``log_softmax``), so a confidently wrong pixel keeps its gradient where
    probabilities clamped away from zero would have flattened it.
    """
    target = (mask > 0.5).long()
    log_true = F.log_softmax(logits, dim=1).gather(1, target)
    return (-((1.0 - log_true.exp()) ** gamma) * log_true).mean()


def judged_real_loss(logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of discriminator logits against the label "real" (mean over the batch)."""
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def judged_fake_loss(logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of discriminator logits against the label "generated" (mean over the batch)."""
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
