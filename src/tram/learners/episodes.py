"""Episode storage shared by the on-policy learners: a batch of padded episodes and a ring
buffer of them, as PyMARL's ``EpisodeBatch`` / ``ReplayBuffer`` hold them.

Layout (batch-major, ``E`` episodes, ``T`` the episode limit, ``T + 1`` slots): slot ``t``
holds what the agents saw at step ``t`` (obs, state, avail), the action taken, the reward
and ``terminated`` flag of that step; slot ``ep_len`` holds the post-episode obs, state
and avail for bootstrapping only. ``filled[t] = t < ep_len``. Losses use slots
``[:T]`` and the mask ``filled`` with ``mask[1:] *= 1 - terminated[:-1]``. ``terminated`` is
stored as the environment reports it (False at a time-limit end); whether the targets
bootstrap at a timeout is the learner's choice (:func:`target_terminated`). DOP's actor
batch rule is :func:`latest_indices`. ``docs/learners.md`` has the reference facts.

Storage departs from the reference in one way, to fit large buffers in memory:
observations and states may be stored as float16 (``storage_dtype``); they are cast back
to float32 when sampled. SMAX and grid features are scaled to about [-1, 1], where float16
keeps 3 significant digits.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Episodes(NamedTuple):
    """A batch of padded episodes.

    Attributes:
        obs: ``[E, T+1, N, D]`` observations (storage dtype).
        state: ``[E, T+1, S]`` global states (storage dtype).
        avail: ``[E, T+1, N, A]`` bool available actions.
        actions: ``[E, T+1, N]`` int32 actions taken (0 in unused slots).
        reward: ``[E, T+1]`` float32 team reward of step t (0 in unused slots).
        terminated: ``[E, T+1]`` bool, step t ended the episode for a reason other than the
            time limit.
        filled: ``[E, T+1]`` bool, ``t < ep_len``.
    """

    obs: jax.Array
    state: jax.Array
    avail: jax.Array
    actions: jax.Array
    reward: jax.Array
    terminated: jax.Array
    filled: jax.Array

    @property
    def lengths(self) -> jax.Array:
        """``[E]`` int32 episode lengths."""
        return jnp.sum(self.filled, axis=-1).astype(jnp.int32)

    def as_float32(self) -> "Episodes":
        """The same episodes with observations and states cast to float32."""
        return self._replace(obs=self.obs.astype(jnp.float32), state=self.state.astype(jnp.float32))


def empty_episodes(num: int, limit: int, num_agents: int, obs_dim: int, state_dim: int,
                   num_actions: int, storage_dtype=jnp.float32) -> Episodes:
    """All-zero ``Episodes`` of ``num`` episodes with ``limit + 1`` slots."""
    t1 = limit + 1
    return Episodes(
        obs=jnp.zeros((num, t1, num_agents, obs_dim), storage_dtype),
        state=jnp.zeros((num, t1, state_dim), storage_dtype),
        avail=jnp.zeros((num, t1, num_agents, num_actions), bool),
        actions=jnp.zeros((num, t1, num_agents), jnp.int32),
        reward=jnp.zeros((num, t1), jnp.float32),
        terminated=jnp.zeros((num, t1), bool),
        filled=jnp.zeros((num, t1), bool),
    )


def episodes_nbytes(num: int, limit: int, num_agents: int, obs_dim: int, state_dim: int,
                    num_actions: int, storage_dtype=jnp.float32) -> int:
    """Bytes that ``empty_episodes`` with these sizes occupies (for memory checks)."""
    t1 = limit + 1
    item = jnp.dtype(storage_dtype).itemsize
    per_slot = (num_agents * obs_dim + state_dim) * item + num_agents * num_actions + num_agents * 4 + 4 + 2
    return int(num) * t1 * per_slot


def target_terminated(ep: Episodes, bootstrap_timeouts: bool) -> jax.Array:
    """The ``terminated`` flags the critic targets use, over the first ``T`` slots.
    ``-> [E, T]`` float32 (any leading shape of ``ep``).

    The buffer stores ``terminated`` as the environment reports it: True only for an end
    other than the time limit. What the targets do at a time-limit end is a choice:

    * ``bootstrap_timeouts=False`` (the reference): the last step of every episode counts
      as terminated, so no target bootstraps past it. This is what the reference runs do:
      their SMAC config sets ``continuing_episode: False``, SMAC then never reports
      ``info["episode_limit"]``, and the runners store ``terminated = True`` at a timeout.
    * ``bootstrap_timeouts=True`` (the textbook treatment of a time limit that is not part
      of the task): the stored flags unchanged, so a target at the last step of a timed-out
      episode bootstraps from the post-episode slot.

    The last step is the last ``filled`` slot (``filled[t] and not filled[t+1]``); every
    stored episode ends there, by a termination or by the time limit. The loss mask is the
    same either way (the slot after the last step is not filled).
    """
    term = ep.terminated[..., :-1]
    if not bootstrap_timeouts:
        term = term | (ep.filled[..., :-1] & ~ep.filled[..., 1:])
    return term.astype(jnp.float32)


def loss_mask(filled: jax.Array, terminated: jax.Array) -> jax.Array:
    """PyMARL's mask over the first ``T`` slots of stored episodes
    (:func:`tram.learners.targets.episode_mask` per episode). ``[..., T+1] -> [..., T]`` float32."""
    from tram.learners.targets import episode_mask

    return jnp.vectorize(episode_mask, signature="(t),(t)->(t)")(filled[..., :-1], terminated[..., :-1])


class EpisodeBuffer(NamedTuple):
    """A ring buffer of episodes.

    Attributes:
        data: ``Episodes`` with ``E = capacity``.
        pos: ``[]`` int32, the slot the next episode goes to.
        count: ``[]`` int32, how many slots hold an episode (``<= capacity``).
    """

    data: Episodes
    pos: jax.Array
    count: jax.Array

    @property
    def capacity(self) -> int:
        """The number of episode slots."""
        return self.data.filled.shape[0]


def buffer_init(data: Episodes) -> EpisodeBuffer:
    """An empty buffer whose storage is ``data`` (see :func:`empty_episodes`)."""
    return EpisodeBuffer(data=data, pos=jnp.int32(0), count=jnp.int32(0))


def buffer_add(buf: EpisodeBuffer, episodes: Episodes) -> EpisodeBuffer:
    """Inserts ``episodes`` (``E = B``), overwriting the oldest when full."""
    b = episodes.filled.shape[0]
    idx = (buf.pos + jnp.arange(b)) % buf.capacity
    data = jax.tree.map(lambda store, new: store.at[idx].set(new.astype(store.dtype)), buf.data, episodes)
    return EpisodeBuffer(
        data=data,
        pos=(buf.pos + b) % buf.capacity,
        count=jnp.minimum(buf.count + b, buf.capacity),
    )


def buffer_take(buf: EpisodeBuffer, idx: jax.Array) -> Episodes:
    """The stored episodes at buffer positions ``idx [n]`` (storage dtype, ``E = n``)."""
    return jax.tree.map(lambda x: x[idx], buf.data)


def buffer_uniform_indices(key: jax.Array, buf: EpisodeBuffer, n: int) -> jax.Array:
    """``[n]`` int32: ``n`` distinct positions among the ``buf.count`` filled ones, every
    ``n``-subset equally likely (PyMARL ``uni_sample``, ``np.random.choice(count, n,
    replace=False)``; the order differs, which no loss depends on).

    Requires ``buf.count >= n`` (the caller guarantees it)."""
    scores = jax.random.uniform(key, (buf.capacity,))
    scores = jnp.where(jnp.arange(buf.capacity) < buf.count, scores, -1.0)
    return jax.lax.top_k(scores, n)[1].astype(jnp.int32)


def buffer_sample_uniform(key: jax.Array, buf: EpisodeBuffer, n: int) -> Episodes:
    """``n`` distinct stored episodes chosen uniformly (PyMARL ``uni_sample``).

    Requires ``buf.count >= n`` (the caller guarantees it). Returns ``Episodes`` with
    ``E = n`` in the storage dtype.
    """
    return buffer_take(buf, buffer_uniform_indices(key, buf, n))


LATEST_RULES = ("reference", "latest")
"""Accepted values of DOP's ``learner.actor_batch`` (see :func:`latest_indices`)."""


