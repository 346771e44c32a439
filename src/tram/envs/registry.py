"""Name -> environment. Grid tasks live in ``grid.py``, SMAX maps in ``smax.py``."""

from __future__ import annotations

from tram.envs.base import TramEnv
from tram.envs import grid, smax


def env_names() -> list[str]:
    """Every environment name ``make_env`` accepts: grid tasks first, then SMAX maps."""
    return list(grid.GRID_TASKS) + smax.smax_map_names()


def make_env(name: str, **options) -> TramEnv:
    """Build the environment ``name`` with family-specific ``options``.

    Returns:
        A :class:`~tram.envs.base.TramEnv` (a JaxMARL ``MultiAgentEnv`` with an array view).

    Raises:
        ValueError: unknown name (the message lists every accepted name) or bad option.
    """
    if not isinstance(name, str):
        raise ValueError(f"environment name must be a string, got {name!r}")
    if name in grid.GRID_TASKS:
        return grid.make_grid_env(name, **options)
    if name in smax.smax_map_names():
        return smax.make_smax_env(name, **options)
    raise ValueError(
        f"unknown environment {name!r}; accepted: {', '.join(env_names())}"
    )
