"""The one environment interface every tram learner sees.

Every environment in tram is a JaxMARL-style ``MultiAgentEnv`` (per-agent dict
observations, ``get_avail_actions``, a ``"world_state"`` entry holding the global state)
*and* offers an array view that learners use, so that a learner never knows which family
(grid task or SMAX map) an environment comes from:

* ``reset_arrays(key) -> (env_state, TimeStep)``
* ``step_arrays(key, env_state, actions[N]) -> (env_state, TimeStep)``

The array view never auto-resets: learners collect whole episodes and mask what follows
the end themselves. Letters for shapes: ``N`` agents, ``A`` actions, ``D`` observation
features, ``S`` state features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxmarl.environments.multi_agent_env import MultiAgentEnv


class TimeStep(NamedTuple):
    """What a learner needs from one environment step (or from the reset).

    Attributes:
        obs: ``[N, D]`` float32 per-agent observations.
        state: ``[S]`` float32 global state for centralised critics.
        avail: ``[N, A]`` bool available actions (every row has at least one True).
        reward: ``[]`` float32 shared team reward of the step (0 at reset).
        done: ``[]`` bool, the episode is over (terminated or truncated).
        terminated: ``[]`` bool, the episode ended for a reason other than the time
            limit (no bootstrap). ``done & ~terminated`` means the time limit ended it
            (bootstrap), as DOP's parallel runner distinguishes them.
        won: ``[]`` bool. SMAX: the episode ended with every enemy dead. Grid tasks: the
            success condition holds at this step (an episode succeeded if any step did).
    """

    obs: jax.Array
    state: jax.Array
    avail: jax.Array
    reward: jax.Array
    done: jax.Array
    terminated: jax.Array
    won: jax.Array


@dataclass(frozen=True)
class EnvSpec:
    """Static facts about an environment (Python values, usable as static shapes)."""

    name: str
    family: str  # "grid" or "smax"
    num_agents: int
    num_actions: int
    obs_dim: int
    state_dim: int
    episode_limit: int
    agent_unit_types: tuple[str, ...]  # per agent, e.g. ("marine", "marine", "marine")
    description: str = ""


class TramEnv(MultiAgentEnv):
    """Base class: subclasses implement ``spec``, ``reset_arrays`` and ``step_arrays``.

    The JaxMARL dict API (``reset``, ``step_env``, ``get_obs``, ``get_avail_actions``) is
    derived from the array view here, so the two can never disagree.
    """

    spec: EnvSpec

    def __init__(self, spec: EnvSpec):
        super().__init__(num_agents=spec.num_agents)
        self.spec = spec

    # ---- array view (what learners use) -------------------------------------------
    def reset_arrays(self, key: jax.Array) -> tuple[Any, TimeStep]:
        """``(env_state, TimeStep)`` of a new episode (``obs [N, D]``, ``state [S]``, ``avail [N, A]``)."""
        raise NotImplementedError

    def step_arrays(self, key: jax.Array, env_state: Any, actions: jax.Array) -> tuple[Any, TimeStep]:
        """``(env_state, TimeStep)`` after the agents take ``actions [N]`` int32 (``reward``,
        ``terminated``, ``done``, ``won`` ``[]``)."""
        raise NotImplementedError

    def avail_arrays(self, env_state: Any) -> jax.Array:
        """``[N, A]`` bool available actions of ``env_state``."""
        raise NotImplementedError

    # ---- JaxMARL dict view ---------------------------------------------------------
    def _obs_dict(self, ts: TimeStep) -> dict[str, jax.Array]:
        obs = {a: ts.obs[i] for i, a in enumerate(self.agents)}
        obs["world_state"] = ts.state
        return obs

    def reset(self, key):
        """JaxMARL view of :meth:`reset_arrays`: ``(obs dict by agent plus "world_state", env_state)``."""
        env_state, ts = self.reset_arrays(key)
        return self._obs_dict(ts), env_state

    def step_env(self, key, state, actions):
        """JaxMARL view of :meth:`step_arrays` (``actions`` a dict by agent): ``(obs, env_state,
        rewards, dones (with "__all__"), infos {"terminated", "won"})``."""
        acts = jnp.stack([jnp.asarray(actions[a]) for a in self.agents]).astype(jnp.int32)
        env_state, ts = self.step_arrays(key, state, acts)
        rewards = {a: ts.reward for a in self.agents}
        dones = {a: ts.done for a in self.agents}
        dones["__all__"] = ts.done
        infos = {"terminated": ts.terminated, "won": ts.won}
        return self._obs_dict(ts), env_state, rewards, dones, infos

    def get_avail_actions(self, state) -> dict[str, jax.Array]:
        """Available actions by agent, ``[A]`` bool each."""
        avail = self.avail_arrays(state)
        return {a: avail[i] for i, a in enumerate(self.agents)}

    @property
    def name(self) -> str:
        """The environment's name (``env.name``)."""
        return self.spec.name
