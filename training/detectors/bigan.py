"""BiGAN / EGBAD: an encoder E, a generator G and a discriminator D on (image, latent) pairs.

Trained as BiGAN proper (Donahue et al. 2017; used for anomalies by Zenati et al. 2018): D tells
``(x, E(x))`` from ``(G(z), z)``; E and G are trained together to fool it (E pushes its pairs towards
"generated", G towards "real"), so at the optimum E inverts G.

Score per sample (raw, higher = more anomalous):
``alpha * mean|x - G(E(x))| + (1 - alpha) * discriminator term``, where the term is the cross-entropy
``-log D(x, E(x))`` (``score_term: cross_entropy``) or the mean L1 distance between D's joint features
on ``(x, E(x))`` and ``(G(E(x)), E(x))`` (``feature_matching``). The anomaly map is ``|x - G(E(x))|``
averaged over channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inspector.errors import InspectorError
from inspector.training.detectors.base import Batch, Component, Detector, register
from inspector.training.detectors.vae_parts import ConvDecoder, ConvEncoder, block_widths, halving_sizes
from inspector.training.losses import judged_fake_loss, judged_real_loss

SCORE_TERMS = ("cross_entropy", "feature_matching")


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class SpectralNorm(nn.Module):
    """Weight parametrization ``W / sigma(W)``, sigma by one power iteration per training forward.

    Our own rather than torch's, whose eval-mode graph uses ``vdot``, which ONNX cannot express; here
    sigma is a plain product and sum, so the discriminator component exports.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        matrix = weight.detach().flatten(1)
        self.register_buffer("u", F.normalize(torch.randn(matrix.shape[0]), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(matrix.shape[1]), dim=0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)
        if self.training:
            with torch.no_grad():
                self.v.copy_(F.normalize(matrix.t() @ self.u, dim=0))
                self.u.copy_(F.normalize(matrix @ self.v, dim=0))
        # Clones: D runs twice before one backward, and the next update must not alter saved tensors.
        sigma = (self.u.clone() * (matrix @ self.v.clone())).sum()
        return weight / sigma


class Encoder(nn.Module):
    """Image -> latent code: stride-2 conv blocks, then a linear layer (unbounded, like the N(0, I) prior)."""

    def __init__(
        self, channels: int, widths: list[int], sizes: list[tuple[int, int]], latent_dim: int
    ) -> None:
        super().__init__()
        self.features = ConvEncoder(
            channels, widths, batch_norm=True, activation="leaky_relu", first_batch_norm=False
        )
        self.to_latent = nn.Linear(widths[-1] * sizes[-1][0] * sizes[-1][1], latent_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.features(image))


class JointDiscriminator(nn.Module):
    """D(x, z): an image path (conv blocks), a latent path (MLP) and a joint head -> (logit, joint features)."""

    def __init__(
        self,
        channels: int,
        widths: list[int],
        sizes: list[tuple[int, int]],
        latent_dim: int,
        hidden: int = 512,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.image_path = nn.Sequential(
            ConvEncoder(channels, widths, batch_norm=False, activation="leaky_relu"), nn.Dropout(dropout)
        )
        self.latent_path = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout)
        )
        image_features = widths[-1] * sizes[-1][0] * sizes[-1][1]
        self.joint = nn.Sequential(
            nn.Linear(image_features + hidden, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout)
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, image: torch.Tensor, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.joint(torch.cat([self.image_path(image), self.latent_path(latent)], dim=1))
        return self.head(features).squeeze(1), features


@register
class BiGAN(Detector):
    """Bidirectional GAN anomaly detector (EGBAD).

    Options: ``latent_dim`` (128), ``base_width`` / ``max_width`` / ``smallest`` (conv blocks, as in the
    VAEs), ``alpha`` (weight of the reconstruction in the score, 0.9), ``score_term`` (``cross_entropy`` or
    ``feature_matching``), ``spectral_norm`` (on every layer of D), ``label_smoothing`` (real targets
    U(0.9, 1)), ``instance_noise`` (std of Gaussian noise on D's images, decaying linearly to 0 over the
    run), ``dropout`` (in D, 0.2), ``rec_weight`` (0: BiGAN proper; > 0 adds ``rec_weight`` times the
    reconstruction error ``mean|x - G(E(x))|`` to E and G's loss, an ALICE-style cycle term, which
    sharpens reconstructions), ``betas`` (Adam, (0.5, 0.999)).
    """

    name = "bigan"

    def __init__(
        self,
        input_size: tuple[int, int],
        channels: int,
        latent_dim: int = 128,
        base_width: int = 32,
        max_width: int = 256,
        smallest: int = 4,
        alpha: float = 0.9,
        score_term: str = "cross_entropy",
        spectral_norm: bool = False,
        label_smoothing: bool = False,
        instance_noise: float = 0.0,
        dropout: float = 0.2,
        rec_weight: float = 0.0,
        betas: tuple[float, float] = (0.5, 0.999),
    ) -> None:
        super().__init__(input_size, channels)
        if score_term not in SCORE_TERMS:
            raise InspectorError(
                f"bigan: detector_options.score_term must be one of {', '.join(SCORE_TERMS)}, got '{score_term}'"
            )
        sizes = halving_sizes(self.input_size, smallest)
        widths = block_widths(len(sizes) - 1, base_width, max_width)
        self.latent_dim = int(latent_dim)
        self.encoder = Encoder(channels, widths, sizes, self.latent_dim)
        self.generator = ConvDecoder(
            self.latent_dim, channels, widths, sizes, batch_norm=True, activation="relu", output="sigmoid"
        )
        self.discriminator = JointDiscriminator(channels, widths, sizes, self.latent_dim, dropout=dropout)
        self.apply(_init_weights)
        if spectral_norm:
            for module in list(self.discriminator.modules()):
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrize.register_parametrization(
                        module, "weight", SpectralNorm(module.weight)
                    )
        self.alpha = float(alpha)
        self.score_term = score_term
        self.label_smoothing = bool(label_smoothing)
        self.instance_noise = float(instance_noise)
        self.rec_weight = float(rec_weight)
        self.betas = (float(betas[0]), float(betas[1]))
        self._total_steps = 1
        # Steps taken, in the state dict so that the instance-noise schedule survives a resume.
        self.register_buffer("steps_taken", torch.zeros((), dtype=torch.long))

    def configure_optimizers(self, lr: float, total_steps: int) -> None:
        generator_params = list(self.encoder.parameters()) + list(self.generator.parameters())
        self.optimizers = {
            "encoder_generator": torch.optim.Adam(generator_params, lr=lr, betas=self.betas),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=self.betas),
        }
        self._total_steps = max(1, int(total_steps))

    def _noisy(self, image: torch.Tensor) -> torch.Tensor:
        std = self.instance_noise * max(0.0, 1.0 - int(self.steps_taken) / self._total_steps)
        return image + std * torch.randn_like(image) if std > 0 else image

    def training_step(self, batch: Batch) -> dict[str, float]:
        image = batch["image"]
        prior = torch.randn(image.shape[0], self.latent_dim, device=image.device)
        disc = self.discriminator

        with torch.no_grad():
            code, generated = self.encoder(image), self.generator(prior)
        disc.requires_grad_(True)
        real_logit, _ = disc(self._noisy(image), code)
        fake_logit, _ = disc(self._noisy(generated), prior)
        real_target = torch.ones_like(real_logit)
        if self.label_smoothing:
            real_target = real_target - 0.1 * torch.rand_like(real_logit)
        d_loss = F.binary_cross_entropy_with_logits(real_logit, real_target) + judged_fake_loss(fake_logit)
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        self.optimizers["discriminator"].step()

        disc.requires_grad_(False)  # E and G's step must not touch D
        code, generated = self.encoder(image), self.generator(prior)
        real_logit, _ = disc(self._noisy(image), code)
        fake_logit, _ = disc(self._noisy(generated), prior)
        # Swapped labels: E wants its pairs judged generated, G wants its pairs judged real.
        eg_loss = judged_fake_loss(real_logit) + judged_real_loss(fake_logit)
        losses = {"d_loss": float(d_loss.detach()), "eg_loss": float(eg_loss.detach())}
        if self.rec_weight > 0:
            rec_error = (self.generator(code) - image).abs().mean()
            eg_loss = eg_loss + self.rec_weight * rec_error
            losses["rec_error"] = float(rec_error.detach())
        self.optimizers["encoder_generator"].zero_grad(set_to_none=True)
        eg_loss.backward()
        self.optimizers["encoder_generator"].step()
        disc.requires_grad_(True)
        self.steps_taken += 1
        return losses

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> float:
        """Mean L1 reconstruction error G(E(x)) on validation normals (lower = E and G invert each other)."""
        image = batch["image"]
        return float((self.generator(self.encoder(image)) - image).abs().mean())

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(image)
        reconstruction = self.generator(code)
        difference = (image - reconstruction).abs()
        reconstruction_error = difference.flatten(1).mean(dim=1)
        logit, features = self.discriminator(image, code)
        if self.score_term == "cross_entropy":
            disc_term = F.softplus(-logit)  # -log D(x, E(x)): high when D calls a real pair generated
        else:
            _, generated_features = self.discriminator(reconstruction, code)
            disc_term = (features - generated_features).abs().mean(dim=1)
        score = self.alpha * reconstruction_error + (1.0 - self.alpha) * disc_term
        return score, difference.mean(dim=1, keepdim=True)

    def components(self) -> dict[str, Component]:
        channels, (height, width), latent = self.channels, self.input_size, self.latent_dim
        shape = f"[N,{channels},{height},{width}]"
        return {
            "encoder": Component(
                self.encoder,
                self.example_images,
                ["image"],
                ["latent"],
                f"image {shape} in [0,1] -> latent [N,{latent}]",
            ),
            "generator": Component(
                self.generator,
                lambda n: self.example_latents(n, latent),
                ["latent"],
                ["image"],
                f"latent [N,{latent}] (prior N(0, I)) -> image {shape} in [0,1]",
            ),
            "discriminator": Component(
                self.discriminator,
                lambda n: (*self.example_images(n), *self.example_latents(n, latent)),
                ["image", "latent"],
                ["logit", "features"],
                f"image {shape}, latent [N,{latent}] -> logit of P(real pair) [N], joint features [N,512]",
            ),
        }

    @torch.no_grad()
    def visuals(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction": self.generator(self.encoder(image))}

    @torch.no_grad()
    def prior_samples(self, count: int) -> torch.Tensor:
        """``G(z)`` for ``count`` draws of ``z ~ N(0, I)``."""
        device = next(self.generator.parameters()).device
        return self.generator(torch.randn(count, self.latent_dim, device=device))
