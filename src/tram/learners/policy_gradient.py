"""The actor side shared by DOP and COMA: the recurrent policy over stored episodes and the
policy-gradient loss with a critic baseline.

Both reference learners (TonghanWang/DOP ``offpg_learner.py``, oxwhirl/pymarl
``coma_learner.py``) use the same loss up to a per-agent coefficient ``c_i``:

    b_i = sum_a pi_i(a) Q_i(a),   A_i = Q_i(a_i) - b_i   (both detached)
    loss = - sum_{b,t,i} mask c_i A_i log pi_i(a_i) / sum_{b,t,i} mask

with ``pi`` the epsilon-floored, availability-masked, renormalised policy, the mask
repeated per agent, and ``pi_i(a_i)`` set to 1 where masked (so ``log`` is 0 there). DOP
uses ``c_i = k_i(s)`` (its mixing weight) and ``Q`` from its current critic; COMA uses
``c_i = 1`` and the ``Q`` recorded during its critic's per-timestep updates.

Shapes: ``E`` episodes, ``T + 1`` slots, ``N`` agents, ``A`` actions, ``I`` actor inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tram.learners.actor import RNNActor, actor_inputs, floored_policy, unroll_block
from tram.learners.episodes import Episodes, loss_mask
from tram.learners.timechunks import recurrent_value_and_grad, scan_chunks, scan_time


def take(q: jax.Array, actions: jax.Array) -> jax.Array:
    """``q [..., A]`` at ``actions [...]`` -> ``[...]``."""
    return jnp.take_along_axis(q, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]


def episode_actor_inputs(actor: RNNActor, episodes: Episodes) -> jax.Array:
    """Actor inputs at every slot (last action -1, i.e. zeros, at t = 0). ``-> [E, T+1, N, I]``."""
    e, _, n = episodes.actions.shape
    last = jnp.concatenate([jnp.full((e, 1, n), -1, jnp.int32), episodes.actions[:, :-1]], axis=1)
    return actor_inputs(episodes.obs, last, actor.num_actions)


def _logits_step(actor: RNNActor, params):
    def step(h, x_t):
        logits, h = actor.apply(params, h, x_t)
        return h, logits

    return step


def policy_over_episodes(actor: RNNActor, actor_params, episodes: Episodes, epsilon,
                         length: jax.Array | None = None, chunk: int = 8, blocks: bool = False) -> jax.Array:
    """The floored policy at every slot of every episode (GRU from zeros at t = 0).

    Without ``length``: the reference form, ``RNNActor`` applied step by step over every
    slot. With ``length``: only the first ``length`` slots (rounded up to ``chunk``) are
    computed, in blocks of ``chunk`` steps, with ``blocks`` the input and output layers
    outside the recurrence (:func:`tram.learners.actor.unroll_block`), else every layer
    step by step (the default: measured faster on a 2-core CPU, 58 vs 99 ms for DOP's
    32-episode off-policy batch on 3m with 5 vmapped seeds, ``benchmarks/dop_profile.py
    --pieces policy,policy_per_step``); the rest are 0. All forms agree to float rounding
    (tests/test_dop.py).

    Returns ``[E, T+1, N, A]`` probabilities (0 on unavailable actions).
    """
    e, _, n = episodes.actions.shape
    x = episode_actor_inputs(actor, episodes)
    h0 = jnp.zeros((e, n, actor.hidden), jnp.float32)
    if length is None:
        _, logits = jax.lax.scan(_logits_step(actor, actor_params), h0, jnp.swapaxes(x, 0, 1))
        logits = jnp.swapaxes(logits, 0, 1)
    elif blocks:
        logits = scan_chunks(lambda h, xc: unroll_block(actor_params, h, xc), h0, x, length, chunk)
    else:
        logits = scan_time(_logits_step(actor, actor_params), h0, x, length, chunk)
    return floored_policy(logits, episodes.avail, epsilon)


def _agent_mask(ep: Episodes) -> jax.Array:
    """``[E, T+1, N]``: the loss mask per agent-step (last slot 0)."""
    e = ep.actions.shape[0]
    mask = jnp.concatenate([loss_mask(ep.filled, ep.terminated), jnp.zeros((e, 1))], axis=1)
    return jnp.broadcast_to(mask[..., None], ep.actions.shape)


def _terms(pi, q, coef, actions, weight):
    baseline = jax.lax.stop_gradient(jnp.sum(pi * q, axis=-1))
    adv = jax.lax.stop_gradient(take(q, actions) - baseline)
    pi_taken = jnp.where(weight > 0, take(pi, actions), 1.0)
    return -jnp.sum(coef * adv * jnp.log(pi_taken) * weight)


def pg_loss(actor: RNNActor, actor_params, ep: Episodes, epsilon, q: jax.Array, coef: jax.Array) -> jax.Array:
    """The loss of the module docstring, unrolled over every slot (the reference form).

    Args:
        q: ``[E, T+1, N, A]`` critic values (treated as constants).
        coef: ``[E, T+1, N]`` per-agent coefficients (treated as constants).

    Returns:
        Scalar loss.
    """
    pi = policy_over_episodes(actor, actor_params, ep, epsilon)
    mask = _agent_mask(ep)
    weight = mask / jnp.maximum(jnp.sum(mask), 1.0)
    return _terms(pi, jax.lax.stop_gradient(q), jax.lax.stop_gradient(coef), ep.actions, weight)


def pg_loss_and_grad(actor: RNNActor, actor_params, ep: Episodes, epsilon, q: jax.Array, coef: jax.Array,
                     length: jax.Array, chunk: int = 8, blocks: bool = False):
    """:func:`pg_loss` and its gradient over the first ``length`` slots only (the batch's
    longest episode), by chunked back-propagation through time; equal to
    ``jax.value_and_grad(pg_loss)`` up to float rounding (tested). With ``blocks`` each
    chunk's input and output layers run outside the recurrence
    (:func:`tram.learners.actor.unroll_block`, forward and backward); the default keeps
    every layer in the per-step scan, measured faster on a 2-core CPU for DOP's 16-episode
    batch on 3m with 5 vmapped seeds (``benchmarks/dop_profile.py --pieces
    actor,actor_per_step``: 95 vs 124 ms and 218 vs 260 ms per update in two runs).

    Returns ``(loss, grads)``.
    """
    e, _, n = ep.actions.shape
    mask = _agent_mask(ep)
    weight = mask / jnp.maximum(jnp.sum(mask), 1.0)
    xs = (episode_actor_inputs(actor, ep), ep.avail, ep.actions, jax.lax.stop_gradient(q),
          jax.lax.stop_gradient(coef), weight)

    def chunk_loss(params, h, x):
        inputs, avail, actions, q_c, coef_c, w_c = x
        if blocks:
            h, logits = unroll_block(params, h, inputs)
        else:
            h, logits = jax.lax.scan(_logits_step(actor, params), h, jnp.swapaxes(inputs, 0, 1))
            logits = jnp.swapaxes(logits, 0, 1)
        pi = floored_policy(logits, avail, epsilon)
        return _terms(pi, q_c, coef_c, actions, w_c), h

    h0 = jnp.zeros((e, n, actor.hidden), jnp.float32)
    return recurrent_value_and_grad(chunk_loss, actor_params, h0, xs, length, chunk)
