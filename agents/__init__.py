"""Agents: torsos (nature, impala_resnet, mlp), policy and baseline heads around any core.

TORSOS (options.py) loads without torch, for the config's checks; the modules with torch load on
first use of the names below."""
from .options import TORSOS

__all__ = ["Agent", "TORSOS", "make_torso", "resolve_torso"]


def __getattr__(name):   # PEP 562: `from agents import Agent` imports agent.py (and torch) here
    if name == "Agent":
        from .agent import Agent
        return Agent
    if name in ("make_torso", "resolve_torso"):
        from . import torsos
        return getattr(torsos, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
