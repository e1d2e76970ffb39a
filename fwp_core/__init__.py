"""Recurrent Fast Weight Programmer cores (Irie, Schlag, Csordás, Schmidhuber, NeurIPS 2021)."""
from .cores import CORES, Core, CoreConfig, LSTMCore, RFWPCore, make_core

__all__ = ["CORES", "Core", "CoreConfig", "LSTMCore", "RFWPCore", "make_core"]
