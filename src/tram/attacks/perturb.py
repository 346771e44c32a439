"""The TRAM policy perturbation of one poisoned agent (Sec. 3.1), and its configuration.

``make_perturbation(cfg)`` returns a :data:`tram.types.PolicyPerturbation`
``perturb(key, ctx, actor_logits_fn) -> (logits_to_sample [A], AttackStepStats)`` for ONE
environment; the learner vmaps it over environments inside its compiled rollout. Per
step:

1. ``delta_hat``: the direction of ``cfg.method`` (:mod:`tram.attacks.directions`);
2. ``beta, kl = find_beta(l, m, delta_hat, KL_U, BSN1, BSN2)`` (Algorithm 1);
3. ``pi' = softmax(l + beta * delta_hat)`` over available actions;
4. ``attacked ~ Bernoulli(f_A)``: the agent samples from ``pi'`` if attacked, else from
   ``pi``.

The returned logits, when attacked, are not ``l + beta * delta_hat`` itself but
``log pi'(a) + LSE_m(l)`` on available actions
(``LSE_m`` = log-sum-exp over available actions) and the original ``l(a)`` on unavailable
ones. Their softmax over available actions is ``pi'`` exactly as for ``l + beta *
delta_hat`` (the two differ by a constant on available actions), but (i) no entry exceeds
``LSE_m(l)``, even for ``beta ~ 2^55``, and (ii) the softmax over ALL actions puts the same
total mass on the available actions as the clean logits do. (ii) matters because the
reference learners apply their epsilon floor to the softmax over all actions before
masking (``tram.learners.actor.floored_policy``): with it, the floored policy is the clean
one with ``pi'`` in place of the softmax part ("the attack replaces the softmax part and
the floor stays as it is", ``attack-math.md``), and a huge or all-negative ``beta *
delta_hat`` cannot push all the mass onto unavailable actions.

Identity cases: for ``method == "none"``, ``f_a == 0`` or ``kl_u == 0`` (decided from the
static config), and whenever ``delta_hat`` is all zeros (a single available action), the
input logits are returned bit for bit, so a run equals the clean one.
"""

from __future__ import annotations

import dataclasses
import re
import numbers
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from tram.attacks.budget import find_beta, masked_log_softmax, masked_softmax, stealth_loglik_from_logits
from tram.attacks.methods import ATTACK_METHODS, CLEAN, CRITICS, SURROGATE_METHODS, attack_method
from tram.types import ActingContext, ActorLogitsFn, AttackStepStats, PolicyPerturbation

__all__ = ["ATTACK_METHODS", "AttackConfig", "make_perturbation", "identity_perturbation", "perturb_logits"]

ATTACK_AT = ("test", "train", "both")
"""Accepted values of :attr:`AttackConfig.attack_at`."""

RECURRENT_GRADS = ("exact", "one_step")
"""Accepted values of :attr:`AttackConfig.recurrent_grad` and :attr:`AttackConfig.var_gram`."""

_MAX_BSN1 = 126


