"""ALOCC: a reconstructor R and a discriminator D trained adversarially on one class.

R (a conv encoder-decoder) refines a noisy normal image; D tells real images from R's outputs. On a
normal image R(x) looks like a real member of the class; on an anomaly R(x) is distorted and D doubts it.

Score (raw, higher = more anomalous, as everywhere in this project): ``1 - D(R(x))`` with D's sigmoid
probability, computed as ``sigmoid(-logit)`` (the same number, without losing the small values of
confident normals to float rounding). The Wasserstein variant scores ``-C(R(x))`` (C, the critic, is
unbounded). Other scores, by option: ``input_discriminator``, ``1 - D(x)`` (the paper's D(X) variant,
D judging the image itself), and ``reconstruction``, the mean squared error of R(x). The anomaly map is
``|R(x) - x|`` averaged over channels whatever the score.

Stopping (the paper's rho criterion): training may stop once both the training and the validation
reconstruction error (MSE, images in [0, 1]) are below ``rho``. The detector reports ``rec_error`` in
every step's losses, uses the validation reconstruction error as its ``validation_loss``, and exposes
:attr:`ALOCC.should_stop`, which a trainer reads after each validation pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inspector.errors import InspectorError
from inspector.training.detectors.base import Batch, Component, Detector, register
from inspector.training.detectors.vae_parts import block_widths, halving_sizes
from inspector.training.losses import judged_fake_loss, judged_real_loss

SCORES = ("discriminator", "input_discriminator", "reconstruction")


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BN weights N(1, 0.02)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _down_blocks(channels: int, widths: list[int], batch_norm: bool) -> nn.Sequential:
    """Conv5x5 stride 2 (+ BN after the first block) + LeakyReLU(0.2), one block per width."""
    layers: list[nn.Module] = []
    previous = channels
    for index, width in enumerate(widths):
        use_norm = batch_norm and index > 0
        layers.append(nn.Conv2d(previous, width, 5, stride=2, padding=2, bias=not use_norm))
        if use_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        previous = width
    return nn.Sequential(*layers)


class Reconstructor(nn.Module):
    """Fully convolutional encoder-decoder: conv5x5 stride 2 down, transposed conv5x5 back to the exact size."""

    def __init__(self, channels: int, widths: list[int], sizes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.encoder = _down_blocks(channels, widths, batch_norm=True)
        layers: list[nn.Module] = []
        reversed_widths = list(reversed(widths))
        for index, width in enumerate(reversed_widths):
            source, target = sizes[len(widths) - index], sizes[len(widths) - index - 1]
            last = index == len(widths) - 1
            out_width = channels if last else reversed_widths[index + 1]
            # (s - 1) * 2 - 4 + 5 + p = t  ->  the output padding that lands on the encoder's size t.
            padding = tuple(t - (2 * s - 1) for t, s in zip(target, source))
            layers.append(
                nn.ConvTranspose2d(
                    width, out_width, 5, stride=2, padding=2, output_padding=padding, bias=last
                )
            )
            if last:
                layers.append(nn.Sigmoid())
            else:
                layers += [nn.BatchNorm2d(out_width), nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(image))


class Discriminator(nn.Module):
    """The encoder's conv stack then a linear layer to one logit (no BN for the Wasserstein critic)."""

    def __init__(
        self, channels: int, widths: list[int], sizes: list[tuple[int, int]], batch_norm: bool
    ) -> None:
        super().__init__()
        self.features = _down_blocks(channels, widths, batch_norm=batch_norm)
        self.head = nn.Linear(widths[-1] * sizes[-1][0] * sizes[-1][1], 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1)).squeeze(1)


