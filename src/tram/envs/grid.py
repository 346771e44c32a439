"""The three grid tasks of the TRAM paper (App. C): Spread, Gather and Formation.

Pure JAX, behind :class:`~tram.envs.base.TramEnv` (array view and JaxMARL dict view), so
every function here works under ``jax.jit`` and ``jax.vmap``. Follows
``docs/envs.md`` ("Grid tasks") and App. C of the paper:

* **Spread** (3 agents, 3 landmarks): reward ``-sum_i d_i - collisions`` with ``d_i`` the
  distance from landmark ``i`` to its nearest agent; success when every landmark is
  covered by some agent at the same step.
* **Gather** (3 agents, 1 landmark): reward ``-sum_i d(agent_i, landmark)``; success when
  all agents stand on the landmark at the same step.
* **Formation** (4 agents, 1 landmark): sort agents by the angle ``alpha_i`` of the
  segment landmark->agent to the x-axis, ``beta_i = alpha_i - i * 2pi/4``, reward
  ``-sum_i (|beta_i - mean(beta)| + |d_i - mean(d)|)``; success when that sum is below
  ``success_threshold``, i.e. the agents form a square centred on the landmark.

Shared by all tasks (our choices where the paper is silent, see ``docs/envs.md``): a
``grid_size`` x ``grid_size`` grid (5 by default), actions 0 stay, 1 up, 2 down, 3 left,
4 right; a move off the grid is a no-op, so every action is always available (the mask is
all True); Euclidean distance between cell centres; episodes of ``episode_limit`` = 25
steps (as in MPE) that end only by the time limit (``terminated`` is always False; whether
a learner bootstraps at a time-limit end is its option ``learner.bootstrap_timeouts``).
The reward of a step is computed on the positions *after* the move.

Further choices of ours that fill gaps in the paper, with the reason:

* Coordinates: a position is ``(x, y)`` with ``x`` the column (left to right) and ``y``
  the row (bottom to top), both in ``[0, grid_size - 1]``; "up" is ``y + 1`` and "right"
  is ``x + 1``. This makes the paper's "angle to the x-axis" the usual
  ``atan2(dy, dx)``.
* Several agents may share a cell (the grid has no blocking; Spread penalises sharing
  through its collision term: one collision per pair of agents in one cell per step).
* Random placement at every reset: agents start in pairwise distinct cells (no
  collision before the first move), landmarks lie in pairwise distinct cells (Spread
  needs three distinct targets: "occupy all 3 landmarks"), and agents and landmarks are
  drawn independently, so an agent may start on a landmark (as in MPE's uniform
  placement; it also keeps ``grid_size = 2`` valid for every task).
* Formation angles are taken in ``[0, 2pi)``; ``alpha_i = atan2(dy, dx)`` shifted by
  ``2pi`` when negative. The paper indexes ``i = 1..4``; we use ``i = 0..3``, which
  shifts every ``beta_i`` by the same constant and leaves the reward unchanged. Sorting
  is stable (ties keep agent order).
* An agent exactly on the landmark (angle undefined) gets ``alpha = 0``
  (``atan2(0, 0) = 0``). Its ``d = 0`` differs from the others' distances, so the
  distance term already penalises it, and no configuration with an agent on the
  landmark can pass as a square (all four on the landmark give a sum of ``2pi``).
* Formation success threshold: ``DEFAULT_FORMATION_THRESHOLD = 0.01``. Any square
  centred on the landmark (axis-aligned like ``(1,0),(0,1),(-1,0),(0,-1)``, diagonal, or
  tilted like ``(2,1),(-1,2),(-2,-1),(1,-2)``) has a sum of 0 up to float32 rounding
  (at most 5e-7). An exhaustive search over every placement of the 4 agents and the
  landmark gives 0.965 as the smallest non-zero sum on a 5 x 5 grid (0.59 on 7 x 7,
  0.43 on 9 x 9), so 0.01 admits exactly the squares, with a wide margin both ways;
  non-zero sums shrink on much larger grids (angles between grid directions get
  closer), where a smaller threshold may be needed. On a 5 x 5 grid a square needs the
  landmark off the border, so success is not possible in every episode.
* ``won`` at reset is False (no step has been taken; the reset's reward is 0 too).
* ``done`` is ``step >= episode_limit`` (equal to ``step == episode_limit`` for the
  steps of one episode, and it stays True if a caller steps past the limit; the array
  view never auto-resets).
* Observation of agent ``i`` (``D = 2 + 2 (N - 1) + 2 L`` features): its own position
  mapped to ``[-1, 1]`` (``2 p / (G - 1) - 1``), then the other agents in increasing
  index order and then the landmarks, each relative to it (``(p_j - p_i) / (G - 1)``,
  in ``[-1, 1]``). State (``S = 2 (N + L)``): absolute positions of all agents, then all
  landmarks, mapped to ``[-1, 1]`` like the own position. Float32.

Letters for shapes: ``N`` agents, ``L`` landmarks, ``A`` = 5 actions, ``D`` observation
features, ``S`` state features, ``G`` grid size.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxmarl.environments import spaces

from tram.envs.base import EnvSpec, TimeStep, TramEnv

GRID_TASKS: tuple[str, ...] = ("spread", "gather", "formation")

NUM_ACTIONS = 5
"""Actions: 0 stay, 1 up, 2 down, 3 left, 4 right."""

# [A, 2] (dx, dy) of each action, in the order above.
_MOVES = np.array([[0, 0], [0, 1], [0, -1], [-1, 0], [1, 0]], dtype=np.int32)

DEFAULT_GRID_SIZE = 5
DEFAULT_EPISODE_LIMIT = 25
DEFAULT_FORMATION_THRESHOLD = 0.01
"""Formation success threshold on ``sum_i (|beta_i - mean beta| + |d_i - mean d|)``."""


@struct.dataclass
class GridState:
    """State of one grid episode.

    Attributes:
        agent_pos: ``[N, 2]`` int32 ``(x, y)`` cells of the agents.
        landmark_pos: ``[L, 2]`` int32 ``(x, y)`` cells of the landmarks.
        step: ``[]`` int32 steps taken since the reset.
    """

    agent_pos: jax.Array
    landmark_pos: jax.Array
    step: jax.Array


# ---- pure reward / success functions (positions after the move) ------------------------


def _pairwise_dist(a: jax.Array, b: jax.Array) -> jax.Array:
    """Euclidean distances between cell centres: ``a [M, 2]``, ``b [K, 2]`` -> ``[M, K]``."""
    diff = (a[:, None, :] - b[None, :, :]).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(diff * diff, axis=-1))


def spread_reward(agent_pos: jax.Array, landmark_pos: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Spread: ``-sum_i min_j d(landmark_i, agent_j) - #{pairs j < k in one cell}``.

    Args:
        agent_pos: ``[N, 2]`` int32 agent cells.
        landmark_pos: ``[L, 2]`` int32 landmark cells.

    Returns:
        ``(reward [] float32, success [] bool)``; success: every landmark has an agent on it.
    """
    nearest = jnp.min(_pairwise_dist(landmark_pos, agent_pos), axis=1)  # [L]
    same = jnp.all(agent_pos[:, None, :] == agent_pos[None, :, :], axis=-1)  # [N, N]
    collisions = jnp.sum(jnp.triu(same, k=1))
    reward = -jnp.sum(nearest) - collisions.astype(jnp.float32)
    covered = jnp.any(jnp.all(landmark_pos[:, None, :] == agent_pos[None, :, :], axis=-1), axis=1)
    return reward.astype(jnp.float32), jnp.all(covered)


