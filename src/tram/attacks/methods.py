"""The table of attack methods: everything tram knows about a method, in one entry.

:data:`ATTACK_METHODS` maps ``attack.method`` to an :class:`AttackMethod`. Every surface reads
it instead of naming methods itself:

* config validation: the accepted values of ``AttackConfig.method`` and which learners accept
  a method (:meth:`AttackMethod.accepts`, checked by ``TrainConfig``);
* the perturbation: :func:`tram.attacks.perturb.make_perturbation` runs Algorithm 1 along the
  entry's ``direction`` or calls its ``perturbation`` factory;
* run names (:func:`tram.experiments.store.run_name`): ``kl{KL_U}`` only for a method with a
  KL budget, the ``attack_at`` value for a method whose report tells it apart (``variants``);
* sweeps: the default ``methods`` (``none`` and every method with a KL budget), cell labels;
* the report: labels, colours, the order of curves, legends and table rows (the table's
  order), which methods are rows of the stealth Tables 1-3 (those with a KL budget) and of
  Fig. 4 (those with a direction); a stored run whose method is not in the table is an error
  naming it (:func:`series_method`), never a silently missing curve;
* the CLI help of ``tram train --attack`` (:func:`methods_help`).

Adding a method is one entry here plus its direction function (README, "Extending tram").
This module imports no JAX: the factories import their functions when called, so the report
and the run store can read the table cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from tram.validation import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from tram.attacks.perturb import AttackConfig
    from tram.types import PolicyPerturbation

__all__ = ["AttackMethod", "ATTACK_METHODS", "attack_method", "accepted_methods", "series_keys", "series_key",
           "CRITICS", "SURROGATE_METHODS", "SURROGATE_SUFFIX",
           "series_method", "series_label", "series_colour", "methods_help", "CLEAN"]

CLEAN = "none"
"""The method of a clean run (no attack); it is an entry of the table like the others."""

CRITICS = ("learner", "surrogate")
"""Accepted values of ``attack.critic``: whose critic the direction reads (the learner's, or
the attacker's own surrogate, :mod:`tram.attacks.surrogate`)."""

SURROGATE_METHODS = ("var", "jbased", "combined")
"""Methods accepted with ``attack.critic = "surrogate"``: var reads Q-values and the actor,
which the black-box attacker has; J-based and combined also read the last policy gradient
(:data:`READS_PREVIOUS_GRADIENT`), for which the black-box attacker uses its own estimate
(:func:`tram.attacks.surrogate.policy_gradient_estimate`). Random and the clean run read no
critic; worst_q stays white-box."""

READS_PREVIOUS_GRADIENT = ("jbased", "combined")
"""Methods whose direction reads the learner's last actor gradient (``ActingContext.prev_actor_grad``);
with the surrogate critic the attacker supplies its own estimate instead."""

SURROGATE_SUFFIX = "_surrogate"
"""Report key of a surrogate-critic run: the method's key plus this, e.g. ``var_surrogate``
(:func:`series_key`), placed right after the method in the report's order."""

DirectionFn = Callable[[Any, Any, Any], tuple[Any, Any]]
"""``direction(key, ctx, actor_logits_fn) -> (delta_hat [A] float32, fallback [] bool)`` for ONE
environment (``ctx`` a :class:`tram.types.ActingContext`): the unit-norm direction, zero on
unavailable actions, and whether it fell back (see :mod:`tram.attacks.directions`)."""


@dataclass(frozen=True)
class AttackMethod:
    """One attack method: its name, how reports show it, what it needs, how it perturbs.

    Exactly one of ``direction`` and ``perturbation`` is set, except for the clean method
    ``none`` (neither).
    """

    name: str
    """The value of ``attack.method`` (``--attack``); letters, digits and ``_``."""
    label: str
    """How reports and the CLI help show it, e.g. ``"Var-based TRAM"``."""
    colour: str
    """Matplotlib colour of its curves and bars, e.g. ``"#d62728"``."""
    has_kl_budget: bool
    """True if ``attack.kl_u`` applies (``KL(pi' || pi) <= KL_U`` per step). Methods with a
    ``direction`` have one (Algorithm 1 searches beta under it). Run names, report keys and
    the stealth Tables 1-3 (one row per such method) follow it."""
    needs_policy_gradient: bool
    """True if the direction reads the learner's policy gradient (``ctx.prev_actor_grad`` or
    gradients of ``actor_logits_fn``); refused learners are told so in the error."""
    learners: tuple[str, ...] | None = None
    """Learners (``learner.name``) that accept it; ``None``: every learner."""
    direction: Callable[["AttackConfig"], DirectionFn] | None = None
    """``direction(cfg) -> DirectionFn``: the direction of Algorithm 1 for the validated
    ``AttackConfig`` ``cfg`` (:func:`tram.attacks.perturb.make_perturbation` does the rest:
    beta search under ``KL_U``, Bernoulli(``f_A``) draw, statistics)."""
    perturbation: Callable[["AttackConfig", str], "PolicyPerturbation"] | None = None
    """``perturbation(cfg, q_source) -> PolicyPerturbation``: a whole perturbation, for a
    method that is not Algorithm 1 along a direction (the deploy-time worst-Q attack);
    ``q_source`` is ``"critic"`` or ``"actor"`` (:data:`tram.attacks.deploy.Q_SOURCES`)."""
    variants: tuple[tuple[str, str, str], ...] = ()
    """``(attack_at, label, colour)`` triples when runs of this method are told apart by
    where the attack acts (Fig. 1 compares the worst-Q attack at test and at training time):
    the report keys them ``{name}_{attack_at}`` and the run name carries ``attack_at``."""
    paper: bool = True
    """True for the paper's methods. A method beyond the paper (False, e.g. ``combined``)
    keeps every existing grid and table as it was: a sweep file without ``methods`` does not
    run it (:func:`tram.experiments.sweep.default_methods`), and it is a row of the stealth
    Tables 1-3 only when the store has runs of it (a map without them is not left out)."""
    carries_hidden_tangent: Callable[["AttackConfig"], bool] = lambda cfg: False
    """``cfg -> bool``: the rollout must carry ``ActingContext.hidden_tangent``."""
    carries_history: Callable[["AttackConfig"], bool] = lambda cfg: False
    """``cfg -> bool``: the rollout must carry ``ActingContext.history_inputs``."""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"AttackMethod.name: {self.name!r} is not accepted; accepted: letters, digits and _")
        given = (self.direction is not None) + (self.perturbation is not None)
        if self.name == CLEAN and given:
            raise ValueError(f"AttackMethod {CLEAN!r} is the clean run; it takes no direction or perturbation")
        if self.name != CLEAN and given != 1:
            raise ValueError(f"AttackMethod {self.name!r}: give exactly one of direction (Algorithm 1 along it) "
                             f"or perturbation (a whole PolicyPerturbation); got {given}")
        if self.direction is not None and not self.has_kl_budget:
            raise ValueError(f"AttackMethod {self.name!r}: a direction is searched under KL_U (Algorithm 1), "
                             f"so has_kl_budget must be True")
        if self.learners is not None and (isinstance(self.learners, str) or not self.learners):
            raise ValueError(f"AttackMethod {self.name!r}: learners {self.learners!r} is not accepted; accepted: "
                             f"a non-empty tuple of learner names, or None for every learner")

    def accepts(self, learner: str) -> bool:
        """True if learner ``learner`` (a ``learner.name``) accepts this method."""
        return self.learners is None or learner in self.learners

    def series(self, attack_at: str) -> str:
        """The report key of a run of this method acting at ``attack_at``: the name, or
        ``{name}_{attack_at}`` when the method has ``variants``."""
        return f"{self.name}_{attack_at}" if self.variants else self.name

    def series_keys(self) -> tuple[str, ...]:
        """Every report key of this method, in report order."""
        return tuple(f"{self.name}_{at}" for at, _, _ in self.variants) or (self.name,)


