"""The attack budget: masked softmax, KL, Algorithm 1 (the choice of beta) and Eq. 3.

TRAM (Sec. 3.1) perturbs the poisoned agent's logits ``l`` along a unit direction
``delta_hat`` and samples, with probability ``f_A``, from

    pi'(beta) = softmax(l + beta * delta_hat)

instead of ``pi = softmax(l)``; ``beta`` is the largest value with
``KL(pi'(beta) || pi) <= KL_U`` (App. B). Everything here is for ONE state (unbatched
``[A]`` vectors, rlax style); batch with ``jax.vmap``.

Unavailable actions (``avail[a] == False``) are excluded everywhere: they get probability
exactly 0 and are left out of every sum, so ``0 * log 0`` never appears.

Shape letters: ``A`` actions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "masked_softmax",
    "masked_log_softmax",
    "kl_divergence",
    "kl_from_logits",
    "perturbed_kl",
    "find_beta",
    "find_beta_sequential",
    "BETA_SEARCH_LEVELS",
    "stealth_loglik",
    "stealth_loglik_from_logits",
    "SINGLE_ACTION_STEALTH",
    "stealth_averages",
]


def masked_log_softmax(logits: jax.Array, avail: jax.Array) -> jax.Array:
    """Log-softmax over the available actions only.

    ``log pi(a) = l(a) - log sum_{b: m(b)} exp(l(b))`` for available ``a``, ``-inf`` for
    unavailable ``a``. Stable: the max over available logits is subtracted first, so
    logits of any magnitude (e.g. ``l + 2^55 * delta_hat`` in Algorithm 1) stay finite.

    Args:
        logits: ``[..., A]`` raw logits (values at unavailable actions are ignored).
        avail: ``[..., A]`` bool mask with at least one True per row.

    Returns:
        ``[..., A]`` log-probabilities; ``-inf`` where ``avail`` is False. A row with no
        available action (only padding has one) gives all ``-inf``, never NaN.
    """
    avail = avail.astype(bool)
    x = jnp.where(avail, logits, -jnp.inf)
    m = jnp.max(x, axis=-1, keepdims=True)
    m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    z = x - m
    s = jnp.sum(jnp.exp(z), axis=-1, keepdims=True)
    lse = jnp.log(jnp.where(s > 0, s, 1.0))
    return jnp.where(avail, z - lse, -jnp.inf)


def masked_softmax(logits: jax.Array, avail: jax.Array) -> jax.Array:
    """Softmax over the available actions only: ``pi = softmax(l)`` restricted to ``m``.

    Args:
        logits: ``[..., A]`` raw logits (values at unavailable actions are ignored).
        avail: ``[..., A]`` bool mask with at least one True per row.

    Returns:
        ``[..., A]`` probabilities summing to 1 over available actions, exactly 0 on
        unavailable ones (all zeros for a row with no available action). Stable for
        logits of any finite magnitude.
    """
    avail = avail.astype(bool)
    x = jnp.where(avail, logits, -jnp.inf)
    m = jnp.max(x, axis=-1, keepdims=True)
    m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    e = jnp.where(avail, jnp.exp(x - m), 0.0)
    s = jnp.sum(e, axis=-1, keepdims=True)
    return e / jnp.where(s > 0, s, 1.0)


def kl_divergence(p: jax.Array, q: jax.Array, avail: jax.Array) -> jax.Array:
    """``KL(p || q) = sum_{a: m(a), p(a) > 0} p(a) (log p(a) - log q(a))``.

    From probabilities (``0 log 0 = 0``; unavailable actions excluded). It is ``+inf``
    if ``q(a) = 0 < p(a)`` for some available ``a``. To evaluate the perturbed policy
    of Algorithm 1, where probabilities underflow for large beta, prefer
    :func:`kl_from_logits`.

    Args:
        p, q: ``[..., A]`` probabilities (0 on unavailable actions).
        avail: ``[..., A]`` bool.

    Returns:
        ``[...]`` KL divergence.
    """
    use = avail.astype(bool) & (p > 0)
    log_p = jnp.log(jnp.where(use, p, 1.0))
    log_q = jnp.log(jnp.where(use, q, 1.0))
    return jnp.sum(jnp.where(use, p * (log_p - log_q), 0.0), axis=-1)


def kl_from_logits(logits_p: jax.Array, log_q: jax.Array, avail: jax.Array) -> jax.Array:
    """``KL(p || q)`` with ``p = masked_softmax(logits_p)`` and ``q = exp(log_q)``, stably.

    ``sum_{a: m(a)} p(a) (log p(a) - log q(a))`` with ``log p`` from the log-softmax, so
    ``p(a) = 0`` by underflow gives ``0 * finite = 0``. Rounding can make the sum a
    hair below 0 when ``p ~ q``; it is clipped at 0 (KL >= 0).

    Args:
        logits_p: ``[..., A]`` logits of ``p``.
        log_q: ``[..., A]`` log-probabilities of ``q`` (finite on available actions,
            e.g. :func:`masked_log_softmax` of the clean logits).
        avail: ``[..., A]`` bool.

    Returns:
        ``[...]`` KL divergence (>= 0).
    """
    avail = avail.astype(bool)
    log_p = jnp.where(avail, masked_log_softmax(logits_p, avail), 0.0)
    log_q = jnp.where(avail, log_q, 0.0)
    kl = jnp.sum(jnp.where(avail, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)
    return jnp.maximum(kl, 0.0)


_SMALL_STEP = 0.5
"""Up to this ``beta * max|delta_c|`` the KL of Algorithm 1 uses the expm1/log1p form."""


class _Line(NamedTuple):
    """What Algorithm 1 precomputes once for ``beta -> KL(pi'(beta) || pi)``."""

    avail: jax.Array  # [A] bool
    base: jax.Array  # [A] clean logits, 0 on unavailable
    delta: jax.Array  # [A] direction, 0 on unavailable
    log_pi: jax.Array  # [A] masked log-softmax of base, 0 on unavailable
    delta_c: jax.Array  # [A] delta - <pi, delta>, 0 on unavailable
    spread: jax.Array  # [] max |delta_c|


def _line(logits: jax.Array, avail: jax.Array, delta_hat: jax.Array) -> _Line:
    avail = avail.astype(bool)
    base = jnp.where(avail, jnp.asarray(logits, jnp.float32), 0.0)
    delta = jnp.where(avail, jnp.asarray(delta_hat, jnp.float32), 0.0)
    log_pi = jnp.where(avail, masked_log_softmax(base, avail), 0.0)
    pi = jnp.where(avail, jnp.exp(log_pi), 0.0)
    delta_c = jnp.where(avail, delta - jnp.sum(pi * delta), 0.0)
    return _Line(avail, base, delta, log_pi, delta_c, jnp.max(jnp.abs(delta_c)))


def _kl_along(line: _Line, beta: jax.Array) -> jax.Array:
    """``KL(softmax(l + beta * delta) || pi)``: the one evaluation Algorithm 1 repeats.

    With ``d(a) = log pi'(a) - log pi(a)``, ``KL = sum_a pi(a) e^{d(a)} d(a)``. Two exact
    forms of ``d``, each accurate in float32 where the other is not:

    * large steps: ``d = log_softmax(l + beta delta) - log pi`` (max-subtracted, finite for
      ``beta ~ 2^55``, where KL tends to ``-log sum_{argmax delta} pi``);
    * small steps (``beta max|delta_c| <= 0.5``): ``d = beta delta_c - log1p(sum_a pi(a)
      expm1(beta delta_c(a)))`` with the centred ``delta_c = delta - <pi, delta>`` (same
      ``pi'``). KL is then ``~ beta^2 Var_pi(delta) / 2``, which the first form loses to
      the rounding of ``log pi`` (absolute error ~1e-7): tiny budgets ``KL_U`` would be
      met by a spuriously large beta.
    """
    x = beta * line.delta_c
    pi = jnp.where(line.avail, jnp.exp(line.log_pi), 0.0)
    d_small = x - jnp.log1p(jnp.sum(jnp.where(line.avail, pi * jnp.expm1(x), 0.0)))
    d_large = masked_log_softmax(line.base + beta * line.delta, line.avail) - line.log_pi
    small = beta * line.spread <= _SMALL_STEP
    d = jnp.where(line.avail, jnp.where(small, d_small, d_large), 0.0)
    kl = jnp.sum(jnp.where(line.avail, jnp.exp(line.log_pi + d) * d, 0.0))
    return jnp.maximum(kl, 0.0)


def perturbed_kl(logits: jax.Array, avail: jax.Array, delta_hat: jax.Array, beta: jax.Array) -> jax.Array:
    """``KL(pi'(beta) || pi)``, ``pi'(beta) = softmax(l + beta * delta_hat)`` (App. B).

    The same float32 computation :func:`find_beta` performs at each of its steps (used
    by the tests to replay Algorithm 1 step by step).

    Args:
        logits: ``[A]`` clean logits ``l``.
        avail: ``[A]`` bool.
        delta_hat: ``[A]`` direction (values at unavailable actions are ignored).
        beta: ``[]`` step size >= 0.

    Returns:
        ``[]`` float32 KL divergence.
    """
    return _kl_along(_line(logits, avail, delta_hat), jnp.asarray(beta, jnp.float32))


def find_beta_sequential(
    logits: jax.Array,
    avail: jax.Array,
    delta_hat: jax.Array,
    kl_u: jax.Array | float,
    bsn1: int = 55,
    bsn2: int = 15,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Algorithm 1 (App. B) step by step (``BSN1 + BSN1 - 1 + BSN2`` sequential KL
    evaluations): the reference form of :func:`find_beta`, which returns the same result in
    far fewer sequential rounds. The largest ``beta`` with ``KL(pi'(beta) || pi) <= KL_U``.

    The paper's sequential algorithm, with ``pi'(b) = softmax(l + b * delta_hat)``::

        l, r, bsn = 0, 1, 0
        for i in 1..BSN1:                  # doubling
            bsn = i - 1
            if KL(pi'(r) || pi) > KL_U: break
            r = 2 r
        for i in 1..BSN2 + bsn:            # bisection of [l, r]
            m = (l + r) / 2
            if KL(pi'(m) || pi) > KL_U: r = m  else: l = m
        return l

    ``KL(pi'(beta) || pi)`` is non-decreasing in ``beta >= 0`` (Lemma B.1), so ``l`` is
    always feasible. After a break at doubling index ``bsn``, ``r = 2^bsn`` and the
    bisection runs ``BSN2 + bsn`` steps, so ``r - l = 2^-BSN2`` at the end (an absolute
    precision). If the loop never breaks, ``bsn = BSN1 - 1`` but ``r`` has been doubled
    ``BSN1`` times (``r = 2^BSN1``): KL is then saturated at
    ``-log sum_{a in argmax delta_hat} pi(a)`` below ``KL_U`` and ``beta`` ends near
    ``2^BSN1``; ``saturated`` reports it.

    Vectorised form (jit/vmap friendly, same result bit for bit): a fixed-length
    ``lax.fori_loop`` of ``BSN1`` doubling steps whose steps after the break are no-ops,
    then one of ``BSN1 - 1 + BSN2`` bisection steps (the most the sequential algorithm can
    run) whose steps ``i > BSN2 + bsn`` are no-ops. Every KL is the float32 computation of
    :func:`perturbed_kl`: from the log-softmax for large steps (finite for ``beta ~
    2^55``), from ``expm1``/``log1p`` for small ones (accurate for tiny ``KL_U``).
    ``m = (l + r) / 2`` is the same float32 operation as in the sequential algorithm.

    Args:
        logits: ``[A]`` the clean logits ``l_k`` (values at unavailable actions ignored).
        avail: ``[A]`` bool, at least one True.
        delta_hat: ``[A]`` the attack direction (unit norm over available actions; values
            at unavailable actions are ignored). A zero or constant-on-available
            direction never changes the policy: KL stays 0, the result is saturated.
        kl_u: ``[]`` the budget ``KL_U >= 0``.
        bsn1: ``BSN_1`` (static), the number of doubling steps (paper: 55).
        bsn2: ``BSN_2`` (static), the extra bisection steps (paper: 15).

    Returns:
        ``(beta, kl_at_beta, saturated)``: ``beta`` ``[]`` float32 (the final ``l``),
        ``kl_at_beta`` ``[]`` the KL computed at ``beta`` during the search (0 if
        ``beta = 0``), ``saturated`` ``[]`` bool, True if KL never exceeded ``KL_U`` while
        doubling.
    """
    if bsn1 < 1 or bsn2 < 0:
        raise ValueError(f"find_beta needs bsn1 >= 1 and bsn2 >= 0, got bsn1={bsn1}, bsn2={bsn2}")
    line = _line(logits, avail, delta_hat)
    kl_u = jnp.asarray(kl_u, jnp.float32)

    def kl_at(beta):
        return _kl_along(line, beta)

    # Doubling, lines 2-10. Step i (0-based) is the paper's i + 1, so bsn := i.
    def doubling(i, carry):
        r, bsn, done = carry
        exceeded = kl_at(r) > kl_u
        active = ~done
        bsn = jnp.where(active, i, bsn)
        r = jnp.where(active & ~exceeded, r * 2.0, r)
        return r, bsn, done | exceeded

    r0 = (jnp.float32(1.0), jnp.int32(0), jnp.array(False))
    r, bsn, done = lax.fori_loop(0, bsn1, doubling, r0)

    # Bisection, lines 11-19: BSN2 + bsn active steps out of BSN1 - 1 + BSN2.
    def bisection(i, carry):
        lo, hi, kl_lo = carry
        active = i < bsn2 + bsn
        m = (lo + hi) / 2.0
        k = kl_at(m)
        over = k > kl_u
        hi = jnp.where(active & over, m, hi)
        keep = active & ~over
        return jnp.where(keep, m, lo), hi, jnp.where(keep, k, kl_lo)

    lo, _, kl_lo = lax.fori_loop(0, bsn1 - 1 + bsn2, bisection, (jnp.float32(0.0), r, jnp.float32(0.0)))
    return lo, kl_lo, ~done


BETA_SEARCH_LEVELS = 1
"""Bisection steps :func:`find_beta` resolves per round (``2^levels - 1`` candidate betas
evaluated at once; 1: the one midpoint of the loop). On a CPU the extra candidates are work,
not free parallelism. Inside COMA's rollout (8 environments vmapped; every search saturated
at a fresh policy, so 69 bisection steps) the rollout under the var attack took 11 CPU ms
per batch with 1 level, 14 with 2, 16-17 with 3, 25-29 with 5 and 10-14 with the
fixed-length step-by-step loop (clean: 3 ms); alone, ``python benchmarks/attack_profile.py``
times 0.10 / 0.21 / 0.35 CPU ms per acting step for 1 / 3 / 5 levels. What 1 level keeps from
the vectorised form: the 55 doubling tests in one evaluation, and a bisection that stops
after its ``BSN2 + bsn`` steps instead of running the loop's fixed ``BSN1 - 1 + BSN2``.
A GPU may prefer more levels (pass ``levels``)."""


def _midpoint_tree(lo: jax.Array, hi: jax.Array, levels: int) -> jax.Array:
    """``[2^levels + 1]`` float32 points of ``[lo, hi]``: every ``m = (l + r) / 2`` that
    ``levels`` bisection steps can visit, each computed from its two parent points by the
    same float32 operation the sequential algorithm performs, in order."""
    pts = jnp.stack([lo, hi])
    for _ in range(levels):
        mids = (pts[:-1] + pts[1:]) / 2.0
        pts = jnp.concatenate([jnp.stack([pts[:-1], mids], axis=1).reshape(-1), pts[-1:]])
    return pts


SATURATION_SHORTCUT_MIN_BSN1 = 40
"""Smallest ``BSN1`` for which :func:`find_beta` takes the saturated search's result in
closed form (:func:`saturated_beta`): at ``beta >= 2^39`` any float32 logit offset is lost in
``beta * delta`` and every non-argmax probability underflows to 0, so ``pi'`` and the KL no
longer change with ``beta``."""


def saturated_beta(bsn1: int, bsn2: int) -> float:
    """The ``beta`` Algorithm 1 returns when the doubling never exceeds ``KL_U`` and no
    bisection step does either: ``BSN2 + BSN1 - 1`` float32 midpoints of ``[l, 2^BSN1]``
    from ``l = 0``, each kept (``l = (l + r) / 2`` in float32, as the loop computes it)."""
    lo, hi = np.float32(0.0), np.float32(2.0) ** np.float32(bsn1)
    for _ in range(bsn2 + bsn1 - 1):
        lo = np.float32((lo + hi) / np.float32(2.0))
    return float(lo)


def _pick(values: jax.Array, index: jax.Array) -> jax.Array:
    """``values[index]`` as a masked sum (exact: one nonzero term), which stays a fused
    elementwise reduction under ``vmap`` instead of a batched gather."""
    return jnp.sum(jnp.where(jnp.arange(values.shape[0]) == index, values, jnp.zeros_like(values)))


def find_beta(
    logits: jax.Array,
    avail: jax.Array,
    delta_hat: jax.Array,
    kl_u: jax.Array | float,
    bsn1: int = 55,
    bsn2: int = 15,
    levels: int = BETA_SEARCH_LEVELS,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Algorithm 1 (App. B) in few sequential rounds: the same ``beta`` as
    :func:`find_beta_sequential` (the paper's loop; see there for the algorithm).

    Every point Algorithm 1 can test is known in advance, so the tests are evaluated many
    at a time and only the decisions stay sequential (cheap scalar selects):

    * doubling: ``KL(pi'(2^i))`` for ``i = 0..BSN1-1`` in one vectorised evaluation; ``bsn``
      is the first ``i`` with ``KL > KL_U`` (the loop's ``break``), else ``BSN1 - 1`` with
      ``r = 2^BSN1`` (saturated), exactly as the loop;
    * bisection: in rounds of ``levels`` steps: the ``2^levels - 1`` midpoints the next
      ``levels`` steps can visit (:func:`_midpoint_tree`: each ``(l + r) / 2`` from the same
      float32 parents as in the loop, so bit-identical values) get their KL in one
      vectorised evaluation, then the ``levels`` decisions of the loop are replayed on
      them (``KL > KL_U``: ``r = m``, else ``l = m``), steps past ``BSN2 + bsn`` being
      no-ops. Rounds run while steps remain (``ceil((BSN2 + bsn) / levels)``, a
      ``lax.while_loop``).

    Sequential KL evaluations: ``1 + ceil((BSN2 + bsn) / levels)`` (5 for ``bsn = 3`` at
    the paper's BSN2 = 15 with 5 levels; 19 with the default 1 level) instead of ``bsn + 1 +
    BSN2 + bsn`` in the loop (``BSN1 + BSN1 - 1 + BSN2 = 124`` in a fixed-length loop), for
    ``BSN1 + (2^levels - 1) * rounds`` evaluations of work (more levels: fewer rounds but
    more work; see :data:`BETA_SEARCH_LEVELS` for the default and its measurement). Every decision is the loop's
    decision on the same float32 KL function (:func:`perturbed_kl`), so the result equals
    the loop's; only the vectorised evaluation of the KL may round differently in the
    last bit (tested: equal on random cases, and ``KL <= KL_U`` always, as each returned
    ``beta`` is a tested point with ``KL <= KL_U``, or 0).

    Args:
        logits, avail, delta_hat, kl_u, bsn1, bsn2: as :func:`find_beta_sequential`.
        levels: bisection steps per round (static, >= 1): ``2^levels - 1`` candidates each.

    Returns:
        ``(beta, kl_at_beta, saturated)`` as :func:`find_beta_sequential`.
    """
    if bsn1 < 1 or bsn2 < 0:
        raise ValueError(f"find_beta needs bsn1 >= 1 and bsn2 >= 0, got bsn1={bsn1}, bsn2={bsn2}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"find_beta needs levels an integer >= 1, got levels={levels!r}")
    line = _line(logits, avail, delta_hat)
    kl_u = jnp.asarray(kl_u, jnp.float32)
    kl_many = jax.vmap(lambda b: _kl_along(line, b))

    # Doubling, lines 2-10: r = 2^i at step i (exact in float32).
    powers_np = np.float32(2.0) ** np.arange(bsn1 + 1, dtype=np.float32)
    shortcut_ok = bsn1 >= SATURATION_SHORTCUT_MIN_BSN1
    beta_sat = np.float32(saturated_beta(bsn1, bsn2)) if shortcut_ok else np.float32(0.0)
    tested = np.concatenate([powers_np[:bsn1], [beta_sat]]) if shortcut_ok else powers_np[:bsn1]
    kls = kl_many(jnp.asarray(tested))
    over = kls[:bsn1] > kl_u
    done = jnp.any(over)
    bsn = jnp.where(done, jnp.argmax(over), bsn1 - 1).astype(jnp.int32)
    powers = jnp.asarray(powers_np)
    r = jnp.where(done, powers[bsn], powers[bsn1])
    # A saturated search bisects [0, 2^BSN1] for BSN2 + BSN1 - 1 steps, all above 2^(BSN1-1),
    # where pi' is the uniform policy on argmax delta to float32 precision and the KL is the
    # one already tested at 2^(BSN1-1) (below KL_U): every step keeps its midpoint, so the
    # loop's result is the constant saturated_beta(BSN1, BSN2). Taken when the KL there equals
    # the KL at 2^(BSN1-1) bit for bit; else (and for small BSN1) the bisection runs.
    shortcut = (~done & (kls[bsn1] == kls[bsn1 - 1])) if shortcut_ok else jnp.array(False)
    steps = jnp.where(shortcut, 0, bsn2 + bsn)

    # Bisection, lines 11-19, in rounds of `levels` steps.
    width = 2 ** levels

    def one_round(carry):
        k, lo, hi, kl_lo = carry
        pts = _midpoint_tree(lo, hi, levels)
        kls = jnp.concatenate([jnp.zeros((1,), jnp.float32), kl_many(pts[1:-1]), jnp.zeros((1,), jnp.float32)])
        i_lo, i_hi = jnp.int32(0), jnp.int32(width)
        for s in range(levels):
            active = k * levels + s < steps
            i_m = (i_lo + i_hi) // 2
            kl_m = _pick(kls, i_m)
            over_m = kl_m > kl_u
            i_hi = jnp.where(active & over_m, i_m, i_hi)
            keep = active & ~over_m
            i_lo = jnp.where(keep, i_m, i_lo)
            kl_lo = jnp.where(keep, kl_m, kl_lo)
        return k + 1, _pick(pts, i_lo), _pick(pts, i_hi), kl_lo

    init = (jnp.int32(0), jnp.float32(0.0), r, jnp.float32(0.0))
    _, lo, _, kl_lo = lax.while_loop(lambda c: c[0] * levels < steps, one_round, init)
    if shortcut_ok:
        lo = jnp.where(shortcut, beta_sat, lo)
        kl_lo = jnp.where(shortcut, kls[bsn1], kl_lo)
    return lo, kl_lo, ~done


def stealth_loglik(pi: jax.Array, pi_prime: jax.Array, avail: jax.Array, f_a: jax.Array | float) -> jax.Array:
    """Eq. 3: the log likelihood of the poisoned agent's behaviour seen by its teammates.

    ``L = f_A sum_a pi'(a) log pi(a) + (1 - f_A) sum_a pi(a) log pi(a)
        = -f_A H(pi', pi) - (1 - f_A) H(pi)``

    per step (the paper averages it over the poisoned agent's steps; smaller = more
    salient). Sums run over available actions with ``pi'(a) > 0`` (resp. ``pi(a) > 0``),
    so ``0 log 0 = 0``. If ``pi(a) = 0 < pi'(a)`` (only by float underflow) the cross
    entropy is infinite and so is ``L``; :func:`stealth_loglik_from_logits` is the stable
    form used by the attack.

    Args:
        pi: ``[..., A]`` the clean policy (0 on unavailable actions).
        pi_prime: ``[..., A]`` the perturbed policy (0 on unavailable actions).
        avail: ``[..., A]`` bool.
        f_a: ``[]`` attack frequency ``f_A`` in [0, 1].

    Returns:
        ``[...]`` the Eq. 3 value (<= 0).
    """
    avail = avail.astype(bool)

    def neg_cross_entropy(p, q):
        use = avail & (p > 0)
        log_q = jnp.log(jnp.where(use, q, 1.0))
        return jnp.sum(jnp.where(use, p * log_q, 0.0), axis=-1)

    return f_a * neg_cross_entropy(pi_prime, pi) + (1.0 - f_a) * neg_cross_entropy(pi, pi)


def stealth_loglik_from_logits(logits: jax.Array, perturbed_logits: jax.Array, avail: jax.Array,
                               f_a: jax.Array | float) -> jax.Array:
    """Eq. 3 (see :func:`stealth_loglik`) from logits, stable for any perturbation size.

    ``pi = masked_softmax(logits)``, ``pi' = masked_softmax(perturbed_logits)``; ``log pi``
    is the masked log-softmax, finite on available actions, so the value is always
    finite.

    Args:
        logits: ``[..., A]`` clean logits.
        perturbed_logits: ``[..., A]`` perturbed logits.
        avail: ``[..., A]`` bool.
        f_a: ``[]`` attack frequency.

    Returns:
        ``[...]`` the Eq. 3 value (<= 0).
    """
    avail = avail.astype(bool)
    log_pi = jnp.where(avail, masked_log_softmax(logits, avail), 0.0)
    pi = jnp.exp(log_pi) * avail
    pi_prime = masked_softmax(perturbed_logits, avail)
    cross = jnp.sum(pi_prime * log_pi, axis=-1)
    neg_entropy = jnp.sum(pi * log_pi, axis=-1)
    return f_a * cross + (1.0 - f_a) * neg_entropy


SINGLE_ACTION_STEALTH = 0.0
"""The exact Eq. 3 value of a step with ONE available action.

With a single available action ``a*`` both policies put all their mass on it: ``pi(a*) =
pi'(a*) = 1`` (the masked softmax of any logits; the learners' epsilon floor, spread over
all actions and renormalised over the available ones, gives 1 as well). So
``L = f_A * 1 * log 1 + (1 - f_A) * 1 * log 1 = 0`` for every ``f_A``: such a step is
exactly as likely under the attack as without it (no perturbation exists). Every
perturbation in :mod:`tram.attacks` reports exactly this value at such a step
(:func:`stealth_loglik_from_logits` computes ``log pi(a*) = z - log(exp(0)) = 0`` with no
rounding), which :func:`stealth_averages` relies on."""


def stealth_averages(alive_sum: jax.Array, alive_steps: jax.Array, single_steps: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
    """The two averages of Eq. 3 over the poisoned agent's steps.

    The paper averages Eq. 3 "over the poisoned agent's steps" without saying what happens
    at steps where the agent has one available action (a dead SMAX unit can only "stop").
    tram reports both readings:

    * ``stealth_loglik`` (every step): ``(alive_sum + single_steps * 0) / (alive_steps +
      single_steps)``; a single-action step contributes its exact value
      :data:`SINGLE_ACTION_STEALTH` = 0;
    * ``stealth_loglik_alive``: ``alive_sum / alive_steps``, over the steps with two or
      more available actions only (what tram reported as ``stealth_loglik`` before both
      existed). It is more negative by the factor ``(alive + single) / alive``, so it
      favours attacks under which the poisoned agent dies early.

    On the grid tasks every action is always available (``single_steps = 0``) and the two
    coincide.

    Args:
        alive_sum: ``[...]`` sum of the per-step Eq. 3 values over the steps with >= 2
            available actions.
        alive_steps: ``[...]`` number of those steps.
        single_steps: ``[...]`` number of steps with exactly one available action.

    Returns:
        ``(every, alive)``, each ``[...]`` float32; NaN where its denominator is 0.
    """
    alive_sum = jnp.asarray(alive_sum, jnp.float32)
    alive_steps = jnp.asarray(alive_steps, jnp.float32)
    all_steps = alive_steps + jnp.asarray(single_steps, jnp.float32)
    every_sum = alive_sum + (all_steps - alive_steps) * SINGLE_ACTION_STEALTH
    nan = jnp.float32(jnp.nan)
    every = jnp.where(all_steps > 0, every_sum / jnp.maximum(all_steps, 1.0), nan)
    alive = jnp.where(alive_steps > 0, alive_sum / jnp.maximum(alive_steps, 1.0), nan)
    return every, alive
