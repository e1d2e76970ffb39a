"""PopArt (van Hasselt et al., 2016; Hessel et al., 2019, for IMPALA): the baseline head predicts a
normalised value n(x); the value is V(x) = σ n(x) + μ, with μ and σ² running estimates of the
mean and variance of the V-trace targets. After each update the statistics move towards the
batch's targets ("adaptively rescaling targets") and the head's weights are rescaled so that V(x)
is unchanged for every x ("preserving outputs precisely"):

    w' = σ / σ' · w,        b' = (σ b + μ − μ') / σ'.

The value loss is taken on the normalised scale, (v_s − μ) / σ against n(x_s), and the policy
gradient's advantages are divided by σ: both then have a scale independent of the game's rewards.
"""
import torch
from torch import nn


class PopArt(nn.Module):
    def __init__(self, beta, min_sigma=1e-4, max_sigma=1e6):
        super().__init__()
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"learner.popart_beta must lie in (0, 1], got {beta}")
        self.beta, self.min_sigma, self.max_sigma = beta, min_sigma, max_sigma
        self.register_buffer("mu", torch.zeros((), dtype=torch.float64))
        self.register_buffer("nu", torch.ones((), dtype=torch.float64))   # second moment: σ starts at 1

    @property
    def sigma(self):
        variance = (self.nu - self.mu ** 2).clamp(min=self.min_sigma ** 2)
        return torch.sqrt(variance).clamp(max=self.max_sigma)

    def denormalize(self, n):
        return (n * self.sigma + self.mu).to(n.dtype)

    def normalize(self, v):
        return ((v - self.mu) / self.sigma).to(v.dtype)

    @torch.no_grad()
    def update(self, targets, head):
        """Move μ, ν towards the mean and second moment of `targets` (the batch's V-trace targets,
        unnormalised) and rescale `head` (the nn.Linear giving n(x)) so that V(x) is unchanged."""
        t = targets.double()
        mu, sigma = self.mu.clone(), self.sigma
        self.mu.mul_(1 - self.beta).add_(self.beta * t.mean())
        self.nu.mul_(1 - self.beta).add_(self.beta * (t ** 2).mean())
        new_sigma = self.sigma
        w, b = head.weight, head.bias
        w.copy_((w.double() * (sigma / new_sigma)).to(w.dtype))
        b.copy_(((b.double() * sigma + mu - self.mu) / new_sigma).to(b.dtype))