# ----------------------------------------------------------------------------------------
# Direction and perturbation factories of the built-in methods (JAX imported on call)
# ----------------------------------------------------------------------------------------


def random_direction_fn(cfg: "AttackConfig") -> DirectionFn:
    """The random baseline: a Gaussian direction on the available actions; ``fallback``
    marks steps with fewer than two available actions (no perturbation exists)."""
    import jax.numpy as jnp

    from tram.attacks.directions import random_direction

    def direction(key, ctx, actor_logits_fn):
        del actor_logits_fn
        avail = ctx.avail.astype(bool)
        return random_direction(key, avail), jnp.sum(avail) < 2

    return direction


def variance_direction_fn(cfg: "AttackConfig") -> DirectionFn:
    """Variance-based TRAM (Sec. 3.2), with the Gram matrix of ``cfg.var_gram``."""
    from tram.attacks.directions import variance_direction

    exact = cfg.var_gram == "exact"
    return lambda key, ctx, actor_logits_fn: variance_direction(key, ctx, actor_logits_fn, exact_history=exact)


def jbased_direction_fn(cfg: "AttackConfig") -> DirectionFn:
    """J-based TRAM (Sec. 3.3), with the recurrent gradient of ``cfg.recurrent_grad``."""
    from tram.attacks.directions import jbased_direction

    exact = cfg.recurrent_grad == "exact"
    return lambda key, ctx, actor_logits_fn: jbased_direction(key, ctx, actor_logits_fn, exact_history=exact)


