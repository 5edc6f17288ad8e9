"""The one small interface every detector implements, and the registry that names them.

A detector is an ``nn.Module`` that:
- is built from ``(input_size, channels, **options)`` (options come from ``detector_options`` in the config);
- owns its networks and optimizers (GAN-style detectors need several) and says how their learning rates
  change over the run (:meth:`Detector.lr_multiplier` of the run's progress, steps or time);
- takes one training step on a batch (:meth:`Detector.training_step`), doing its own backward passes;
- scores images in [0, 1] in :meth:`Detector.forward`, returning the raw image score ``[N]`` and the raw
  anomaly map ``[N, 1, H, W]``: ``forward`` *is* the fused scoring graph that export writes to ONNX;
- declares its exportable parts in :meth:`Detector.components`.

Adding a detector is writing one module under ``training/detectors/`` that subclasses :class:`Detector`
and decorates it with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from inspector.errors import InspectorError
from inspector.training.detectors.renamed import check_renamed_options

Batch = dict[str, torch.Tensor]


@dataclass
class Component:
    """One exportable part of a detector (an encoder, a generator, a discriminator...).

    ``example_inputs`` builds example tensors for a batch size; the first dimension of every input and
    output is the dynamic batch. ``description`` documents the inputs and outputs for users.
    """

    module: nn.Module
    example_inputs: Callable[[int], tuple[torch.Tensor, ...]]
    input_names: list[str]
    output_names: list[str]
    description: str


class Detector(nn.Module):
    """Base class of every anomaly detector (see the module docstring for the contract)."""

    name: ClassVar[str] = ""
    #: The training batches carry DRAEM-style synthetic anomalies (``augmented``, ``mask``).
    uses_synthetic_anomalies: ClassVar[bool] = False
    #: When training ends, ``best.pt``'s batch-norm statistics are recomputed by running :meth:`forward` on
    #: training inputs (``augmented`` with synthetic anomalies, else ``image``): for detectors whose
    #: forward takes the path their training takes, on the same inputs (see ``training/batchnorm.py``).
    #: A class default that an instance may change with its options.
    recompute_batchnorm: bool = False
    #: Train in the channels-last memory layout: convolution-only networks train about 25 % faster on a
    #: CPU in it (oneDNN's native layout); networks that ``view`` their features must keep the default.
    channels_last: ClassVar[bool] = False

    def __init__(self, input_size: tuple[int, int], channels: int) -> None:
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.channels = int(channels)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @property
    def should_stop(self) -> bool:
        """True when the detector's own criterion (ALOCC's rho) ends training; read after validation."""
        return False

    def configure_optimizers(self, lr: float, total_steps: int) -> None:
        """Create ``self.optimizers`` for a run of ``total_steps`` steps at base learning rate ``lr``."""
        raise NotImplementedError

    def lr_multiplier(self, progress: float) -> float:
        """The learning rates' multiplier at ``progress`` (0 to 1) through the run; constant by default."""
        return 1.0

    def set_progress(self, progress: float) -> None:
        """Set every optimizer's learning rate for ``progress`` through the run.

        Progress is the larger of steps done / planned and time used / time limit, so a run cut by its
        time limit still goes through its whole schedule.
        """
        multiplier = self.lr_multiplier(min(max(progress, 0.0), 1.0))
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = group.setdefault("initial_lr", group["lr"]) * multiplier

    def training_step(self, batch: Batch) -> dict[str, float]:
        """One optimisation step (all of the detector's networks); returns the losses as floats.

        ``batch["image"]``: normal images ``[N, C, H, W]`` in [0, 1]. Detectors with
        ``uses_synthetic_anomalies`` also get ``batch["augmented"]`` (the image with a synthetic anomaly,
        or unchanged), ``batch["mask"]`` ``[N, 1, H, W]`` in {0, 1} and ``batch["has_anomaly"]`` ``[N]``.
        """
        raise NotImplementedError

    @torch.no_grad()
    def validation_loss(self, batch: Batch) -> float:
        """A loss on validation data (same keys as training), lower is better: picks ``best.pt``."""
        raise NotImplementedError

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw image score ``[N]`` and raw anomaly map ``[N, 1, H, W]`` for images in [0, 1]."""
        raise NotImplementedError

    def components(self) -> dict[str, Component]:
        """The detector's exportable parts, by file name (without ``.onnx``)."""
        raise NotImplementedError

    def example_images(self, batch_size: int) -> tuple[torch.Tensor]:
        """A seeded batch of images in [0, 1] at the input size: the example input of image-fed graphs."""
        generator = torch.Generator().manual_seed(0)
        return (torch.rand(batch_size, self.channels, *self.input_size, generator=generator),)

    def example_latents(self, batch_size: int, latent_dim: int) -> tuple[torch.Tensor]:
        """A seeded batch of N(0, I) latent codes ``[N, latent_dim]``: the example input of latent-fed graphs."""
        generator = torch.Generator().manual_seed(1)
        return (torch.randn(batch_size, latent_dim, generator=generator),)

    @torch.no_grad()
    def visuals(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images for the sample grids (e.g. ``{"reconstruction": x_hat}``), each ``[N, C, H, W]``."""
        return {}

    @torch.no_grad()
    def prior_samples(self, count: int) -> torch.Tensor | None:
        """Samples from the prior for generative detectors, ``[count, C, H, W]``; None for others."""
        return None

    def optimizer_state(self) -> dict[str, dict]:
        """Optimizer state for a resumable checkpoint (the learning rates follow from the progress)."""
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_optimizer_state(self, state: dict[str, dict]) -> None:
        for name, opt_state in state.get("optimizers", {}).items():
            self.optimizers[name].load_state_dict(opt_state)


_REGISTRY: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make a detector available by its ``name`` in configs and on the CLI.

    A detector must define ``forward`` (its scoring graph) and ``components`` to be registered.
    """
    if not cls.name:
        raise TypeError(f"{cls.__name__} must set a non-empty `name` to be registered")
    for method in ("forward", "components", "training_step", "configure_optimizers"):
        if getattr(cls, method) is getattr(Detector, method):
            raise TypeError(f"detector '{cls.name}' must implement {method}() to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"a detector named '{cls.name}' is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def detector_names() -> list[str]:
    """The registered detector names."""
    from inspector.training import detectors  # noqa: F401  (importing the package registers every detector)

    return sorted(_REGISTRY)


def get_detector_class(name: str) -> type[Detector]:
    """The detector class registered under ``name``.

    Raises:
        InspectorError: no such detector (the message lists the known ones).
    """
    names = detector_names()
    if name not in _REGISTRY:
        raise InspectorError(f"unknown detector '{name}'; choose one of: {', '.join(names)}")
    return _REGISTRY[name]


def build_detector(
    name: str, input_size: tuple[int, int], channels: int, options: dict | None = None
) -> Detector:
    """Build a registered detector from its name, input size, channel count and options."""
    cls = get_detector_class(name)
    check_renamed_options(name, options or {})
    try:
        return cls(input_size=tuple(input_size), channels=channels, **(options or {}))
    except TypeError as error:
        raise InspectorError(f"detector '{name}': bad detector_options ({error})") from None
