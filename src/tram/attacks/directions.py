"""Attack directions ``delta_hat``: variance-based (Sec. 3.2), J-based (Sec. 3.3), random.

All directions are for ONE state of the poisoned agent ``k`` (unbatched ``[A]``; batch with
``jax.vmap``). Notation (``docs/attack-math.md``):

* ``pi = masked_softmax(l)``: the actor's softmax policy over available actions, WITHOUT
  the learner's epsilon floor (the floor is not part of what the attack perturbs);
* ``A_k(a) = mix_weight * (q(a) - sum_b pi(b) q(b))``: the attacked learner's advantage
  (DOP: ``mix_weight = k_k(s)``; COMA: ``mix_weight = 1``);
* ``g(a) = grad_theta log pi(a | tau_k) = J_l^T (e_a - pi)`` with ``J_l = d l / d theta``.

Closed form of the direction (Eqs. 7-10 and 13). The paper differentiates the sampling
distribution ``rho`` through ``pi~ = f_A pi' + (1 - f_A) pi`` and approximates
``d rho / d pi~`` by 1 (Eq. 8). With Eq. 10, ``d pi'(a) / d delta(a') = pi(a)(1[a = a'] -
pi(a'))`` at ``delta = 0``, so for a per-action weight ``w`` one state contributes

    grad_delta sum_a pi'(a) w(a) |_{delta=0} = pi * (w - <pi, w>),

which :func:`softmax_weight_gradient` returns. ``f_A``, the teammates' probabilities
(Eq. 9) and the learning rate (Eq. 13) are positive constants per state and vanish in the
normalisation.

* Variance-based (Eq. 6-7): ``W(a) = A_k(a)^2 ||g(a)||^2``,
  ``delta_hat = normalize(pi * (W - <pi, W>))``.
* J-based (Eq. 13): ``U(a) = A_k(a) <g_prev, g(a)>``, ``delta_hat = normalize(-(pi * (U -
  <pi, U>)))``, with ``g_prev`` the previous actor update's policy gradient in the ascent
  direction of J (the paper's approximation of ``grad_theta J(theta^t)``).
* Combined (App. E): ascend ``E_rho[||A_k g - g_prev||^2]``, per-action weight
  ``C(a) = W(a) - 2 U(a)`` (+ a constant), ``delta_hat = normalize(pi * (C - <pi, C>))``:
  the unnormalised var vector plus twice the unnormalised J vector (:func:`combined_direction`).
* Random: a Gaussian vector on the available actions, normalised.

``||g(a)||^2 = (e_a - pi)^T K (e_a - pi)`` with the ``A x A`` Gram matrix ``K = J_l J_l^T``,
and ``<g_prev, g(a)> = (e_a - pi)^T v`` with ``v = J_l g_prev`` (one JVP): per-action
parameter gradients are never formed (:func:`logit_gram`, :func:`logit_jvp`).

Recurrent actors. The paper's ``g(a) = grad_theta log pi(a | tau_t)`` is the gradient
through the whole history ``tau_t`` (the hidden state entering step ``t`` is itself a
function of ``theta``), as the learner's own loss back-propagates it. Two ways to compute
each direction's ``J_l``, chosen by ``AttackConfig`` (``docs/recurrent-gradient.md``):

* one-step (our earlier approximation; the paper is silent): ``J_l`` is the Jacobian of
  the CURRENT step's logits with the hidden state entering the step held constant
  (:func:`logit_gram`, :func:`logit_jvp`). Exact for a history of length 1 only.
* exact, J-based (``attack.recurrent_grad = "exact"``, the default):
  ``<g_prev, g(a)> = (e_a - pi)^T v`` needs only the directional derivative
  ``v = d l_t / d theta . g_prev``, which forward mode carries through the episode: the
  rollout keeps the tangent ``h_dot_{t-1} = d h_{t-1} / d theta . g_prev`` (zeros at the
  episode start, :func:`advance_hidden_tangent` per step, ``g_prev`` fixed between actor
  updates), and :func:`logit_jvp_through_history` is one JVP of the step in
  ``(theta, h_{t-1})`` along ``(g_prev, h_dot_{t-1})``. Exact, at the cost of about two
  JVPs of one agent's actor step per acting step.
* exact, variance-based (``attack.var_gram = "exact"``; default ``"one_step"``): ``K``
  needs all ``A`` per-action gradients through the history, so the rollout keeps the
  episode's inputs and :func:`history_gram` back-propagates through them (``A`` reverse
  passes over an ``episode_limit``-step scan per acting step: slow).

:func:`exact_recurrent_gram` is the brute-force reference (a scan over an explicit
history); the tests check both exact forms against it and against ``jax.grad``.

Numerics and fallbacks (choices where the paper is silent):

* differences ``x(a) - <pi, x>`` are computed pairwise as ``sum_b pi(b) (x(a) - x(b))``
  (:func:`centred`), and ``1 - pi(a)`` as ``sum_{b != a} pi(b)``, which keeps the tiny
  components of a nearly one-hot policy accurate;
* the direction falls back to the random one, with ``fallback = True``, when (i) the
  unnormalised vector is numerically zero (largest entry ``<= ZERO_TOL``, or not
  finite), e.g. one-hot ``pi`` or all advantages 0; (ii) J-based before the first actor
  update (``has_prev_grad`` False); (iii) fewer than 2 actions are available: then the
  softmax over available actions is constant in ``delta``, NO perturbation exists, and
  the returned direction is all zeros (the caller's beta is irrelevant).
* the unnormalised vector is divided by its largest entry before the L2 normalisation,
  so vectors far below ``sqrt(float32 tiny)`` still normalise to unit norm.

Shape letters: ``A`` actions, ``H`` actor hidden units, ``I`` actor input features,
``T`` time.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from tram.attacks.budget import masked_log_softmax, masked_softmax
from tram.types import ActingContext, ActorLogitsFn, Params

__all__ = [
    "ZERO_TOL",
    "centred",
    "softmax_weight_gradient",
    "attacker_advantage",
    "logit_gram",
    "logit_jvp",
    "logit_gram_and_jvp",
    "grad_sq_norms",
    "grad_dots",
    "variance_weights",
    "jbased_weights",
    "normalize_direction",
    "random_direction",
    "variance_direction",
    "jbased_direction",
    "combined_weights",
    "combined_direction",
    "exact_grad_log_pi",
    "exact_recurrent_gram",
    "ActorStepFn",
    "actor_step_of",
    "logit_jvp_through_history",
    "advance_hidden_tangent",
    "history_gram",
]

ActorStepFn = Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
"""``(params, hidden [H], input [I]) -> (logits [A], hidden' [H])``: one full step of the
recurrent actor of one agent."""

ZERO_TOL = 1e-30
"""An unnormalised direction whose largest |entry| is <= this counts as zero (fallback).

Absolute, near the bottom of float32's normal range: the pairwise formulas make
degenerate cases (one-hot ``pi``, all-equal weights) come out as exact zeros, and any
larger vector still normalises accurately after division by its largest entry."""

# [A, A] @ [A] products: full float32 precision on every backend.
_HI = lax.Precision.HIGHEST


def centred(pi: jax.Array, x: jax.Array) -> jax.Array:
    """``x(a) - <pi, x>`` for every ``a``, computed as ``sum_b pi(b) (x(a) - x(b))``.

    The pairwise form avoids the cancellation of ``x(a) - <pi, x>`` when ``pi`` is nearly
    one-hot (``<pi, x>`` then rounds to ``x(a*)``).

    Args:
        pi: ``[A]`` probabilities (0 on unavailable actions).
        x: ``[A]`` finite values (mask unavailable entries to 0 beforehand).

    Returns:
        ``[A]``.
    """
    return jnp.matmul(x[:, None] - x[None, :], pi, precision=_HI)


def softmax_weight_gradient(pi: jax.Array, w: jax.Array) -> jax.Array:
    """``grad_delta sum_a softmax(l + delta)(a) w(a)`` at ``delta = 0``: ``pi * (w - <pi, w>)``.

    From Eq. 10, ``d pi(a) / d l(a') = pi(a)(1[a = a'] - pi(a'))``, so the gradient of
    ``sum_a pi(a) w(a)`` is ``pi(a') (w(a') - sum_a pi(a) w(a))``. With ``pi`` the masked
    softmax this is also the gradient of the masked objective (0 on unavailable actions).

    Args:
        pi: ``[A]`` ``softmax(l)`` (0 on unavailable actions).
        w: ``[A]`` finite per-action weights (mask unavailable entries to 0 beforehand).

    Returns:
        ``[A]``, 0 where ``pi`` is 0.
    """
    return pi * centred(pi, w)


def attacker_advantage(pi: jax.Array, q_values: jax.Array, mix_weight: jax.Array, avail: jax.Array) -> jax.Array:
    """``A_k(a) = mix_weight * (q(a) - sum_b pi(b) q(b))`` on available actions, else 0.

    DOP: ``mix_weight = k_k(s) >= 0`` and ``q = Q_k(tau_k, .)``; COMA: ``mix_weight = 1``
    and ``q = Q(s, u_-k, .)`` (``attack-math.md``, "Advantages the attacker uses").

    Args:
        pi: ``[A]`` masked softmax policy.
        q_values: ``[A]`` critic values (unavailable entries ignored).
        mix_weight: ``[]``.
        avail: ``[A]`` bool.

    Returns:
        ``[A]``.
    """
    avail = avail.astype(bool)
    q = jnp.where(avail, q_values, 0.0)
    return jnp.where(avail, mix_weight * centred(pi, q), 0.0)


def _logits_of_params(actor_logits_fn: ActorLogitsFn, hidden: jax.Array, actor_input: jax.Array):
    # One-step recurrent approximation: ``hidden`` is a constant of this function, so no
    # derivative flows through the history that produced it.
    hidden = lax.stop_gradient(hidden)
    actor_input = lax.stop_gradient(actor_input)
    return lambda params: actor_logits_fn(params, hidden, actor_input)


def _gram_from_jacobian(jac: Params, num_actions: int) -> jax.Array:
    """``K = sum over param leaves of J_leaf J_leaf^T`` for a pytree of ``[A, ...]`` leaves."""
    k = jnp.zeros((num_actions, num_actions), jnp.float32)
    for leaf in jax.tree.leaves(jac):
        j = jnp.reshape(leaf, (num_actions, -1)).astype(jnp.float32)
        k = k + jnp.matmul(j, j.T, precision=_HI)
    return k


def logit_gram(actor_logits_fn: ActorLogitsFn, params: Params, hidden: jax.Array,
               actor_input: jax.Array) -> jax.Array:
    """Gram matrix ``K = J_l J_l^T`` of the logits' Jacobian w.r.t. all parameters.

    ``J_l = d l / d theta`` (``[A, P]``, all parameter leaves concatenated) is built with
    ``A`` vector-Jacobian products in one ``vmap`` (one forward pass), then
    ``K[a, b] = <grad_theta l(a), grad_theta l(b)>``. One-step recurrent approximation:
    ``hidden`` is held constant (see the module docstring).

    Args:
        actor_logits_fn: ``(params, hidden [H], actor_input [I]) -> logits [A]``.
        params: actor parameters (pytree).
        hidden: ``[H]`` recurrent state before this step.
        actor_input: ``[I]`` actor input at this step.

    Returns:
        ``[A, A]`` symmetric positive semi-definite, float32.

    An ``actor_logits_fn`` with a ``gram(params, hidden, actor_input)`` method (e.g.
    :class:`tram.learners.actor.RNNActorLogits`) supplies the same matrix by an exact
    per-layer formula instead, without building the ``[A, P]`` Jacobian.
    """
    if hasattr(actor_logits_fn, "gram"):
        return actor_logits_fn.gram(params, hidden, actor_input)
    f = _logits_of_params(actor_logits_fn, hidden, actor_input)
    logits, vjp = jax.vjp(f, params)
    num_actions = logits.shape[-1]
    (jac,) = jax.vmap(vjp)(jnp.eye(num_actions, dtype=logits.dtype))
    return _gram_from_jacobian(jac, num_actions)


def logit_jvp(actor_logits_fn: ActorLogitsFn, params: Params, hidden: jax.Array, actor_input: jax.Array,
              tangent: Params) -> jax.Array:
    """``v = J_l tangent``: the logits' directional derivative along ``tangent``, one JVP.

    Args:
        actor_logits_fn, params, hidden, actor_input: as in :func:`logit_gram`.
        tangent: pytree like ``params`` (e.g. the previous actor gradient ``g_prev``);
            cast to the parameters' dtypes.

    Returns:
        ``[A]`` float32.
    """
    f = _logits_of_params(actor_logits_fn, hidden, actor_input)
    tangent = jax.tree.map(lambda t, p: jnp.asarray(t, jnp.result_type(p)), tangent, params)
    _, v = jax.jvp(f, (params,), (tangent,))
    return v.astype(jnp.float32)


def logit_gram_and_jvp(actor_logits_fn: ActorLogitsFn, params: Params, hidden: jax.Array,
                       actor_input: jax.Array, tangent: Params) -> tuple[jax.Array, jax.Array]:
    """``(K, v)``: :func:`logit_gram` and :func:`logit_jvp` together.

    ``K = J_l J_l^T`` (``[A, A]``) and ``v = J_l tangent`` (``[A]``), with the hidden state
    held constant (one-step recurrent approximation). Then for every action ``a``
    (:func:`grad_sq_norms`, :func:`grad_dots`):
    ``||g(a)||^2 = (e_a - pi)^T K (e_a - pi)`` and ``<tangent, g(a)> = (e_a - pi)^T v``.
    """
    return (logit_gram(actor_logits_fn, params, hidden, actor_input),
            logit_jvp(actor_logits_fn, params, hidden, actor_input, tangent))


def actor_step_of(actor_logits_fn: ActorLogitsFn) -> ActorStepFn:
    """The full actor step ``(params, hidden, input) -> (logits, hidden')`` behind ``actor_logits_fn``.

    The exact variance-based Gram needs the hidden-state update as well as the logits; an
    ``actor_logits_fn`` supplies it with a ``step`` method (e.g.
    :class:`tram.learners.actor.RNNActorLogits`).

    Raises:
        ValueError: ``actor_logits_fn`` has no ``step`` method.
    """
    step = getattr(actor_logits_fn, "step", None)
    if step is None:
        raise ValueError("attack.var_gram='exact' needs an actor_logits_fn with a step(params, hidden, input) -> "
                         f"(logits, hidden') method (e.g. RNNActorLogits); got {actor_logits_fn!r}")
    return step


def _cast_like(tangent: Params, params: Params) -> Params:
    return jax.tree.map(lambda t, p: jnp.asarray(t, jnp.result_type(p)), tangent, params)


def logit_jvp_through_history(actor_logits_fn: ActorLogitsFn, params: Params, hidden: jax.Array,
                              actor_input: jax.Array, tangent: Params, hidden_tangent: jax.Array) -> jax.Array:
    """Exact ``v = d l_t / d theta . tangent`` of a recurrent actor, through the whole history.

    ``l_t = f(theta, h_{t-1}(theta), x_t)``, so by the chain rule
    ``v = (d f / d theta) tangent + (d f / d h) h_dot_{t-1}``: one JVP of ``f`` in
    ``(theta, h)`` along ``(tangent, hidden_tangent)``, where ``hidden_tangent`` is
    ``h_dot_{t-1} = d h_{t-1} / d theta . tangent`` carried by :func:`advance_hidden_tangent`
    from zeros at the episode start. With ``hidden_tangent = 0`` this is :func:`logit_jvp`.

    Args:
        actor_logits_fn: ``(params, hidden [H], actor_input [I]) -> logits [A]``.
        params: actor parameters (pytree).
        hidden: ``[H]`` recurrent state before this step.
        actor_input: ``[I]`` actor input at this step.
        tangent: pytree like ``params`` (``g_prev``); cast to the parameters' dtypes.
        hidden_tangent: ``[H]`` ``h_dot_{t-1}``.

    Returns:
        ``[A]`` float32.
    """
    x = lax.stop_gradient(actor_input)
    f = lambda p, h: actor_logits_fn(p, h, x)  # noqa: E731
    _, v = jax.jvp(f, (params, hidden), (_cast_like(tangent, params), jnp.asarray(hidden_tangent, hidden.dtype)))
    return v.astype(jnp.float32)


def advance_hidden_tangent(actor_step_fn: ActorStepFn, params: Params, hidden: jax.Array, actor_input: jax.Array,
                           tangent: Params, hidden_tangent: jax.Array) -> jax.Array:
    """The hidden state's tangent after one step: ``h_dot_t = d h_t / d theta . tangent``.

    ``h_t = cell(theta, h_{t-1}, x_t)``, so ``h_dot_t = (d cell / d theta) tangent +
    (d cell / d h) h_dot_{t-1}`` (forward mode; one JVP of the actor step). Start from
    ``h_dot = 0`` at the episode start (the initial hidden state does not depend on
    ``theta``) and keep ``tangent`` and ``params`` fixed along the episode.

    Args:
        actor_step_fn: ``(params, hidden [H], input [I]) -> (logits [A], hidden' [H])``.
        params, hidden, actor_input, tangent, hidden_tangent: as in
            :func:`logit_jvp_through_history`.

    Returns:
        ``[H]``, the dtype of ``hidden``.
    """
    x = lax.stop_gradient(actor_input)
    f = lambda p, h: actor_step_fn(p, h, x)[1]  # noqa: E731
    _, h_dot = jax.jvp(f, (params, hidden), (_cast_like(tangent, params), jnp.asarray(hidden_tangent, hidden.dtype)))
    return h_dot.astype(hidden.dtype)


def history_gram(actor_step_fn: ActorStepFn, params: Params, hidden0: jax.Array, inputs: jax.Array,
                 step: jax.Array) -> jax.Array:
    """Exact ``K = J J^T`` of step ``step``'s logits, back-propagated through the history.

    The logits ``l_step(theta) = out(theta, h_{step-1}(theta), x_step)`` with ``h`` run
    from ``hidden0`` over ``inputs[0..step]`` are differentiated w.r.t. all parameters
    through every step; ``inputs`` is a fixed-length window (rows after ``step`` are
    ignored), so one compiled function serves every step. Equals
    :func:`exact_recurrent_gram` on ``inputs[:step + 1]``; its cost is ``A`` reverse passes
    over the whole window (``L`` actor steps each) plus the ``[A, P]`` Jacobian.

    Args:
        actor_step_fn: ``(params, hidden [H], input [I]) -> (logits [A], hidden' [H])``.
        params: actor parameters (pytree).
        hidden0: ``[H]`` the state before ``inputs[0]`` (not differentiated; zeros at the
            rollout's episode start).
        inputs: ``[L, I]`` the episode's inputs (``x_0 .. x_step`` valid).
        step: ``[]`` int, ``0 <= step < L``.

    Returns:
        ``[A, A]`` symmetric positive semi-definite, float32.
    """
    inputs = lax.stop_gradient(inputs)
    step = jnp.asarray(step, jnp.int32)

    def logits_at_step(p):
        def body(h, ix):
            i, x = ix
            h_new = actor_step_fn(p, h, x)[1]
            return jnp.where(i < step, h_new, h), None

        h_before, _ = lax.scan(body, lax.stop_gradient(hidden0), (jnp.arange(inputs.shape[0]), inputs))
        return actor_step_fn(p, h_before, inputs[step])[0]

    logits, vjp = jax.vjp(logits_at_step, params)
    num_actions = logits.shape[-1]
    (jac,) = jax.vmap(vjp)(jnp.eye(num_actions, dtype=logits.dtype))
    return _gram_from_jacobian(jac, num_actions)


def _residual_matrix(pi: jax.Array) -> jax.Array:
    """Rows ``e_a - pi`` (``[A, A]``) with the diagonal ``1 - pi(a)`` as ``sum_{b != a} pi(b)``."""
    num_actions = pi.shape[-1]
    eye = jnp.eye(num_actions, dtype=bool)
    off = jnp.where(eye, 0.0, jnp.broadcast_to(pi, (num_actions, num_actions)))
    return jnp.where(eye, jnp.sum(off, axis=-1, keepdims=True), -off)


def grad_sq_norms(pi: jax.Array, gram: jax.Array, avail: jax.Array) -> jax.Array:
    """``||g(a)||^2 = (e_a - pi)^T K (e_a - pi)`` for every available ``a``, 0 elsewhere.

    Args:
        pi: ``[A]`` masked softmax policy.
        gram: ``[A, A]`` ``K = J_l J_l^T``.
        avail: ``[A]`` bool.

    Returns:
        ``[A]`` >= 0.
    """
    d = _residual_matrix(pi)
    sq = jnp.einsum("ab,bc,ac->a", d, gram, d, precision=_HI)
    return jnp.where(avail.astype(bool), jnp.maximum(sq, 0.0), 0.0)


def grad_dots(pi: jax.Array, v: jax.Array, avail: jax.Array) -> jax.Array:
    """``<g_prev, g(a)> = (e_a - pi)^T v = v(a) - <pi, v>`` for available ``a``, 0 elsewhere.

    Args:
        pi: ``[A]`` masked softmax policy.
        v: ``[A]`` ``J_l g_prev``.
        avail: ``[A]`` bool.

    Returns:
        ``[A]``.
    """
    avail = avail.astype(bool)
    return jnp.where(avail, centred(pi, jnp.where(avail, v, 0.0)), 0.0)


def variance_weights(pi: jax.Array, adv: jax.Array, gram: jax.Array, avail: jax.Array) -> jax.Array:
    """Sec. 3.2, Eq. 6: ``W(a) = A_k(a)^2 ||g(a)||^2`` (``[A]``, 0 on unavailable)."""
    return jnp.square(adv) * grad_sq_norms(pi, gram, avail)


def jbased_weights(pi: jax.Array, adv: jax.Array, v: jax.Array, avail: jax.Array) -> jax.Array:
    """Sec. 3.3, Eq. 13: ``U(a) = A_k(a) <g_prev, g(a)>`` (``[A]``, 0 on unavailable)."""
    return adv * grad_dots(pi, v, avail)


def random_direction(key: jax.Array, avail: jax.Array) -> jax.Array:
    """The random attack: a standard Gaussian on the available actions, unit L2 norm.

    Not centred: a constant shift of the available logits does not change ``pi'``, so
    only the centred part acts (the paper's "random" baseline is silent on this; we keep
    the plain Gaussian of ``attack-math.md``).

    Args:
        key: PRNG key.
        avail: ``[A]`` bool.

    Returns:
        ``[A]``: unit norm, 0 on unavailable actions; all zeros if fewer than 2 actions
        are available (no perturbation is possible then).
    """
    avail = avail.astype(bool)
    g = jnp.where(avail, jax.random.normal(key, avail.shape, jnp.float32), 0.0)
    norm = jnp.sqrt(jnp.sum(jnp.square(g)))
    ok = (jnp.sum(avail) >= 2) & (norm > 0)
    return jnp.where(ok, g / jnp.where(ok, norm, 1.0), 0.0)


def normalize_direction(key: jax.Array, raw: jax.Array, avail: jax.Array,
                        force_fallback: jax.Array | bool = False) -> tuple[jax.Array, jax.Array]:
    """``normalize(raw)`` restricted to available actions, or the random direction.

    Falls back to :func:`random_direction` (``fallback = True``) when ``force_fallback``,
    when fewer than 2 actions are available (then the direction is all zeros), or when
    ``raw`` is numerically zero (largest available ``|entry| <= ZERO_TOL``) or not finite.

    Args:
        key: PRNG key for the fallback.
        raw: ``[A]`` unnormalised direction.
        avail: ``[A]`` bool.
        force_fallback: ``[]`` bool.

    Returns:
        ``(delta_hat [A], fallback [] bool)``.
    """
    avail = avail.astype(bool)
    raw = jnp.where(avail, raw, 0.0)
    scale = jnp.max(jnp.abs(raw))
    ok = (scale > ZERO_TOL) & jnp.isfinite(scale) & (jnp.sum(avail) >= 2) & ~jnp.asarray(force_fallback, bool)
    y = raw / jnp.where(ok, scale, 1.0)
    y = y / jnp.where(ok, jnp.sqrt(jnp.sum(jnp.square(y))), 1.0)
    return jnp.where(ok, y, random_direction(key, avail)), ~ok


def _require(value: Any, option: str, field: str) -> Any:
    if value is None:
        raise ValueError(f"{option} needs the rollout to carry ActingContext.{field} (AttackHook with the "
                         f"matching carry flag, from AttackConfig); got ActingContext.{field}=None")
    return value


def _context_gram(ctx: ActingContext, actor_logits_fn: ActorLogitsFn, exact: bool) -> jax.Array:
    """``K = J_l J_l^T`` ``[A, A]`` at the acting step: one-step (:func:`logit_gram`) or through
    the episode's history (:func:`history_gram`, ``attack.var_gram = "exact"``)."""
    if exact:
        inputs = _require(ctx.history_inputs, "attack.var_gram='exact'", "history_inputs")
        step = _require(ctx.history_step, "attack.var_gram='exact'", "history_step")
        return history_gram(actor_step_of(actor_logits_fn), ctx.actor_params, jnp.zeros_like(ctx.actor_hidden),
                            inputs, step)
    return logit_gram(actor_logits_fn, ctx.actor_params, ctx.actor_hidden, ctx.actor_input)


def _context_jvp(ctx: ActingContext, actor_logits_fn: ActorLogitsFn, exact: bool) -> jax.Array:
    """``v = J_l g_prev`` ``[A]`` at the acting step: one-step (:func:`logit_jvp`) or through the
    history with the carried tangent (:func:`logit_jvp_through_history`,
    ``attack.recurrent_grad = "exact"``)."""
    if exact:
        h_dot = _require(ctx.hidden_tangent, "attack.recurrent_grad='exact'", "hidden_tangent")
        return logit_jvp_through_history(actor_logits_fn, ctx.actor_params, ctx.actor_hidden, ctx.actor_input,
                                         ctx.prev_actor_grad, h_dot)
    return logit_jvp(actor_logits_fn, ctx.actor_params, ctx.actor_hidden, ctx.actor_input, ctx.prev_actor_grad)


def variance_direction(key: jax.Array, ctx: ActingContext, actor_logits_fn: ActorLogitsFn,
                       exact_history: bool = False) -> tuple[jax.Array, jax.Array]:
    """Variance-based direction (Sec. 3.2): ascend ``tr(R)`` of Eq. 6.

    ``delta_hat = normalize(pi * (W - <pi, W>))``, ``W(a) = A_k(a)^2 (e_a - pi)^T K (e_a - pi)``,
    ``K`` from :func:`logit_gram` (one-step, ``exact_history`` False: the default of
    ``attack.var_gram``) or from :func:`history_gram` through the episode's inputs
    (``exact_history`` True, ``attack.var_gram = "exact"``; needs ``ctx.history_inputs``,
    ``ctx.history_step`` and an ``actor_logits_fn`` with a ``step`` method).

    Args:
        key: PRNG key (used only by the fallback).
        ctx: the acting context of one environment (``logits``, ``avail``, ``q_values``,
            ``mix_weight``, ``actor_params``, ``actor_hidden``, ``actor_input``).
        actor_logits_fn: ``(params, hidden, input) -> logits [A]``.
        exact_history: back-propagate through the history (see above).

    Returns:
        ``(delta_hat [A], fallback [] bool)``; see :func:`normalize_direction`.
    """
    avail = ctx.avail.astype(bool)
    pi = masked_softmax(ctx.logits, avail)
    adv = attacker_advantage(pi, ctx.q_values, ctx.mix_weight, avail)
    gram = _context_gram(ctx, actor_logits_fn, exact_history)
    raw = softmax_weight_gradient(pi, variance_weights(pi, adv, gram, avail))
    return normalize_direction(key, raw, avail)


def jbased_direction(key: jax.Array, ctx: ActingContext, actor_logits_fn: ActorLogitsFn,
                     exact_history: bool = False) -> tuple[jax.Array, jax.Array]:
    """J-based direction (Sec. 3.3): descend ``J(theta^{t+1})`` of Eq. 13.

    ``delta_hat = normalize(-(pi * (U - <pi, U>)))``, ``U(a) = A_k(a) (e_a - pi)^T v``,
    ``v = J_l g_prev`` with ``g_prev = ctx.prev_actor_grad`` (the previous actor update's
    ascent direction of J): one-step from :func:`logit_jvp` (``exact_history`` False,
    ``attack.recurrent_grad = "one_step"``), or exact through the history from
    :func:`logit_jvp_through_history` with the carried ``ctx.hidden_tangent``
    (``exact_history`` True, ``attack.recurrent_grad = "exact"``, the default). Before the
    first update (``ctx.has_prev_grad`` False) ``g_prev = 0`` and the random direction is
    used.

    Args:
        key: PRNG key (used only by the fallback).
        ctx: the acting context of one environment (also ``prev_actor_grad``,
            ``has_prev_grad``; ``hidden_tangent`` if ``exact_history``).
        actor_logits_fn: ``(params, hidden, input) -> logits [A]``.
        exact_history: differentiate through the history (see above).

    Returns:
        ``(delta_hat [A], fallback [] bool)``; see :func:`normalize_direction`.
    """
    avail = ctx.avail.astype(bool)
    pi = masked_softmax(ctx.logits, avail)
    adv = attacker_advantage(pi, ctx.q_values, ctx.mix_weight, avail)
    v = _context_jvp(ctx, actor_logits_fn, exact_history)
    raw = -softmax_weight_gradient(pi, jbased_weights(pi, adv, v, avail))
    return normalize_direction(key, raw, avail, force_fallback=~jnp.asarray(ctx.has_prev_grad, bool))


def combined_weights(pi: jax.Array, adv: jax.Array, gram: jax.Array, v: jax.Array, avail: jax.Array) -> jax.Array:
    """App. E: ``C(a) = ||A_k(a) g(a) - g_prev||^2`` up to the constant ``||g_prev||^2``.

    ``C(a) - ||g_prev||^2 = A_k(a)^2 ||g(a)||^2 - 2 A_k(a) <g_prev, g(a)> = W(a) - 2 U(a)``
    (:func:`variance_weights`, :func:`jbased_weights`). The constant does not change the
    direction (``softmax_weight_gradient`` of a constant is 0), so it is left out.

    Args:
        pi: ``[A]`` masked softmax policy.
        adv: ``[A]`` ``A_k(a)`` (:func:`attacker_advantage`).
        gram: ``[A, A]`` ``K = J_l J_l^T``.
        v: ``[A]`` ``J_l g_prev``.
        avail: ``[A]`` bool.

    Returns:
        ``[A]``, 0 on unavailable actions.
    """
    return variance_weights(pi, adv, gram, avail) - 2.0 * jbased_weights(pi, adv, v, avail)


def combined_direction(key: jax.Array, ctx: ActingContext, actor_logits_fn: ActorLogitsFn,
                       exact_gram: bool = False, exact_jvp: bool = False) -> tuple[jax.Array, jax.Array]:
    """Combined direction (App. E): ascend ``E_rho[||g(s, a) - grad_theta J||^2]``.

    ``delta_hat = normalize(pi * (C - <pi, C>))`` with ``C(a) = A_k(a)^2 ||g(a)||^2 -
    2 A_k(a) <g_prev, g(a)>`` (:func:`combined_weights`), i.e. the UNnormalised
    variance-based vector plus twice the unnormalised J-based vector; ``g_prev =
    ctx.prev_actor_grad`` stands in for ``grad_theta J`` as in the J-based direction. Both
    are in the units of the learner's loss: ``g_prev`` is the batch mean of the per-sample
    gradients ``A_i grad log pi_i`` of which ``A_k(a) g(a)`` is one (``docs/attack-math.md``,
    "Combined").

    ``K`` is one-step (:func:`logit_gram`, ``exact_gram`` False, ``attack.var_gram =
    "one_step"``) or through the history (:func:`history_gram`, ``attack.var_gram =
    "exact"``); ``v`` is one-step (:func:`logit_jvp`, ``exact_jvp`` False,
    ``attack.recurrent_grad = "one_step"``) or through the history
    (:func:`logit_jvp_through_history`, ``attack.recurrent_grad = "exact"``): the same
    options, with the same carried fields, as the two directions it combines.

    Before the first actor update (``ctx.has_prev_grad`` False) ``g_prev`` is taken as 0:
    ``C`` is then ``W`` and the direction is the variance-based one (no forced fallback,
    unlike J-based, whose objective is then identically 0). Falls back to random only as
    :func:`normalize_direction` does (zero or non-finite vector, < 2 actions).

    Args:
        key: PRNG key (used only by the fallback).
        ctx: the acting context of one environment (also ``prev_actor_grad``,
            ``has_prev_grad``; ``hidden_tangent`` if ``exact_jvp``; ``history_inputs`` and
            ``history_step`` if ``exact_gram``).
        actor_logits_fn: ``(params, hidden, input) -> logits [A]`` (with a ``step`` method
            if ``exact_gram``).
        exact_gram: build ``K`` through the history.
        exact_jvp: build ``v`` through the history.

    Returns:
        ``(delta_hat [A], fallback [] bool)``; see :func:`normalize_direction`.
    """
    avail = ctx.avail.astype(bool)
    pi = masked_softmax(ctx.logits, avail)
    adv = attacker_advantage(pi, ctx.q_values, ctx.mix_weight, avail)
    gram = _context_gram(ctx, actor_logits_fn, exact_gram)
    v = _context_jvp(ctx, actor_logits_fn, exact_jvp)
    v = jnp.where(jnp.asarray(ctx.has_prev_grad, bool), v, 0.0)
    raw = softmax_weight_gradient(pi, combined_weights(pi, adv, gram, v, avail))
    return normalize_direction(key, raw, avail)


# ----------------------------------------------------------------------------------------
# Exact (slow) variants, for tests on tiny networks.
# ----------------------------------------------------------------------------------------


def exact_grad_log_pi(actor_logits_fn: ActorLogitsFn, params: Params, hidden: jax.Array,
                      actor_input: jax.Array, avail: jax.Array) -> Params:
    """Per-action ``g(a) = grad_theta log pi(a)``, one ``jax.grad`` per action (tests only).

    ``log pi`` is the masked log-softmax of ``actor_logits_fn(params, hidden, input)``
    with ``hidden`` held constant, as in :func:`logit_gram`.

    Returns:
        A pytree like ``params`` whose leaves have a leading ``[A]`` axis; rows of
        unavailable actions are 0.
    """
    avail = avail.astype(bool)
    f = _logits_of_params(actor_logits_fn, hidden, actor_input)

    def log_pi_a(p, a):
        return jnp.where(avail, masked_log_softmax(f(p), avail), 0.0)[a]

    num_actions = avail.shape[-1]
    grads = [jax.grad(log_pi_a)(params, a) for a in range(num_actions)]
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    return jax.tree.map(lambda g: jnp.where(avail.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0), stacked)


def exact_recurrent_gram(
    actor_step_fn: Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    params: Params,
    hidden0: jax.Array,
    inputs: jax.Array,
    tangent: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """Exact ``(K, v)`` for a recurrent actor: back-propagation through the whole history.

    The logits of the LAST step, ``l_T(theta) = out(theta, h_{T-1}(theta), x_T)`` with
    ``h_t = cell(theta, h_{t-1}, x_t)`` from ``hidden0``, are differentiated through every
    step (unlike :func:`logit_gram_and_jvp`, which holds ``h_{T-1}`` constant). With a
    history of length ``T = 1`` the two coincide.

    Args:
        actor_step_fn: ``(params, h [H], x [I]) -> (logits [A], h_new [H])``.
        params: actor parameters.
        hidden0: ``[H]`` hidden state before the first input (not differentiated).
        inputs: ``[T, I]`` inputs ``x_1..x_T`` (``T >= 1``).
        tangent: optional pytree like ``params``; ``v`` is zeros if None.

    Returns:
        ``(K [A, A], v [A])``.
    """

    def last_logits(p):
        def step(h, x):
            logits, h_new = actor_step_fn(p, h, x)
            return h_new, logits

        _, logits = lax.scan(step, lax.stop_gradient(hidden0), inputs)
        return logits[-1]

    logits, vjp = jax.vjp(last_logits, params)
    num_actions = logits.shape[-1]
    (jac,) = jax.vmap(vjp)(jnp.eye(num_actions, dtype=logits.dtype))
    gram = _gram_from_jacobian(jac, num_actions)
    if tangent is None:
        return gram, jnp.zeros((num_actions,), jnp.float32)
    tangent = jax.tree.map(lambda t, p: jnp.asarray(t, jnp.result_type(p)), tangent, params)
    _, v = jax.jvp(last_logits, (params,), (tangent,))
    return gram, v.astype(jnp.float32)