def combined_direction_fn(cfg: "AttackConfig") -> DirectionFn:
    """The combined direction (App. E, ``docs/attack-math.md``): ``K`` as ``cfg.var_gram``
    says, ``<g_prev, g(a)>`` as ``cfg.recurrent_grad`` says (the options of var and jbased)."""
    from tram.attacks.directions import combined_direction

    exact_gram, exact_jvp = cfg.var_gram == "exact", cfg.recurrent_grad == "exact"
    return lambda key, ctx, actor_logits_fn: combined_direction(key, ctx, actor_logits_fn, exact_gram=exact_gram,
                                                                exact_jvp=exact_jvp)


def worst_q_perturbation(cfg: "AttackConfig", q_source: str = "critic") -> "PolicyPerturbation":
    """The deploy-time worst-Q attack of Fig. 1 (:func:`tram.attacks.deploy.make_worst_q_perturbation`)."""
    from tram.attacks.deploy import make_worst_q_perturbation

    return make_worst_q_perturbation(cfg, q_source)


ATTACK_METHODS: dict[str, AttackMethod] = {m.name: m for m in (
    AttackMethod("none", "Clean (none)", "#404040", has_kl_budget=False, needs_policy_gradient=False),
    AttackMethod("var", "Var-based TRAM", "#d62728", has_kl_budget=True, needs_policy_gradient=True,
                 learners=("dop", "coma"), direction=variance_direction_fn,
                 carries_history=lambda cfg: cfg.var_gram == "exact"),
    AttackMethod("jbased", "J-based TRAM", "#1f77b4", has_kl_budget=True, needs_policy_gradient=True,
                 learners=("dop", "coma"), direction=jbased_direction_fn,
                 carries_hidden_tangent=lambda cfg: cfg.recurrent_grad == "exact"),
    AttackMethod("random", "Random", "#2ca02c", has_kl_budget=True, needs_policy_gradient=False,
                 direction=random_direction_fn),
    AttackMethod("combined", "Combined TRAM (App. E)", "#e377c2", has_kl_budget=True, needs_policy_gradient=True,
                 learners=("dop", "coma"), direction=combined_direction_fn, paper=False,
                 carries_hidden_tangent=lambda cfg: cfg.recurrent_grad == "exact",
                 carries_history=lambda cfg: cfg.var_gram == "exact"),
    AttackMethod("worst_q", "Worst-Q attack", "#9467bd", has_kl_budget=False, needs_policy_gradient=False,
                 perturbation=worst_q_perturbation,
                 variants=(("test", "Worst-Q attack at test time only (deploy-time)", "#ff7f0e"),
                           ("train", "Worst-Q attack at training time only", "#8c564b"),
                           ("both", "Worst-Q attack at training and test time", "#9467bd"))),
)}
"""``attack.method`` -> :class:`AttackMethod`. The order is the report's: curves, legends,
the rows of the stealth Tables 1-3 (var, J-based, random, as in the paper, then the combined
direction of App. E when the store has its runs) and Fig. 4."""


