"""The uniform random policy: the baseline every learning check and report compares with."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from tram.envs.base import TramEnv


class RandomPolicyStats(NamedTuple):
    """``[E]`` per-episode return, won/success flag (float) and length (int32)."""

    episode_return: jax.Array
    won: jax.Array
    length: jax.Array


def random_policy_episodes(env: TramEnv, key: jax.Array, num_episodes: int) -> RandomPolicyStats:
    """Runs ``num_episodes`` episodes at once, each agent choosing uniformly among its
    available actions; jittable (``env`` static). Returns :class:`RandomPolicyStats`."""
    limit = env.spec.episode_limit
    key, reset_key = jax.random.split(key)
    state, ts = jax.vmap(env.reset_arrays)(jax.random.split(reset_key, num_episodes))

    def body(c):
        t, key, state, ts, active, ret, won, length = c
        key, k_act, k_env = jax.random.split(key, 3)
        logits = jnp.where(ts.avail, 0.0, -jnp.inf)
        actions = jax.random.categorical(k_act, logits, axis=-1).astype(jnp.int32)
        state, nxt = jax.vmap(env.step_arrays)(jax.random.split(k_env, num_episodes), state, actions)
        ret = ret + jnp.where(active, nxt.reward, 0.0)
        won = jnp.where(active, jnp.maximum(won, nxt.won.astype(jnp.float32)), won)
        length = length + active.astype(jnp.int32)
        return t + 1, key, state, nxt, active & ~nxt.done, ret, won, length

    c0 = (jnp.int32(0), key, state, ts, jnp.ones((num_episodes,), bool), jnp.zeros((num_episodes,)),
          jnp.zeros((num_episodes,)), jnp.zeros((num_episodes,), jnp.int32))
    c = jax.lax.while_loop(lambda c: (c[0] < limit) & jnp.any(c[4]), body, c0)
    return RandomPolicyStats(episode_return=c[5], won=c[6], length=c[7])
