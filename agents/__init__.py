"""Agents: torsos (nature, impala_resnet, mlp), policy and baseline heads around any core."""
from .agent import Agent
from .torsos import TORSOS, make_torso, resolve_torso

__all__ = ["Agent", "TORSOS", "make_torso", "resolve_torso"]
