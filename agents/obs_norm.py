"""Observation normalisation: each element of the observation (each pixel of each stacked frame,
after the 1/255 scaling) shifted by its running mean and divided by its running standard
deviation, then clipped to [-clip, clip] (Sample Factory's and Stable-Baselines' `normalize_input`).

On Atari this subtracts the static screen: the walls, the bricks that are still there and the
score digits become ~0, and what moves (ball, paddle) stands out, from the first update on. The
statistics are buffers of the agent, so they travel with the published weights and the
checkpoint; the learner updates them from every batch (`update`) before its forward pass.
"""
import torch
from torch import nn


class ObservationNorm(nn.Module):
    def __init__(self, shape, clip=5.0, eps=1e-5):
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        """x [N, *shape] (float) -> normalised and clipped, in x's dtype."""
        inv_std = torch.rsqrt(self.var + self.eps)
        return ((x - self.mean.to(x.dtype)) * inv_std.to(x.dtype)).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, x):
        """Merge the mean and (population) variance of the observations x [N, *shape] into the
        running ones (Chan et al.'s parallel update: exact, whatever the batch sizes)."""
        x = x.float()
        n = x.shape[0]
        batch_mean, batch_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        w = float(n / total)
        delta = batch_mean - self.mean
        self.mean.add_(delta * w)
        self.var.copy_(self.var * (1 - w) + batch_var * w + delta ** 2 * (w * (1 - w)))
        self.count.copy_(total)
