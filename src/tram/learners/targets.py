"""Critic targets of DOP and COMA over ONE episode (rlax style).

Every function here takes the time series of a single episode, time-major and
unbatched; callers ``jax.vmap`` over episodes (and over agents for COMA's per-agent
targets). Shape letter ``T`` is the number of transition slots of the episode buffer
(``max_seq_length - 1`` in PyMARL); arrays with ``T + 1`` entries also hold the
post-episode slot, used for bootstrapping only.

Conventions shared with the reference code (oxwhirl/pymarl, TonghanWang/DOP):

* ``terminated[t] = 1`` where no target may bootstrap past step ``t``; with
  ``terminated = 0`` everywhere (an episode cut by the time limit, when the learner's
  ``bootstrap_timeouts`` is true) the value of the post-episode slot ``T`` is
  bootstrapped. The learners pass :func:`tram.learners.episodes.target_terminated`, which
  by default also marks a timeout's last step, as the reference runs store it
  (``docs/learners.md``, "Time-limit ends").
* ``mask`` is :func:`episode_mask` (``filled`` with the steps after a termination
  removed); outputs at masked steps carry no loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["episode_mask", "td_lambda_targets", "tree_backup_targets"]


def _check_rank1(name: str, x: jax.Array, length: int | None = None) -> None:
    if x.ndim != 1:
        raise ValueError(f"{name} must be a 1-D time series, got shape {x.shape}")
    if length is not None and x.shape[0] != length:
        raise ValueError(f"{name} must have {length} entries, got shape {x.shape}")


def episode_mask(filled: jax.Array, terminated: jax.Array) -> jax.Array:
    """PyMARL's loss mask of one episode.

    ``mask = filled``; ``mask[1:] *= 1 - terminated[:-1]``, i.e. a step is valid if it was
    written to the buffer and no termination happened at the step before it. Only the
    slot right after a termination is removed: slots further on are expected to have
    ``filled = 0`` already (as in PyMARL's buffer, which marks the post-episode slot and
    nothing after it).

    Reference: ``learners/coma_learner.py`` (oxwhirl/pymarl) and ``learners/offpg_learner.py``
    (TonghanWang/DOP), ``mask = batch["filled"][:, :-1]`` followed by
    ``mask[:, 1:] = mask[:, 1:] * (1 - terminated[:, :-1])``.

    Args:
      filled: ``[T]`` bool/float, 1 where the buffer slot holds a transition (the first
        ``T`` slots of the buffer's ``filled``; PyMARL also marks the post-episode slot,
        which this rule removes after a termination).
      terminated: ``[T]`` bool/float, 1 at the step where the episode really ended.

    Returns:
      ``[T]`` float32 mask.
    """
    _check_rank1("filled", filled)
    _check_rank1("terminated", terminated, filled.shape[0])
    mask = filled.astype(jnp.float32)
    term = terminated.astype(jnp.float32)
    return mask.at[1:].multiply(1.0 - term[:-1])


def td_lambda_targets(
    rewards: jax.Array,
    terminated: jax.Array,
    mask: jax.Array,
    target_q: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> jax.Array:
    """TD(lambda) targets, PyMARL's ``build_td_lambda_targets`` for one episode.

    Backward recursion of the forward view (Sutton & Barto, Sec. 12.1)::

        ret[T] = target_q[T] * (1 - sum_t terminated[t])
        ret[t] = lam * gamma * ret[t+1]
                 + mask[t] * (r[t] + (1 - lam) * gamma * target_q[t+1] * (1 - terminated[t]))

    for ``t = T-1, ..., 0``; returns ``ret[0:T]``. With ``lam = 0`` this is the one-step TD
    target ``mask[t] (r[t] + gamma target_q[t+1] (1 - terminated[t]))``; with ``lam = 1`` it
    is the discounted Monte-Carlo return plus ``gamma^(T-t) target_q[T]`` when no step is
    flagged terminated (a time-limit end the caller chose to bootstrap).

    Note that ``ret[t+1]`` is carried through masked steps unmasked, exactly as in the
    reference: after a termination every later step is masked and ``ret[T] = 0``, so the
    padding contributes nothing.

    Reference: ``utils/rl_utils.py`` ``build_td_lambda_targets`` (oxwhirl/pymarl, identical
    in TonghanWang/DOP). DOP calls it on ``Q_tot`` of the target critic and mixer at the
    taken joint actions; COMA on each agent's ``Q_i(a_i)`` of the target critic (vmap over
    agents, with the shared reward, termination and mask).

    Args:
      rewards: ``[T]`` rewards ``r[t]``.
      terminated: ``[T]`` float, 1 where the episode really ended (not the time limit).
      mask: ``[T]`` float, :func:`episode_mask`.
      target_q: ``[T+1]`` target values at the taken actions, slot ``T`` is the
        post-episode slot.
      gamma: discount.
      lam: lambda in ``[0, 1]``.

    Returns:
      ``[T]`` targets.
    """
    _check_rank1("rewards", rewards)
    t_len = rewards.shape[0]
    _check_rank1("terminated", terminated, t_len)
    _check_rank1("mask", mask, t_len)
    _check_rank1("target_q", target_q, t_len + 1)
    dtype = jnp.result_type(rewards.dtype, target_q.dtype, jnp.float32)
    rewards = rewards.astype(dtype)
    term = terminated.astype(dtype)
    mask = mask.astype(dtype)
    target_q = target_q.astype(dtype)

    ret_last = target_q[-1] * (1.0 - jnp.sum(term))

    def step(ret_next, xs):
        r_t, term_t, mask_t, q_next = xs
        ret_t = lam * gamma * ret_next + mask_t * (r_t + (1.0 - lam) * gamma * q_next * (1.0 - term_t))
        return ret_t, ret_t

    _, ret = jax.lax.scan(step, ret_last, (rewards, term, mask, target_q[1:]), reverse=True)
    return ret


def tree_backup_targets(
    rewards: jax.Array,
    terminated: jax.Array,
    mask: jax.Array,
    q_taken: jax.Array,
    expected_q: jax.Array,
    c: jax.Array,
    gamma: float | jax.Array,
    lam_tb: float | jax.Array,
    n_steps: int,
) -> jax.Array:
    """DOP's n-step tree-backup target (off-policy critic batch) for one episode.

    Exactly what ``train_critic_best`` + ``build_target_q`` of the reference compute::

        Qt[T] = q_taken[T]    * (1 - sum_t terminated[t])     # never read below
        E[T]  = expected_q[T] * (1 - sum_t terminated[t])
        Qt[t] = q_taken[t] * mask[t],  E[t] = expected_q[t] * mask[t]     (t < T)
        delta[t] = (r[t] + gamma * E[t+1] - Qt[t]) * mask[t]
        y[t] = Qt[t] + sum_{j=0}^{n-1} (gamma * lam_tb)^j * (c[t+1] ... c[t+j]) * delta[t+j]

    with ``delta[t+j] = 0`` for ``t + j >= T`` (zero padding past the end; an empty
    product is 1). So a termination inside the episode stops the bootstrap through the
    mask (``E`` of the next, masked, step is 0), a termination at the last slot through
    ``E[T] = 0``, and an episode with no step flagged terminated (a time-limit end the
    caller chose to bootstrap) bootstraps on ``E[T]``. Masked steps get
    ``y = 0``.

    Here ``c[t] = prod_i pi_i(a_i,t | tau_i,t)`` under the CURRENT (epsilon-floored,
    availability-renormalised) policy, with no behaviour-policy ratio; ``q_taken`` is
    the target ``Q_tot`` at the taken actions and ``expected_q`` the target mixer applied
    to ``sum_a pi_i(a) Q_i(a)``. Only ``c[1..T-1]`` enters the sum (the reference drops
    the post-episode slot with ``mac[:, :-1]`` and ``c[0]`` is never a factor); ``c`` must
    be finite on padded steps (the reference gets 0 there), since ``0 * nan = nan``.

    Reference: TonghanWang/DOP ``learners/offpg_learner.py`` (``train_critic_best``) and
    ``utils/offpg_utils.py`` (``build_target_q``). Departure: none in the value; the sum
    is vectorised (one shift per ``j``) instead of the reference's batched loop.

    Args:
      rewards: ``[T]`` rewards.
      terminated: ``[T]`` float, 1 where the episode really ended.
      mask: ``[T]`` float, :func:`episode_mask`.
      q_taken: ``[T+1]`` target ``Q_tot`` at the taken joint actions.
      expected_q: ``[T+1]`` target ``Q_tot`` of the policy-expected agent values.
      c: ``[T+1]`` trace coefficients (slot ``0`` and slot ``T`` are not used).
      gamma: discount.
      lam_tb: tree-backup lambda.
      n_steps: number of steps ``n >= 1`` (static Python int; 5 in DOP).

    Returns:
      ``[T]`` targets ``y``.
    """
    _check_rank1("rewards", rewards)
    t_len = rewards.shape[0]
    _check_rank1("terminated", terminated, t_len)
    _check_rank1("mask", mask, t_len)
    _check_rank1("q_taken", q_taken, t_len + 1)
    _check_rank1("expected_q", expected_q, t_len + 1)
    _check_rank1("c", c, t_len + 1)
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a Python int >= 1, got {n_steps!r}")
    dtype = jnp.result_type(rewards.dtype, q_taken.dtype, expected_q.dtype, jnp.float32)
    rewards = rewards.astype(dtype)
    term = terminated.astype(dtype)
    mask = mask.astype(dtype)
    c = c.astype(dtype)

    not_term = 1.0 - jnp.sum(term)
    qt = q_taken[:-1].astype(dtype) * mask
    e_next = jnp.concatenate([expected_q[1:-1].astype(dtype) * mask[1:], (expected_q[-1:] * not_term).astype(dtype)])
    delta = (rewards + gamma * e_next - qt) * mask

    # term_j[t] = (c[t+1] ... c[t+j]) delta[t+j]; term_{j+1}[t] = c[t+1] term_j[t+1].
    c_used = c[:-1]
    coeff = jnp.asarray(1.0, dtype)
    term_j = delta
    acc = jnp.zeros_like(delta)
    for _ in range(n_steps):
        acc = acc + coeff * term_j
        term_j = jnp.concatenate([(term_j * c_used)[1:], jnp.zeros((1,), dtype)])
        coeff = coeff * gamma * lam_tb
    return qt + acc
