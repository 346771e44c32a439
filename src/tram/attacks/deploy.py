"""The deploy-time attack of the TRAM paper's Fig. 1 (``attack.method = "worst_q"``), and the
``attack_start`` switch for any attack.

With probability ``f_A`` per step, the poisoned agent takes its AVAILABLE action with the
lowest individual Q-value (Sec. 1: "sharing actions with the worst individual Q-value"):

* QMIX: the agent network's own Q-values (``Q_k(tau_k, .)``, the rollout's ``logits``);
* DOP: the critic's ``Q_k(s, o_k, .)`` (``attack_q_fn``);
* COMA: the critic's ``Q(s, u_-k, .)`` with the teammates' current clean actions (sampled
  in training, greedy at test).

It is a :data:`tram.types.PolicyPerturbation` like TRAM's, so it plugs into the same hook:
when attacked, the returned logits are the clean ones with the worst action raised to
``max(logits) + WORST_Q_BONUS`` (unavailable actions untouched), so its softmax puts all
the mass on that action (``exp(-1e4) = 0`` in float32) and the greedy argmax picks it.
Consequences of reusing the hook, by design:

* at test time (``attack_at`` in {test, both}; greedy evaluation) the attacked agent takes
  the worst action with probability exactly ``f_A``;
* at training time (``attack_at`` in {train, both}) the learner's exploration still applies
  on top, as for TRAM's attacks: DOP and COMA keep their epsilon floor (the attack replaces
  the softmax part), QMIX its epsilon-greedy draw (a random available action with
  probability epsilon); the learner stores and trains on the executed actions;
* with a single available action nothing changes (``fallback`` = 1 in the statistics).

``attack_start`` (:func:`gate_perturbation`): before it the perturbation is the identity
(statistics as for method ``none``). The training program checks it once per training
iteration on the env steps counted before the iteration's episodes, so an episode that
starts before ``attack_start`` runs clean to its end; the evaluation checks it at the
evaluation's env step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tram.attacks.budget import kl_from_logits, masked_log_softmax, masked_softmax, stealth_loglik_from_logits
from tram.types import WORST_Q_SOURCES, ActingContext, ActorLogitsFn, AttackStepStats, PolicyPerturbation

__all__ = ["WORST_Q_BONUS", "Q_SOURCES", "worst_q_action", "worst_q_logits", "make_worst_q_perturbation",
           "gate_perturbation"]

WORST_Q_BONUS = 1e4
"""How far above every clean logit the worst-Q action is put (finite; its softmax is one)."""

Q_SOURCES = WORST_Q_SOURCES
"""Where the individual Q-values come from: ``ctx.q_values`` (DOP, COMA) or ``ctx.logits``
(QMIX, whose agent network outputs Q-values)."""


def worst_q_action(q: jax.Array, avail: jax.Array) -> jax.Array:
    """``argmin_{a available} q(a)``. ``q, avail [..., A] -> [...]`` int32 (ties: lowest index)."""
    return jnp.argmin(jnp.where(avail.astype(bool), q, jnp.inf), axis=-1).astype(jnp.int32)


def worst_q_logits(logits: jax.Array, action: jax.Array) -> jax.Array:
    """``logits [A]`` with ``action`` raised to ``max(logits) + WORST_Q_BONUS``; the other
    entries (available or not) unchanged. ``-> [A]``."""
    return logits.at[action].set(jnp.max(logits) + WORST_Q_BONUS)


def _stats(logits, perturbed, avail, f_a, attacked, fallback) -> AttackStepStats:
    z = jnp.float32(0.0)
    return AttackStepStats(
        attacked=attacked.astype(jnp.float32),
        stealth_loglik=stealth_loglik_from_logits(logits, perturbed, avail, f_a),
        kl=kl_from_logits(perturbed, masked_log_softmax(logits, avail), avail),
        beta=z,
        saturated=z,
        fallback=fallback.astype(jnp.float32),
        pmax_before=jnp.max(masked_softmax(logits, avail)),
        pmax_after=jnp.max(masked_softmax(perturbed, avail)),
    )


def make_worst_q_perturbation(cfg, q_source: str = "critic") -> PolicyPerturbation:
    """The ``worst_q`` perturbation of ``cfg`` (an ``AttackConfig``) for one environment.

    ``perturb(key, ctx, actor_logits_fn) -> (logits [A], AttackStepStats)``; pure and
    jittable, vmapped over environments by the rollout. Statistics: ``attacked`` is the
    Bernoulli(``f_A``) draw; ``kl`` and ``stealth_loglik`` compare the worst-Q policy
    (one-hot, from the returned logits) with the clean softmax, whatever the draw, as
    TRAM's statistics do; ``beta`` and ``saturated`` are 0; ``fallback`` marks steps with one
    available action. With ``f_A == 0`` the input logits are returned bit for bit.

    Args:
        cfg: a validated ``AttackConfig`` with method ``worst_q``.
        q_source: one of :data:`Q_SOURCES`.

    Raises:
        ValueError: another method, or an unknown ``q_source``.
    """
    if cfg.method != "worst_q":
        raise ValueError(f"make_worst_q_perturbation needs attack.method 'worst_q', got {cfg.method!r}")
    if q_source not in Q_SOURCES:
        raise ValueError(f"q_source must be one of {', '.join(Q_SOURCES)}; got {q_source!r}")
    f_a = cfg.f_a

    def perturb(key: jax.Array, ctx: ActingContext, actor_logits_fn: ActorLogitsFn
                ) -> tuple[jax.Array, AttackStepStats]:
        del actor_logits_fn
        logits = ctx.logits
        avail = ctx.avail.astype(bool)
        q = logits if q_source == "actor" else ctx.q_values
        perturbed = worst_q_logits(logits, worst_q_action(q, avail))
        multi = jnp.sum(avail) >= 2
        if f_a == 0.0:
            attacked = jnp.array(False)
            out = logits
        else:
            attacked = jax.random.bernoulli(key, f_a)
            out = jnp.where(attacked & multi, perturbed, logits)
        return out, _stats(logits, perturbed, avail, f_a, attacked, ~multi)

    return perturb


def gate_perturbation(perturb: PolicyPerturbation, on: jax.Array) -> PolicyPerturbation:
    """``perturb`` when ``on`` (a traced ``[]`` bool), else the identity.

    When off, the logits are returned bit for bit with the statistics of method ``none``
    (nothing attacked, ``pi' = pi``: ``kl = 0``, ``stealth_loglik = -H(pi)``,
    ``pmax_after = pmax_before``; any per-step array such as a direction is zeros).
    """

    def gated(key: jax.Array, ctx: ActingContext, actor_logits_fn: ActorLogitsFn
              ) -> tuple[jax.Array, AttackStepStats]:
        run = lambda: perturb(key, ctx, actor_logits_fn)  # noqa: E731

        def off():
            _, shape = jax.eval_shape(run)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
            avail = ctx.avail.astype(bool)
            pmax = jnp.max(masked_softmax(ctx.logits, avail))
            stats = zeros._replace(stealth_loglik=stealth_loglik_from_logits(ctx.logits, ctx.logits, avail, 1.0),
                                   pmax_before=pmax, pmax_after=pmax)
            return ctx.logits, stats

        return jax.lax.cond(on, run, off)

    return gated
