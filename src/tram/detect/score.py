"""The monitor's score, inside the compiled training program.

Per agent ``i`` and step ``t``, with ``p = pi_i(. | tau_t)`` the agent's clean acting
distribution (the epsilon-floored softmax of the shared actor, or QMIX's epsilon-greedy
distribution; what the team knows through parameter sharing) and ``a_t`` the action the
agent executed::

    u_t = log p(a_t) + H(p),        H(p) = -sum_a p(a) log p(a)
    v_t = Var_{a ~ p}[log p(a)] = sum_a p(a) log^2 p(a) - H(p)^2

An honest agent draws ``a_t ~ p``, so ``E[u_t | tau_t] = -H(p) + H(p) = 0``; the episode
score ``s = sum_t u_t`` is a martingale with mean 0 and variance ``E[sum_t v_t]``
(``docs/detection.md``). A step with a single available action gives ``u = v = 0``.

Nothing here draws a random number: the recording leaves every other number of a run
unchanged (tests/test_detection.py checks it bit for bit).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

LOG_FLOOR = 1e-30
"""``log p(a)`` is computed as ``log(max(p(a), LOG_FLOOR))`` (about -69): finite even for an
action the clean policy gives probability 0 (possible only without an exploration floor)."""

ROLLOUTS_PER_WINDOW = 4
"""Rollouts (each ``num_envs`` episodes) kept per evaluation window: the window's last ones."""

# acting_policy(logits_or_q [..., A], avail [..., A] bool, epsilon []) -> probabilities [..., A]
ActingPolicy = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def step_increments(probs: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The monitor increment and its conditional variance for one step.

    Args:
        probs: ``[..., A]`` acting distribution (0 on unavailable actions).
        actions: ``[...]`` int executed actions.

    Returns:
        ``(u [...], v [...])``: ``u = log p(a) + H(p)`` and ``v = Var_{a~p}[log p(a)]``
        (float32; ``v >= 0``).
    """
    probs = probs.astype(jnp.float32)
    pos = probs > 0.0
    logp = jnp.where(pos, jnp.log(jnp.where(pos, probs, 1.0)), 0.0)
    entropy = -jnp.sum(probs * logp, axis=-1)
    second = jnp.sum(probs * logp * logp, axis=-1)
    var = jnp.maximum(second - entropy * entropy, 0.0)
    p_a = jnp.take_along_axis(probs, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]
    u = jnp.log(jnp.maximum(p_a, LOG_FLOOR)) + entropy
    return u, var


def epsilon_greedy_policy(q: jax.Array, avail: jax.Array, epsilon: jax.Array) -> jax.Array:
    """QMIX's acting distribution (``tram.learners.qmix.select_actions``): ``1 - eps`` on the
    first argmax of ``q`` over available actions plus ``eps`` spread uniformly over the
    available actions. ``[..., A] -> [..., A]`` probabilities."""
    avail = avail.astype(bool)
    n_avail = jnp.maximum(jnp.sum(avail, axis=-1, keepdims=True), 1)
    greedy = jnp.argmax(jnp.where(avail, q, -jnp.inf), axis=-1)
    onehot = jax.nn.one_hot(greedy, q.shape[-1], dtype=jnp.float32)
    return (1.0 - epsilon) * onehot + epsilon * avail.astype(jnp.float32) / n_avail


class MonitorAcc(NamedTuple):
    """The monitor's sums over one rollout (carried through its time loop).

    Attributes:
        score: ``[B, N]`` per episode and agent, ``sum_t u_t`` over the agent's steps.
        var: ``[B, N]`` ``sum_t v_t``.
        trace_u: ``[T, N]`` the per-step ``u_t`` of environment 0 (0 after its end).
        trace_var: ``[T, N]`` its per-step ``v_t``.
    """

    score: jax.Array
    var: jax.Array
    trace_u: jax.Array
    trace_var: jax.Array

    @staticmethod
    def zeros(batch: int, agents: int, limit: int) -> "MonitorAcc":
        """All zeros (``T = limit``)."""
        return MonitorAcc(score=jnp.zeros((batch, agents), jnp.float32), var=jnp.zeros((batch, agents), jnp.float32),
                          trace_u=jnp.zeros((limit, agents), jnp.float32),
                          trace_var=jnp.zeros((limit, agents), jnp.float32))

    def add(self, u: jax.Array, v: jax.Array, active: jax.Array, t: jax.Array) -> "MonitorAcc":
        """Adds one step: ``u, v [B, N]``, ``active [B]`` (the environments that step), ``t []``."""
        m = active[:, None]
        u = jnp.where(m, u, 0.0)
        v = jnp.where(m, v, 0.0)
        slot = jnp.minimum(t, self.trace_u.shape[0] - 1)
        return MonitorAcc(score=self.score + u, var=self.var + v,
                          trace_u=self.trace_u.at[slot].add(u[0]), trace_var=self.trace_var.at[slot].add(v[0]))


class DetectionRing(NamedTuple):
    """The last :data:`ROLLOUTS_PER_WINDOW` rollouts of an evaluation window (one seed).

    Attributes:
        score, var: ``[R, B, N]`` per episode and agent (see :class:`MonitorAcc`).
        length: ``[R, B]`` int32 episode lengths.
        trace_u, trace_var: ``[R, T, N]`` environment 0's per-step values.
        rollout_step: ``[R]`` int32 the seed's env steps when the rollout began.
        valid: ``[R]`` bool, False for slots no rollout of the window filled.
        pos: ``[]`` int32 the next slot.
    """

    score: jax.Array
    var: jax.Array
    length: jax.Array
    trace_u: jax.Array
    trace_var: jax.Array
    rollout_step: jax.Array
    valid: jax.Array
    pos: jax.Array

    @staticmethod
    def zeros(batch: int, agents: int, limit: int, slots: int = ROLLOUTS_PER_WINDOW) -> "DetectionRing":
        """An empty ring."""
        f = jnp.float32
        return DetectionRing(score=jnp.zeros((slots, batch, agents), f), var=jnp.zeros((slots, batch, agents), f),
                             length=jnp.zeros((slots, batch), jnp.int32),
                             trace_u=jnp.zeros((slots, limit, agents), f),
                             trace_var=jnp.zeros((slots, limit, agents), f),
                             rollout_step=jnp.zeros((slots,), jnp.int32), valid=jnp.zeros((slots,), bool),
                             pos=jnp.int32(0))

    def push(self, acc: MonitorAcc, length: jax.Array, rollout_step: jax.Array) -> "DetectionRing":
        """The ring with one more rollout (overwriting the oldest when full)."""
        p = self.pos
        return DetectionRing(score=self.score.at[p].set(acc.score), var=self.var.at[p].set(acc.var),
                             length=self.length.at[p].set(length.astype(jnp.int32)),
                             trace_u=self.trace_u.at[p].set(acc.trace_u),
                             trace_var=self.trace_var.at[p].set(acc.trace_var),
                             rollout_step=self.rollout_step.at[p].set(rollout_step.astype(jnp.int32)),
                             valid=self.valid.at[p].set(True), pos=(p + 1) % self.valid.shape[0])