def attack_method(name: Any, key: str = "attack.method") -> AttackMethod:
    """The entry of ``name``.

    Raises:
        ConfigError: ``name`` is not in the table (the message names ``key``, the value and
            the accepted methods).
    """
    if not isinstance(name, str) or name not in ATTACK_METHODS:
        raise ConfigError(f"{key}: {name!r} is not accepted; accepted: {', '.join(ATTACK_METHODS)}", key)
    return ATTACK_METHODS[name]


def accepted_methods(learner: str) -> tuple[str, ...]:
    """The methods learner ``learner`` accepts, in table order."""
    return tuple(n for n, m in ATTACK_METHODS.items() if m.accepts(learner))


def series_keys() -> tuple[str, ...]:
    """Every report key (a method's name, or ``{name}_{attack_at}`` for its variants, and
    ``{name}_surrogate`` right after a method of :data:`SURROGATE_METHODS`), in table order."""
    keys: list[str] = []
    for n, m in ATTACK_METHODS.items():
        keys += m.series_keys()
        if n in SURROGATE_METHODS:
            keys.append(n + SURROGATE_SUFFIX)
    return tuple(keys)


def series_key(method: str, attack_at: str = "train", critic: str = "learner") -> str:
    """The report key of a run (``attack.method``, ``attack.attack_at``, ``attack.critic``):
    :meth:`AttackMethod.series`, plus :data:`SURROGATE_SUFFIX` for the surrogate critic. A
    method that is not in the table is returned as given."""
    entry = ATTACK_METHODS.get(method)
    key = method if entry is None else entry.series(attack_at)
    return key + SURROGATE_SUFFIX if critic == "surrogate" else key


def _lighter(colour: str) -> str:
    """``#rrggbb`` halfway to white (the surrogate critic's shade of its method's colour)."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{(c + 255) // 2:02x}" for c in rgb)


def _series(key: str) -> tuple[AttackMethod, str, str]:
    for m in ATTACK_METHODS.values():
        for at, label, colour in m.variants:
            if key == f"{m.name}_{at}":
                return m, label, colour
        if key == m.name and not m.variants:
            return m, m.label, m.colour
        if key == m.name + SURROGATE_SUFFIX and m.name in SURROGATE_METHODS:
            return m, f"{m.label}, surrogate critic (black-box)", _lighter(m.colour)
    raise ConfigError(f"attack method {key!r} is not in the table of attack methods "
                      f"(tram.attacks.methods.ATTACK_METHODS); accepted: {', '.join(series_keys())}", "attack.method")


def series_method(key: str) -> AttackMethod:
    """The method of report key ``key`` (:meth:`AttackMethod.series`).

    Raises:
        ConfigError: no entry has that key (the message names it and the accepted keys).
    """
    return _series(key)[0]


def series_parts(key: str) -> tuple[str, str | None, str | None]:
    """``(attack.method, attack.attack_at, attack.critic)`` of report key ``key``, the inverse
    of :func:`series_key`; ``None`` where the key does not fix the field (``"var"`` ->
    ``("var", None, None)``, ``"worst_q_test"`` -> ``("worst_q", "test", None)``,
    ``"var_surrogate"`` -> ``("var", None, "surrogate")``). Raises like :func:`series_method`."""
    m = series_method(key)
    if key == m.name + SURROGATE_SUFFIX:
        return m.name, None, "surrogate"
    if key != m.name:
        return m.name, key[len(m.name) + 1:], None
    return m.name, None, None


def series_label(key: str) -> str:
    """The label of report key ``key`` (a variant's own label when it has one); raises like
    :func:`series_method`."""
    return _series(key)[1]


def series_colour(key: str) -> str:
    """The colour of report key ``key``; raises like :func:`series_method`."""
    return _series(key)[2]


def methods_help() -> str:
    """One line for ``--attack`` help: every method with its label, in table order, e.g.
    ``none: Clean (none); var: Var-based TRAM; ...``."""
    return "; ".join(f"{n}: {m.label}" for n, m in ATTACK_METHODS.items())
