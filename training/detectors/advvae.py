"""Adversarial VAE (``advvae``): a convolutional VAE trained with an image discriminator (VAE-GAN style).

The VAE (stride-2 conv blocks with BN and LeakyReLU, widths 32 doubling to 512, as many as the input size
needs; tanh decoder) works on images mapped to [-1, 1] *inside* the model: inputs stay in [0, 1] like
every detector's, and reconstructions are compared with the input in the same [-1, 1] space.

Generator (encoder + decoder) loss, every term active:
``MSE(x̂, x) + kl_weight·KL + adv_rec_weight·adv(D(x̂)) + adv_sample_weight·adv(D(G(z)))
[+ ssim_weight·(1 - SSIM)]``
with ``adv(d) = BCE(d, real)``, KL per sample summed over the latent and averaged over the batch, z ~ N(0, I).
(The original multiplied the sample term by zero.) The discriminator learns real images against both the
reconstructions and the samples.

Scores (raw, higher = more anomalous), ``score`` option:
- ``reconstruction`` (default): per-image mean squared error of the reconstruction from the mean latent μ
  plus ``score_kl_weight`` · KL(μ, σ) (defaults to ``kl_weight``);
- ``discriminator``: ``1 - D(x)``, computed as ``sigmoid(-logit)``.
The anomaly map is the per-pixel reconstruction error (mean over channels) in both cases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inspector.training.detectors.base import Batch, Component, Detector, register
from inspector.training.detectors.vae_parts import (
    ConvDecoder,
    ConvEncoder,
    block_widths,
    gaussian_kl,
    halving_sizes,
    reparameterize,
)
from inspector.training.losses import judged_fake_loss, judged_real_loss, ssim_loss

SCORES = ("reconstruction", "discriminator")


class Encoder(nn.Module):
    """Image in [-1, 1] -> (mu, logvar)."""

    def __init__(self, features: ConvEncoder, feature_count: int, latent_dim: int) -> None:
        super().__init__()
        self.features = features
        self.mu = nn.Linear(feature_count, latent_dim)
        self.logvar = nn.Linear(feature_count, latent_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(image)
        return self.mu(features), self.logvar(features)


class Discriminator(nn.Module):
    """Image in [-1, 1] -> one real/fake logit per image."""

    def __init__(self, features: ConvEncoder, feature_count: int) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(feature_count, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image)).squeeze(1)


class _UnitRangeEncoder(nn.Module):
    """The ``encoder`` component: image in [0, 1] -> (mu, logvar)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(image * 2 - 1)


class _UnitRangeDecoder(nn.Module):
    """The ``decoder`` component: z -> image in [0, 1]."""

    def __init__(self, decoder: ConvDecoder) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (self.decoder(z) + 1) / 2


class _UnitRangeDiscriminator(nn.Module):
    """The ``discriminator`` component: image in [0, 1] -> probability of being a real normal image."""

    def __init__(self, discriminator: Discriminator) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.discriminator(image * 2 - 1))


