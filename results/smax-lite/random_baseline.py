"""Why is the paper's random baseline so much less salient than ours? An offline check.

    python results/smax-lite/random_baseline.py [RUNS]     # default: results/smax-lite/runs

No training: it reads the Fig. 4 samples committed with the attacked COMA 3m runs (the
poisoned agent's clean policy ``pi`` over its available actions at 1,997-1,998 sampled
states per method, with the direction ``delta_hat`` the run used there), re-applies
Algorithm 1 (``tram.attacks.budget.find_beta``, the function the runs use) at several
budgets ``KL_U`` and prints the mean Eq. 3 stealth (f_A = 1), the mean KL reached, and the
share of saturated searches, for:

* ``random (tram)``: fresh unit Gaussian directions on the available actions
  (``tram.attacks.directions.random_direction``), 8 draws per state;
* ``random, all logits``: the Gaussian drawn over all 8 logits and normalised over all of
  them, unavailable ones then masked (an implementation that adds noise before masking);
* ``random, floored KL``: tram's direction, but the KL that Algorithm 1 bounds and the
  stealth are taken between the epsilon-floored policies the agent samples from
  (COMA's final epsilon 0.01);
* the run's own direction for ``var`` and ``jbased`` (the stored ``delta_hat``).

The paper's Table 3 (3m): random -1.26, -1.58, -1.53 at KL_U = 2, 4, 6, nearly flat.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tram.attacks.budget import find_beta, masked_softmax, stealth_loglik
from tram.attacks.directions import random_direction
from tram.report.collect import collect_runs

KL_BUDGETS = (0.25, 0.5, 1.0, 2.0, 4.0, 6.0)
DRAWS = 8
EPSILON = 0.01  # COMA's epsilon_finish (pymarl's coma.yaml), the floor for most of a 1M-step run


def _floored(pi, avail, eps):
    n = jnp.sum(avail)
    return jnp.where(avail, (1.0 - eps) * pi + eps / n, 0.0)


def _one(logits, avail, delta, kl_u, floor):
    """(stealth, kl, saturated) of one state and direction at budget ``kl_u``."""
    if floor:
        # Bound the KL between floored policies: search beta on the floored line by
        # bisection over the same doubling grid as Algorithm 1 (floored KL is not a
        # softmax of a shifted logit, so find_beta's closed line does not apply).
        def kl_at(beta):
            p = _floored(masked_softmax(logits + beta * delta, avail), avail, EPSILON)
            q = _floored(masked_softmax(logits, avail), avail, EPSILON)
            return jnp.sum(jnp.where(avail & (p > 0), p * (jnp.log(p) - jnp.log(q)), 0.0))

        betas = 2.0 ** jnp.arange(56, dtype=jnp.float32)
        kls = jax.vmap(kl_at)(betas)
        over = kls > kl_u
        done = jnp.any(over)
        hi = jnp.where(done, betas[jnp.argmax(over)], 2.0 * betas[-1])

        def bisect(_, c):  # Algorithm 1's bisection on [0, r]
            lo, hi = c
            m = (lo + hi) / 2.0
            over_m = kl_at(m) > kl_u
            return jnp.where(over_m, lo, m), jnp.where(over_m, m, hi)

        lo, _ = jax.lax.fori_loop(0, 40, bisect, (jnp.float32(0.0), hi))
        lo = jnp.where(done, lo, hi)  # saturated: r = 2^BSN1, as Algorithm 1
        beta = lo
        p = _floored(masked_softmax(logits + beta * delta, avail), avail, EPSILON)
        q = _floored(masked_softmax(logits, avail), avail, EPSILON)
        return stealth_loglik(q, p, avail, 1.0), kl_at(beta), ~done
    beta, kl, saturated = find_beta(logits, avail, delta, kl_u)
    pi = masked_softmax(logits, avail)
    pi_p = masked_softmax(logits + beta * delta, avail)
    return stealth_loglik(pi, pi_p, avail, 1.0), kl, saturated


def _table(name, logits, avail, deltas, floor=False):
    """Prints one row per budget: mean stealth, mean KL, saturated share."""
    f = jax.jit(jax.vmap(lambda l, a, d, k: _one(l, a, d, k, floor), in_axes=(0, 0, 0, None)))
    for kl_u in KL_BUDGETS:
        s, kl, sat = f(logits, avail, deltas, jnp.float32(kl_u))
        ok = np.isfinite(np.asarray(s))
        print(f"  {name:<22} KL_U {kl_u:>4}: stealth {np.mean(np.asarray(s)[ok]):7.3f}   "
              f"KL reached {np.mean(np.asarray(kl)[ok]):5.2f}   saturated {np.mean(np.asarray(sat)):5.1%}")


def main(root: str = "results/smax-lite/runs") -> None:
    store = collect_runs(Path(root))
    runs = [(k.method, store.runs[k]) for k in store.keys()
            if k.learner == "coma" and k.env == "3m" and k.method != "none" and k.f_a == 1 and k.kl_u == 6]
    if not runs:
        raise SystemExit(f"no attacked COMA 3m runs under {root}")
    key = jax.random.PRNGKey(0)
    for method, run in sorted(runs, key=lambda r: r[0]):
        d = np.load(Path(run.path) / "attack_samples.npz")
        avail = jnp.asarray(d["avail"])
        # log pi is a valid set of logits for pi (masked_softmax renormalises)
        logits = jnp.where(avail, jnp.log(jnp.maximum(jnp.asarray(d["pi"]), 1e-30)), 0.0)
        multi = np.asarray(jnp.sum(avail, -1) >= 2)
        avail, logits, stored = avail[multi], logits[multi], jnp.asarray(d["delta_hat"])[multi]
        pmax = float(jnp.mean(jnp.max(masked_softmax(logits, avail), -1)))
        print(f"{method} run: {int(multi.sum())} sampled states with >= 2 actions, mean max pi {pmax:.3f}, "
              f"clean -H(pi) {float(jnp.mean(jax.vmap(lambda l, a: stealth_loglik(masked_softmax(l, a), masked_softmax(l, a), a, 1.0))(logits, avail))):.3f}")
        if method in ("var", "jbased"):
            _table(f"{method} (stored dir.)", logits, avail, stored)
        if method == "random":
            rep = lambda x: jnp.repeat(x, DRAWS, axis=0)  # noqa: E731
            L, A = rep(logits), rep(avail)
            keys = jax.random.split(key, L.shape[0])
            dirs = jax.vmap(random_direction)(keys, A)
            _table("random (tram)", L, A, dirs)
            g = jax.vmap(lambda k: jax.random.normal(k, (A.shape[1],)))(keys)
            g_all = g / jnp.linalg.norm(g, axis=-1, keepdims=True)
            _table("random, all logits", L, A, jnp.where(A, g_all, 0.0))
            _table("random, floored KL", L, A, dirs, floor=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
