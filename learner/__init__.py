"""The update algorithm: the learner batch, V-trace, the losses, PopArt, the Learner (optimiser,
one update per batch) and its checkpoints. Imports neither Ray nor actors/: it runs wherever a
batch of tensors can reach it (tests/test_layout.py checks that)."""
from .batch import check_batch, random_batch, to_device
from .checkpoint import CheckpointError
from .learner import Learner, resolve_device

__all__ = ["CheckpointError", "Learner", "check_batch", "random_batch", "resolve_device", "to_device"]
