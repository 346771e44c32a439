"""Types shared by learners and attacks.

Shape letters: ``T`` time, ``B`` environments, ``N`` agents, ``A`` actions, ``H`` actor
hidden units, ``I`` actor input features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Params = Any  # a pytree of arrays

# actor_logits_fn(actor_params, hidden [H], actor_input [I]) -> logits [A]
# The one-step recurrent actor of one agent (the hidden state before the step is an input).
ActorLogitsFn = Callable[[Params, jax.Array, jax.Array], jax.Array]


class ActingContext(NamedTuple):
    """What a policy perturbation may read, for ONE environment and the poisoned agent.

    The learner builds it at every acting step (inside its compiled rollout) and vmaps the
    perturbation over environments; nothing here is batched.

    Attributes:
        logits: ``[A]`` the actor's raw logits for the poisoned agent.
        avail: ``[A]`` bool available actions (at least one True).
        q_values: ``[A]`` the learner's critic values for the poisoned agent per action
            (DOP: ``Q_k(s, tau_k, .)``; COMA: ``Q(s, u_-k, .)``).
        mix_weight: ``[]`` DOP's mixing weight ``k_k(s) >= 0``; 1.0 for COMA.
        actor_params: the shared actor parameters (pytree).
        actor_hidden: ``[H]`` the poisoned agent's recurrent state before this step.
        actor_input: ``[I]`` the poisoned agent's actor input at this step.
        prev_actor_grad: pytree like ``actor_params``: the last actor update's policy
            gradient in the ascent direction of J (minus the gradient of the actor loss);
            zeros before the first update.
        has_prev_grad: ``[]`` bool, False before the first actor update.
        epsilon: ``[]`` the learner's exploration floor at this step.
        hidden_tangent: ``[H]`` or None: the directional derivative of ``actor_hidden``
            w.r.t. the actor parameters along ``prev_actor_grad``, through the episode so
            far (``d h_{t-1} / d theta . g_prev``; zeros at the episode start). The rollout
            carries it (forward mode, one JVP of the actor step per acting step) when the
            exact J-based direction needs it (``attack.recurrent_grad = "exact"``); None
            otherwise.
        history_inputs: ``[L, I]`` or None: the poisoned agent's actor inputs of this
            episode so far, ``history_inputs[t] = `` the input of step ``t`` for
            ``t <= history_step`` (later rows are unused); the hidden state before row 0
            is zeros. Carried only for the exact variance-based Gram
            (``attack.var_gram = "exact"``); None otherwise.
        history_step: ``[]`` int32 or None: the index of the current step in
            ``history_inputs`` (``history_inputs[history_step] == actor_input``).
    """

    logits: jax.Array
    avail: jax.Array
    q_values: jax.Array
    mix_weight: jax.Array
    actor_params: Params
    actor_hidden: jax.Array
    actor_input: jax.Array
    prev_actor_grad: Params
    has_prev_grad: jax.Array
    epsilon: jax.Array
    hidden_tangent: Any = None
    history_inputs: Any = None
    history_step: Any = None


class AttackStepStats(NamedTuple):
    """Per-step statistics of the poisoned agent (all ``[]`` scalars per environment).

    Attributes:
        attacked: 1.0 if this step sampled from the perturbed policy (Bernoulli(f_A)).
        stealth_loglik: Eq. 3 term of this step,
            ``f_A * sum_a pi'(a) log pi(a) + (1 - f_A) * sum_a pi(a) log pi(a)``; exactly 0
            at a step with one available action (``pi = pi'`` one-hot, ``log 1 = 0``), which
            the every-step average relies on (``tram.attacks.budget.stealth_averages``).
        kl: ``KL(pi' || pi)`` of the perturbed policy (0 when no direction exists).
        beta: the step size chosen by Algorithm 1.
        saturated: 1.0 if KL never exceeded KL_U during doubling (beta is huge).
        fallback: 1.0 if the direction fell back to random (zero vector, no previous
            gradient for J-based, or a single available action).
        pmax_before: max_a pi(a) over available actions.
        pmax_after: max_a pi'(a) over available actions.
    """

    attacked: jax.Array
    stealth_loglik: jax.Array
    kl: jax.Array
    beta: jax.Array
    saturated: jax.Array
    fallback: jax.Array
    pmax_before: jax.Array
    pmax_after: jax.Array
    delta_hat: Any = None
    """``[A]`` the unit direction of this step, kept for the Fig. 4 samples (``None`` in
    sums; see :meth:`scalars`)."""

    @classmethod
    def zeros(cls) -> "AttackStepStats":
        """All scalar statistics 0, no direction."""
        z = jnp.float32(0.0)
        return cls(*([z] * SCALAR_STATS))

    def scalars(self) -> "AttackStepStats":
        """The same statistics without the direction (what is summed over steps)."""
        return self._replace(delta_hat=None)


SCALAR_STATS = 8  # the scalar fields of AttackStepStats, attacked .. pmax_after

# perturb(key, ctx, actor_logits_fn) -> (logits_to_sample_from [A], AttackStepStats)
PolicyPerturbation = Callable[[jax.Array, ActingContext, ActorLogitsFn], tuple[jax.Array, AttackStepStats]]


# select_actions(key, logits_or_q [B, N, A], avail [B, N, A] bool, epsilon []) -> actions [B, N] int32
SelectActions = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]

WORST_Q_SOURCES = ("critic", "actor")
"""Where the deploy-time ``worst_q`` attack may read the poisoned agent's Q-values
(:data:`Learner.worst_q_source`)."""

_MISSING: Any = type("_Missing", (), {"__repr__": lambda self: "<missing>"})()

_LEARNER_FIELD_DOCS = {
    "name": "the learner.name string",
    "config": "the frozen config dataclass, e.g. DOPConfig",
    "make_nets": "make_nets(cfg, num_agents, num_actions) -> nets",
    "init_state": "init_state(cfg, spec, key) -> (nets, state)",
    "store_episodes": "store_episodes(state, episodes) -> state",
    "ready_to_train": "ready_to_train(cfg, state) -> [] bool",
    "train_step": "train_step(cfg, nets, state, key, epsilon) -> (state, info dict)",
    "attack_q_fn": "attack_q_fn(nets, critic_params, agent) -> q_fn",
    "buffer_bytes": "buffer_bytes(cfg, spec) -> int",
    "policy_gradient": "policy_gradient(state) -> (grad pytree, has_grad [] bool), or None",
}


@dataclass(frozen=True, kw_only=True)
class Learner:
    """Everything the training program (:func:`tram.experiments.program.make_train`) needs
    from a learner: one record per learner module, exported as ``LEARNER`` and registered in
    :data:`tram.learners.LEARNERS`.

    The learner's state (returned by ``init_state``) is a ``NamedTuple`` with at least
    ``actor_params`` (the shared recurrent actor the rollout acts with, ``nets.actor``) and
    ``critic_params`` (passed to ``attack_q_fn``); its fields of type
    :class:`tram.learners.episodes.EpisodeBuffer` are kept out of the update's conditional.
    ``nets`` (from ``make_nets``) has an ``actor`` (a :class:`tram.learners.actor.RNNActor`).

    Every field without a default must be given (``policy_gradient`` explicitly, ``None``
    allowed): a missing or non-callable one is a one-line ``TypeError`` naming it, raised
    when the record is built (module import), not during tracing.
    """

    name: str = _MISSING
    """``learner.name`` (letters, digits, ``_``); the config class's ``name`` default."""
    config: type = _MISSING
    """The frozen config dataclass (``learner:`` section), e.g. :class:`tram.learners.dop.DOPConfig`."""
    make_nets: Callable = _MISSING
    """``make_nets(cfg, num_agents, num_actions) -> nets`` (``nets.actor`` acts)."""
    init_state: Callable = _MISSING
    """``init_state(cfg, spec, key) -> (nets, state)``: fresh state of one seed."""
    store_episodes: Callable = _MISSING
    """``store_episodes(state, episodes) -> state``: adds a rollout's ``Episodes`` (``E = num_envs``)."""
    ready_to_train: Callable = _MISSING
    """``ready_to_train(cfg, state) -> [] bool``: the buffers hold enough for an update."""
    train_step: Callable = _MISSING
    """``train_step(cfg, nets, state, key, epsilon) -> (state, info)``; ``info`` a dict of
    ``[]`` float32 with at least ``critic_loss`` and ``actor_loss`` (NaN if none), and the
    work counters of :data:`tram.experiments.program.WORK_KEYS` it measures."""
    attack_q_fn: Callable = _MISSING
    """``attack_q_fn(nets, critic_params, agent) -> q_fn`` with ``q_fn(state [S], obs [N, D],
    clean_actions [N], last_actions [N]) -> (q [A], mix_weight [])``: the white-box
    attacker's per-action values of agent ``agent`` (``ActingContext.q_values``)."""
    buffer_bytes: Callable = _MISSING
    """``buffer_bytes(cfg, spec) -> int``: bytes of one seed's episode buffers."""
    policy_gradient: Callable | None = _MISSING
    """``policy_gradient(state) -> (grad, has_grad)``: the last actor update's policy
    gradient (a pytree like ``state.actor_params``, in the ascent direction of J: minus the
    gradient of the actor loss; zeros before the first update) and ``[]`` bool ``has_grad``
    (False before it); what the J-based and variance-based attacks read
    (``ActingContext.prev_actor_grad`` / ``has_prev_grad``). ``None`` for a learner without
    a policy gradient (QMIX): methods that need one are refused for it by config validation
    (:data:`tram.attacks.methods.ATTACK_METHODS`), and ``make_train`` refuses them too."""
    select_actions: SelectActions | None = None
    """The acting rule ``select_actions(key, logits [B, N, A], avail [B, N, A], epsilon) ->
    actions [B, N]``; ``None``: sample from the epsilon-floored softmax (DOP, COMA)."""
    acting_policy: Callable | None = None
    """The acting distribution ``acting_policy(logits [A], avail [A], epsilon) -> probs [A]``
    that :func:`select_actions` samples from, which the detection monitor scores actions
    under (:mod:`tram.detect.score`); ``None``: the epsilon-floored softmax (DOP, COMA)."""
    worst_q_source: str = "critic"
    """Where the ``worst_q`` attack reads the poisoned agent's Q-values: ``"critic"``
    (``attack_q_fn``) or ``"actor"`` (the actor's output, QMIX's agent network)."""

    def __post_init__(self):
        label = f"Learner {self.name!r}" if self.name is not _MISSING else "Learner"
        for f, what in _LEARNER_FIELD_DOCS.items():
            v = getattr(self, f)
            if v is _MISSING:
                raise TypeError(f"{label}: missing field {f!r} ({what})")
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise TypeError(f"Learner field 'name': {self.name!r} is not accepted; accepted: letters, digits and _")
        if not isinstance(self.config, type):
            raise TypeError(f"{label}: field 'config' must be a class (the config dataclass), got {self.config!r}")
        for f in ("make_nets", "init_state", "store_episodes", "ready_to_train", "train_step", "attack_q_fn",
                  "buffer_bytes"):
            if not callable(getattr(self, f)):
                raise TypeError(f"{label}: field {f!r} must be callable ({_LEARNER_FIELD_DOCS[f]}), "
                                f"got {getattr(self, f)!r}")
        for f in ("policy_gradient", "select_actions", "acting_policy"):
            v = getattr(self, f)
            if v is not None and not callable(v):
                raise TypeError(f"{label}: field {f!r} must be callable or None, got {v!r}")
        default_name = getattr(self.config, "name", self.name)
        if default_name != self.name:
            raise TypeError(f"{label}: its config class {self.config.__name__} has name default {default_name!r}; "
                            f"the two must agree")
        if self.worst_q_source not in WORST_Q_SOURCES:
            raise ValueError(f"{label}: worst_q_source {self.worst_q_source!r} is not accepted; accepted: "
                             f"{', '.join(WORST_Q_SOURCES)}")
