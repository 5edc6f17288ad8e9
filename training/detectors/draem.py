"""DRAEM: a reconstructive net and a discriminative U-Net trained on synthetic anomalies.

The reconstructive net learns to turn an image with a synthetic anomaly back into the normal image; the
discriminative (segmentation) U-Net sees the reconstruction next to the input and segments where they
disagree. Loss: MSE + SSIM on the reconstruction, focal loss on the segmentation. RDNA
(:mod:`inspector.training.detectors.rdna`) extends this detector with two discriminators.

Both networks are fully convolutional: they can train on crops (``crop_size`` in the config) and score
the whole image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inspector.training.detectors.base import Batch, Component, Detector, register
from inspector.training.losses import focal_loss, ssim_loss

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


#: Separable blocks keep a full 3x3 convolution where the input has fewer channels than this (the image and
#: the reconstruction/image pair): a per-channel 3x3 filter over 3 or 6 channels would see too little.
MIN_SEPARABLE_CHANNELS = 8


def _conv_bn_relu(in_channels: int, out_channels: int, separable: bool = False) -> list[nn.Module]:
    """A 3x3 convolution, batch norm and ReLU; ``separable``: a per-channel 3x3 then a 1x1 convolution
    (about 1/8 of the multiply-adds at these widths), for inputs of at least ``MIN_SEPARABLE_CHANNELS``."""
    if separable and in_channels >= MIN_SEPARABLE_CHANNELS:
        convolution = [
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1),
        ]
    else:
        convolution = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
    return [*convolution, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _double_conv(
    in_channels: int, out_channels: int, middle_channels: int | None = None, separable: bool = False
) -> nn.Sequential:
    middle_channels = out_channels if middle_channels is None else middle_channels
    return nn.Sequential(
        *_conv_bn_relu(in_channels, middle_channels, separable),
        *_conv_bn_relu(middle_channels, out_channels, separable),
    )


def _upsample(features: torch.Tensor, size: torch.Size) -> torch.Tensor:
    # Upsampling to the encoder's recorded size (not a fixed x2) keeps odd sizes exact.
    return F.interpolate(features, size=size, mode="bilinear", align_corners=True)


def _stage_widths(width: int, depth: int, multipliers: tuple[int, ...]) -> list[int]:
    return [width * multipliers[level] for level in range(depth + 1)]


class ReconstructiveNet(nn.Module):
    """Encoder-decoder without skip connections: image with an anomaly -> normal-looking image.

    Encoder stages of ``width x (1, 2, 4, 8, 8)`` channels separated by max-pools, decoder stages of bilinear
    upsampling, a conv and a two-conv block; ``depth`` (at most 4) is the number of poolings; ``separable``
    makes the 3x3 convolutions depthwise-separable (see ``_conv_bn_relu``).
    """

    def __init__(self, channels: int, width: int = 128, depth: int = 4, separable: bool = False) -> None:
        super().__init__()
        encoder_widths = _stage_widths(width, depth, (1, 2, 4, 8, 8))
        self.encoder = nn.ModuleList()
        in_channels = channels
        for stage_width in encoder_widths:
            self.encoder.append(_double_conv(in_channels, stage_width, separable=separable))
            in_channels = stage_width
        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            out_channels = encoder_widths[max(level - 1, 0)]
            self.up_convs.append(nn.Sequential(*_conv_bn_relu(in_channels, in_channels, separable)))
            # The reference narrows in the block's second conv, not its first.
            self.decoder.append(
                _double_conv(in_channels, out_channels, middle_channels=in_channels, separable=separable)
            )
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
    concatenation at every level; ``separable`` as in ``ReconstructiveNet``.

    ``signed_head``: the output convolution reads the last block's features before its ReLU. After a ReLU
    the features are never negative, and a head whose anomaly-minus-normal weights are all negative (what
    short CPU trainings learn: "anomalous" = features switched off) caps the anomaly probability at the
    softmax of its biases, 0.48-0.55 on the real-texture runs; images then tie at that ceiling.
    Signed features leave no ceiling.
    """

    def __init__(
        self,
        in_channels: int,
        width: int = 64,
        depth: int = 5,
        separable: bool = False,
        signed_head: bool = False,
    ) -> None:
        super().__init__()
        encoder_widths = _stage_widths(width, depth, (1, 2, 4, 8, 8, 8))
        self.encoder = nn.ModuleList()
        channels = in_channels
        for stage_width in encoder_widths:
            self.encoder.append(_double_conv(channels, stage_width, separable=separable))
            channels = stage_width
        self.up_convs = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            out_channels = encoder_widths[max(level - 1, 0)]
            self.up_convs.append(nn.Sequential(*_conv_bn_relu(channels, out_channels, separable)))
            self.decoder.append(
                _double_conv(out_channels + encoder_widths[level], out_channels, separable=separable)
            )
            channels = out_channels
        if signed_head:
            last_block = self.decoder[-1] if len(self.decoder) else self.encoder[-1]
            del last_block[-1]  # its ReLU (parameter-free: the checkpoint keys stay the same)
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


#: Learning-rate multipliers over the run's progress (0 to 1, steps or time, whichever binds):
#: the paper's x0.2 decays at 80 % and 90 %.
LR_DECAYS = ((0.8, 0.2), (0.9, 0.2))


