"""Actors: environment construction (envs.py) and the Ray rollout actor."""
