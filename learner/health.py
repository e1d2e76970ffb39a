"""Dead units: the fraction of each torso layer's units that never fire across a whole batch.

A unit (a channel of a conv layer, a feature of a Linear layer) counts as dead in a batch when its
output is <= 0 at every position of every frame: after the ReLU that follows it, it passes
nothing, and it gets no gradient. Logged as `model/dead_units/<layer>` (layer = module path, e.g.
`torso.net.0` for the first conv of the Nature torso, `fc` for the Linear after the torso). A
healthy net keeps these near zero; a jump early in training means the optimiser's first steps
killed units that will not come back.
"""
import contextlib

import torch
from torch import nn


class DeadUnits:
    def __init__(self, agent):
        self.layers = {name: m for name, m in agent.named_modules()
                       if (name.startswith("torso.") or name == "fc") and isinstance(m, (nn.Conv2d, nn.Linear))}
        self.fired = {}

    def _hook(self, name):
        def hook(module, inputs, output):
            x = output.detach()
            if x.dim() == 4:   # [N, C, H, W], channels-last in memory: a [N*H*W, C] view, C innermost
                x = x.permute(0, 2, 3, 1)
            peak = x.reshape(-1, x.shape[-1]).amax(dim=0)      # [units]: the max over the batch
            self.fired[name] = peak if name not in self.fired else torch.maximum(self.fired[name], peak)
        return hook

    @contextlib.contextmanager
    def record(self):
        """Watch the forward passes inside the block; `fractions()` then covers all of them."""
        self.fired = {}
        handles = [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def fractions(self):
        """{'model/dead_units/<layer>': 0-dim tensor on the layer's device} for the recorded passes."""
        return {f"model/dead_units/{name}": (peak <= 0).float().mean() for name, peak in self.fired.items()}
