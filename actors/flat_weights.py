"""Weights on the wire: a state dict as one flat byte buffer and a small layout.

    flat = flatten(agent.state_dict())                 # one device copy (the learner)
    version, layout, buffer = flat.payload(version)    # one copy to the host, for ray.put
    agent.load_state_dict(unflatten(layout, buffer))   # the actor, reading the buffer in place

A state dict of ~70 tensors becomes one contiguous buffer: Ray stores and ships a numpy array
without pickling each tensor, and an actor reads it where it lies (runtime/weights_holder.py holds the
newest version for the actors to fetch).
"""
import warnings

import numpy as np
import torch


class Flat:
    """A state dict flattened on its device: `bytes` (a uint8 tensor) and its `layout`."""

    def __init__(self, state_dict):
        tensors = [t.detach() for t in state_dict.values()]
        self.layout = []
        offset = 0
        for name, t in zip(state_dict, tensors):
            nbytes = t.numel() * t.element_size()
            self.layout.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset, nbytes))
            offset += nbytes
        # One concatenation on the device (asynchronous on CUDA), read back to the host later.
        self.bytes = torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for t in tensors])

    def payload(self, version):
        """(version, layout, numpy buffer) for ray.put: the one device-to-host copy happens here."""
        return version, tuple(self.layout), self.bytes.cpu().numpy()


def flatten(state_dict):
    return Flat(state_dict)


def unflatten(layout, buffer):
    """The state dict (CPU tensors viewing `buffer`) back from flatten's layout and bytes."""
    out = {}
    with warnings.catch_warnings():   # Ray hands over a read-only buffer; load_state_dict copies from it
        warnings.simplefilter("ignore", UserWarning)
        whole = torch.from_numpy(np.asarray(buffer))
    for name, dtype, shape, offset, nbytes in layout:
        out[name] = whole[offset:offset + nbytes].view(getattr(torch, dtype)).reshape(shape)
    return out
