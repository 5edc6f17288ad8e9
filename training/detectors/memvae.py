"""Memory-augmented VAE (``memvae``): a VAE whose decoder only sees combinations of learned memory slots.

encoder (stride-2 convs) -> mu, logvar -> z -> linear -> memory -> decoder (transposed convs, sigmoid).

The memory reads ``w = softmax(q Mᵀ)`` over ``memory_slots`` slots, hard-shrinks it
(``w' = relu(w - λ) · w / (|w - λ| + ε)``, λ = ``shrink_threshold``, about 1 / slots), renormalises it to
sum to 1 and outputs ``w' M``. Normal images are rebuilt from a few slots; anomalies cannot be, so their
reconstruction error is high.

Loss (all terms are means, so their weights do not depend on the image size or batch):
- reconstruction: mean squared error per element;
- ``kl_weight`` · KL / (C·H·W): the per-sample KL (summed over the latent) divided by the number of image
  elements, which keeps the ELBO's ratio between its two terms when the reconstruction is a per-element mean;
- ``entropy_weight`` · mean entropy of w' (nats per sample), as MemAE weighs it (2e-4) against a
  per-element mean reconstruction. The original VAE summed its reconstruction, against which 2e-4 is a
  no-op; with the mean it is a real push towards sparse addressing.

Score (deterministic: the mean latent μ, never a sample; never rounded): the mean of the anomaly map
(squared or absolute error, mean over channels) plus ``score_kl_weight`` · KL / (C·H·W).
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

#: Defaults of the two published settings, selectable with ``preset``.
PRESETS = {
    "mnist": {"memory_slots": 100, "memory_dim": 64, "latent_dim": 16},
    "cifar10": {"memory_slots": 500, "memory_dim": 32, "latent_dim": 8},
}


class Memory(nn.Module):
    """Soft attention over ``slots`` learned vectors with hard shrinkage of the addressing weights."""

    def __init__(
        self, slots: int, dim: int, shrink_threshold: float | None = None, eps: float = 1e-12
    ) -> None:
        super().__init__()
        bound = 1.0 / dim**0.5
        self.slots = nn.Parameter(torch.empty(slots, dim).uniform_(-bound, bound))
        self.shrink_threshold = 1.0 / slots if shrink_threshold is None else float(shrink_threshold)
        self.eps = eps

    def addressing(self, query: torch.Tensor) -> torch.Tensor:
        """Shrunk, L1-renormalised addressing weights ``[N, slots]``: sparse, non-negative, summing to 1."""
        weights = torch.softmax(query @ self.slots.t(), dim=1)
        shifted = weights - self.shrink_threshold
        weights = F.relu(shifted) * weights / (shifted.abs() + self.eps)
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(self.eps)

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.addressing(query)
        return weights @ self.slots, weights


class MemoryDecoder(nn.Module):
    """z -> linear query -> memory read -> image in [0, 1] (the ``memory_decoder`` component)."""

    def __init__(self, latent_dim: int, memory: Memory, decoder: ConvDecoder) -> None:
        super().__init__()
        self.query = nn.Linear(latent_dim, memory.slots.shape[1])
        self.memory = memory
        self.decoder = decoder

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        read, weights = self.memory(self.query(z))
        return self.decoder(read), weights


class GaussianEncoder(nn.Module):
    """Image in [0, 1] -> (mu, logvar) (the ``encoder`` component)."""

    def __init__(self, features: ConvEncoder, feature_count: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.features = features
        self.hidden = nn.Sequential(nn.Linear(feature_count, hidden), nn.ReLU(inplace=True))
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(self.features(image))
        return self.mu(hidden), self.logvar(hidden)


@register
class MemVAE(Detector):
    """Memory-augmented VAE scored by its reconstruction error from the mean latent.

    Options: ``preset`` (``mnist`` or ``cifar10``: defaults of ``memory_slots``, ``memory_dim``,
    ``latent_dim``), ``shrink_threshold`` (None: 1 / slots), ``base_width`` / ``max_width`` (conv blocks),
    ``hidden_dim`` (the encoder's hidden layer), ``kl_weight`` (KL in the loss), ``entropy_weight``
    (addressing entropy in the loss), ``error`` (``squared`` or ``abs``), ``score_kl_weight`` (KL in the
    score), ``weight_decay`` (Adam).
    """

    name = "memvae"

    def __init__(
        self,
        input_size: tuple[int, int],
        channels: int,
        preset: str = "mnist",
        memory_slots: int | None = None,
        memory_dim: int | None = None,
        latent_dim: int | None = None,
        shrink_threshold: float | None = None,
        base_width: int = 16,
        max_width: int = 128,
        hidden_dim: int = 128,
        kl_weight: float = 1.0,
        entropy_weight: float = 2e-4,
        error: str = "squared",
        score_kl_weight: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(input_size, channels)
        if preset not in PRESETS:
            raise ValueError(f"unknown preset '{preset}'; use one of {', '.join(PRESETS)}")
        if error not in ("squared", "abs"):
            raise ValueError(f"error must be 'squared' or 'abs', got '{error}'")
        settings = dict(PRESETS[preset])
        for key, value in (
            ("memory_slots", memory_slots),
            ("memory_dim", memory_dim),
            ("latent_dim", latent_dim),
        ):
            if value is not None:
                settings[key] = int(value)
        self.latent_dim = settings["latent_dim"]
        self.kl_weight = float(kl_weight)
        self.entropy_weight = float(entropy_weight)
        self.error = error
        self.score_kl_weight = float(score_kl_weight)
        self.weight_decay = float(weight_decay)

        sizes = halving_sizes(self.input_size)
        widths = block_widths(len(sizes) - 1, base_width, max_width)
        feature_count = widths[-1] * sizes[-1][0] * sizes[-1][1]
        self.encoder = GaussianEncoder(
            ConvEncoder(self.channels, widths, batch_norm=False, activation="relu"),
            feature_count,
            hidden_dim,
            self.latent_dim,
        )
        memory = Memory(settings["memory_slots"], settings["memory_dim"], shrink_threshold)
        decoder = ConvDecoder(
            settings["memory_dim"],
            self.channels,
            widths,
            sizes,
            batch_norm=False,
            activation="relu",
            output="sigmoid",
        )
        self.memory_decoder = MemoryDecoder(self.latent_dim, memory, decoder)

    # -- model ---------------------------------------------------------------------------------------
    def _pixel_error(self, reconstruction: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        difference = reconstruction - image
        return difference.pow(2) if self.error == "squared" else difference.abs()

    def _losses(self, image: torch.Tensor, sample: bool) -> dict[str, torch.Tensor]:
        mu, logvar = self.encoder(image)
        z = reparameterize(mu, logvar) if sample else mu
        reconstruction, weights = self.memory_decoder(z)
        elements = image[0].numel()
        reconstruction_loss = F.mse_loss(reconstruction, image)
        kl = gaussian_kl(mu, logvar).mean() / elements
        entropy = -(weights * torch.log(weights + 1e-12)).sum(dim=1).mean()
        total = reconstruction_loss + self.kl_weight * kl + self.entropy_weight * entropy
        return {"loss": total, "reconstruction": reconstruction_loss, "kl": kl, "entropy": entropy}

    # -- training ------------------------------------------------------------------------------------
    def configure_optimizers(self, lr: float, total_steps: int) -> None:
        self.optimizers = {"vae": torch.optim.Adam(self.parameters(), lr=lr, weight_decay=self.weight_decay)}

    def training_step(self, batch: Batch) -> dict[str, float]:
        self.train()
        losses = self._losses(batch["image"], sample=True)
        optimizer = self.optimizers["vae"]
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        return {name: float(value.detach()) for name, value in losses.items()}

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> float:
        self.eval()
        return float(self._losses(batch["image"], sample=False)["loss"])

    # -- scoring -------------------------------------------------------------------------------------
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(image)
        reconstruction, _ = self.memory_decoder(mu)
        anomaly_map = self._pixel_error(reconstruction, image).mean(dim=1, keepdim=True)
        score = anomaly_map.flatten(1).mean(dim=1)
        if self.score_kl_weight > 0:
            score = score + self.score_kl_weight * gaussian_kl(mu, logvar) / image[0].numel()
        return score, anomaly_map

    def components(self) -> dict[str, Component]:
        return {
            "encoder": Component(
                self.encoder,
                self.example_images,
                ["image"],
                ["mu", "logvar"],
                "image [N,C,H,W] in [0,1] -> posterior mean and log-variance [N,latent]",
            ),
            "memory_decoder": Component(
                self.memory_decoder,
                lambda n: self.example_latents(n, self.latent_dim),
                ["z"],
                ["reconstruction", "memory_weights"],
                "latent z [N,latent] -> memory read -> image [N,C,H,W] in [0,1], and the shrunk addressing "
                "weights [N,slots]",
            ),
        }

    @torch.no_grad()
    def visuals(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        self.eval()
        mu, _ = self.encoder(image)
        return {"reconstruction": self.memory_decoder(mu)[0]}

    @torch.no_grad()
    def prior_samples(self, count: int) -> torch.Tensor:
        self.eval()
        z = torch.randn(count, self.latent_dim, device=self.memory_decoder.memory.slots.device)
        return self.memory_decoder(z)[0]
