"""Algorithm 1 in few sequential rounds (``tram.attacks.budget.find_beta``) against the
paper's step-by-step loop: a plain-Python port evaluating each KL with the same float32
function, and the fixed-length jitted loop ``find_beta_sequential``.

The result must be the same ``beta`` bit for bit (every decision is the loop's decision on
the same float32 KL values), with the KL reported at ``beta`` and ``saturated`` equal too,
and ``KL(pi'(beta)) <= KL_U`` always. Cases cover saturation (the doubling never breaks),
zero and constant directions, one available action (the perturbation's fallback cases),
nearly one-hot policies, tiny and zero budgets, several ``levels`` and ``BSN1``/``BSN2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tram.attacks.budget import (
    BETA_SEARCH_LEVELS, find_beta, find_beta_sequential, masked_softmax, perturbed_kl, saturated_beta,
)

A = 6
HYP = settings(max_examples=60, deadline=None, derandomize=True)

fast = jax.jit(find_beta, static_argnums=(4, 5, 6))
loop = jax.jit(find_beta_sequential, static_argnums=(4, 5))
kl_jit = jax.jit(perturbed_kl)


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def python_algorithm_1(kl_fn, kl_u, bsn1=55, bsn2=15):
    """The paper's Algorithm 1 line by line in float32 (its ``break`` and its
    ``BSN2 + bsn``-step bisection). Returns ``(l, saturated)``."""
    f32 = np.float32
    lo, r, bsn, broke = f32(0.0), f32(1.0), 0, False
    for i in range(1, bsn1 + 1):
        bsn = i - 1
        if kl_fn(r) > kl_u:
            broke = True
            break
        r = f32(r * f32(2.0))
    for _ in range(bsn2 + bsn):
        m = f32((lo + r) / f32(2.0))
        if kl_fn(m) > kl_u:
            r = m
        else:
            lo = m
    return lo, not broke


@st.composite
def search_case(draw):
    """Random logits (scales from flat to nearly one-hot), availability, direction and budget."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    logits = (rng.normal(size=A) * scale).astype(np.float32)
    n_avail = draw(st.integers(1, A))
    avail = np.zeros(A, bool)
    avail[rng.choice(A, n_avail, replace=False)] = True
    kind = draw(st.sampled_from(["random", "random", "random", "zero", "constant", "one_hot_argmax"]))
    d = rng.normal(size=A).astype(np.float32)
    if kind == "zero":
        d = np.zeros(A, np.float32)
    elif kind == "constant":
        d = np.where(avail, np.float32(0.7), d).astype(np.float32)
    elif kind == "one_hot_argmax":  # the direction points at one action: KL saturates
        d = np.zeros(A, np.float32)
        d[rng.choice(np.flatnonzero(avail))] = 1.0
    d = d / max(np.linalg.norm(d[avail]), 1e-12) if np.any(d[avail] != 0) else d
    kl_u = draw(st.one_of(st.just(0.0), st.floats(0.0, 1e-4), st.floats(0.0, 10.0), st.floats(5.0, 40.0)))
    return logits, avail, d.astype(np.float32), np.float32(kl_u)


def _check(case, bsn1=55, bsn2=15, levels=BETA_SEARCH_LEVELS):
    logits, avail, d, kl_u = case
    beta, kl_at, sat = fast(logits, avail, d, kl_u, bsn1, bsn2, levels)
    beta_l, kl_l, sat_l = loop(logits, avail, d, kl_u, bsn1, bsn2)
    ref, sat_ref = python_algorithm_1(lambda b: np.float32(kl_jit(logits, avail, d, np.float32(b))), kl_u, bsn1, bsn2)
    msg = f"logits={logits} avail={avail} d={d} kl_u={kl_u} bsn1={bsn1} bsn2={bsn2} levels={levels}"
    np.testing.assert_array_equal(bits(beta), bits(ref), err_msg=msg)
    np.testing.assert_array_equal(bits(beta), bits(beta_l), err_msg=msg)
    np.testing.assert_array_equal(bits(kl_at), bits(kl_l), err_msg=msg)
    assert bool(sat) == bool(sat_l) == sat_ref, msg
    kl_beta = float(kl_jit(logits, avail, d, beta))
    assert kl_beta == float(kl_at) and kl_beta <= float(kl_u), msg
    return bool(sat)


