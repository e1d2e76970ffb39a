"""Small configs and observation spaces for the agent and learner tests (fast on 2 CPU cores)."""
import gymnasium as gym
import numpy as np

from configs import load_config

TINY_CORE = ["core.d_model=16", "core.num_layers=2", "core.num_heads=2", "core.head_dim=4",
             "core.ff_dim=16", "core.hidden_size=16", "model.hidden_size=16"]
VECTOR = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
NUM_ACTIONS = 3


def tiny_config(core="rdn", *overrides):
    return load_config(None, TINY_CORE + [f"model.core={core}", "learner.device=cpu", *overrides])


def image_space(shape=(4, 20, 20)):
    return gym.spaces.Box(0, 255, shape, np.uint8)
