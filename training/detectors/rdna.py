"""RDNA: DRAEM plus two discriminators whose adversarial gradients reach the generators.

RDNA adds to DRAEM (:mod:`inspector.training.detectors.draem`) a reconstruction discriminator
(reconstruction vs the normal image) and a mask discriminator (predicted anomaly map vs the synthetic
ground-truth mask). Unlike the released RDNA code, whose adversarial gradients are wiped before the generator
step, the generator-side terms here are part of the loss the reconstruction and segmentation nets are
trained on. With both adversarial weights at zero no discriminator is built and this is DRAEM.
"""

from __future__ import annotations

import torch
from torch import nn

from inspector.training.detectors.base import Batch, Component, register
from inspector.training.detectors.draem import DRAEM
from inspector.training.losses import judged_fake_loss, judged_real_loss


class ConvDiscriminator(nn.Module):
    """Conv 5x5 stride-2 blocks of ``width x (1, 2, 4, 8)`` channels, a global average, then a linear layer
    to one logit. The average (instead of flattening) lets it judge crops and whole images alike."""

    def __init__(self, in_channels: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, multiplier in enumerate((1, 2, 4, 8)):
            out_channels = width * multiplier
            layers.append(nn.Conv2d(channels, out_channels, 5, stride=2, padding=2))
            if index > 0:  # no normalisation on the input layer, as in DCGAN
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image).mean(dim=(2, 3))).squeeze(1)


@register
class RDNA(DRAEM):
    """DRAEM with adversarial terms on the reconstruction and on the mask.

    Options: DRAEM's (``reconstruction_width``, ``segmentation_width``, ``ssim_weight``, ``focal_weight``,
    ``score_window``, ``batchnorm_momentum``, ``separable``, ``signed_head``), and:
        discriminator_width: base width of both discriminators (64-128-256-512 at 64).
        adv_rec_weight: weight of the generator-side adversarial term on the reconstruction (0 = no D_rec).
        adv_seg_weight: weight of the generator-side adversarial term on the anomaly map (0 = no D_seg).
        discriminator_lr_scale: discriminator learning rate as a multiple of the generators' one.
    """

    name = "rdna"

    def __init__(
        self,
        input_size: tuple[int, int],
        channels: int,
        discriminator_width: int = 64,
        adv_rec_weight: float = 1e-4,
        adv_seg_weight: float = 1e-4,
        discriminator_lr_scale: float = 1.0,
        **draem_options,
    ) -> None:
        super().__init__(input_size, channels, **draem_options)
        if discriminator_width < 1:
            raise ValueError("network widths must be positive")
        if adv_rec_weight < 0 or adv_seg_weight < 0:
            raise ValueError("adversarial weights must be >= 0")
        self.adv_rec_weight = float(adv_rec_weight)
        self.adv_seg_weight = float(adv_seg_weight)
        self.discriminator_lr_scale = float(discriminator_lr_scale)
        # A discriminator is built only when its term is used: no compute spent on one that teaches nothing.
        self.reconstruction_discriminator = (
            ConvDiscriminator(channels, discriminator_width) if self.adv_rec_weight > 0 else None
        )
        self.mask_discriminator = (
            ConvDiscriminator(1, discriminator_width) if self.adv_seg_weight > 0 else None
        )
        for discriminator in self._discriminators().values():
            self.initialise(discriminator)

    def _discriminators(self) -> dict[str, nn.Module]:
        found = {
            "reconstruction_discriminator": self.reconstruction_discriminator,
            "mask_discriminator": self.mask_discriminator,
        }
        return {name: module for name, module in found.items() if module is not None}

    # ---------------------------------------------------------------------------------------- training
    def configure_optimizers(self, lr: float, total_steps: int) -> None:
        super().configure_optimizers(lr, total_steps)
        for name, discriminator in self._discriminators().items():
            self.optimizers[name] = torch.optim.Adam(
                discriminator.parameters(), lr=lr * self.discriminator_lr_scale, betas=(0.5, 0.999)
            )

    def generator_loss(
        self, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """DRAEM's loss plus ``adversarial_reconstruction`` / ``adversarial_mask`` (unweighted in the parts;
        gradients flow through the discriminators into both nets)."""
        total, parts, outputs = self.losses(batch)
        if self.reconstruction_discriminator is not None:
            logits = self.reconstruction_discriminator(outputs["reconstruction"])
            parts["adversarial_reconstruction"] = judged_real_loss(logits)
            total = total + self.adv_rec_weight * parts["adversarial_reconstruction"]
        if self.mask_discriminator is not None:
            parts["adversarial_mask"] = judged_real_loss(self.mask_discriminator(outputs["anomaly_map"]))
            total = total + self.adv_seg_weight * parts["adversarial_mask"]
        return total, parts, outputs

    def training_step(self, batch: Batch) -> dict[str, float]:
        self.train()
        discriminators = self._discriminators()
        # The generators' step must not leave gradients on the discriminators' weights.
        for discriminator in discriminators.values():
            discriminator.requires_grad_(False)
        results, outputs = self.generator_step(batch)
        pairs = {
            "reconstruction_discriminator": (batch["image"], outputs["reconstruction"]),
            "mask_discriminator": (batch["mask"], outputs["anomaly_map"]),
        }
        for name, discriminator in discriminators.items():
            discriminator.requires_grad_(True)
            real, fake = pairs[name]
            loss = judged_real_loss(discriminator(real)) + judged_fake_loss(discriminator(fake.detach()))
            optimizer = self.optimizers[name]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            results[f"{name}_loss"] = float(loss.detach())
        return results

    # ----------------------------------------------------------------------------------------- exports
    def components(self) -> dict[str, Component]:
        height, width = self.input_size
        channels = self.channels
        parts = super().components()
        if self.reconstruction_discriminator is not None:
            parts["reconstruction_discriminator"] = Component(
                module=self.reconstruction_discriminator,
                example_inputs=self.example_images,
                input_names=["image"],
                output_names=["logit"],
                description=f"image [N,{channels},{height},{width}] in [0,1] -> logit [N] "
                "(> 0: looks like a real normal image, < 0: like a reconstruction)",
            )
        if self.mask_discriminator is not None:

            def masks(batch_size: int) -> tuple[torch.Tensor, ...]:
                generator = torch.Generator().manual_seed(2)
                return ((torch.rand(batch_size, 1, height, width, generator=generator) > 0.5).float(),)

            parts["mask_discriminator"] = Component(
                module=self.mask_discriminator,
                example_inputs=masks,
                input_names=["mask"],
                output_names=["logit"],
                description=f"mask [N,1,{height},{width}] in [0,1] -> logit [N] "
                "(> 0: looks like a ground-truth mask, < 0: like a predicted anomaly map)",
            )
        return parts
