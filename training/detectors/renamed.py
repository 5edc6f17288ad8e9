"""Detector options that were renamed, in one table: a one-line error for configs, an upgrade for checkpoints.

The detectors share one vocabulary for their options (issue 10): one name per meaning, one meaning per name.

- ``base_width``: channels of a network's first block (doubling per block up to ``max_width``);
  ``<network>_width`` for the first block of a named network (``discriminator_width``,
  ``reconstruction_width``, ``segmentation_width``).
- ``latent_dim``: length of the latent code.
- ``kl_weight``: weight of the KL divergence in the training loss (``score_kl_weight`` in the score).
- ``rec_weight``: weight of the reconstruction error in the generator's (or reconstructor's) loss.
- ``adv_rec_weight``: weight of the generator-side adversarial term on the reconstruction, D(x̂);
  ``adv_sample_weight`` on samples from the prior, D(G(z)); ``adv_seg_weight`` on the anomaly map.

A user's config that still uses an old name gets one line naming the new one (:func:`check_renamed_options`);
a checkpoint written before the rename stores the old names and is read through :func:`upgrade_options`
(the renames changed no weights: the state dicts are the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inspector.errors import InspectorError

#: detector -> {old option name: new option name}.
RENAMED: dict[str, dict[str, str]] = {
    "alocc": {"width": "base_width"},
    "bigan": {"width": "base_width", "latent_size": "latent_dim", "cycle_weight": "rec_weight"},
    "advvae": {
        "kld_weight": "kl_weight",
        "recon_weight": "adv_rec_weight",
        "gen_weight": "adv_sample_weight",
        "discriminator_base_width": "discriminator_width",
    },
}


def check_renamed_options(name: str, options: Mapping[str, Any] | None) -> None:
    """Refuse, in one line naming the new names, ``options`` of detector ``name`` that use an old name.

    Raises:
        InspectorError: one line, e.g.
            ``detector 'advvae': detector_options 'recon_weight' was renamed 'adv_rec_weight'``.
    """
    renamed = RENAMED.get(name, {})
    old = [key for key in (options or {}) if key in renamed]
    if old:
        changes = "; ".join(f"'{key}' was renamed '{renamed[key]}'" for key in old)
        raise InspectorError(f"detector '{name}': detector_options {changes}")


def upgrade_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` of detector ``name`` with old names replaced by the new ones (for old checkpoints).

    Example:
        >>> upgrade_options("bigan", {"latent_size": 64, "alpha": 0.9})
        {'latent_dim': 64, 'alpha': 0.9}
    """
    renamed = RENAMED.get(name, {})
    return {renamed.get(key, key): value for key, value in options.items()}
