"""COMA building blocks (Foerster et al., AAAI 2018) as implemented in oxwhirl/pymarl.

Pure pieces the COMA learner is assembled from:

* :func:`coma_critic_inputs`: the centralised critic's per-agent input
  (``modules/critics/coma.py`` ``_build_inputs``);
* :class:`ComaCritic`: MLP 128-128 ReLU -> ``A`` with PyTorch's default init
  (``modules/critics/coma.py``);
* :func:`last_actions_onehot`: the one-hot actions of the previous step (zeros at t=0);
* :func:`coma_actor_loss`: the counterfactual-baseline policy-gradient loss
  (``learners/coma_learner.py`` ``train``);
* :func:`coma_critic_step_sequence`: one optimiser step per timestep, in REVERSED time
  order, on TD(lambda) targets (``learners/coma_learner.py`` ``_train_critic``).

Shape letters: ``T`` time, ``B`` episodes, ``N`` agents, ``A`` actions, ``S`` state
features, ``D`` observation features, ``F = S + D + 2 N A + N`` critic input features.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tram.learners.nets import TorchDense

__all__ = [
    "coma_critic_inputs",
    "last_actions_onehot",
    "ComaCritic",
    "coma_actor_loss",
    "ComaCriticSteps",
    "coma_critic_step_sequence",
]


# ----------------------------------------------------------------------------------------
# Critic inputs and network
# ----------------------------------------------------------------------------------------
def last_actions_onehot(actions_onehot: jax.Array) -> jax.Array:
    """The previous step's one-hot actions, zeros at ``t = 0``.

    ``last[0] = 0``, ``last[t] = actions_onehot[t-1]``, as the reference builds the
    "last actions" block for the whole sequence (``modules/critics/coma.py``,
    ``_build_inputs`` with ``t=None``).

    Args:
      actions_onehot: ``[T, N, A]`` (time on axis 0).

    Returns:
      ``[T, N, A]``.
    """
    return jnp.concatenate([jnp.zeros_like(actions_onehot[:1]), actions_onehot[:-1]], axis=0)


def coma_critic_inputs(
    state: jax.Array,
    obs: jax.Array,
    actions_onehot: jax.Array,
    last_actions_onehot: jax.Array,
) -> jax.Array:
    """Per-agent input of COMA's centralised critic, in the reference's order.

    For agent ``i`` at step ``t`` the features are the concatenation of

    1. ``state[t]``                                    (``S``)
    2. ``obs[t, i]``                                   (``D``)
    3. the joint one-hot actions ``u[t, 0..N-1]`` flattened agent-major, with agent
       ``i``'s own block zeroed                          (``N A``)
    4. the joint one-hot LAST actions of all agents, agent ``i``'s included
                                                        (``N A``)
    5. the one-hot id of agent ``i``                    (``N``)

    so the critic outputs ``Q_i(s, u^{-i}, .)`` for every action of agent ``i``. Zeros for
    the last actions at ``t = 0`` are the caller's job (:func:`last_actions_onehot`).

    Reference: oxwhirl/pymarl ``modules/critics/coma.py`` ``_build_inputs``. Any leading
    dimensions (e.g. ``[B, T]``) are carried through.

    Args:
      state: ``[T, S]``.
      obs: ``[T, N, D]``.
      actions_onehot: ``[T, N, A]`` one-hot actions at ``t``.
      last_actions_onehot: ``[T, N, A]`` one-hot actions at ``t - 1`` (zeros at ``t = 0``).

    Returns:
      ``[T, N, S + D + N A + N A + N]``, dtype of the promoted inputs (at least float32).
    """
    *lead, n, a = actions_onehot.shape
    if obs.shape[:-1] != (*lead, n):
        raise ValueError(f"obs must be [..., N={n}, D] with leading dims {tuple(lead)}, got {obs.shape}")
    if state.shape[:-1] != tuple(lead):
        raise ValueError(f"state must be [..., S] with leading dims {tuple(lead)}, got {state.shape}")
    if last_actions_onehot.shape != actions_onehot.shape:
        raise ValueError(f"last_actions_onehot must have shape {actions_onehot.shape}, got {last_actions_onehot.shape}")
    dtype = jnp.result_type(state.dtype, obs.dtype, jnp.float32)

    def joint(x):  # [..., N, A] -> [..., N (receiving agent), N A]
        flat = x.astype(dtype).reshape(*lead, 1, n * a)
        return jnp.broadcast_to(flat, (*lead, n, n * a))

    # others[i, j*A + k] = 1 - [i == j]
    others = jnp.repeat(1.0 - jnp.eye(n, dtype=dtype), a, axis=1)
    ids = jnp.broadcast_to(jnp.eye(n, dtype=dtype), (*lead, n, n))
    state_rep = jnp.broadcast_to(state.astype(dtype)[..., None, :], (*lead, n, state.shape[-1]))
    return jnp.concatenate(
        [state_rep, obs.astype(dtype), joint(actions_onehot) * others, joint(last_actions_onehot), ids], axis=-1)


class ComaCritic(nn.Module):
    """COMA's critic: ``[..., F] -> Q [..., A]``, ``Linear(F,128) ReLU Linear(128,128) ReLU
    Linear(128,A)``, PyTorch default initialisation (:class:`tram.learners.nets.TorchDense`).

    Reference: oxwhirl/pymarl ``modules/critics/coma.py`` (``fc1``, ``fc2``, ``fc3``).

    Attributes:
      num_actions: ``A``.
      hidden: hidden width (128 in the reference).
    """

    num_actions: int
    hidden: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(TorchDense(self.hidden, name="fc1")(x))
        x = nn.relu(TorchDense(self.hidden, name="fc2")(x))
        return TorchDense(self.num_actions, name="fc3")(x)


def _take(q: jax.Array, actions: jax.Array) -> jax.Array:
    """``q [..., A]`` at integer ``actions [...]`` -> ``[...]``."""
    return jnp.take_along_axis(q, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]


# ----------------------------------------------------------------------------------------
# Actor loss
# ----------------------------------------------------------------------------------------
def coma_actor_loss(
    log_pi_taken: jax.Array,
    pi: jax.Array,
    q: jax.Array,
    actions: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    """COMA policy-gradient loss with the counterfactual baseline (masked mean).

    ::

        b_i,t = sum_a pi_i,t(a) Q_i,t(a)                   (stop_gradient)
        A_i,t = Q_i,t(u_i,t) - b_i,t                        (stop_gradient)
        loss  = - sum_{t,i} mask_t A_i,t log pi_i,t(u_i,t) / sum_{t,i} mask_t

    The denominator counts agent-steps (the mask repeated per agent). Pass the whole
    batch in ONE call (leading dims ``[B, T]``): the reference divides by the mask sum of
    the whole batch, which is not the mean of per-episode losses.

    ``pi`` is the epsilon-floored, availability-masked, renormalised policy
    (``test_mode=False`` in the reference); ``q`` are the critic's values recorded during
    the critic's per-timestep training (:func:`coma_critic_step_sequence`), not the
    target's. The caller computes ``log_pi_taken = log(where(mask, pi_taken, 1))`` (the
    reference sets ``pi_taken = 1`` at masked steps before the log) so that no ``log 0``
    reaches the gradient; masked terms are also dropped here with ``where``.

    Reference: oxwhirl/pymarl ``learners/coma_learner.py`` ``train``.

    Args:
      log_pi_taken: ``[T, N]`` log-probabilities of the taken actions (the only input
        that carries a gradient).
      pi: ``[T, N, A]`` policy.
      q: ``[T, N, A]`` critic values.
      actions: ``[T, N]`` int taken actions.
      mask: ``[T]`` step mask (:func:`tram.learners.targets.episode_mask`).

    Returns:
      Scalar loss (0 if the mask is empty).
    """
    if pi.shape != q.shape or pi.shape[:-1] != log_pi_taken.shape or actions.shape != log_pi_taken.shape:
        raise ValueError(f"shapes disagree: log_pi_taken {log_pi_taken.shape}, pi {pi.shape}, q {q.shape}, "
                         f"actions {actions.shape}")
    if mask.shape != log_pi_taken.shape[:-1]:
        raise ValueError(f"mask must be {log_pi_taken.shape[:-1]}, got {mask.shape}")
    pi = jax.lax.stop_gradient(pi)
    q = jax.lax.stop_gradient(q)
    baseline = jnp.sum(pi * q, axis=-1)
    advantage = jax.lax.stop_gradient(_take(q, actions) - baseline)
    m = jnp.broadcast_to(mask[..., None], log_pi_taken.shape).astype(log_pi_taken.dtype)
    weighted = jnp.where(m > 0, m * advantage * log_pi_taken, 0.0)
    return -jnp.sum(weighted) / jnp.maximum(jnp.sum(m), 1.0)


# ----------------------------------------------------------------------------------------
# Critic training: one optimiser step per timestep, reversed
# ----------------------------------------------------------------------------------------
class ComaCriticSteps(NamedTuple):
    """Result of :func:`coma_critic_step_sequence`.

    Attributes:
      params: critic parameters after all steps.
      opt_state: optimiser state after all steps.
      num_steps: ``[]`` int32, optimiser steps taken (timesteps with any valid entry).
      q: ``[B, T, N, A]`` critic output at each ``t``, from the parameters just BEFORE the
        step-``t`` update (zeros at skipped timesteps, as in the reference).
      losses: ``[T]`` critic loss at each ``t`` (0 at skipped timesteps).
    """

    params: Any
    opt_state: Any
    num_steps: jax.Array
    q: jax.Array
    losses: jax.Array


def coma_critic_loss_at(
    params: Any,
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    inputs_t: jax.Array,
    actions_t: jax.Array,
    targets_t: jax.Array,
    mask_t: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Masked MSE of COMA's critic at one timestep of ``B`` episodes.

    ``loss = sum_{b,i} (mask_b (Q_i(u_i) - y_i))^2 / sum_{b,i} mask_b`` (the mask repeated per
    agent); reference ``_train_critic`` of oxwhirl/pymarl ``learners/coma_learner.py``.

    Args:
      params: critic parameters.
      apply_fn: ``apply_fn(params, x [..., F]) -> [..., A]``.
      inputs_t: ``[B, N, F]``.
      actions_t: ``[B, N]`` int.
      targets_t: ``[B, N]`` TD(lambda) targets (from the target critic).
      mask_t: ``[B]``.

    Returns:
      ``(loss, q_t [B, N, A])``.
    """
    q_t = apply_fn(params, inputs_t)
    m = jnp.broadcast_to(mask_t[:, None], targets_t.shape).astype(q_t.dtype)
    err = (_take(q_t, actions_t) - jax.lax.stop_gradient(targets_t)) * m
    return jnp.sum(err ** 2) / jnp.maximum(jnp.sum(m), 1.0), q_t