@register
class ALOCC(Detector):
    """Adversarially learned one-class classifier (Sabokrou et al., CVPR 2018).

    Options: ``base_width`` (first block; doubles per block up to ``max_width``), ``smallest`` (the encoder
    halves the image until its smaller side is at most this), ``noise_std`` (training input noise, 0.155),
    ``rec_weight`` (the paper's lambda: weight of the reconstruction MSE in R's loss, 0.2), ``rho``
    (stopping bound on the reconstruction MSE; None disables it), ``wasserstein`` (critic with gradient
    penalty ``gp_weight``), ``score`` (``discriminator``: 1 - D(R(x)); ``input_discriminator``: 1 - D(x);
    ``reconstruction``: MSE of R(x)).
    """

    name = "alocc"

    def __init__(
        self,
        input_size: tuple[int, int],
        channels: int,
        base_width: int = 64,
        max_width: int = 512,
        smallest: int = 4,
        noise_std: float = 0.155,
        rec_weight: float = 0.2,
        rho: float | None = None,
        wasserstein: bool = False,
        gp_weight: float = 10.0,
        score: str = "discriminator",
    ) -> None:
        super().__init__(input_size, channels)
        if score not in SCORES:
            raise InspectorError(
                f"alocc: detector_options.score must be one of {', '.join(SCORES)}, got '{score}'"
            )
        sizes = halving_sizes(self.input_size, smallest)
        widths = block_widths(len(sizes) - 1, base_width, max_width)
        self.reconstructor = Reconstructor(channels, widths, sizes)
        self.discriminator = Discriminator(channels, widths, sizes, batch_norm=not wasserstein)
        self.apply(_init_weights)
        self.noise_std = float(noise_std)
        self.rec_weight = float(rec_weight)
        self.rho = None if rho is None else float(rho)
        self.wasserstein = bool(wasserstein)
        self.gp_weight = float(gp_weight)
        self.score = score
        self._train_rec: float | None = None  # running mean of the training reconstruction error
        self._val_sum, self._val_count, self._last_val = 0.0, 0, None

    def configure_optimizers(self, lr: float, total_steps: int) -> None:
        optimizers = {}
        for part, module in (("reconstructor", self.reconstructor), ("discriminator", self.discriminator)):
            # WGAN-GP's own recipe (Gulrajani et al.): Adam without first-moment momentum.
            if self.wasserstein:
                optimizers[part] = torch.optim.Adam(module.parameters(), lr=lr, betas=(0.0, 0.9))
            else:
                optimizers[part] = torch.optim.RMSprop(
                    module.parameters(), lr=lr, alpha=0.9, weight_decay=1e-9
                )
        self.optimizers = optimizers

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(between).sum(), between, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

    def training_step(self, batch: Batch) -> dict[str, float]:
        self._close_validation()
        image = batch["image"]
        noisy = image + self.noise_std * torch.randn_like(image)
        disc, recon = self.discriminator, self.reconstructor

        with torch.no_grad():
            refined = recon(noisy)
        disc.requires_grad_(True)
        real_logit, fake_logit = disc(image), disc(refined)
        if self.wasserstein:
            d_loss = (
                fake_logit.mean()
                - real_logit.mean()
                + self.gp_weight * self._gradient_penalty(image, refined)
            )
        else:
            d_loss = judged_real_loss(real_logit) + judged_fake_loss(fake_logit)
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizers["discriminator"].step()

        disc.requires_grad_(False)  # R's step must not touch D
        refined = recon(noisy)
        rec_error = F.mse_loss(refined, image)
        fake_logit = disc(refined)
        if self.wasserstein:
            adversarial = -fake_logit.mean()
        else:
            adversarial = judged_real_loss(fake_logit)
        r_loss = adversarial + self.rec_weight * rec_error
        self.optimizers["reconstructor"].zero_grad(set_to_none=True)
        r_loss.backward()
        self.optimizers["reconstructor"].step()
        disc.requires_grad_(True)

        rec = float(rec_error.detach())
        self._train_rec = rec if self._train_rec is None else 0.9 * self._train_rec + 0.1 * rec
        return {
            "d_loss": float(d_loss.detach()),
            "r_loss": float(r_loss.detach()),
            "adversarial": float(adversarial.detach()),
            "rec_error": rec,
        }

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> float:
        """Reconstruction MSE of clean validation normals: what rho is measured on, and what picks best.pt."""
        image = batch["image"]
        error = float(F.mse_loss(self.reconstructor(image), image))
        self._val_sum += error * image.shape[0]
        self._val_count += image.shape[0]
        return error

    def _close_validation(self) -> None:
        if self._val_count:
            self._last_val = self._val_sum / self._val_count
            self._val_sum, self._val_count = 0.0, 0

    @property
    def should_stop(self) -> bool:
        """True once the training and the latest validation reconstruction errors are both below rho."""
        if self.rho is None or self._train_rec is None:
            return False
        val = self._val_sum / self._val_count if self._val_count else self._last_val
        return val is not None and self._train_rec < self.rho and val < self.rho

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        refined = self.reconstructor(image)
        anomaly_map = (refined - image).abs().mean(dim=1, keepdim=True)
        if self.score == "reconstruction":
            return (refined - image).pow(2).flatten(1).mean(dim=1), anomaly_map
        judged = image if self.score == "input_discriminator" else refined
        logit = self.discriminator(judged)
        score = -logit if self.wasserstein else torch.sigmoid(-logit)
        return score, anomaly_map

    def components(self) -> dict[str, Component]:
        channels, (height, width) = self.channels, self.input_size

        shape = f"[N,{channels},{height},{width}]"
        kind = "critic value (higher = more real)" if self.wasserstein else "logit of P(real)"
        return {
            "reconstructor": Component(
                self.reconstructor,
                self.example_images,
                ["image"],
                ["reconstruction"],
                f"image {shape} in [0,1] -> reconstruction {shape} in [0,1]",
            ),
            "discriminator": Component(
                self.discriminator,
                self.example_images,
                ["image"],
                ["logit"],
                f"image {shape} in [0,1] -> {kind} [N]",
            ),
        }

    @torch.no_grad()
    def visuals(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": self.reconstructor(image)}