@HYP
@given(search_case())
def test_same_beta_as_algorithm_1(case):
    _check(case)


@HYP
@given(search_case(), st.sampled_from([(55, 15, 1), (55, 15, 3), (55, 15, 6), (3, 0, 2), (6, 4, 5), (1, 7, 4)]))
def test_same_beta_for_other_bsn_and_levels(case, setting):
    bsn1, bsn2, levels = setting
    _check(case, bsn1, bsn2, levels)


def test_saturation_and_fallback_cases_are_hit():
    """Hand-built edge cases: saturated search (its beta near 2^55 and KL the saturation
    value -log pi(argmax delta)), zero direction, one available action, KL_U = 0."""
    logits = np.array([0.0, 1.0, -1.0, 2.0, 0.5, -0.3], np.float32)
    avail = np.ones(A, bool)
    d = np.zeros(A, np.float32)
    d[0] = 1.0
    sat_kl = -float(jnp.log(masked_softmax(logits, avail)[0]))
    assert _check((logits, avail, d, np.float32(sat_kl + 1.0)))
    beta = fast(logits, avail, d, np.float32(sat_kl + 1.0), 55, 15, 5)[0]
    assert float(beta) > 2.0 ** 54
    # the closed form of the saturated search (no bisection step runs) is the loop's result
    assert bits(beta) == bits(np.float32(saturated_beta(55, 15)))
    assert bits(loop(logits, avail, d, np.float32(sat_kl + 1.0), 55, 15)[0]) == bits(np.float32(saturated_beta(55, 15)))
    assert not _check((logits, avail, d, np.float32(sat_kl - 0.5)))
    assert _check((logits, avail, np.zeros(A, np.float32), np.float32(1.0)))  # zero direction
    one = np.zeros(A, bool)
    one[2] = True
    assert _check((logits, one, d, np.float32(0.3)))  # one available action: KL is always 0
    rng = np.random.default_rng(0)
    r = rng.normal(size=A).astype(np.float32)
    assert not _check((logits, avail, r / np.linalg.norm(r), np.float32(0.0)))


def test_vmapped_equals_unbatched():
    """The rollout calls find_beta under vmap (environments, seeds): same bits per row."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(16, A)).astype(np.float32) * 3
    avail = rng.random((16, A)) < 0.7
    avail[:, 0] = True
    d = rng.normal(size=(16, A)).astype(np.float32)
    kl_u = rng.uniform(0, 8, 16).astype(np.float32)
    out = jax.jit(jax.vmap(find_beta))(logits, avail, d, kl_u)
    for i in range(16):
        one = fast(logits[i], avail[i], d[i], kl_u[i], 55, 15, 5)
        for a, b in zip(out, one):
            np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b))


def test_midpoint_tree_is_the_bisection_midpoints():
    """The candidates of a round are the midpoints ``(l + r) / 2`` bisection computes:
    by hand on [0, 8] (the integers), and bit for bit against nested float32 midpoints on
    an interval where the sums round (large magnitudes, 24-bit mantissa)."""
    from tram.attacks.budget import _midpoint_tree

    np.testing.assert_array_equal(np.asarray(_midpoint_tree(jnp.float32(0), jnp.float32(8), 3)), np.arange(9.0))
    f32 = np.float32
    lo, hi = f32(2.0 ** 30 + 3 * 2.0 ** 7), f32(2.0 ** 30 + 2.0 ** 10)

    def nested(l, r, depth):
        if depth == 0:
            return [l]
        m = f32((l + r) / f32(2.0))
        return nested(l, m, depth - 1) + nested(m, r, depth - 1)

    want = np.array(nested(lo, hi, 5) + [hi], np.float32)
    np.testing.assert_array_equal(bits(_midpoint_tree(jnp.float32(lo), jnp.float32(hi), 5)), bits(want))


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_bad_levels_refused(bad):
    with pytest.raises(ValueError, match="levels"):
        find_beta(np.zeros(3, np.float32), np.ones(3, bool), np.ones(3, np.float32), 1.0, 55, 15, bad)
