"""RDNA: a reconstructive net, a discriminative U-Net and two discriminators whose gradients reach them.

The reconstructive net learns to turn an image with a synthetic anomaly back into the normal image; the
discriminative U-Net sees the reconstruction next to the input and segments where they disagree. RDNA adds
a reconstruction discriminator (reconstruction vs the normal image) and a mask discriminator (predicted
anomaly map vs the synthetic ground-truth mask). Unlike the released RDNA code, whose adversarial gradients
are wiped before the generator step, the generator-side terms here are part of the loss the reconstruction
and segmentation nets are trained on. With both adversarial weights at zero this is DRAEM
(:mod:`training.detectors.draem`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inspector.training.detectors.base import Batch, Component, Detector, register
from inspector.training.losses import focal_loss, judged_fake_loss, judged_real_loss, ssim_loss

#: The smallest side a feature map may shrink to before the nets stop pooling.
MIN_FEATURE_SIDE = 4


def pooling_depth(input_size: tuple[int, int], max_depth: int, min_side: int = MIN_FEATURE_SIDE) -> int:
    """How many 2x poolings fit an input before its smaller side falls below ``min_side`` (capped)."""
    side = min(input_size)
    depth = 0
    while depth < max_depth and side // 2 >= min_side:
        side //= 2
        depth += 1
    return depth


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _double_conv(in_channels: int, out_channels: int, middle_channels: int | None = None) -> nn.Sequential:
    middle_channels = out_channels if middle_channels is None else middle_channels
    return nn.Sequential(
        *_conv_bn_relu(in_channels, middle_channels), *_conv_bn_relu(middle_channels, out_channels)
    )


def _upsample(features: torch.Tensor, size: torch.Size) -> torch.Tensor:
    # Upsampling to the encoder's recorded size (not a fixed x2) keeps odd sizes exact.
    return F.interpolate(features, size=size, mode="bilinear", align_corners=True)


def _stage_widths(width: int, depth: int, multipliers: tuple[int, ...]) -> list[int]:
    return [width * multipliers[level] for level in range(depth + 1)]


class ReconstructiveNet(nn.Module):
    """Encoder-decoder without skip connections: image with an anomaly -> normal-looking image.

    Encoder stages of ``width x (1, 2, 4, 8, 8)`` channels separated by max-pools, decoder stages of bilinear
    upsampling, a conv and a two-conv block; ``depth`` (at most 4) is the number of poolings.
    """

    def __init__(self, channels: int, width: int = 128, depth: int = 4) -> None:
        super().__init__()
        encoder_widths = _stage_widths(width, depth, (1, 2, 4, 8, 8))
        self.encoder = nn.ModuleList()
        in_channels = channels
        for stage_width in encoder_widths:
            self.encoder.append(_double_conv(in_channels, stage_width))
            in_channels = stage_width
        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            out_channels = encoder_widths[max(level - 1, 0)]
            self.up_convs.append(nn.Sequential(*_conv_bn_relu(in_channels, in_channels)))
            # The reference narrows in the block's second conv, not its first.
            self.decoder.append(_double_conv(in_channels, out_channels, middle_channels=in_channels))
            in_channels = out_channels
        self.output = nn.Conv2d(in_channels, channels, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        sizes = []
        features = image
        for index, stage in enumerate(self.encoder):
            if index > 0:
                sizes.append(features.shape[-2:])
                features = F.max_pool2d(features, 2)
            features = stage(features)
        for up_conv, block, size in zip(self.up_convs, self.decoder, reversed(sizes)):
            features = block(up_conv(_upsample(features, size)))
        return self.output(features)


class SegmentationUNet(nn.Module):
    """U-Net on (reconstruction || input) -> two-class logits (normal, anomalous) per pixel.

    Encoder stages of ``width x (1, 2, 4, 8, 8, 8)`` channels, ``depth`` (at most 5) poolings, skip
    concatenation at every level.
    """

    def __init__(self, in_channels: int, width: int = 64, depth: int = 5) -> None:
        super().__init__()
        encoder_widths = _stage_widths(width, depth, (1, 2, 4, 8, 8, 8))
        self.encoder = nn.ModuleList()
        channels = in_channels
        for stage_width in encoder_widths:
            self.encoder.append(_double_conv(channels, stage_width))
            channels = stage_width
        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            out_channels = encoder_widths[max(level - 1, 0)]
            self.up_convs.append(nn.Sequential(*_conv_bn_relu(channels, out_channels)))
            self.decoder.append(_double_conv(out_channels + encoder_widths[level], out_channels))
            channels = out_channels
        self.output = nn.Conv2d(channels, 2, 3, padding=1)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        skips = []
        features = pair
        for index, stage in enumerate(self.encoder):
            if index > 0:
                features = F.max_pool2d(features, 2)
            features = stage(features)
            skips.append(features)
        for up_conv, block, skip in zip(self.up_convs, self.decoder, reversed(skips[:-1])):
            features = up_conv(_upsample(features, skip.shape[-2:]))
            features = block(torch.cat([features, skip], dim=1))
        return self.output(features)


class ConvDiscriminator(nn.Module):
    """Conv 5x5 stride-2 blocks of ``width x (1, 2, 4, 8)`` channels, then a linear layer to one logit."""

    def __init__(self, in_channels: int, input_size: tuple[int, int], width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        height, width_px = input_size
        for index, multiplier in enumerate((1, 2, 4, 8)):
            out_channels = width * multiplier
            layers.append(nn.Conv2d(channels, out_channels, 5, stride=2, padding=2))
            if index > 0:  # no normalisation on the input layer, as in DCGAN
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out_channels
            height, width_px = (height + 1) // 2, (width_px + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * height * width_px, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image).flatten(1)).squeeze(1)


def init_weights(module: nn.Module) -> None:
    """Conv weights N(0, 0.02), batch-norm scales N(1, 0.02), biases 0 (the DRAEM initialisation)."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def mean_filtered_max(anomaly_map: torch.Tensor, window: int) -> torch.Tensor:
    """Image score: the maximum of the anomaly map after a ``window`` x ``window`` mean filter."""
    smoothed = F.avg_pool2d(anomaly_map, window, stride=1, padding=window // 2, count_include_pad=False)
    return smoothed.flatten(1).max(dim=1).values


class _Segmenter(nn.Module):
    """Image -> anomaly probability map, through reconstruction and segmentation (an export component)."""

    def __init__(self, reconstructor: nn.Module, segmenter: nn.Module) -> None:
        super().__init__()
        self.reconstructor = reconstructor
        self.segmenter = segmenter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        reconstruction = self.reconstructor(image)
        logits = self.segmenter(torch.cat([reconstruction, image], dim=1))
        return torch.softmax(logits, dim=1)[:, 1:2]


@register
class RDNA(Detector):
    """Reconstruction + segmentation with adversarial terms on the reconstruction and on the mask.

    Options (``detector_options`` in the config):
        reconstruction_width: base width of the reconstructive net (paper 128).
        segmentation_width: base width of the segmentation U-Net (paper 64).
        discriminator_width: base width of both discriminators (64-128-256-512 at 64).
        ssim_weight: weight of ``1 - SSIM`` in the reconstruction loss.
        focal_weight: weight of the focal segmentation loss.
        adv_rec_weight: weight of the generator-side adversarial term on the reconstruction (0 = no D_rec).
        adv_seg_weight: weight of the generator-side adversarial term on the anomaly map (0 = no D_seg).
        discriminator_lr_scale: discriminator learning rate as a multiple of the generators' one.
        score_window: side of the mean filter applied to the map before taking the image score.
        batchnorm_momentum: how fast the running batch-norm statistics follow training (torch's default
            0.1 suits the paper's lr 1e-4; the CPU presets use 0.5 at lr 1e-3). They matter less since
            training ends by recomputing best.pt's statistics for its own weights (training/batchnorm.py).
    """

    name = "rdna"
    uses_synthetic_anomalies = True
    recompute_batchnorm = True

    def __init__(
        self,
        input_size: tuple[int, int],
        channels: int,
        reconstruction_width: int = 128,
        segmentation_width: int = 64,
        discriminator_width: int = 64,
        ssim_weight: float = 1.0,
        focal_weight: float = 1.0,
        adv_rec_weight: float = 1e-4,
        adv_seg_weight: float = 1e-4,
        discriminator_lr_scale: float = 1.0,
        score_window: int = 21,
        batchnorm_momentum: float = 0.1,
    ) -> None:
        super().__init__(input_size, channels)
        if not 0.0 < batchnorm_momentum <= 1.0:
            raise ValueError("batchnorm_momentum must be in (0, 1]")
        if min(reconstruction_width, segmentation_width, discriminator_width) < 1:
            raise ValueError("network widths must be positive")
        if adv_rec_weight < 0 or adv_seg_weight < 0:
            raise ValueError("adversarial weights must be >= 0")
        self.ssim_weight = float(ssim_weight)
        self.focal_weight = float(focal_weight)
        self.adv_rec_weight = float(adv_rec_weight)
        self.adv_seg_weight = float(adv_seg_weight)
        self.discriminator_lr_scale = float(discriminator_lr_scale)
        self.score_window = int(score_window)
        self.reconstructor = ReconstructiveNet(
            channels, reconstruction_width, pooling_depth(self.input_size, 4)
        )
        self.segmenter = SegmentationUNet(2 * channels, segmentation_width, pooling_depth(self.input_size, 5))
        # A discriminator is built only when its term is used: no compute spent on one that teaches nothing.
        self.reconstruction_discriminator = (
            ConvDiscriminator(channels, self.input_size, discriminator_width)
            if self.adv_rec_weight > 0
            else None
        )
        self.mask_discriminator = (
            ConvDiscriminator(1, self.input_size, discriminator_width) if self.adv_seg_weight > 0 else None
        )
        self.apply(init_weights)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = float(batchnorm_momentum)

    # ----------------------------------------------------------------------------------------- scoring
    def reconstruct_and_segment(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction ``[N, C, H, W]`` and two-class softmax ``[N, 2, H, W]`` of an image batch."""
        reconstruction = self.reconstructor(image)
        logits = self.segmenter(torch.cat([reconstruction, image], dim=1))
        return reconstruction, torch.softmax(logits, dim=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, probabilities = self.reconstruct_and_segment(image)
        anomaly_map = probabilities[:, 1:2]
        return mean_filtered_max(anomaly_map, self.score_window), anomaly_map

    # ---------------------------------------------------------------------------------------- training
    def configure_optimizers(self, lr: float, total_steps: int) -> None:
        milestones = [int(0.8 * total_steps), int(0.9 * total_steps)]
        generator_parameters = [*self.reconstructor.parameters(), *self.segmenter.parameters()]
        self.optimizers = {"generator": torch.optim.Adam(generator_parameters, lr=lr)}
        for name, discriminator in self._discriminators().items():
            self.optimizers[name] = torch.optim.Adam(
                discriminator.parameters(), lr=lr * self.discriminator_lr_scale, betas=(0.5, 0.999)
            )
        self.schedulers = {
            name: torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.2)
            for name, optimizer in self.optimizers.items()
        }

    def _discriminators(self) -> dict[str, nn.Module]:
        found = {
            "reconstruction_discriminator": self.reconstruction_discriminator,
            "mask_discriminator": self.mask_discriminator,
        }
        return {name: module for name, module in found.items() if module is not None}

    def losses(
        self, batch: Batch, adversarial: bool = True
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """The generators' loss on a batch, its parts, and the tensors the discriminator step reuses.

        Returns ``(total, parts, outputs)``: ``parts`` holds ``mse``, ``ssim``, ``focal`` and, when
        ``adversarial`` and the weights are > 0, ``adversarial_reconstruction`` / ``adversarial_mask``
        (unweighted; gradients flow through the discriminators into both nets).
        """
        image, augmented, mask = batch["image"], batch["augmented"], batch["mask"]
        reconstruction, probabilities = self.reconstruct_and_segment(augmented)
        parts = {
            "mse": F.mse_loss(reconstruction, image),
            "ssim": ssim_loss(reconstruction, image),
            "focal": focal_loss(probabilities, mask),
        }
        total = parts["mse"] + self.ssim_weight * parts["ssim"] + self.focal_weight * parts["focal"]
        anomaly_map = probabilities[:, 1:2]
        if adversarial and self.reconstruction_discriminator is not None:
            logits = self.reconstruction_discriminator(reconstruction)
            parts["adversarial_reconstruction"] = judged_real_loss(logits)
            total = total + self.adv_rec_weight * parts["adversarial_reconstruction"]
        if adversarial and self.mask_discriminator is not None:
            logits = self.mask_discriminator(anomaly_map)
            parts["adversarial_mask"] = judged_real_loss(logits)
            total = total + self.adv_seg_weight * parts["adversarial_mask"]
        return total, parts, {"reconstruction": reconstruction, "anomaly_map": anomaly_map}

    def training_step(self, batch: Batch) -> dict[str, float]:
        self.train()
        discriminators = self._discriminators()
        # The generators' step must not leave gradients on the discriminators' weights.
        for discriminator in discriminators.values():
            discriminator.requires_grad_(False)
        total, parts, outputs = self.losses(batch)
        generator_optimizer = self.optimizers["generator"]
        generator_optimizer.zero_grad(set_to_none=True)
        total.backward()
        generator_optimizer.step()
        results = {
            "loss": float(total.detach()),
            **{name: float(value.detach()) for name, value in parts.items()},
        }

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

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> float:
        was_training = self.training
        self.eval()
        total, _, _ = self.losses(batch, adversarial=False)
        self.train(was_training)
        return float(total)

    # ----------------------------------------------------------------------------------------- exports
    def components(self) -> dict[str, Component]:
        height, width = self.input_size
        channels = self.channels

        def masks(batch_size: int) -> tuple[torch.Tensor, ...]:
            return ((torch.rand(batch_size, 1, height, width) > 0.5).float(),)

        parts = {
            "reconstructor": Component(
                module=self.reconstructor,
                example_inputs=self.example_images,
                input_names=["image"],
                output_names=["reconstruction"],
                description=f"image [N,{channels},{height},{width}] in [0,1] -> reconstruction [N,{channels},{height},{width}] "
                "(the anomaly-free image the network expects)",
            ),
            "segmenter": Component(
                # Same mode as the detector, so an exporter restoring the wrapper's mode cannot flip the nets'.
                module=_Segmenter(self.reconstructor, self.segmenter).train(self.training),
                example_inputs=self.example_images,
                input_names=["image"],
                output_names=["anomaly_map"],
                description=f"image [N,{channels},{height},{width}] in [0,1] -> anomaly probability [N,1,{height},{width}] "
                "(reconstruction and segmentation, before the image-score filter)",
            ),
        }
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
            parts["mask_discriminator"] = Component(
                module=self.mask_discriminator,
                example_inputs=masks,
                input_names=["mask"],
                output_names=["logit"],
                description=f"mask [N,1,{height},{width}] in [0,1] -> logit [N] "
                "(> 0: looks like a ground-truth mask, < 0: like a predicted anomaly map)",
            )
        return parts

    @torch.no_grad()
    def visuals(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": self.reconstructor(image).clamp(0, 1)}
