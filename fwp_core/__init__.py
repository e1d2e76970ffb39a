"""Recurrent Fast Weight Programmer cores (Irie, Schlag, Csordás, Schmidhuber, NeurIPS 2021).

The names and options (CORES, CoreConfig: options.py) load without torch, so that the config and
the command line can check a run before anything heavy loads; the cores themselves (cores.py, with
torch) load on first use of the names below."""
from .options import CORES, CoreConfig

__all__ = ["CORES", "Core", "CoreConfig", "LSTMCore", "RFWPCore", "make_core"]
_IN_CORES = ("Core", "LSTMCore", "RFWPCore", "make_core")


def __getattr__(name):   # PEP 562: `from fwp_core import make_core` imports cores.py (and torch) here
    if name in _IN_CORES:
        from . import cores
        return getattr(cores, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
