"""Environments: the grid tasks of the paper's App. C and StarCraft-style maps on SMAX.

``make_env(name, **options)`` is the one entry point; ``env_names()`` lists every name.
"""

from tram.envs.base import EnvSpec, TimeStep, TramEnv
from tram.envs.registry import env_names, make_env

__all__ = ["EnvSpec", "TimeStep", "TramEnv", "env_names", "make_env"]