@dataclass(frozen=True)
class AttackConfig:
    """The training-time attack on one poisoned agent (Sec. 3.1, App. B)."""

    method: str = "none"
    """A name of :data:`tram.attacks.methods.ATTACK_METHODS`: ``none`` (clean run), ``var``
    (variance-based, Sec. 3.2), ``jbased`` (J-based, Sec. 3.3), ``random``, ``combined``
    (App. E, ``docs/attack-math.md``), or ``worst_q``,
    the deploy-time attack of Fig. 1 (:mod:`tram.attacks.deploy`; ``kl_u`` does not apply)."""
    f_a: float = 1.0
    """Attack frequency ``f_A`` in [0, 1]: each step, the poisoned agent samples from the
    perturbed policy with this probability (paper Table 1: 1.0)."""
    kl_u: float = 6.0
    """KL budget ``KL_U >= 0`` (finite): ``KL(pi' || pi) <= KL_U`` at every step (paper
    Table 1: 6)."""
    agent: int | str = 0
    """The poisoned agent: an index >= 0 or a unit-type name such as ``"zealot"``
    (resolved to an index by the training program, which knows the environment)."""
    bsn1: int = 55
    """``BSN_1`` of Algorithm 1: doubling steps of the beta search, 1..126 (beta can reach
    ``2^bsn1``, which must stay finite in float32)."""
    bsn2: int = 15
    """``BSN_2`` of Algorithm 1: extra bisection steps (>= 0); the final bracket on beta
    has width ``2^-bsn2``."""
    attack_at: str = "train"
    """When the attack acts: ``train`` (training episodes), ``test`` (greedy evaluation
    episodes only; training is untouched) or ``both``."""
    attack_start: int = 0
    """Env step from which the attack acts (>= 0; see :mod:`tram.attacks.deploy`)."""
    recurrent_grad: str = "exact"
    """How the J-based direction (method ``jbased``) differentiates the recurrent actor:
    ``exact`` (default; the paper's ``grad_theta log pi(a | tau_t)`` through the whole
    history, as the learner's loss computes it: the rollout carries the hidden state's
    tangent along ``g_prev`` in forward mode) or ``one_step`` (the hidden state entering
    the step held constant; tram's behaviour before this option). Method ``combined`` uses
    it for its J-based term; other methods ignore it. See :mod:`tram.attacks.directions`
    and ``docs/recurrent-gradient.md``."""
    var_gram: str = "one_step"
    """How the variance-based direction (method ``var``) builds its Gram matrix ``K``:
    ``one_step`` (default; hidden state entering the step held constant) or ``exact``
    (per-action gradients back-propagated through the episode so far; the rollout keeps
    the poisoned agent's inputs; much slower). Method ``combined`` uses it for its
    variance term; other methods ignore it. See
    ``docs/recurrent-gradient.md`` for the measured difference."""
    critic: str = "learner"
    """Whose critic the direction reads (:data:`CRITICS`): ``learner`` (default; the
    paper's white-box attacker reads the learner's critic) or ``surrogate`` (black-box: the
    attacker's own recurrent Q-network on its action-observation history, trained online
    by TD from the team reward, :mod:`tram.attacks.surrogate`, ``docs/surrogate.md``; J-based
    then uses the attacker's own policy-gradient estimate); accepted with the methods of
    :data:`SURROGATE_METHODS` only."""

    def __post_init__(self):
        from tram.validation import ConfigError, real_number, whole_number

        attack_method(self.method)  # ConfigError naming attack.method and the accepted methods
        object.__setattr__(self, "f_a", real_number(self.f_a, "attack.f_a", 0.0, 1.0))
        object.__setattr__(self, "kl_u", real_number(self.kl_u, "attack.kl_u", 0.0))
        agent = self.agent
        accepted = "an agent index >= 0 or a unit-type name such as zealot"
        if isinstance(agent, str) and re.fullmatch(r"\s*[+-]?\d+\s*", agent):
            agent = int(agent)  # "2" (from the CLI or a YAML string) is the index 2
        if isinstance(agent, bool) or not isinstance(agent, (numbers.Integral, str)) \
                or (isinstance(agent, str) and not agent.strip()) or (not isinstance(agent, str) and int(agent) < 0):
            raise ConfigError(f"attack.agent: {self.agent!r} is not accepted; accepted: {accepted}", "attack.agent")
        object.__setattr__(self, "agent", agent.strip() if isinstance(agent, str) else int(agent))
        for name, lo, hi in (("bsn1", 1, _MAX_BSN1), ("bsn2", 0, None)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo or (hi is not None and v > hi):
                accepted = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
                raise ConfigError(f"attack.{name}: {v!r} is not accepted; accepted: {accepted}", f"attack.{name}")
            object.__setattr__(self, name, int(v))
        if not isinstance(self.attack_at, str) or self.attack_at not in ATTACK_AT:
            raise ConfigError(f"attack.attack_at: {self.attack_at!r} is not accepted; accepted: {', '.join(ATTACK_AT)}",
                              "attack.attack_at")
        object.__setattr__(self, "attack_start", whole_number(self.attack_start, "attack.attack_start", lo=0))
        for name in ("recurrent_grad", "var_gram"):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in RECURRENT_GRADS:
                raise ConfigError(f"attack.{name}: {v!r} is not accepted; accepted: {', '.join(RECURRENT_GRADS)}",
                                  f"attack.{name}")
        if not isinstance(self.critic, str) or self.critic not in CRITICS:
            raise ConfigError(f"attack.critic: {self.critic!r} is not accepted; accepted: {', '.join(CRITICS)}",
                              "attack.critic")
        if self.critic == "surrogate" and self.method != CLEAN and self.method not in SURROGATE_METHODS:
            raise ConfigError(f"attack.critic: 'surrogate' is not accepted with attack.method {self.method!r}; "
                              f"accepted: a method of {', '.join(SURROGATE_METHODS)} with the surrogate critic "
                              f"(the others read no critic or stay white-box), or attack.critic 'learner'",
                              "attack.critic")

    @property
    def method_spec(self):
        """This method's entry of the table (:class:`tram.attacks.methods.AttackMethod`)."""
        return attack_method(self.method)

    @property
    def carries_hidden_tangent(self) -> bool:
        """True if the rollout must carry ``ActingContext.hidden_tangent`` (exact J-based)."""
        return bool(self.method_spec.carries_hidden_tangent(self))

    @property
    def carries_history(self) -> bool:
        """True if the rollout must carry ``ActingContext.history_inputs`` (exact var Gram)."""
        return bool(self.method_spec.carries_history(self))

    @property
    def is_identity(self) -> bool:
        """True if the attack can never change an action: method ``none``, ``f_a == 0``
        or ``kl_u == 0`` for a method with a KL budget."""
        return self.method == CLEAN or self.f_a == 0.0 or (self.kl_u == 0.0 and self.method_spec.has_kl_budget)

    def replace(self, **changes) -> "AttackConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _zero_stats() -> AttackStepStats:
    return AttackStepStats.zeros()


def identity_perturbation(key: jax.Array, ctx: ActingContext, actor_logits_fn: ActorLogitsFn
                          ) -> tuple[jax.Array, AttackStepStats]:
    """A :data:`~tram.types.PolicyPerturbation` that changes nothing.

    Returns ``ctx.logits`` unchanged and all-zero :class:`~tram.types.AttackStepStats`
    (for learners run without an attack).
    """
    del key, actor_logits_fn
    return ctx.logits, _zero_stats()


def perturb_logits(logits: jax.Array, avail: jax.Array, delta_hat: jax.Array, beta: jax.Array) -> jax.Array:
    """Logits whose masked softmax is ``pi' = softmax(l + beta * delta_hat)``.

    ``out(a) = log pi'(a) + LSE_m(l)`` on available actions, with ``LSE_m(l) = log
    sum_{b: m(b)} exp(l(b))``, and ``out(a) = l(a)`` on unavailable actions. It differs
    from ``l + beta * delta_hat`` by a constant on available actions (same ``pi'``), but
    keeps the log-sum-exp over available actions; see the module docstring for why. If
    ``delta_hat`` is all zeros or ``beta == 0`` the input is returned bit for bit.

    Args:
        logits: ``[A]`` clean logits.
        avail: ``[A]`` bool.
        delta_hat: ``[A]`` direction (0 on unavailable actions).
        beta: ``[]`` step size.

    Returns:
        ``[A]``.
    """
    avail = avail.astype(bool)
    base = jnp.where(avail, logits, 0.0)
    delta = jnp.where(avail, delta_hat, 0.0)
    lse = jax.nn.logsumexp(jnp.where(avail, base, -jnp.inf))
    new = masked_log_softmax(base + beta * delta, avail) + lse
    moved = avail & jnp.any(delta != 0) & (beta != 0)
    return jnp.where(moved, new, logits)


def make_perturbation(cfg: AttackConfig, q_source: str = "critic") -> PolicyPerturbation:
    """The perturbation of ``cfg`` for one environment: Algorithm 1 along the direction of
    the method's table entry (Sec. 3.1, Eq. 3), or the entry's own ``perturbation`` factory
    (the deploy-time ``worst_q`` attack, reading Q-values from ``q_source``).

    The returned ``perturb(key, ctx, actor_logits_fn)`` is pure and jittable; vmap it over
    environments (``ctx`` batched, ``actor_params`` and ``prev_actor_grad`` shared).

    Statistics (:class:`~tram.types.AttackStepStats`, ``[]`` float32 each):

    * ``attacked``: the Bernoulli(``f_A``) draw (0 for method ``none``);
    * ``stealth_loglik``: Eq. 3 with ``pi'`` the perturbed policy, computed whatever the
      draw (for method ``none``, ``pi' = pi`` and it is ``-H(pi)``);
    * ``kl``: ``KL(pi' || pi)`` at the chosen ``beta``, the value Algorithm 1 checked
      against ``KL_U``; ``beta``; ``saturated``: KL never exceeded ``KL_U`` while doubling;
    * ``fallback``: the direction fell back to random (see
      :mod:`tram.attacks.directions`) or no perturbation exists (one available action);
    * ``pmax_before`` / ``pmax_after``: ``max pi`` / ``max pi'`` over available actions.

    Choices where the paper is silent: with no perturbation possible (all-zero direction,
    one available action) ``beta``, ``kl`` and ``saturated`` are reported as 0 rather than
    the meaningless saturated search; with ``kl_u == 0`` beta is 0 (the search would
    otherwise accept a tiny beta whose KL rounds to 0). The direction's randomness and the
    Bernoulli draw use independent halves of ``key``.

    Recurrent gradient: with ``cfg.recurrent_grad == "exact"`` (method ``jbased``) ``ctx``
    must carry ``hidden_tangent``, with ``cfg.var_gram == "exact"`` (method ``var``)
    ``history_inputs`` and ``history_step``; the rollout does so when its ``AttackHook``
    is built with ``cfg.carries_hidden_tangent`` / ``cfg.carries_history`` (a missing
    field is an error at trace time, naming the option).

    Args:
        cfg: a validated :class:`AttackConfig`.
        q_source: where a ``perturbation`` factory reads individual Q-values: ``critic``
            (``ctx.q_values``; DOP, COMA) or ``actor`` (``ctx.logits``; QMIX). Algorithm 1
            ignores it.

    Returns:
        ``perturb(key, ctx, actor_logits_fn) -> (logits [A], AttackStepStats)``.
    """
    spec = cfg.method_spec
    if spec.perturbation is not None:
        return spec.perturbation(cfg, q_source)
    direction = spec.direction(cfg) if spec.direction is not None else None  # None: the clean method
    f_a, kl_u, bsn1, bsn2 = cfg.f_a, cfg.kl_u, cfg.bsn1, cfg.bsn2
    identity_output = cfg.is_identity

    def perturb(key: jax.Array, ctx: ActingContext, actor_logits_fn: ActorLogitsFn
                ) -> tuple[jax.Array, AttackStepStats]:
        logits = ctx.logits
        avail = ctx.avail.astype(bool)
        pi = masked_softmax(logits, avail)
        pmax_before = jnp.max(pi)
        if direction is None:
            stats = _zero_stats()._replace(
                stealth_loglik=stealth_loglik_from_logits(logits, logits, avail, f_a),
                pmax_before=pmax_before, pmax_after=pmax_before)
            return logits, stats

        k_dir, k_att = jax.random.split(key)
        delta_hat, fallback = direction(k_dir, ctx, actor_logits_fn)

        has_direction = jnp.any(delta_hat != 0)
        if kl_u == 0.0:
            beta, kl, saturated = jnp.float32(0.0), jnp.float32(0.0), jnp.array(False)
        else:
            beta, kl, saturated = find_beta(logits, avail, delta_hat, kl_u, bsn1, bsn2)
            beta = jnp.where(has_direction, beta, 0.0)
            kl = jnp.where(has_direction, kl, 0.0)
            saturated = saturated & has_direction
        perturbed = perturb_logits(logits, avail, delta_hat, beta)
        pi_prime = masked_softmax(perturbed, avail)
        attacked = jax.random.bernoulli(k_att, f_a)
        out = logits if identity_output else jnp.where(attacked, perturbed, logits)
        stats = AttackStepStats(
            attacked=attacked.astype(jnp.float32),
            stealth_loglik=stealth_loglik_from_logits(logits, perturbed, avail, f_a),
            kl=kl,
            beta=beta,
            saturated=saturated.astype(jnp.float32),
            fallback=fallback.astype(jnp.float32),
            pmax_before=pmax_before,
            pmax_after=jnp.max(pi_prime),
            delta_hat=delta_hat,
        )
        return out, stats

    return perturb