def coma_critic_step_sequence(
    apply_fn: Callable[[Any, jax.Array], jax.Array],
    optimiser: optax.GradientTransformation,
    params: Any,
    opt_state: Any,
    inputs: jax.Array,
    actions: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    length: jax.Array | int | None = None,
) -> ComaCriticSteps:
    """COMA's critic training: one optimiser step per timestep, for ``t = T-1, ..., 0``.

    For each ``t`` in REVERSED order with ``sum_b mask[b, t] > 0``::

        q_t = Q_params(inputs[:, t])                     # recorded, used by the actor
        params, opt_state = optimiser step on coma_critic_loss_at(t)

    Timesteps whose mask is all zero are skipped: no parameter or optimiser-state change,
    no step counted, ``q_t = 0`` recorded. ``targets`` are computed once, before this
    call, with the TARGET critic (:func:`tram.learners.targets.td_lambda_targets` per agent).
    Gradient clipping (10 in the reference) and RMSprop belong to ``optimiser``.

    Reference: oxwhirl/pymarl ``learners/coma_learner.py`` ``_train_critic``. Departure:
    with ``length`` the loop starts at ``t = length - 1``; timesteps ``>= length`` must be
    fully masked (as padding past the batch's longest episode is) and are then skipped
    exactly as the reference skips them, without computing them.

    Args:
      apply_fn: ``apply_fn(params, x [..., F]) -> [..., A]`` (e.g. ``ComaCritic(A).apply``).
      optimiser: optax transformation (e.g. clip-by-global-norm then RMSprop).
      params: critic parameters.
      opt_state: ``optimiser``'s state for ``params``.
      inputs: ``[B, T, N, F]`` critic inputs (:func:`coma_critic_inputs`).
      actions: ``[B, T, N]`` int taken actions.
      targets: ``[B, T, N]`` TD(lambda) targets.
      mask: ``[B, T]`` step mask.
      length: optional (traced) number of leading timesteps to visit; default ``T``.

    Returns:
      :class:`ComaCriticSteps` ``(params, opt_state, num_steps, q [B, T, N, A], losses [T])``.
    """
    b, t_len, n, _ = inputs.shape
    if actions.shape != (b, t_len, n) or targets.shape != (b, t_len, n) or mask.shape != (b, t_len):
        raise ValueError(f"expected actions/targets [B, T, N] = {(b, t_len, n)} and mask [B, T] = {(b, t_len)}; "
                         f"got {actions.shape}, {targets.shape}, {mask.shape}")
    grad_fn = jax.value_and_grad(coma_critic_loss_at, has_aux=True)
    q_shape = jax.eval_shape(apply_fn, params, inputs[:, 0])  # [B, N, A]
    num_actions, q_dtype = q_shape.shape[-1], q_shape.dtype
    stop = t_len if length is None else jnp.minimum(jnp.asarray(length, jnp.int32), t_len)

    # time-major copies, so that each step reads and writes one contiguous slice
    inputs, actions, targets, mask = (jnp.swapaxes(x, 0, 1) for x in (inputs, actions, targets, mask))

    def at(x, t):
        return jax.lax.dynamic_index_in_dim(x, t, axis=0, keepdims=False)

    def take_step(operand):
        params, opt_state, t = operand
        (loss, q_t), grads = grad_fn(params, apply_fn, at(inputs, t), at(actions, t), at(targets, t), at(mask, t))
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, q_t, loss.astype(jnp.float32)

    def skip(operand):
        params, opt_state, _ = operand
        return params, opt_state, jnp.zeros((b, n, num_actions), q_dtype), jnp.float32(0.0)

    def body(k, carry):
        params, opt_state, steps, q, losses = carry
        t = stop - 1 - k
        valid = jnp.sum(at(mask, t)) > 0
        params, opt_state, q_t, loss = jax.lax.cond(valid, take_step, skip, (params, opt_state, t))
        q = jax.lax.dynamic_update_index_in_dim(q, q_t, t, axis=0)
        losses = jax.lax.dynamic_update_index_in_dim(losses, loss, t, axis=0)
        return params, opt_state, steps + valid.astype(jnp.int32), q, losses

    init = (params, opt_state, jnp.int32(0), jnp.zeros((t_len, b, n, num_actions), q_dtype),
            jnp.zeros((t_len,), jnp.float32))
    params, opt_state, steps, q, losses = jax.lax.fori_loop(0, stop, body, init)
    return ComaCriticSteps(params, opt_state, steps, jnp.swapaxes(q, 0, 1), losses)
