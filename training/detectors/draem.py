"""DRAEM: RDNA's reconstructive and segmentation nets trained without any discriminator."""

from __future__ import annotations

from inspector.training.detectors.base import register
from inspector.training.detectors.rdna import RDNA


@register
class DRAEM(RDNA):
    """Reconstruction + segmentation (L2 + SSIM + focal), RDNA with both adversarial weights at 0.

    Options: ``reconstruction_width`` (paper 128), ``segmentation_width`` (paper 64), ``ssim_weight``,
    ``focal_weight``, ``score_window``, ``batchnorm_momentum``. No discriminators are built, so none cost compute.
    """

    name = "draem"

    def __init__(
        self,
        input_size: tuple[int, int],
        channels: int,
        reconstruction_width: int = 128,
        segmentation_width: int = 64,
        ssim_weight: float = 1.0,
        focal_weight: float = 1.0,
        score_window: int = 21,
        batchnorm_momentum: float = 0.1,
    ) -> None:
        super().__init__(
            input_size,
            channels,
            reconstruction_width=reconstruction_width,
            segmentation_width=segmentation_width,
            ssim_weight=ssim_weight,
            focal_weight=focal_weight,
            adv_rec_weight=0.0,
            adv_seg_weight=0.0,
            score_window=score_window,
            batchnorm_momentum=batchnorm_momentum,
        )
