"""Tests that pin TRAM's attack maths (``docs/attack-math.md``, "Tests that pin these formulas").

Budget (Algorithm 1, Eq. 3), directions (Secs. 3.2-3.3 closed forms, Gram/JVP trick,
one-step recurrent approximation) and the per-environment perturbation.
"""

from __future__ import annotations

import functools

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tram.attacks import (
    AttackConfig,
    attacker_advantage,
    exact_grad_log_pi,
    exact_recurrent_gram,
    find_beta,
    grad_dots,
    grad_sq_norms,
    identity_perturbation,
    jbased_direction,
    jbased_weights,
    kl_divergence,
    kl_from_logits,
    logit_gram,
    logit_gram_and_jvp,
    make_perturbation,
    masked_log_softmax,
    masked_softmax,
    perturbed_kl,
    random_direction,
    softmax_weight_gradient,
    stealth_loglik,
    stealth_loglik_from_logits,
    variance_direction,
    variance_weights,
)
from tram.types import ActingContext, AttackStepStats

import tiny_actors
from tiny_actors import A, H, I, gru_init, gru_logits, gru_step, mlp_init, mlp_logits, tree_like

HYP = settings(max_examples=40, deadline=None, derandomize=True)

find_beta_jit = jax.jit(find_beta, static_argnums=(4, 5))
perturbed_kl_jit = jax.jit(perturbed_kl)


# ---------------------------------------------------------------------------------------
# Tiny networks in plain jnp.
# ---------------------------------------------------------------------------------------


def tree_dot_rows(per_action, tangent):
    """``[A]``: ``<g(a), tangent>`` for per-action gradients with a leading ``[A]`` axis."""
    return sum(jnp.tensordot(g, t, axes=t.ndim) for g, t in zip(jax.tree.leaves(per_action), jax.tree.leaves(tangent)))


def tree_sq_rows(per_action):
    return sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in jax.tree.leaves(per_action))


def random_case(rng, num_actions=A, scale=None, min_avail=1):
    scale = scale if scale is not None else rng.choice([0.1, 1.0, 3.0, 10.0])
    logits = (rng.normal(size=num_actions) * scale).astype(np.float32)
    avail = rng.random(num_actions) < 0.7
    avail[rng.choice(num_actions, size=min_avail, replace=False)] = True
    d = rng.normal(size=num_actions) * avail
    n = np.linalg.norm(d)
    d = (d / n if n > 0 else d).astype(np.float32)
    return logits, avail, d


HIDDEN_TANGENT = np.linspace(-0.5, 0.5, H).astype(np.float32)  # a carried d h / d theta . g_prev


# the acting context of tests/tiny_actors.py with a carried hidden tangent by default
make_ctx = functools.partial(tiny_actors.make_ctx, hidden_tangent=HIDDEN_TANGENT)


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


# ---------------------------------------------------------------------------------------
# Masked softmax and KL.
# ---------------------------------------------------------------------------------------


def test_masked_softmax_zero_on_unavailable_and_stable():
    avail = jnp.array([True, False, True, True, False])
    logits = jnp.array([1.0, 50.0, 2.0, -1.0, jnp.nan])  # unavailable values are ignored, even NaN
    p = masked_softmax(logits, avail)
    assert float(p[1]) == 0.0 and float(p[4]) == 0.0
    ref = jax.nn.softmax(jnp.array([1.0, 2.0, -1.0]))
    np.testing.assert_allclose(np.asarray(p)[[0, 2, 3]], np.asarray(ref), rtol=1e-6)
    huge = masked_softmax(jnp.array([3e37, 0.0, 2.9e37, 1.0, 5.0]), avail)
    assert np.all(np.isfinite(huge)) and float(huge[0]) == 1.0
    logp = masked_log_softmax(logits, avail)
    assert np.isneginf(np.asarray(logp)[[1, 4]]).all()
    np.testing.assert_allclose(np.exp(np.asarray(logp)[[0, 2, 3]]), np.asarray(ref), rtol=1e-6)
    # Gradients through the masked softmax are finite and zero on unavailable actions.
    g = jax.grad(lambda l: jnp.sum(masked_softmax(l, avail) * jnp.arange(5.0)))(jnp.zeros(5))
    assert np.all(np.isfinite(g)) and float(g[1]) == 0.0


