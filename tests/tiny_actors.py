"""Tiny actors in plain jnp, and the acting context around them, for the attack-maths tests
(tests/test_attack_math.py, tests/test_attack_combined.py): a feed-forward actor and a GRU-like
recurrent one with ``A`` actions, ``H`` hidden units and ``I`` input features."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tram.types import ActingContext

A = 5  # actions in every randomised test (one jit shape)
H, I = 4, 3  # tiny nets: hidden units, input features


def mlp_init(key, num_actions=A):
    """Parameters ``{w1 [I, H], b1 [H], w2 [H, num_actions], b2 [num_actions]}``."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {"w1": jax.random.normal(k1, (I, H)), "b1": 0.1 * jax.random.normal(k2, (H,)),
            "w2": jax.random.normal(k3, (H, num_actions)), "b2": 0.1 * jax.random.normal(k4, (num_actions,))}


def mlp_logits(params, hidden, x):
    """A feed-forward actor's logits ``[A]``: ``hidden`` is ignored."""
    del hidden
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def gru_init(key, num_actions=A):
    """Parameters ``{wx [I, 2H], wh [H, 2H], b [2H], wo [H, num_actions], bo [num_actions]}``."""
    ks = jax.random.split(key, 6)
    return {"wx": jax.random.normal(ks[0], (I, 2 * H)) * 0.8, "wh": jax.random.normal(ks[1], (H, 2 * H)) * 0.8,
            "b": 0.1 * jax.random.normal(ks[2], (2 * H,)), "wo": jax.random.normal(ks[3], (H, num_actions)),
            "bo": 0.1 * jax.random.normal(ks[4], (num_actions,))}


def gru_step(params, h, x):
    """``(logits [A], h' [H])``: a GRU-like cell ``h' = (1 - z) h + z tanh(.)`` and a linear head."""
    pre = x @ params["wx"] + h @ params["wh"] + params["b"]
    z = jax.nn.sigmoid(pre[:H])
    h_new = (1.0 - z) * h + z * jnp.tanh(pre[H:])
    return h_new @ params["wo"] + params["bo"], h_new


def gru_logits(params, h, x):
    """The GRU actor's logits ``[A]``."""
    return gru_step(params, h, x)[0]


def tree_like(key, params, scale=1.0):
    """A random pytree shaped like ``params`` (standard normal times ``scale``)."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def make_ctx(logits, avail, q, params, hidden, x, prev_grad, has_prev=True, mix=1.0, hidden_tangent=None):
    """An :class:`ActingContext` of one agent at one step (float32 arrays, epsilon 0.05)."""
    return ActingContext(
        logits=jnp.asarray(logits, jnp.float32), avail=jnp.asarray(avail, bool), q_values=jnp.asarray(q, jnp.float32),
        mix_weight=jnp.float32(mix), actor_params=params, actor_hidden=jnp.asarray(hidden, jnp.float32),
        actor_input=jnp.asarray(x, jnp.float32), prev_actor_grad=prev_grad, has_prev_grad=jnp.array(has_prev),
        epsilon=jnp.float32(0.05),
        hidden_tangent=None if hidden_tangent is None else jnp.asarray(hidden_tangent, jnp.float32))