def gather_reward(agent_pos: jax.Array, landmark_pos: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Gather: ``-sum_i d(agent_i, landmark)``.

    Args:
        agent_pos: ``[N, 2]`` int32 agent cells.
        landmark_pos: ``[1, 2]`` int32 landmark cell.

    Returns:
        ``(reward [] float32, success [] bool)``; success: every agent on the landmark.
    """
    reward = -jnp.sum(_pairwise_dist(agent_pos, landmark_pos[:1]))
    success = jnp.all(agent_pos == landmark_pos[0][None, :])
    return reward.astype(jnp.float32), success


def formation_sum(agent_pos: jax.Array, landmark_pos: jax.Array) -> jax.Array:
    """Formation error ``sum_i (|beta_i - mean beta| + |d_i - mean d|)`` (App. C).

    ``alpha_i = atan2(dy, dx)`` of landmark->agent in ``[0, 2pi)`` (0 for an agent on the
    landmark), agents sorted by ``alpha`` (stable), ``beta_i = alpha_i - i * 2pi / N``
    with ``i = 0..N-1``; ``d_i`` is the distance of the sorted agent ``i`` to the landmark.

    Args:
        agent_pos: ``[N, 2]`` int32 agent cells.
        landmark_pos: ``[1, 2]`` int32 landmark cell.

    Returns:
        ``[]`` float32, >= 0; 0 for a square (regular N-gon) centred on the landmark.
    """
    rel = (agent_pos - landmark_pos[0][None, :]).astype(jnp.float32)  # [N, 2]
    alpha = jnp.arctan2(rel[:, 1], rel[:, 0])
    alpha = jnp.where(alpha < 0, alpha + 2 * jnp.pi, alpha)
    dist = jnp.sqrt(jnp.sum(rel * rel, axis=-1))
    order = jnp.argsort(alpha, stable=True)
    n = agent_pos.shape[0]
    beta = alpha[order] - jnp.arange(n, dtype=jnp.float32) * (2 * jnp.pi / n)
    d = dist[order]
    return (jnp.sum(jnp.abs(beta - jnp.mean(beta))) + jnp.sum(jnp.abs(d - jnp.mean(d)))).astype(
        jnp.float32
    )


# ---- environments ---------------------------------------------------------------------


class GridEnv(TramEnv):
    """Common base of the grid tasks: placement, moves, observations, time limit.

    Subclasses set the class attributes below and implement :meth:`reward_and_success`.
    """

    task: str = ""
    num_landmarks: int = 0
    description: str = ""

    def __init__(self, num_agents: int, grid_size: int, episode_limit: int):
        g = grid_size
        obs_dim = 2 + 2 * (num_agents - 1) + 2 * self.num_landmarks
        state_dim = 2 * (num_agents + self.num_landmarks)
        super().__init__(
            EnvSpec(
                name=self.task,
                family="grid",
                num_agents=num_agents,
                num_actions=NUM_ACTIONS,
                obs_dim=obs_dim,
                state_dim=state_dim,
                episode_limit=episode_limit,
                agent_unit_types=("agent",) * num_agents,
                description=f"{self.description} on a {g}x{g} grid, episode limit {episode_limit}",
            )
        )
        self.grid_size = grid_size
        self.episode_limit = episode_limit
        # [N, N-1] indices of the other agents, in increasing order, per agent.
        self._others = np.array(
            [[j for j in range(num_agents) if j != i] for i in range(num_agents)], dtype=np.int32
        ).reshape(num_agents, num_agents - 1)
        self.observation_spaces = {
            a: spaces.Box(-1.0, 1.0, (obs_dim,), jnp.float32) for a in self.agents
        }
        self.action_spaces = {a: spaces.Discrete(NUM_ACTIONS) for a in self.agents}

    # ---- task-specific ----------------------------------------------------------------
    def reward_and_success(
        self, agent_pos: jax.Array, landmark_pos: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """``(reward [] float32, success [] bool)`` of the positions after a move."""
        raise NotImplementedError

    # ---- array view -------------------------------------------------------------------
    def _distinct_cells(self, key: jax.Array, k: int) -> jax.Array:
        """``k`` pairwise distinct uniformly random cells -> ``[k, 2]`` int32 ``(x, y)``."""
        idx = jax.random.choice(key, self.grid_size**2, shape=(k,), replace=False)
        return jnp.stack([idx % self.grid_size, idx // self.grid_size], axis=-1).astype(jnp.int32)

    def _scale_abs(self, pos: jax.Array) -> jax.Array:
        """Absolute cells ``[..., 2]`` -> float32 in ``[-1, 1]``."""
        return 2.0 * pos.astype(jnp.float32) / (self.grid_size - 1) - 1.0

    def obs_arrays(self, env_state: GridState) -> jax.Array:
        """``[N, D]`` float32 observations (own position, others and landmarks relative)."""
        pos = env_state.agent_pos
        n = self.spec.num_agents
        scale = 1.0 / (self.grid_size - 1)
        rel_agents = (pos[self._others] - pos[:, None, :]).astype(jnp.float32) * scale
        rel_lms = (env_state.landmark_pos[None, :, :] - pos[:, None, :]).astype(jnp.float32) * scale
        return jnp.concatenate(
            [self._scale_abs(pos), rel_agents.reshape(n, -1), rel_lms.reshape(n, -1)], axis=-1
        )

    def state_array(self, env_state: GridState) -> jax.Array:
        """``[S]`` float32 global state: all agents' then all landmarks' cells in ``[-1, 1]``."""
        return jnp.concatenate(
            [
                self._scale_abs(env_state.agent_pos).reshape(-1),
                self._scale_abs(env_state.landmark_pos).reshape(-1),
            ]
        )

    def avail_arrays(self, env_state: GridState) -> jax.Array:
        """``[N, A]`` bool, all True (off-grid moves are no-ops, never masked)."""
        return jnp.ones((self.spec.num_agents, NUM_ACTIONS), dtype=bool)

    def _timestep(self, env_state, reward, done, won) -> TimeStep:
        return TimeStep(
            obs=self.obs_arrays(env_state),
            state=self.state_array(env_state),
            avail=self.avail_arrays(env_state),
            reward=jnp.asarray(reward, jnp.float32),
            done=jnp.asarray(done, bool),
            terminated=jnp.asarray(False),
            won=jnp.asarray(won, bool),
        )

    def reset_arrays(self, key: jax.Array) -> tuple[GridState, TimeStep]:
        """Random distinct agent cells and random distinct landmark cells.

        Args:
            key: PRNG key.

        Returns:
            ``(env_state, TimeStep)`` with reward 0, done/terminated/won False.
        """
        key_agents, key_lms = jax.random.split(key)
        env_state = GridState(
            agent_pos=self._distinct_cells(key_agents, self.spec.num_agents),
            landmark_pos=self._distinct_cells(key_lms, self.num_landmarks),
            step=jnp.int32(0),
        )
        return env_state, self._timestep(env_state, 0.0, False, False)

    def step_arrays(
        self, key: jax.Array, env_state: GridState, actions: jax.Array
    ) -> tuple[GridState, TimeStep]:
        """Move every agent, then score the new positions.

        Args:
            key: PRNG key (unused: the dynamics are deterministic).
            env_state: current :class:`GridState`.
            actions: ``[N]`` int32 in ``[0, 5)``: stay, up, down, left, right.

        Returns:
            ``(env_state, TimeStep)``; ``done = step >= episode_limit``,
            ``terminated`` False, ``won`` the task's success at the new positions.
        """
        del key
        moves = jnp.asarray(_MOVES)[jnp.asarray(actions, jnp.int32)]  # [N, 2]
        # Clipping to the grid makes an off-grid move a no-op (only one axis moves).
        agent_pos = jnp.clip(env_state.agent_pos + moves, 0, self.grid_size - 1).astype(jnp.int32)
        step = env_state.step + 1
        new_state = env_state.replace(agent_pos=agent_pos, step=step)
        reward, success = self.reward_and_success(agent_pos, env_state.landmark_pos)
        return new_state, self._timestep(new_state, reward, step >= self.episode_limit, success)

    # ---- JaxMARL dict view extra ------------------------------------------------------
    def get_obs(self, state: GridState) -> dict[str, jax.Array]:
        """Per-agent observations (and ``"world_state"``) of ``state``."""
        obs = {a: o for a, o in zip(self.agents, self.obs_arrays(state))}
        obs["world_state"] = self.state_array(state)
        return obs


class SpreadEnv(GridEnv):
    """Spread: 3 agents cover 3 landmarks; see :func:`spread_reward`."""

    task = "spread"
    num_landmarks = 3
    description = "Spread: 3 agents occupy 3 random landmarks at once, collisions penalised,"

    def __init__(
        self, grid_size: int = DEFAULT_GRID_SIZE, episode_limit: int = DEFAULT_EPISODE_LIMIT
    ):
        super().__init__(3, grid_size, episode_limit)

    def reward_and_success(self, agent_pos, landmark_pos):
        """``(reward [], success [] bool)`` of the positions (:func:`spread_reward`)."""
        return spread_reward(agent_pos, landmark_pos)


class GatherEnv(GridEnv):
    """Gather: 3 agents meet on 1 landmark; see :func:`gather_reward`."""

    task = "gather"
    num_landmarks = 1
    description = "Gather: 3 agents meet on 1 random landmark,"

    def __init__(
        self, grid_size: int = DEFAULT_GRID_SIZE, episode_limit: int = DEFAULT_EPISODE_LIMIT
    ):
        super().__init__(3, grid_size, episode_limit)

    def reward_and_success(self, agent_pos, landmark_pos):
        """``(reward [], success [] bool)`` of the positions (:func:`gather_reward`)."""
        return gather_reward(agent_pos, landmark_pos)


class FormationEnv(GridEnv):
    """Formation: 4 agents form a square centred on 1 landmark; see :func:`formation_sum`."""

    task = "formation"
    num_landmarks = 1
    description = "Formation: 4 agents form a square centred on 1 random landmark,"

    def __init__(
        self,
        grid_size: int = DEFAULT_GRID_SIZE,
        episode_limit: int = DEFAULT_EPISODE_LIMIT,
        success_threshold: float = DEFAULT_FORMATION_THRESHOLD,
    ):
        super().__init__(4, grid_size, episode_limit)
        self.success_threshold = float(success_threshold)

    def reward_and_success(self, agent_pos, landmark_pos):
        """``(-formation error [], error < success_threshold)`` (:func:`formation_sum`)."""
        err = formation_sum(agent_pos, landmark_pos)
        return -err, err < self.success_threshold


_ENV_CLASSES: dict[str, type[GridEnv]] = {
    "spread": SpreadEnv,
    "gather": GatherEnv,
    "formation": FormationEnv,
}

_COMMON_OPTIONS = ("grid_size", "episode_limit")
_TASK_OPTIONS: dict[str, tuple[str, ...]] = {
    "spread": _COMMON_OPTIONS,
    "gather": _COMMON_OPTIONS,
    "formation": _COMMON_OPTIONS + ("success_threshold",),
}


def _check_int(option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"grid option {option} must be an int >= {minimum}, got {value!r}")
    return int(value)


def make_grid_env(name: str, **options) -> GridEnv:
    """Build the grid task ``name``.

    Args:
        name: one of :data:`GRID_TASKS`.
        **options: ``grid_size`` (int >= 2, default 5), ``episode_limit`` (int >= 1,
            default 25) and, for ``"formation"`` only, ``success_threshold`` (float > 0,
            default :data:`DEFAULT_FORMATION_THRESHOLD`).

    Returns:
        The environment (a :class:`~tram.envs.base.TramEnv`).

    Raises:
        ValueError: unknown task, unknown option for the task, or a bad option value (the
            message names the option or value and lists what is accepted).
    """
    if name not in _ENV_CLASSES:
        raise ValueError(f"unknown grid task {name!r}; accepted: {', '.join(GRID_TASKS)}")
    accepted = _TASK_OPTIONS[name]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for grid task {name!r}; "
            f"accepted: {', '.join(accepted)}"
        )
    kwargs: dict[str, Any] = {
        "grid_size": _check_int("grid_size", options.get("grid_size", DEFAULT_GRID_SIZE), 2),
        "episode_limit": _check_int(
            "episode_limit", options.get("episode_limit", DEFAULT_EPISODE_LIMIT), 1
        ),
    }
    if "success_threshold" in accepted:
        thr = options.get("success_threshold", DEFAULT_FORMATION_THRESHOLD)
        if (
            isinstance(thr, bool)
            or not isinstance(thr, Real)
            or not math.isfinite(float(thr))
            or thr <= 0
        ):
            raise ValueError(
                f"grid option success_threshold must be a finite float > 0, got {thr!r}"
            )
        kwargs["success_threshold"] = float(thr)
    return _ENV_CLASSES[name](**kwargs)
