"""Observation normalisation: each element of the observation (each pixel of each stacked frame,
after the 1/255 scaling) shifted by its running mean and divided by its running standard
deviation, then clipped to [-clip, clip] (Sample Factory's and Stable-Baselines' `normalize_input`).

On Atari this subtracts the static screen: the walls, the bricks that are still there and the
score digits become ~0, and what moves (ball, paddle) stands out, from the first update on. The
statistics are buffers of the agent, so they travel with the published weights and the
checkpoint; the learner merges each batch's moments into them before normalising that batch
(learner.Learner.prepare, one batch ahead of the update, in the service's loader thread).
"""
import torch
from torch import nn


def batch_moments(x, scale=1.0):
    """(n, mean, population variance) over the first dim of x * scale [N, *shape]: one pass of sums
    over x as given (e.g. uint8 frames) instead of a scaled float copy, squared in place."""
    n = x.shape[0]
    flat = x.reshape(n, -1).to(torch.float32, copy=True)   # ours: squared in place below
    mean = flat.sum(0) * (scale / n)
    var = (flat.square_().sum(0) * (scale * scale / n) - mean ** 2).clamp_min_(0)
    return n, mean.view(x.shape[1:]), var.view(x.shape[1:])


def merged(stats, moments):
    """The running (mean, var, count) `stats` with a batch's `moments` merged in, as new tensors
    (Chan et al.'s parallel update: exact, whatever the batch sizes)."""
    mean, var, count = stats
    n, batch_mean, batch_var = moments
    total = count + n
    w = float(n / total)
    delta = batch_mean - mean
    return mean + delta * w, var * (1 - w) + batch_var * w + delta ** 2 * (w * (1 - w)), total


class ObservationNorm(nn.Module):
    def __init__(self, shape, clip=5.0, eps=1e-5):
        super().__init__()
        self.clip, self.eps = clip, eps
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("var", torch.ones(shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self._affine_cache = None   # (key, (mul, add)) of the module's own statistics, see _affine

    def __getstate__(self):
        # A copy's buffers restart their version counters, so the kept (mul, add) must not travel.
        return {**self.__dict__, "_affine_cache": None}

    def stats(self):
        """The running (mean, var, count), as this module holds them (not copies)."""
        return self.mean, self.var, self.count

    @torch.no_grad()
    def set_stats(self, stats):
        for buffer, value in zip(self.stats(), stats):
            buffer.copy_(value)

    def forward(self, x, scale=1.0, inplace=False, stats=None):
        """x [N, *shape] (float, in units of `scale`: frames as bytes with scale 1/255) -> x * scale
        normalised and clipped, in x's dtype: one fused multiply-add (scale folded into it).
        inplace: overwrite x (the caller's own float copy of the frames: no second buffer).
        stats: (mean, var, count) to normalise by instead of the module's own."""
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        mul, add = self._affine(scale, x.dtype, channels_last, stats)
        return torch.addcmul(add, x, mul, out=x if inplace else None).clamp_(-self.clip, self.clip)

    def _affine(self, scale, dtype, channels_last, stats):
        """(mul, add) with x * mul + add = (x * scale - mean) / sqrt(var + eps). For the module's own
        statistics they are kept until those change: an actor normalises every step with the
        statistics of the weights it last loaded, and recomputing these every step (six small ops)
        cost about as much as normalising 8 envs' frames. A change is any in-place write to the
        buffers (load_state_dict, set_stats, update: each bumps the tensor's version counter) or
        new buffers (.to()); a copy (pickle, deepcopy) starts without them (__getstate__)."""
        mean, var, _ = self.stats() if stats is None else stats
        key = None if stats is not None else \
            (mean.data_ptr(), mean._version, var.data_ptr(), var._version, scale, dtype, channels_last)
        if key is not None and self._affine_cache is not None and self._affine_cache[0] == key:
            return self._affine_cache[1]
        inv_std = torch.rsqrt(var + self.eps)
        mul, add = (inv_std * scale).to(dtype), (-mean * inv_std).to(dtype)
        if channels_last:
            # Statistics laid out as x: with NCHW statistics the result comes out NCHW and the
            # conv torso copies it back to channels-last, in its forward and again in its backward.
            mul, add = (s[None].contiguous(memory_format=torch.channels_last) for s in (mul, add))
        if key is not None:
            self._affine_cache = (key, (mul, add))
        return mul, add

    @torch.no_grad()
    def update(self, x, scale=1.0):
        """Merge the mean and (population) variance of the observations x * scale [N, *shape] into
        the running ones (batch_moments, then merged)."""
        self.set_stats(merged(self.stats(), batch_moments(x, scale)))
