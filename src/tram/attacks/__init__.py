"""TRAM's training-time attacks as pure JAX functions (no learner code).

* :mod:`tram.attacks.methods`: the table of attack methods (:data:`ATTACK_METHODS`: name,
  label, colour, KL budget, policy gradient, learners, direction), read by the config, run
  names, sweeps, the report and the CLI;
* :mod:`tram.attacks.budget`: masked softmax and KL, Algorithm 1 (``find_beta``), Eq. 3
  (``stealth_loglik``) and its two averages over the poisoned agent's steps
  (``stealth_averages``);
* :mod:`tram.attacks.directions`: the variance-based (Sec. 3.2), J-based (Sec. 3.3),
  combined (App. E) and random directions, with the Gram-matrix / JVP closed forms and exact test variants;
* :mod:`tram.attacks.perturb`: ``AttackConfig`` and ``make_perturbation`` (the
  :data:`tram.types.PolicyPerturbation` the learners call at every acting step);
* :mod:`tram.attacks.deploy`: the deploy-time worst-Q attack and the ``attack_start`` gate.

The names below are imported on first use, so reading the table (``from tram.attacks import
ATTACK_METHODS``, as the report and the run store do) does not import JAX.
"""

import importlib

from tram.attacks.methods import ATTACK_METHODS, AttackMethod, attack_method

_LAZY = {
    "tram.attacks.budget": ("find_beta", "kl_divergence", "kl_from_logits", "masked_log_softmax", "masked_softmax",
                            "perturbed_kl", "stealth_averages", "stealth_loglik", "stealth_loglik_from_logits"),
    "tram.attacks.directions": ("attacker_advantage", "combined_direction", "combined_weights", "exact_grad_log_pi", "exact_recurrent_gram", "grad_dots",
                                "grad_sq_norms", "jbased_direction", "jbased_weights", "logit_gram",
                                "logit_gram_and_jvp", "logit_jvp", "normalize_direction", "random_direction",
                                "softmax_weight_gradient", "variance_direction", "variance_weights"),
    "tram.attacks.perturb": ("AttackConfig", "identity_perturbation", "make_perturbation", "perturb_logits"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}

__all__ = sorted(["ATTACK_METHODS", "AttackMethod", "attack_method", *_MODULE_OF])


def __getattr__(name: str):
    """Imports a lazily exported name (a JAX module's function) on first use."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'tram.attacks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