@register
class AdvVAE(Detector):
    """VAE + image discriminator, scored by reconstruction + KL or by the discriminator.

    Options: ``latent_dim`` (128), ``base_width`` / ``max_width`` (conv blocks), ``discriminator_width``
    (D's first block; default ``base_width``), ``kl_weight`` (KL in the VAE's loss), ``adv_rec_weight``
    (adversarial term on the reconstruction), ``adv_sample_weight`` (adversarial term on prior samples),
    ``ssim_weight`` (1 - SSIM of the reconstruction; 0: off), ``score`` (``reconstruction`` or
    ``discriminator``), ``score_kl_weight`` (KL in the score; None: ``kl_weight``), ``error`` (``squared``
    or ``abs``, the map's pixel error), ``discriminator_lr`` (D's learning rate; None: the run's).
    """

    name = "advvae"

    def __init__(
        self,
        input_size: tuple[int, int],
        channels: int,
        latent_dim: int = 128,
        base_width: int = 32,
        max_width: int = 512,
        discriminator_width: int | None = None,
        kl_weight: float = 1e-4,
        adv_rec_weight: float = 0.002,
        adv_sample_weight: float = 0.002,
        ssim_weight: float = 0.0,
        score: str = "reconstruction",
        score_kl_weight: float | None = None,
        error: str = "squared",
        discriminator_lr: float | None = None,
    ) -> None:
        super().__init__(input_size, channels)
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got '{score}'")
        if error not in ("squared", "abs"):
            raise ValueError(f"error must be 'squared' or 'abs', got '{error}'")
        self.latent_dim = int(latent_dim)
        self.kl_weight = float(kl_weight)
        self.adv_rec_weight = float(adv_rec_weight)
        self.adv_sample_weight = float(adv_sample_weight)
        self.ssim_weight = float(ssim_weight)
        self.score = score
        # Scored by reconstruction, forward is the VAE path training takes; scored by the discriminator it
        # also runs D, whose statistics mix real and generated batches and would change meaning if
        # recomputed on real images alone.
        self.recompute_batchnorm = score == "reconstruction"
        self.score_kl_weight = self.kl_weight if score_kl_weight is None else float(score_kl_weight)
        self.error = error
        self.discriminator_lr = discriminator_lr

        sizes = halving_sizes(self.input_size)
        widths = block_widths(len(sizes) - 1, base_width, max_width)
        feature_count = widths[-1] * sizes[-1][0] * sizes[-1][1]
        self.encoder = Encoder(
            ConvEncoder(self.channels, widths, batch_norm=True, activation="leaky_relu"),
            feature_count,
            self.latent_dim,
        )
        self.decoder = ConvDecoder(
            self.latent_dim,
            self.channels,
            widths,
            sizes,
            batch_norm=True,
            activation="leaky_relu",
            output="tanh",
        )
        d_widths = block_widths(len(sizes) - 1, discriminator_width or base_width, max_width)
        self.discriminator = Discriminator(
            ConvEncoder(
                self.channels, d_widths, batch_norm=True, activation="leaky_relu", first_batch_norm=False
            ),
            d_widths[-1] * sizes[-1][0] * sizes[-1][1],
        )

    # -- losses --------------------------------------------------------------------------------------
    def generator_terms(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generator's loss terms (unweighted) on a batch in [0, 1], plus the images they came from."""
        target = image * 2 - 1
        mu, logvar = self.encoder(target)
        reconstruction = self.decoder(reparameterize(mu, logvar))
        samples = self.decoder(torch.randn_like(mu))
        terms = {
            "mse": F.mse_loss(reconstruction, target),
            "kl": gaussian_kl(mu, logvar).mean(),
            "adv_reconstruction": judged_real_loss(self.discriminator(reconstruction)),
            "adv_sample": judged_real_loss(self.discriminator(samples)),
            "reconstruction_image": reconstruction,
            "sample_image": samples,
        }
        if self.ssim_weight > 0:
            terms["ssim"] = ssim_loss((reconstruction + 1) / 2, image)
        return terms

    def generator_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = (
            terms["mse"]
            + self.kl_weight * terms["kl"]
            + self.adv_rec_weight * terms["adv_reconstruction"]
            + self.adv_sample_weight * terms["adv_sample"]
        )
        if "ssim" in terms:
            loss = loss + self.ssim_weight * terms["ssim"]
        return loss

    # -- training ------------------------------------------------------------------------------------
    def configure_optimizers(self, lr: float, total_steps: int) -> None:
        vae_parameters = list(self.encoder.parameters()) + list(self.decoder.parameters())
        self.optimizers = {
            "vae": torch.optim.Adam(vae_parameters, lr=lr),
            "discriminator": torch.optim.Adam(
                self.discriminator.parameters(), lr=self.discriminator_lr or lr, betas=(0.5, 0.999)
            ),
        }

    def training_step(self, batch: Batch) -> dict[str, float]:
        self.train()
        image = batch["image"]
        terms = self.generator_terms(image)

        # Generator step first, against the current discriminator; its gradients reach D too, so clear them.
        generator_loss = self.generator_loss(terms)
        self.optimizers["vae"].zero_grad(set_to_none=True)
        generator_loss.backward()
        self.optimizers["vae"].step()

        fakes = torch.cat([terms["reconstruction_image"].detach(), terms["sample_image"].detach()])
        real_logits, fake_logits = self.discriminator(image * 2 - 1), self.discriminator(fakes)
        discriminator_loss = judged_real_loss(real_logits) + judged_fake_loss(fake_logits)
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        discriminator_loss.backward()
        self.optimizers["discriminator"].step()

        losses = {"loss": float(generator_loss.detach()), "discriminator": float(discriminator_loss.detach())}
        for name in ("mse", "kl", "adv_reconstruction", "adv_sample", "ssim"):
            if name in terms:
                losses[name] = float(terms[name].detach())
        return losses

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> float:
        """The VAE's objective from the mean latent (adversarial terms say little about fit)."""
        self.eval()
        target = batch["image"] * 2 - 1
        mu, logvar = self.encoder(target)
        mse = F.mse_loss(self.decoder(mu), target)
        return float(mse + self.kl_weight * gaussian_kl(mu, logvar).mean())

    # -- scoring -------------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = image * 2 - 1
        mu, logvar = self.encoder(target)
        difference = self.decoder(mu) - target
        error = difference.pow(2) if self.error == "squared" else difference.abs()
        anomaly_map = error.mean(dim=1, keepdim=True)
        if self.score == "discriminator":
            score = torch.sigmoid(-self.discriminator(target))
        else:
            score = anomaly_map.flatten(1).mean(dim=1)
            if self.score_kl_weight > 0:
                score = score + self.score_kl_weight * gaussian_kl(mu, logvar)
        return score, anomaly_map

    def components(self) -> dict[str, Component]:
        return {
            "encoder": Component(
                _UnitRangeEncoder(self.encoder),
                self.example_images,
                ["image"],
                ["mu", "logvar"],
                "image [N,C,H,W] in [0,1] -> posterior mean and log-variance [N,latent]",
            ),
            "decoder": Component(
                _UnitRangeDecoder(self.decoder),
                lambda n: self.example_latents(n, self.latent_dim),
                ["z"],
                ["image"],
                "latent z [N,latent] -> image [N,C,H,W] in [0,1]",
            ),
            "discriminator": Component(
                _UnitRangeDiscriminator(self.discriminator),
                self.example_images,
                ["image"],
                ["real_probability"],
                "image [N,C,H,W] in [0,1] -> probability [N] that it is a real normal image",
            ),
        }

    @torch.no_grad()
    def visuals(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.eval()
        mu, _ = self.encoder(image * 2 - 1)
        return {"reconstruction": (self.decoder(mu) + 1) / 2}

    @torch.no_grad()
    def prior_samples(self, count: int) -> torch.Tensor:
        self.eval()
        z = torch.randn(count, self.latent_dim, device=self.encoder.mu.weight.device)
        return (self.decoder(z) + 1) / 2
