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

    def forward(self, x, scale=1.0, inplace=False):
        """x [N, *shape] (float, in units of `scale`: frames as bytes with scale 1/255) -> x * scale
        normalised and clipped, in x's dtype: one fused multiply-add (scale folded into it).
        inplace: overwrite x (the caller's own float copy of the frames: no second buffer)."""
        inv_std = torch.rsqrt(self.var + self.eps)
        mul, add = (inv_std * scale).to(x.dtype), (-self.mean * inv_std).to(x.dtype)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # Statistics laid out as x: with NCHW statistics the result comes out NCHW and the
            # conv torso copies it back to channels-last, in its forward and again in its backward.
            mul, add = (s[None].contiguous(memory_format=torch.channels_last) for s in (mul, add))
        if inplace:
            return x.mul_(mul).add_(add).clamp_(-self.clip, self.clip)
        return torch.addcmul(add, x, mul).clamp_(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, x, scale=1.0):
        """Merge the mean and (population) variance of the observations x * scale [N, *shape] into
        the running ones (Chan et al.'s parallel update: exact, whatever the batch sizes). One pass
        of sums over x as given (e.g. the uint8 frames) instead of scaled float copies, squared in
        place: the learner does this on every batch (15 ms instead of 34 for 336 Atari stacks)."""
        n = x.shape[0]
        flat = x.reshape(n, -1).to(torch.float32, copy=True)   # ours: squared in place below
        batch_mean = flat.sum(0) * (scale / n)
        batch_var = (flat.square_().sum(0) * (scale * scale / n) - batch_mean ** 2).clamp_min_(0)
        batch_mean, batch_var = batch_mean.view_as(self.mean), batch_var.view_as(self.var)
        total = self.count + n
        w = float(n / total)
        delta = batch_mean - self.mean
        self.mean.add_(delta * w)
        self.var.copy_(self.var * (1 - w) + batch_var * w + delta ** 2 * (w * (1 - w)))
        self.count.copy_(total)