@register
class DRAEM(Detector):
    """Reconstruction + segmentation (MSE + SSIM + focal) on DRAEM's synthetic anomalies.

    Options (``detector_options`` in the config):
        reconstruction_width: base width of the reconstructive net (paper 128).
        segmentation_width: base width of the segmentation U-Net (paper 64).
        ssim_weight: weight of ``1 - SSIM`` in the reconstruction loss.
        focal_weight: weight of the focal segmentation loss.
        score_window: side of the mean filter applied to the map before taking the image score.
        separable: depthwise-separable 3x3 convolutions in both networks (the edge presets: 5.3x fewer
            GFLOP, 1.5-2.35x the frames per second at 256x256 on 2 CPU cores; README, "Edge speed").
        batchnorm_momentum: how fast the running batch-norm statistics follow training (torch's default
            0.1 suits the paper's lr 1e-4; the CPU presets use 0.5 at lr 1e-3). They matter less since
            training ends by recomputing best.pt's statistics for its own weights (training/batchnorm.py).
        signed_head: the segmentation head reads signed features, so the anomaly probability has no
            ceiling (see ``SegmentationUNet``; the paper's network has the ReLU).
    """

    name = "draem"
    uses_synthetic_anomalies = True
    recompute_batchnorm = True
    channels_last = True

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
        separable: bool = False,
        signed_head: bool = False,
    ) -> None:
        super().__init__(input_size, channels)
        if not 0.0 < batchnorm_momentum <= 1.0:
            raise ValueError("batchnorm_momentum must be in (0, 1]")
        if min(reconstruction_width, segmentation_width) < 1:
            raise ValueError("network widths must be positive")
        if score_window < 1:
            raise ValueError("score_window must be >= 1")
        self.ssim_weight = float(ssim_weight)
        self.focal_weight = float(focal_weight)
        self.score_window = int(score_window)
        self.batchnorm_momentum = float(batchnorm_momentum)
        self.reconstructor = ReconstructiveNet(
            channels, reconstruction_width, pooling_depth(self.input_size, 4), bool(separable)
        )
        self.segmenter = SegmentationUNet(
            2 * channels,
            segmentation_width,
            pooling_depth(self.input_size, 5),
            bool(separable),
            bool(signed_head),
        )
        self.initialise(self)

    def initialise(self, module: nn.Module) -> None:
        """DRAEM's initialisation and this detector's batch-norm momentum, on ``module``'s layers."""
        module.apply(init_weights)
        for layer in module.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.momentum = self.batchnorm_momentum

    # ----------------------------------------------------------------------------------------- scoring
    def reconstruct_and_segment(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruction ``[N, C, H, W]`` and two-class logits ``[N, 2, H, W]`` of an image batch."""
        reconstruction = self.reconstructor(image)
        return reconstruction, self.segmenter(torch.cat([reconstruction, image], dim=1))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, logits = self.reconstruct_and_segment(image)
        anomaly_map = torch.softmax(logits, dim=1)[:, 1:2]
        return mean_filtered_max(anomaly_map, self.score_window), anomaly_map

    # ---------------------------------------------------------------------------------------- training
    def configure_optimizers(self, lr: float, total_steps: int) -> None:
        generator_parameters = [*self.reconstructor.parameters(), *self.segmenter.parameters()]
        self.optimizers = {"generator": torch.optim.Adam(generator_parameters, lr=lr)}

    def lr_multiplier(self, progress: float) -> float:
        multiplier = 1.0
        for at, factor in LR_DECAYS:
            if progress >= at:
                multiplier *= factor
        return multiplier

    def losses(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The loss on a batch, its parts (``mse``, ``ssim``, ``focal``) and the outputs it came from
        (``reconstruction``, ``anomaly_map``: the softmax's anomaly channel). Also the validation loss."""
        image, augmented, mask = batch["image"], batch["augmented"], batch["mask"]
        reconstruction, logits = self.reconstruct_and_segment(augmented)
        parts = {
            "mse": F.mse_loss(reconstruction, image),
            "ssim": ssim_loss(reconstruction, image),
            "focal": focal_loss(logits, mask),
        }
        total = parts["mse"] + self.ssim_weight * parts["ssim"] + self.focal_weight * parts["focal"]
        outputs = {"reconstruction": reconstruction, "anomaly_map": torch.softmax(logits, dim=1)[:, 1:2]}
        return total, parts, outputs

    def generator_loss(
        self, batch: Batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """What the reconstruction and segmentation nets are trained on: :meth:`losses` here."""
        return self.losses(batch)

    def generator_step(self, batch: Batch) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """One step of the reconstruction and segmentation nets; returns the losses and the outputs."""
        total, parts, outputs = self.generator_loss(batch)
        optimizer = self.optimizers["generator"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        results = {
            "loss": float(total.detach()),
            **{name: float(value.detach()) for name, value in parts.items()},
        }
        return results, outputs

    def training_step(self, batch: Batch) -> dict[str, float]:
        self.train()
        results, _ = self.generator_step(batch)
        return results

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> float:
        was_training = self.training
        self.eval()
        total, _, _ = self.losses(batch)
        self.train(was_training)
        return float(total)

    # ----------------------------------------------------------------------------------------- exports
    def components(self) -> dict[str, Component]:
        height, width = self.input_size
        channels = self.channels
        return {
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

    @torch.no_grad()
    def visuals(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": self.reconstructor(image).clamp(0, 1)}
