"""Types shared by learners and attacks.

Shape letters: ``T`` time, ``B`` environments, ``N`` agents, ``A`` actions, ``H`` actor
hidden units, ``I`` actor input features.
"""

from __future__ import annotations

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