def test_kl_by_hand_and_from_logits():
    avail = jnp.array([True, True, True, False])
    p = jnp.array([0.5, 0.25, 0.25, 0.0])
    q = jnp.array([0.25, 0.25, 0.5, 0.0])
    # 0.5 ln 2 + 0 + 0.25 ln(1/2) = 0.25 ln 2
    np.testing.assert_allclose(float(kl_divergence(p, q, avail)), 0.25 * math.log(2), rtol=1e-6)
    # 0 log 0 = 0 on an available action.
    p0 = jnp.array([1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(float(kl_divergence(p0, q, avail)), math.log(4), rtol=1e-6)
    lp, lq = jnp.log(jnp.array([0.5, 0.25, 0.25, 1.0])), jnp.log(jnp.array([0.25, 0.25, 0.5, 1.0]))
    np.testing.assert_allclose(float(kl_from_logits(lp, jnp.where(avail, lq, -jnp.inf), avail)),
                               0.25 * math.log(2), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Algorithm 1.
# ---------------------------------------------------------------------------------------


def sequential_algorithm_1(kl_fn, kl_u, bsn1=55, bsn2=15):
    """Algorithm 1 of App. B, line by line, in float32 (``kl_fn(beta) -> float32``)."""
    f32 = np.float32
    kl_u = f32(kl_u)
    lo, r, bsn = f32(0.0), f32(1.0), 0
    for i in range(1, bsn1 + 1):
        bsn = i - 1
        if kl_fn(r) > kl_u:
            break
        r = f32(r * f32(2.0))
    for _ in range(1, bsn2 + bsn + 1):
        m = f32((lo + r) / f32(2.0))
        if kl_fn(m) > kl_u:
            r = m
        else:
            lo = m
    return lo


def numpy_kl64(logits, avail, delta, beta):
    """``KL(softmax(l + beta delta) || softmax(l))`` over available actions, float64."""
    l = np.asarray(logits, np.float64)[avail]
    d = np.asarray(delta, np.float64)[avail]
    lp = l + beta * d
    lp = lp - lp.max() - np.log(np.sum(np.exp(lp - lp.max())))
    lq = l - l.max() - np.log(np.sum(np.exp(l - l.max())))
    return float(np.sum(np.exp(lp) * (lp - lq)))


def _cases(seed, n):
    rng = np.random.default_rng(seed)
    out = []
    for c in range(n):
        logits, avail, d = random_case(rng, min_avail=2)
        kl_u = rng.choice([0.0, rng.uniform(0, 0.05), rng.uniform(0, 10), rng.uniform(5, 30)])
        if c % 10 == 0:  # nearly one-hot policies
            logits[np.argmax(logits * avail - 1e9 * ~avail)] += 25.0
        out.append((logits, avail, d, np.float32(kl_u)))
    return out


def test_find_beta_bit_for_bit_equals_sequential_algorithm():
    """The fixed-length vectorised loop returns exactly the paper's sequential ``l``.

    The reference replays Algorithm 1 with its data-dependent ``break`` and
    ``BSN2 + bsn``-step bisection, evaluating each KL with the same float32 function
    (``perturbed_kl``); every decision and every ``m = (l + r) / 2`` must agree."""
    n_sat = 0
    for bsn1, bsn2 in ((55, 15), (3, 0), (6, 4)):
        for logits, avail, d, kl_u in _cases(bsn1, 120 if bsn1 == 55 else 30):
            beta, kl_at, saturated = find_beta_jit(logits, avail, d, kl_u, bsn1, bsn2)
            ref = sequential_algorithm_1(
                lambda b: np.float32(perturbed_kl_jit(logits, avail, d, np.float32(b))), kl_u, bsn1, bsn2)
            np.testing.assert_array_equal(bits(beta), bits(ref), err_msg=f"{logits} {avail} {d} {kl_u}")
            np.testing.assert_array_equal(bits(kl_at), bits(perturbed_kl_jit(logits, avail, d, beta)))
            n_sat += bool(saturated)
    assert n_sat > 0, "the cases must include saturated searches (loop never breaks)"


def test_find_beta_close_to_float64_reference():
    """An independent float64 Algorithm 1 lands within the final bracket ``2^-BSN2``
    (decisions at the last bisection steps may flip under float32 rounding).

    ``KL_U = 0`` is left out: it admits only ``beta = 0`` unless the direction is constant
    on the support, and both float32 and float64 round KLs below ~1e-20 (nearly one-hot
    policies) to 0, so the answer is decided by rounding (the perturbation short-circuits
    ``KL_U = 0`` to the identity)."""
    for logits, avail, d, kl_u in _cases(7, 60):
        if kl_u == 0:
            continue
        beta, _, saturated = find_beta_jit(logits, avail, d, kl_u, 55, 15)
        ref = sequential_algorithm_1(lambda b: numpy_kl64(logits, avail, d, float(b)), kl_u)
        np.testing.assert_allclose(float(beta), float(ref), rtol=1e-4, atol=4 * 2.0 ** -15)


def test_find_beta_saturation_and_zero_direction():
    logits = jnp.array([0.0, 1.0, -1.0])
    avail = jnp.ones(3, bool)
    d = jnp.array([1.0, 0.0, 0.0])
    sat_kl = -float(jnp.log(masked_softmax(logits, avail)[0]))  # -log pi(argmax delta)
    beta, kl_at, saturated = find_beta_jit(logits, avail, d, jnp.float32(sat_kl + 1.0), 55, 15)
    assert bool(saturated) and float(beta) > 2.0 ** 54 and np.isfinite(float(kl_at))
    np.testing.assert_allclose(float(kl_at), sat_kl, rtol=1e-5)
    beta, kl_at, saturated = find_beta_jit(logits, avail, d, jnp.float32(sat_kl - 0.5), 55, 15)
    assert not bool(saturated) and 0.0 < float(beta) < 100.0
    # A zero direction never moves the policy: KL stays 0, the search saturates.
    beta, kl_at, saturated = find_beta_jit(logits, avail, jnp.zeros(3), jnp.float32(1.0), 55, 15)
    assert bool(saturated) and float(kl_at) == 0.0


@st.composite
def budget_case(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    logits, avail, d = random_case(rng, scale=draw(st.sampled_from([0.1, 1.0, 5.0, 30.0])))
    kl_u = draw(st.one_of(st.just(0.0), st.floats(0.0, 10.0)))
    return logits, avail, d, np.float32(kl_u)


@HYP
@given(budget_case())
def test_budget_property(case):
    """``KL(pi'(beta)) <= KL_U`` always; and ``KL(pi'(beta (1 + 1e-3))) > KL_U - tol`` or
    saturated (beta is the largest feasible step up to the search's precision)."""
    logits, avail, d, kl_u = case
    beta, kl_at, saturated = find_beta_jit(logits, avail, d, kl_u, 55, 15)
    kl_beta = float(perturbed_kl_jit(logits, avail, d, beta))
    assert np.isfinite(float(beta)) and float(beta) >= 0.0
    assert kl_beta <= float(kl_u) + 1e-6
    assert kl_beta == float(kl_at)
    tol = 1e-5 + 1e-5 * float(kl_u)
    kl_above = float(perturbed_kl_jit(logits, avail, d, beta * np.float32(1.001)))
    assert bool(saturated) or kl_above > float(kl_u) - tol


@HYP
@given(budget_case(), st.floats(0.0, 10.0))
def test_find_beta_monotone_in_kl_u(case, other):
    logits, avail, d, kl_u = case
    lo_u, hi_u = sorted((float(kl_u), other))
    b_lo = find_beta_jit(logits, avail, d, np.float32(lo_u), 55, 15)[0]
    b_hi = find_beta_jit(logits, avail, d, np.float32(hi_u), 55, 15)[0]
    assert float(b_lo) <= float(b_hi)


def test_find_beta_traces_once_for_all_budgets():
    """``KL_U`` and the inputs are traced values: new budgets do not recompile."""
    traced = jax.jit(chex.assert_max_traces(find_beta, n=1), static_argnums=(4, 5))
    logits, avail, d = random_case(np.random.default_rng(0), min_avail=2)
    for kl_u in (0.5, 2.0, 6.0):
        traced(logits, avail, d, np.float32(kl_u), 55, 15)


def test_find_beta_vmaps_over_envs():
    rng = np.random.default_rng(3)
    cases = [random_case(rng, min_avail=2) for _ in range(4)]
    logits, avail, d = (np.stack(x) for x in zip(*cases))
    kl_u = np.float32([0.5, 1.0, 3.0, 6.0])
    batched = jax.jit(jax.vmap(find_beta, in_axes=(0, 0, 0, 0)))(logits, avail, d, kl_u)
    for b in range(4):
        single = find_beta_jit(logits[b], avail[b], d[b], kl_u[b], 55, 15)
        for x, y in zip(batched, single):
            np.testing.assert_array_equal(np.asarray(x[b]), np.asarray(y))


# ---------------------------------------------------------------------------------------
# Eq. 3.
# ---------------------------------------------------------------------------------------


def test_stealth_loglik_hand_computed_three_actions():
    # pi = (1/2, 1/4, 1/4), pi' = (1/4, 1/4, 1/2), f_A = 0.4:
    #   sum pi' log pi = -(1/4 * 1 + 1/4 * 2 + 1/2 * 2) ln 2 = -1.75 ln 2
    #   sum pi  log pi = -(1/2 * 1 + 1/4 * 2 + 1/4 * 2) ln 2 = -1.5 ln 2
    #   L = 0.4 * (-1.75 ln 2) + 0.6 * (-1.5 ln 2) = -1.6 ln 2 = -1.1090355...
    pi = jnp.array([0.5, 0.25, 0.25])
    pi_p = jnp.array([0.25, 0.25, 0.5])
    avail = jnp.ones(3, bool)
    expected = -1.6 * math.log(2.0)
    np.testing.assert_allclose(float(stealth_loglik(pi, pi_p, avail, 0.4)), expected, rtol=1e-6)
    # The same with a fourth, unavailable action (excluded, no 0 * log 0 NaN).
    pi4, pi_p4, avail4 = (jnp.append(pi, 0.0), jnp.append(pi_p, 0.0), jnp.array([True, True, True, False]))
    np.testing.assert_allclose(float(stealth_loglik(pi4, pi_p4, avail4, 0.4)), expected, rtol=1e-6)
    # From logits (log-probabilities are logits up to a constant).
    got = stealth_loglik_from_logits(jnp.log(pi4 + 1e-30) + 3.0, jnp.log(pi_p4 + 1e-30) - 1.0, avail4, 0.4)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    # Eq. 3, second form: -f H(pi') - f KL(pi' || pi) - (1 - f) H(pi).
    h = lambda p: -float(jnp.sum(p * jnp.log(p)))
    second = -0.4 * h(pi_p) - 0.4 * float(kl_divergence(pi_p, pi, avail)) - 0.6 * h(pi)
    np.testing.assert_allclose(second, expected, rtol=1e-6)
    # f_A = 0: minus the entropy; pi' with a zero entry is fine (0 log pi = 0).
    np.testing.assert_allclose(float(stealth_loglik(pi, pi_p, avail, 0.0)), -1.5 * math.log(2.0), rtol=1e-6)
    one_hot = jnp.array([0.0, 1.0, 0.0])
    np.testing.assert_allclose(float(stealth_loglik(pi, one_hot, avail, 1.0)), -2 * math.log(2.0), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Directions: closed form, Gram/JVP trick, recurrent approximation.
# ---------------------------------------------------------------------------------------


def test_closed_form_equals_autodiff_gradient():
    """``pi * (w - <pi, w>)`` equals ``jax.grad`` of ``sum_a softmax(l + delta)(a) w(a)`` at 0."""
    rng = np.random.default_rng(0)

    @jax.jit
    def both(logits, avail, w):
        pi = masked_softmax(logits, avail)
        auto = jax.grad(lambda dl: jnp.sum(masked_softmax(logits + dl, avail) * w))(jnp.zeros_like(logits))
        return softmax_weight_gradient(pi, jnp.where(avail, w, 0.0)), auto

    checked = 0
    for _ in range(30):
        logits, avail, _ = random_case(rng, min_avail=2)
        w = rng.normal(size=A).astype(np.float32) * 3.0
        closed, auto = map(np.asarray, both(logits, avail, w))
        scale = np.max(np.abs(w))
        np.testing.assert_allclose(closed, auto, rtol=1e-4, atol=1e-6 * scale)
        assert np.all(closed[~avail] == 0.0)
        # The pairwise closed form is also accurate where float32 autodiff cancels.
        l64 = np.where(avail, logits.astype(np.float64), -np.inf)
        pi64 = np.exp(l64 - l64.max()) / np.sum(np.exp(l64 - l64.max()))
        exact = pi64 * (w - pi64 @ w)
        np.testing.assert_allclose(closed, exact, rtol=1e-4, atol=1e-7 * scale)
        if np.linalg.norm(exact) > 1e-3 * scale:  # normalised: only where float32 autodiff is well conditioned
            np.testing.assert_allclose(closed / np.linalg.norm(closed), auto / np.linalg.norm(auto), atol=1e-4)
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("net", ["mlp", "gru"])
def test_gram_trick_equals_per_action_gradients(net):
    """``||g(a)||^2 = (e_a - pi)^T K (e_a - pi)`` and ``<t, g(a)> = (e_a - pi)^T J_l t``
    against explicit per-action ``jax.grad`` of ``log pi(a)``."""
    init, logits_fn = (mlp_init, mlp_logits) if net == "mlp" else (gru_init, gru_logits)
    key = jax.random.PRNGKey(1)
    for case in range(3):
        key, kp, kh, kx, kt = jax.random.split(key, 5)
        params = init(kp)
        hidden = jax.random.normal(kh, (H,))
        x = jax.random.normal(kx, (I,))
        tangent = tree_like(kt, params)
        avail = jnp.array([True, True, case != 1, True, case != 2])
        gram, v = jax.jit(logit_gram_and_jvp, static_argnums=0)(logits_fn, params, hidden, x, tangent)
        chex.assert_shape((gram, v), [(A, A), (A,)])
        np.testing.assert_allclose(np.asarray(gram), np.asarray(gram).T, rtol=1e-6)
        pi = masked_softmax(logits_fn(params, hidden, x), avail)
        per_action = exact_grad_log_pi(logits_fn, params, hidden, x, avail)
        np.testing.assert_allclose(np.asarray(grad_sq_norms(pi, gram, avail)), np.asarray(tree_sq_rows(per_action)),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(grad_dots(pi, v, avail)),
                                   np.asarray(tree_dot_rows(per_action, tangent)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(logit_gram(logits_fn, params, hidden, x)), np.asarray(gram), rtol=1e-5,
                                   atol=1e-6)


def test_one_step_recurrent_form_vs_full_backprop():
    """Length-1 history: the one-step form is exact. Longer histories: it differs, because
    the hidden state entering the step also depends on the parameters (our documented
    approximation ignores that path)."""
    key = jax.random.PRNGKey(5)
    kp, kh, kx, kt = jax.random.split(key, 4)
    params = gru_init(kp)
    h0 = 0.5 * jax.random.normal(kh, (H,))
    xs = jax.random.normal(kx, (4, I))
    tangent = tree_like(kt, params)
    exact = jax.jit(exact_recurrent_gram, static_argnums=0)

    k1, v1 = exact(gru_step, params, h0, xs[:1], tangent)
    k_one, v_one = logit_gram_and_jvp(gru_logits, params, h0, xs[0], tangent)
    np.testing.assert_allclose(np.asarray(k1), np.asarray(k_one), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(v1), np.asarray(v_one), rtol=1e-5, atol=1e-6)

    k4, v4 = exact(gru_step, params, h0, xs, tangent)
    h = h0
    for t in range(3):
        h = gru_step(params, h, xs[t])[1]
    k_approx, v_approx = logit_gram_and_jvp(gru_logits, params, h, xs[3], tangent)
    assert np.linalg.norm(np.asarray(k4 - k_approx)) > 1e-3 * np.linalg.norm(np.asarray(k4))
    assert np.linalg.norm(np.asarray(v4 - v_approx)) > 1e-3 * np.linalg.norm(np.asarray(v4))
    # The exact form's K is still a Gram matrix (PSD).
    assert np.min(np.linalg.eigvalsh(np.asarray(k4, np.float64))) > -1e-4


@pytest.fixture(scope="module")
def net():
    key = jax.random.PRNGKey(11)
    kp, kh, kx, kt = jax.random.split(key, 4)
    params = gru_init(kp)
    return params, jax.random.normal(kh, (H,)), jax.random.normal(kx, (I,)), tree_like(kt, params, 0.3)


@pytest.fixture(scope="module")
def directions_jit():
    var = jax.jit(lambda k, c: variance_direction(k, c, gru_logits))
    jb = jax.jit(lambda k, c: jbased_direction(k, c, gru_logits))
    return var, jb


def test_direction_vectors_unit_norm_zero_off_mask_finite(net, directions_jit):
    params, hidden, x, g_prev = net
    var, jb = directions_jit
    rng = np.random.default_rng(2)
    key = jax.random.PRNGKey(0)
    one_hot_logits = np.array([0.0, -200.0, -200.0, -200.0, -200.0], np.float32)  # pi exactly one-hot
    uniform_logits = np.zeros(A, np.float32)
    fallbacks = {}
    for name, logits_kind in (("random", None), ("one_hot", one_hot_logits), ("uniform", uniform_logits)):
        for c in range(4):
            logits, avail, _ = random_case(rng, min_avail=2)
            if logits_kind is not None:
                logits = logits_kind
                avail = np.ones(A, bool) if c % 2 == 0 else np.array([True, True, False, True, False])
            q = rng.normal(size=A).astype(np.float32) * 2.0
            ctx = make_ctx(logits, avail, q, params, hidden, x, g_prev)
            key, k = jax.random.split(key)
            for dname, fn in (("var", var), ("jbased", jb)):
                d, fb = fn(k, ctx)
                d = np.asarray(d)
                assert np.all(np.isfinite(d)), (name, dname)
                np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-5)
                assert np.all(d[~avail] == 0.0)
                fallbacks.setdefault((name, dname), []).append(bool(fb))
            d = np.asarray(random_direction(k, jnp.asarray(avail)))
            np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-5)
            assert np.all(d[~avail] == 0.0)
    # One-hot pi has a zero gradient: the direction falls back to random (and says so).
    assert all(fallbacks[("one_hot", "var")]) and all(fallbacks[("one_hot", "jbased")])
    assert not any(fallbacks[("uniform", "var")]) and not any(fallbacks[("random", "jbased")])


def test_sign_checks_var_increases_W_and_jbased_decreases_U(net):
    """A small step along delta_hat moves the objective the right way (float64 check)."""
    params, hidden, x, g_prev = net
    rng = np.random.default_rng(4)

    @jax.jit
    def weights_and_dirs(ctx):
        avail = ctx.avail
        pi = masked_softmax(ctx.logits, avail)
        adv = attacker_advantage(pi, ctx.q_values, ctx.mix_weight, avail)
        gram, v = logit_gram_and_jvp(gru_logits, ctx.actor_params, ctx.actor_hidden, ctx.actor_input,
                                     ctx.prev_actor_grad)
        key = jax.random.PRNGKey(0)
        return (variance_weights(pi, adv, gram, avail), jbased_weights(pi, adv, v, avail),
                variance_direction(key, ctx, gru_logits), jbased_direction(key, ctx, gru_logits))

    def soft64(l, avail):
        z = np.where(avail, l, -np.inf)
        e = np.exp(z - z.max())
        return e / e.sum()

    for _ in range(10):
        logits, avail, _ = random_case(rng, min_avail=2)
        q = rng.normal(size=A).astype(np.float32) * 2.0
        ctx = make_ctx(logits, avail, q, params, hidden, x, g_prev, mix=0.7)
        w, u, (d_var, fb_var), (d_j, fb_j) = weights_and_dirs(ctx)
        assert not bool(fb_var) and not bool(fb_j)
        l64 = logits.astype(np.float64)
        w64, u64 = np.asarray(w, np.float64), np.asarray(u, np.float64)
        eps = 1e-3
        base_w, base_u = soft64(l64, avail) @ w64, soft64(l64, avail) @ u64
        assert soft64(l64 + eps * np.asarray(d_var, np.float64), avail) @ w64 > base_w
        assert soft64(l64 + eps * np.asarray(d_j, np.float64), avail) @ u64 < base_u


def test_jbased_without_previous_gradient_falls_back(net, directions_jit):
    params, hidden, x, g_prev = net
    _, jb = directions_jit
    logits = np.array([0.3, -0.2, 1.0, 0.0, 0.5], np.float32)
    avail = np.ones(A, bool)
    q = np.array([1.0, 0.0, -1.0, 2.0, 0.5], np.float32)
    key = jax.random.PRNGKey(9)
    d, fb = jb(key, make_ctx(logits, avail, q, params, hidden, x, g_prev, has_prev=False))
    assert bool(fb)
    np.testing.assert_array_equal(np.asarray(d), np.asarray(random_direction(key, jnp.asarray(avail))))
    # A previous gradient that is all zeros gives a zero vector: also a fallback.
    zeros = jax.tree.map(jnp.zeros_like, g_prev)
    _, fb0 = jb(key, make_ctx(logits, avail, q, params, hidden, x, zeros, has_prev=True))
    assert bool(fb0)
    _, fb1 = jb(key, make_ctx(logits, avail, q, params, hidden, x, g_prev, has_prev=True))
    assert not bool(fb1)
    # Through the perturbation: the flag reaches the step statistics, the step still attacks.
    out, stats = _perturb_jit(AttackConfig(method="jbased", f_a=1.0, kl_u=1.0))(
        key, make_ctx(logits, avail, q, params, hidden, x, g_prev, has_prev=False))
    assert float(stats.fallback) == 1.0 and float(stats.beta) > 0.0 and np.any(np.asarray(out) != logits)


def test_zero_advantage_var_falls_back(net, directions_jit):
    params, hidden, x, g_prev = net
    var, _ = directions_jit
    ctx = make_ctx(np.array([0.3, -0.2, 1.0, 0.0, 0.5], np.float32), np.ones(A, bool), np.full(A, 4.0, np.float32),
                   params, hidden, x, g_prev)
    d, fb = var(jax.random.PRNGKey(0), ctx)
    assert bool(fb)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(d)), 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# The perturbation.
# ---------------------------------------------------------------------------------------


def _perturb_jit(cfg):
    return jax.jit(lambda k, c: make_perturbation(cfg)(k, c, gru_logits))


def test_identity_cases_return_input_logits_exactly(net):
    params, hidden, x, g_prev = net
    rng = np.random.default_rng(8)
    cfgs = [AttackConfig(method="none"), AttackConfig(method="var", f_a=0.0),
            AttackConfig(method="jbased", kl_u=0.0), AttackConfig(method="random", kl_u=0)]
    fns = [_perturb_jit(c) for c in cfgs]
    for c in range(6):
        logits, avail, _ = random_case(rng, min_avail=2)
        logits[0] = -0.0  # even the sign of a zero survives
        ctx = make_ctx(logits, avail, rng.normal(size=A), params, hidden, x, g_prev)
        for cfg, fn in zip(cfgs, fns):
            out, stats = fn(jax.random.PRNGKey(c), ctx)
            np.testing.assert_array_equal(bits(out), bits(logits), err_msg=str(cfg))
            assert isinstance(stats, AttackStepStats)
            if cfg.method == "none" or cfg.kl_u == 0:
                assert float(stats.beta) == 0.0 and float(stats.kl) == 0.0
    out, stats = identity_perturbation(jax.random.PRNGKey(0), make_ctx(logits, avail, np.zeros(A), params, hidden,
                                                                       x, g_prev), gru_logits)
    np.testing.assert_array_equal(bits(out), bits(logits))
    assert all(float(s) == 0.0 for s in stats.scalars() if s is not None)


def test_single_available_action_no_perturbation(net):
    params, hidden, x, g_prev = net
    logits = np.array([0.3, -0.2, 1.0, 0.0, 0.5], np.float32)
    avail = np.array([False, False, True, False, False])
    for method in ("random", "var", "jbased"):
        out, stats = _perturb_jit(AttackConfig(method=method, f_a=1.0, kl_u=6.0))(
            jax.random.PRNGKey(0), make_ctx(logits, avail, np.arange(A), params, hidden, x, g_prev))
        np.testing.assert_array_equal(bits(out), bits(logits))
        assert float(stats.fallback) == 1.0 and float(stats.beta) == 0.0 and float(stats.kl) == 0.0
        assert float(stats.saturated) == 0.0 and float(stats.pmax_before) == float(stats.pmax_after) == 1.0


def test_perturbation_attacked_step_and_vmap_over_envs(net):
    """f_A = 1: the returned logits' masked softmax is pi'(beta) within the budget; the
    unavailable logits are untouched; one jitted vmap over a batch of environments."""
    params, hidden, x, g_prev = net
    rng = np.random.default_rng(12)
    b = 6
    cases = [random_case(rng, min_avail=2) for _ in range(b)]
    logits, avail, _ = (np.stack(z) for z in zip(*cases))
    q = rng.normal(size=(b, A)).astype(np.float32)
    ctx = ActingContext(
        logits=jnp.asarray(logits), avail=jnp.asarray(avail), q_values=jnp.asarray(q), mix_weight=jnp.ones(b),
        actor_params=params, actor_hidden=jnp.broadcast_to(hidden, (b, H)), actor_input=jnp.broadcast_to(x, (b, I)),
        prev_actor_grad=g_prev, has_prev_grad=jnp.array(True), epsilon=jnp.float32(0.05),
        hidden_tangent=jnp.broadcast_to(HIDDEN_TANGENT, (b, H)))
    axes = ActingContext(logits=0, avail=0, q_values=0, mix_weight=0, actor_params=None, actor_hidden=0,
                         actor_input=0, prev_actor_grad=None, has_prev_grad=None, epsilon=None, hidden_tangent=0)
    kl_u = 1.5
    for method in ("random", "var", "jbased"):
        perturb = make_perturbation(AttackConfig(method=method, f_a=1.0, kl_u=kl_u))
        run = jax.jit(jax.vmap(lambda k, c: perturb(k, c, gru_logits), in_axes=(0, axes)))
        out, stats = run(jax.random.split(jax.random.PRNGKey(1), b), ctx)
        chex.assert_shape(out, (b, A))
        chex.assert_shape(list(stats.scalars())[:8], [(b,)] * 8)
        chex.assert_shape(stats.delta_hat, (b, A))
        out = np.asarray(out)
        assert np.all(out[~avail] == logits[~avail])
        assert np.all(np.asarray(stats.attacked) == 1.0)
        assert np.all(np.asarray(stats.kl) <= kl_u + 1e-6)
        for e in range(b):
            pi = masked_softmax(logits[e], avail[e])
            pi_p = masked_softmax(out[e], avail[e])
            np.testing.assert_allclose(float(kl_divergence(pi_p, pi, avail[e])), float(stats.kl[e]),
                                       rtol=1e-3, atol=1e-5)
            np.testing.assert_allclose(float(stats.stealth_loglik[e]),
                                       float(stealth_loglik(pi, pi_p, avail[e], 1.0)), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(float(stats.pmax_after[e]), float(jnp.max(pi_p)), rtol=1e-6)
            # The log-sum-exp over available actions is kept (the learner's floor sees the
            # same mass on available actions as without the attack).
            np.testing.assert_allclose(float(jax.nn.logsumexp(out[e][avail[e]])),
                                       float(jax.nn.logsumexp(logits[e][avail[e]])), rtol=1e-5, atol=1e-5)
        assert np.all(np.asarray(stats.beta) > 0.0)


def test_perturbation_frequency_draw_and_stealth_regardless_of_draw(net):
    params, hidden, x, g_prev = net
    logits = np.array([0.3, -0.2, 1.0, 0.0, 0.5], np.float32)
    avail = np.ones(A, bool)
    ctx = make_ctx(logits, avail, np.arange(A, dtype=np.float32), params, hidden, x, g_prev)
    fn = jax.jit(jax.vmap(lambda k: make_perturbation(AttackConfig(method="var", f_a=0.3, kl_u=2.0))(
        k, ctx, gru_logits)))
    out, stats = fn(jax.random.split(jax.random.PRNGKey(3), 400))
    attacked = np.asarray(stats.attacked) == 1.0
    assert 0.2 < attacked.mean() < 0.4
    out = np.asarray(out)
    assert np.all(out[~attacked] == logits) and np.all(np.any(out[attacked] != logits, axis=1))
    # Eq. 3 with f_A = 0.3 is reported on every step, attacked or not (same state, same value).
    assert np.ptp(np.asarray(stats.stealth_loglik)) < 1e-6


# ---------------------------------------------------------------------------------------
# AttackConfig.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, field, shown", [
    ({"method": "foo"}, "attack.method", "'foo'"),
    ({"f_a": 1.5}, "attack.f_a", "1.5"),
    ({"f_a": float("nan")}, "attack.f_a", "nan"),
    ({"kl_u": -1.0}, "attack.kl_u", "-1.0"),
    ({"kl_u": float("inf")}, "attack.kl_u", "inf"),
    ({"agent": -1}, "attack.agent", "-1"),
    ({"agent": True}, "attack.agent", "True"),
    ({"agent": 1.0}, "attack.agent", "1.0"),
    ({"agent": ""}, "attack.agent", "''"),
    ({"bsn1": 0}, "attack.bsn1", "0"),
    ({"bsn1": 127}, "attack.bsn1", "127"),
    ({"bsn2": -1}, "attack.bsn2", "-1"),
    ({"bsn2": 2.5}, "attack.bsn2", "2.5"),
])
def test_attack_config_errors_name_field_and_value(kwargs, field, shown):
    with pytest.raises(ValueError) as err:
        AttackConfig(**kwargs)
    msg = str(err.value)
    assert field in msg and shown in msg
    if field == "attack.method":  # every method of the table, in table order
        assert msg.endswith("accepted: none, var, jbased, random, combined, worst_q"), msg


def test_attack_config_defaults_and_coercion():
    cfg = AttackConfig()
    assert (cfg.method, cfg.f_a, cfg.kl_u, cfg.agent, cfg.bsn1, cfg.bsn2) == ("none", 1.0, 6.0, 0, 55, 15)
    assert cfg.is_identity
    cfg = AttackConfig(method="jbased", f_a=1, kl_u=6, agent=np.int64(2))
    assert isinstance(cfg.f_a, float) and isinstance(cfg.kl_u, float) and type(cfg.agent) is int
    assert AttackConfig(agent="zealot").agent == "zealot"
    assert hash(cfg) == hash(AttackConfig(method="jbased", f_a=1.0, kl_u=6.0, agent=2))
    assert not cfg.is_identity and cfg.replace(f_a=0.0).is_identity


def test_rnn_actor_fast_gram_equals_the_jacobian_gram():
    """The per-layer Gram of RNNActorLogits (used in training) equals J J^T from the
    explicit parameter Jacobian."""
    from tram.attacks.directions import logit_gram
    from tram.learners.actor import RNNActor, RNNActorLogits

    actor = RNNActor(num_actions=6, hidden=16)
    params = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 16)), jnp.zeros((1, 11)))
    fast = RNNActorLogits(actor)
    generic = lambda p, h, x: actor.apply(p, h, x)[0]  # noqa: E731 - no gram attribute
    for seed in range(3):
        kh, kx = jax.random.split(jax.random.PRNGKey(seed))
        h = 0.5 * jax.random.normal(kh, (16,))
        x = jax.random.normal(kx, (11,))
        np.testing.assert_allclose(np.asarray(logit_gram(fast, params, h, x)),
                                   np.asarray(logit_gram(generic, params, h, x)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(fast(params, h, x)), np.asarray(generic(params, h, x)))


# ---------------------------------------------------------------------------------------
# Exact recurrent gradient (attack.recurrent_grad, attack.var_gram).
# ---------------------------------------------------------------------------------------


class GRUWithStep:
    """``gru_logits`` with the ``step`` method the exact variance-based Gram needs."""

    def __call__(self, params, h, x):
        return gru_step(params, h, x)[0]

    def step(self, params, h, x):
        return gru_step(params, h, x)


def _history_log_pi_grads(params, xs, avail):
    """Per-action ``jax.grad`` of ``log pi(a | x_0..x_T)`` through the whole scan (h_0 = 0).

    Returns a pytree like ``params`` with a leading ``[A]`` axis (0 rows where unavailable)."""

    def log_pi(p, a):
        def step(h, x):
            logits, h_new = gru_step(p, h, x)
            return h_new, logits

        _, logits = lax.scan(step, jnp.zeros(H), xs)
        return masked_log_softmax(logits[-1], avail)[a]

    grads = [jax.grad(log_pi)(params, a) for a in range(A)]
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
    return jax.tree.map(lambda g: jnp.where(avail.reshape((-1,) + (1,) * (g.ndim - 1)), g, 0.0), stacked)


def _unit(raw, avail):
    raw = np.where(avail, np.asarray(raw, np.float64), 0.0)
    return raw / np.linalg.norm(raw)


def _history_case(seed, steps=7):
    key = jax.random.PRNGKey(seed)
    kp, kx, kt = jax.random.split(key, 3)
    params = gru_init(kp)
    return params, jax.random.normal(kx, (steps, I)), tree_like(kt, params, 0.3)


def test_hidden_tangent_carried_forward_equals_jvp_through_the_history():
    """advance_hidden_tangent from zeros, then logit_jvp_through_history, equals the JVP of
    the last logits of the whole scan along g_prev (exact_recurrent_gram's v)."""
    from tram.attacks.directions import advance_hidden_tangent, logit_jvp, logit_jvp_through_history

    params, xs, g_prev = _history_case(21)
    h, h_dot = jnp.zeros(H), jnp.zeros(H)
    exact = jax.jit(exact_recurrent_gram, static_argnums=0)
    for t in range(xs.shape[0]):
        v = logit_jvp_through_history(gru_logits, params, h, xs[t], g_prev, h_dot)
        _, v_ref = exact(gru_step, params, jnp.zeros(H), xs[:t + 1], g_prev)
        np.testing.assert_allclose(np.asarray(v), np.asarray(v_ref), rtol=1e-5, atol=1e-5)
        h_dot = advance_hidden_tangent(gru_step, params, h, xs[t], g_prev, h_dot)
        h = gru_step(params, h, xs[t])[1]
    # zero hidden tangent: the one-step JVP exactly
    np.testing.assert_allclose(np.asarray(logit_jvp_through_history(gru_logits, params, h, xs[0], g_prev,
                                                                    jnp.zeros(H))),
                               np.asarray(logit_jvp(gru_logits, params, h, xs[0], g_prev)), rtol=1e-6, atol=1e-7)


def test_exact_jbased_direction_equals_jax_grad_through_the_whole_history():
    """Direction from the carried tangent == normalize(-(pi * (U - <pi, U>))) with
    U(a) = A(a) <g_prev, jax.grad log pi(a | tau_t)> through the whole history, to 1e-5,
    at every step of a 7-step history; the one-step direction differs."""
    from tram.attacks.directions import advance_hidden_tangent

    params, xs, g_prev = _history_case(22)
    rng = np.random.default_rng(22)
    exact_dir = jax.jit(lambda k, c: jbased_direction(k, c, gru_logits, exact_history=True))
    one_step_dir = jax.jit(lambda k, c: jbased_direction(k, c, gru_logits))
    grads_fn = jax.jit(_history_log_pi_grads)
    h, h_dot = jnp.zeros(H), jnp.zeros(H)
    worst_cos = 1.0
    for t in range(xs.shape[0]):
        avail = rng.random(A) < 0.8
        avail[:2] = True
        q = rng.normal(size=A).astype(np.float32) * 2.0
        logits = gru_logits(params, h, xs[t])
        ctx = make_ctx(logits, avail, q, params, h, xs[t], g_prev, mix=0.6, hidden_tangent=h_dot)
        d, fb = exact_dir(jax.random.PRNGKey(t), ctx)
        assert not bool(fb)
        # Reference by autodiff, in float64 from the float32 gradients.
        pi = np.asarray(masked_softmax(logits, jnp.asarray(avail)), np.float64)
        adv = 0.6 * (q - pi @ np.where(avail, q, 0.0))
        dots = np.asarray(tree_dot_rows(grads_fn(params, xs[:t + 1], jnp.asarray(avail)), g_prev), np.float64)
        u = np.where(avail, adv * dots, 0.0)
        ref = _unit(-(pi * (u - pi @ u)), avail)
        np.testing.assert_allclose(np.asarray(d, np.float64), ref, atol=1e-5)
        d1, _ = one_step_dir(jax.random.PRNGKey(t), ctx)
        worst_cos = min(worst_cos, float(np.asarray(d1, np.float64) @ ref))
        h_dot = advance_hidden_tangent(gru_step, params, h, xs[t], g_prev, h_dot)
        h = gru_step(params, h, xs[t])[1]
    assert worst_cos < 0.999, "the history must matter in this case (else the test proves nothing)"


def test_exact_var_gram_equals_the_jacobian_gram_through_the_history():
    """history_gram on a padded window == exact_recurrent_gram's J J^T on the history, and
    the exact variance-based direction == the one from per-action jax.grad through it."""
    from tram.attacks.directions import history_gram

    params, xs, g_prev = _history_case(23)
    window = jnp.concatenate([xs, 5.0 * jnp.ones((3, I))])  # junk rows after the history: ignored
    hg = jax.jit(history_gram, static_argnums=0)
    exact = jax.jit(exact_recurrent_gram, static_argnums=0)
    fn = GRUWithStep()
    var_exact = jax.jit(lambda k, c: variance_direction(k, c, fn, exact_history=True))
    grads_fn = jax.jit(_history_log_pi_grads)
    rng = np.random.default_rng(23)
    h = jnp.zeros(H)
    for t in range(xs.shape[0]):
        k_ref, _ = exact(gru_step, params, jnp.zeros(H), xs[:t + 1], None)
        k_win = hg(gru_step, params, jnp.zeros(H), window, jnp.int32(t))
        np.testing.assert_allclose(np.asarray(k_win), np.asarray(k_ref), rtol=1e-5, atol=1e-5)
        avail = rng.random(A) < 0.8
        avail[:2] = True
        q = rng.normal(size=A).astype(np.float32) * 2.0
        logits = gru_logits(params, h, xs[t])
        ctx = make_ctx(logits, avail, q, params, h, xs[t], g_prev)._replace(history_inputs=window,
                                                                             history_step=jnp.int32(t))
        d, fb = var_exact(jax.random.PRNGKey(t), ctx)
        assert not bool(fb)
        pi = np.asarray(masked_softmax(logits, jnp.asarray(avail)), np.float64)
        adv = q - pi @ np.where(avail, q, 0.0)
        sq = np.asarray(tree_sq_rows(grads_fn(params, xs[:t + 1], jnp.asarray(avail))), np.float64)
        w = np.where(avail, adv ** 2 * sq, 0.0)
        np.testing.assert_allclose(np.asarray(d, np.float64), _unit(pi * (w - pi @ w), avail), atol=1e-5)
        h = gru_step(params, h, xs[t])[1]


def test_recurrent_options_dispatch_and_one_step_is_the_previous_pipeline(net):
    """recurrent_grad / var_gram = one_step give, bit for bit, the direction assembled from
    the one-step pieces (logit_jvp / logit_gram -> weights -> normalize), as tram computed
    before these options; "exact" uses the carried fields, and says so when they are missing."""
    from tram.attacks.directions import normalize_direction

    params, hidden, x, g_prev = net
    logits = np.array([0.3, -0.2, 1.0, 0.0, 0.5], np.float32)
    avail = np.array([True, True, False, True, True])
    q = np.array([1.0, 0.0, -1.0, 2.0, 0.5], np.float32)
    ctx = make_ctx(logits, avail, q, params, hidden, x, g_prev, mix=0.8)
    key = jax.random.PRNGKey(4)
    k_dir, _ = jax.random.split(key)

    @jax.jit
    def old_pipeline(ctx):
        av = ctx.avail
        pi = masked_softmax(ctx.logits, av)
        adv = attacker_advantage(pi, ctx.q_values, ctx.mix_weight, av)
        gram, v = logit_gram_and_jvp(gru_logits, ctx.actor_params, ctx.actor_hidden, ctx.actor_input,
                                     ctx.prev_actor_grad)
        d_var, _ = normalize_direction(k_dir, softmax_weight_gradient(pi, variance_weights(pi, adv, gram, av)), av)
        d_j, _ = normalize_direction(k_dir, -softmax_weight_gradient(pi, jbased_weights(pi, adv, v, av)), av)
        return d_var, d_j

    ref_var, ref_j = old_pipeline(ctx)
    for method, ref, kw in (("var", ref_var, {"var_gram": "one_step"}), ("jbased", ref_j, {"recurrent_grad": "one_step"})):
        _, stats = _perturb_jit(AttackConfig(method=method, kl_u=1.0, **kw))(key, ctx._replace(hidden_tangent=None))
        np.testing.assert_array_equal(bits(stats.delta_hat), bits(ref))
    # The defaults: J-based exact (differs from one-step with a nonzero carried tangent), var one-step.
    _, stats = _perturb_jit(AttackConfig(method="jbased", kl_u=1.0))(key, ctx)
    assert np.max(np.abs(np.asarray(stats.delta_hat) - np.asarray(ref_j))) > 1e-3
    _, stats = _perturb_jit(AttackConfig(method="var", kl_u=1.0))(key, ctx)
    np.testing.assert_array_equal(bits(stats.delta_hat), bits(ref_var))
    with pytest.raises(ValueError, match="attack.recurrent_grad='exact'.*hidden_tangent"):
        _perturb_jit(AttackConfig(method="jbased"))(key, ctx._replace(hidden_tangent=None))
    with pytest.raises(ValueError, match="attack.var_gram='exact'.*history_inputs"):
        _perturb_jit(AttackConfig(method="var", var_gram="exact"))(key, ctx)
    with pytest.raises(ValueError, match="attack.var_gram='exact'.*history_step"):
        _perturb_jit(AttackConfig(method="var", var_gram="exact"))(key, ctx._replace(history_inputs=jnp.zeros((3, I))))
    with pytest.raises(ValueError, match="attack.var_gram='exact' needs an actor_logits_fn with a step"):
        _perturb_jit(AttackConfig(method="var", var_gram="exact"))(
            key, ctx._replace(history_inputs=jnp.zeros((3, I)), history_step=jnp.int32(0)))


@pytest.mark.parametrize("kwargs, field, shown", [
    ({"recurrent_grad": "full"}, "attack.recurrent_grad", "'full'"),
    ({"recurrent_grad": None}, "attack.recurrent_grad", "None"),
    ({"var_gram": "Exact"}, "attack.var_gram", "'Exact'"),
])
def test_recurrent_options_errors_name_the_option_value_and_accepted(kwargs, field, shown):
    with pytest.raises(ValueError) as err:
        AttackConfig(**kwargs)
    msg = str(err.value)
    assert field in msg and shown in msg and "exact, one_step" in msg
    cfg = AttackConfig()
    assert (cfg.recurrent_grad, cfg.var_gram) == ("exact", "one_step")
    assert AttackConfig(method="jbased").carries_hidden_tangent
    assert not AttackConfig(method="jbased", recurrent_grad="one_step").carries_hidden_tangent
    assert not AttackConfig(method="var").carries_history and AttackConfig(method="var", var_gram="exact").carries_history
