"""TRAM's training-time attacks as pure JAX functions (no learner code).

* :mod:`tram.attacks.budget`: masked softmax and KL, Algorithm 1 (``find_beta``), Eq. 3
  (``stealth_loglik``) and its two averages over the poisoned agent's steps
  (``stealth_averages``);
* :mod:`tram.attacks.directions`: the variance-based (Sec. 3.2), J-based (Sec. 3.3) and
  random directions, with the Gram-matrix / JVP closed forms and exact test variants;
* :mod:`tram.attacks.perturb`: ``AttackConfig`` and ``make_perturbation`` (the
  :data:`tram.types.PolicyPerturbation` the learners call at every acting step).
"""

from tram.attacks.budget import (
    find_beta,
    kl_divergence,
    kl_from_logits,
    masked_log_softmax,
    masked_softmax,
    perturbed_kl,
    stealth_averages,
    stealth_loglik,
    stealth_loglik_from_logits,
)
from tram.attacks.directions import (
    attacker_advantage,
    exact_grad_log_pi,
    exact_recurrent_gram,
    grad_dots,
    grad_sq_norms,
    jbased_direction,
    jbased_weights,
    logit_gram,
    logit_gram_and_jvp,
    logit_jvp,
    normalize_direction,
    random_direction,
    softmax_weight_gradient,
    variance_direction,
    variance_weights,
)
from tram.attacks.perturb import (
    ATTACK_METHODS,
    AttackConfig,
    identity_perturbation,
    make_perturbation,
    perturb_logits,
)

__all__ = [
    "ATTACK_METHODS",
    "AttackConfig",
    "attacker_advantage",
    "exact_grad_log_pi",
    "exact_recurrent_gram",
    "find_beta",
    "grad_dots",
    "grad_sq_norms",
    "identity_perturbation",
    "jbased_direction",
    "jbased_weights",
    "kl_divergence",
    "kl_from_logits",
    "logit_gram",
    "logit_gram_and_jvp",
    "logit_jvp",
    "make_perturbation",
    "masked_log_softmax",
    "masked_softmax",
    "normalize_direction",
    "perturb_logits",
    "perturbed_kl",
    "random_direction",
    "softmax_weight_gradient",
    "stealth_averages",
    "stealth_loglik",
    "stealth_loglik_from_logits",
    "variance_direction",
    "variance_weights",
]