def latest_indices(key: jax.Array, buf: EpisodeBuffer, n: int, rule: str = "reference") -> tuple[jax.Array, jax.Array]:
    """Positions of the actor's "latest" batch of ``n`` episodes. Returns ``(idx [n] int32,
    uniform [] bool)``, ``uniform`` True when the batch is a uniform sample.

    * ``rule="reference"``: the reference's ``ReplayBuffer.sample_latest`` (TonghanWang/DOP
      ``components/episode_buffer.py``). With ``pos`` the position the next episode will
      be written to: if ``pos - n >= 0`` the ``n`` positions ``pos - n, ..., pos - 1``
      (the newest, unless the ring has just wrapped); otherwise a uniform sample of ``n``
      distinct stored episodes (``uni_sample``: positions ``0..n-1`` when exactly ``n``
      are stored, else drawn with ``key``). With DOP's 32-episode buffer, 16-episode
      batch and 4 new episodes per iteration that is the uniform sample whenever ``pos``
      is 0, 4, 8 or 12: half of the iterations once the buffer is full.
    * ``rule="latest"``: always the ``n`` most recently inserted episodes, wrapping around
      the ring, newest last (``key`` unused).

    Requires ``buf.count >= n``. Jittable (``rule`` and ``n`` static).
    """
    if rule not in LATEST_RULES:
        raise ValueError(f"learner.actor_batch must be one of {', '.join(LATEST_RULES)}; got {rule!r}")
    ramp = jnp.arange(n, dtype=jnp.int32)
    if rule == "latest":
        return _newest(buf, n), jnp.bool_(False)
    uniform = buf.pos - n < 0
    uni = jnp.where(buf.count == n, ramp, buffer_uniform_indices(key, buf, n))
    newest = jnp.clip(buf.pos - n + ramp, 0, buf.capacity - 1)
    return jnp.where(uniform, uni, newest).astype(jnp.int32), uniform


def _newest(buf: EpisodeBuffer, n: int) -> jax.Array:
    """``[n]`` int32 positions of the ``n`` most recently inserted episodes, newest last."""
    return ((buf.pos - n + jnp.arange(n, dtype=jnp.int32)) % buf.capacity).astype(jnp.int32)


def truncate_length(episodes: Episodes) -> jax.Array:
    """``[]`` int32: the largest episode length in the batch (``max_t_filled``)."""
    return jnp.max(episodes.lengths)
