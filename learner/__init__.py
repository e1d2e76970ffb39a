"""The learner side of the object store: V-trace, losses, the Learner, checkpoints, TensorBoard."""
from .batch import check_batch, random_batch, to_device
from .checkpoint import CheckpointError
from .learner import Learner, resolve_device
from .logging import TensorBoardLogger

__all__ = ["CheckpointError", "Learner", "TensorBoardLogger", "check_batch", "random_batch",
           "resolve_device", "to_device"]
