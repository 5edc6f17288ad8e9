"""Batch-norm statistics recomputed for the final weights: the exact averages, untouched layers kept."""

from __future__ import annotations

import torch
from torch import nn

from inspector.training.batchnorm import recompute_batchnorm


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4, momentum=0.3)
        self.dropout = nn.Dropout(0.5)
        self.critic_norm = nn.BatchNorm2d(4)  # trained elsewhere, never on the forward path

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.norm(self.conv(image)))


def test_statistics_become_the_average_over_the_inputs_and_unreached_layers_keep_theirs():
    torch.manual_seed(0)
    net = _Net().eval()
    net.critic_norm.running_mean.fill_(2.0)
    net.critic_norm.num_batches_tracked.fill_(7)
    inputs = [torch.randn(5, 3, 8, 8) * (index + 1) + index for index in range(3)]
    random_state = torch.get_rng_state()

    assert recompute_batchnorm(net, inputs) == 1

    with torch.no_grad():
        features = [net.conv(image) for image in inputs]
    batch_means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features])
    batch_variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features])
    torch.testing.assert_close(net.norm.running_mean, batch_means.mean(0))
    torch.testing.assert_close(net.norm.running_var, batch_variances.mean(0))
    assert int(net.norm.num_batches_tracked) == 3
    assert net.norm.momentum == 0.3 and not net.training
    assert (net.critic_norm.running_mean == 2.0).all() and int(net.critic_norm.num_batches_tracked) == 7
    assert torch.equal(torch.get_rng_state(), random_state), "dropout draws must not move the random stream"
