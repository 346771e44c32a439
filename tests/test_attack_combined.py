"""The combined direction of App. E (method ``combined``, ``docs/attack-math.md``, "Combined").

Pinned against ``jax.grad`` of the objective it approximates,
``sum_a softmax(l + delta)(a) ||A_k(a) g(a) - g_prev||^2`` (built from explicit per-action
parameter gradients, not from the Gram/JVP closed forms), against the gradient of the full
``tr(Sigma)`` of Eq. 4 at one state, and against a three-action example worked by hand; plus
its unit norm and fallbacks, the method table and a short training run.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tram.attacks import (
    AttackConfig,
    attacker_advantage,
    combined_direction,
    jbased_direction,
    make_perturbation,
    masked_log_softmax,
    masked_softmax,
    random_direction,
    variance_direction,
)
from tram.attacks.directions import advance_hidden_tangent

from tiny_actors import A, H, I, gru_init, gru_logits, gru_step, make_ctx, mlp_init, mlp_logits, tree_like

# ---------------------------------------------------------------------------------------
# Helpers (the tiny actors are in tests/tiny_actors.py).
# ---------------------------------------------------------------------------------------


class GRUWithStep:
    """``gru_logits`` with the ``step`` method the exact Gram needs."""

    def __call__(self, params, h, x):
        return gru_step(params, h, x)[0]

    def step(self, params, h, x):
        return gru_step(params, h, x)


def per_action_grads(log_pi_fn, params, avail):
    """``g(a) = jax.grad log pi(a)`` for every action: a list of ``A`` pytrees (0 where unavailable)."""
    out = []
    for a in range(A):
        g = jax.grad(lambda p: log_pi_fn(p)[a])(params)
        out.append(jax.tree.map(lambda t: jnp.where(avail[a], t, 0.0), g))
    return out


def tree_sq(t):
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(t))


def objective_direction(logits, avail, adv, grads, g_prev, f_a=0.7):
    """Normalised ``jax.grad`` at ``delta = 0`` of
    ``sum_a pi~(a) ||A_k(a) g(a) - g_prev||^2``, ``pi~ = f_A softmax(l + delta) + (1 - f_A) pi``.

    Every ``C(a)`` is formed from the parameter vectors themselves (no expansion, no Gram
    matrix); ``f_A`` is kept to show that it only scales the gradient. Also returns the
    unnormalised gradient's largest entry (conditioning of the float32 reference)."""
    c = jnp.stack([tree_sq(jax.tree.map(lambda gi, gp: adv[a] * gi - gp, grads[a], g_prev)) for a in range(A)])
    c = jnp.where(avail, c, 0.0)
    pi = masked_softmax(logits, avail)

    def obj(delta):
        mixed = f_a * masked_softmax(logits + delta, avail) + (1.0 - f_a) * pi
        return jnp.sum(mixed * c)

    raw = np.asarray(jax.grad(obj)(jnp.zeros_like(logits)), np.float64)
    return raw / np.linalg.norm(raw), np.max(np.abs(raw)) / max(float(np.max(np.abs(c))), 1e-30)


def random_case(rng, min_avail=2):
    logits = (rng.normal(size=A) * rng.choice([0.3, 1.0, 2.0])).astype(np.float32)
    avail = rng.random(A) < 0.75
    avail[rng.choice(A, size=min_avail, replace=False)] = True
    q = (rng.normal(size=A) * 2.0).astype(np.float32)
    return logits, avail, q


# ---------------------------------------------------------------------------------------
# Against autodiff of the objective.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["mlp", "gru"])
def test_combined_direction_equals_jax_grad_of_the_app_e_objective(net):
    """One-step: ``g(a)`` is ``jax.grad`` of the masked log-softmax of this step's logits with
    the hidden state held constant. Random actors, critics, masks, mixing weights and previous
    gradients at three scales (so that either term may dominate)."""
    init, logits_fn = (mlp_init, mlp_logits) if net == "mlp" else (gru_init, gru_logits)
    direction = jax.jit(lambda k, c: combined_direction(k, c, logits_fn))
    rng = np.random.default_rng(7)
    key = jax.random.PRNGKey(3)
    checked = 0
    for case in range(12):
        key, kp, kh, kx, kt = jax.random.split(key, 5)
        params = init(kp)
        hidden, x = jax.random.normal(kh, (H,)), jax.random.normal(kx, (I,))
        g_prev = tree_like(kt, params, scale=[0.01, 0.3, 3.0][case % 3])
        _, avail, q = random_case(rng)
        logits = logits_fn(params, hidden, x)
        mix = float(rng.uniform(0.2, 1.5))
        d, fb = direction(jax.random.PRNGKey(case), make_ctx(logits, avail, q, params, hidden, x, g_prev, mix=mix))
        assert not bool(fb)
        av = jnp.asarray(avail)
        pi = masked_softmax(logits, av)
        adv = attacker_advantage(pi, jnp.asarray(q), jnp.float32(mix), av)
        grads = per_action_grads(lambda p: masked_log_softmax(logits_fn(p, hidden, x), av), params, av)
        ref, cond = objective_direction(logits, av, adv, grads, g_prev)
        if cond < 1e-4:  # float32 autodiff of a nearly stationary objective: not a reference
            continue
        np.testing.assert_allclose(np.asarray(d, np.float64), ref, atol=2e-4, err_msg=f"case {case}")
        checked += 1
    assert checked >= 8


def test_combined_direction_through_the_history_equals_jax_grad():
    """``attack.var_gram = "exact"`` and ``attack.recurrent_grad = "exact"``: ``g(a)`` through
    the whole history (a scan from ``h = 0``), at every step of a 6-step episode with the
    carried hidden tangent and a padded input window; the one-step direction differs."""
    key = jax.random.PRNGKey(31)
    kp, kx, kt = jax.random.split(key, 3)
    params = gru_init(kp)
    xs = jax.random.normal(kx, (6, I))
    g_prev = tree_like(kt, params, 0.3)
    window = jnp.concatenate([xs, 5.0 * jnp.ones((2, I))])  # rows after the step are ignored
    fn = GRUWithStep()
    exact = jax.jit(lambda k, c: combined_direction(k, c, fn, exact_gram=True, exact_jvp=True))
    one_step = jax.jit(lambda k, c: combined_direction(k, c, gru_logits))
    rng = np.random.default_rng(31)
    h, h_dot = jnp.zeros(H), jnp.zeros(H)
    worst_cos = 1.0
    for t in range(xs.shape[0]):
        _, avail, q = random_case(rng)
        av = jnp.asarray(avail)
        logits = gru_logits(params, h, xs[t])
        ctx = make_ctx(logits, avail, q, params, h, xs[t], g_prev, mix=0.8, hidden_tangent=h_dot)._replace(
            history_inputs=window, history_step=jnp.int32(t))
        d, fb = exact(jax.random.PRNGKey(t), ctx)
        assert not bool(fb)

        def log_pi(p, t=t):
            def step(hh, xx):
                lg, hn = gru_step(p, hh, xx)
                return hn, lg

            _, lgs = lax.scan(step, jnp.zeros(H), xs[:t + 1])
            return masked_log_softmax(lgs[-1], av)

        pi = masked_softmax(logits, av)
        adv = attacker_advantage(pi, jnp.asarray(q), jnp.float32(0.8), av)
        ref, _ = objective_direction(logits, av, adv, per_action_grads(log_pi, params, av), g_prev)
        np.testing.assert_allclose(np.asarray(d, np.float64), ref, atol=2e-4, err_msg=f"step {t}")
        d1, _ = one_step(jax.random.PRNGKey(t), ctx)
        worst_cos = min(worst_cos, float(np.asarray(d1, np.float64) @ ref))
        h_dot = advance_hidden_tangent(gru_step, params, h, xs[t], g_prev, h_dot)
        h = gru_step(params, h, xs[t])[1]
    assert worst_cos < 0.999, "the history must matter in this case (else the test proves nothing)"


def test_with_g_prev_the_state_mean_it_ascends_the_full_trace_of_eq_4():
    """With ``g_prev = E_pi[A_k g]`` (the mean at ``delta = 0``), the combined direction is the
    normalised gradient of ``tr(Sigma) = E_pi'[||A_k g||^2] - ||E_pi'[A_k g]||^2`` (Eq. 4 at
    one state, its second term kept), by ``jax.grad``."""
    direction = jax.jit(lambda k, c: combined_direction(k, c, mlp_logits))
    rng = np.random.default_rng(5)
    key = jax.random.PRNGKey(5)
    for case in range(6):
        key, kp, kx = jax.random.split(key, 3)
        params = mlp_init(kp)
        x = jax.random.normal(kx, (I,))
        _, avail, q = random_case(rng)
        av = jnp.asarray(avail)
        logits = mlp_logits(params, None, x)
        pi = masked_softmax(logits, av)
        adv = attacker_advantage(pi, jnp.asarray(q), jnp.float32(1.0), av)
        grads = per_action_grads(lambda p: masked_log_softmax(mlp_logits(p, None, x), av), params, av)
        samples = [jax.tree.map(lambda g, a=a: adv[a] * g, grads[a]) for a in range(A)]

        def mean_under(p):
            return jax.tree.map(lambda *s: sum(p[a] * s[a] for a in range(A)), *samples)

        g_mean = mean_under(pi)
        sq = jnp.where(av, jnp.stack([tree_sq(s) for s in samples]), 0.0)

        def trace_sigma(delta):
            p = masked_softmax(logits + delta, av)
            return jnp.sum(p * sq) - tree_sq(mean_under(p))

        raw = np.asarray(jax.grad(trace_sigma)(jnp.zeros(A)), np.float64)
        d, fb = direction(jax.random.PRNGKey(case), make_ctx(logits, avail, q, params, jnp.zeros(H), x, g_mean))
        assert not bool(fb)
        np.testing.assert_allclose(np.asarray(d, np.float64), raw / np.linalg.norm(raw), atol=2e-4)


# ---------------------------------------------------------------------------------------
# A hand-worked example.
# ---------------------------------------------------------------------------------------


def linear_actor(params, hidden, x):
    """Logits ARE the parameters: ``J_l = I``, so ``g(a) = e_a - pi`` and ``K = I``."""
    del hidden, x
    return params["l"]


@pytest.mark.parametrize("extra_unavailable", [False, True])
def test_hand_worked_three_actions(extra_unavailable):
    """``l = 0`` (``pi = 1/3`` each), ``q = (1, 0, -1)``, ``g_prev = (1, 0, 0)``, linear actor.

    ``A_k = (1, 0, -1)``, ``g(a) = e_a - pi``, ``||g(a)||^2 = 4/9 + 1/9 + 1/9 = 2/3``.
    ``C(a) = ||A_k(a) g(a) - g_prev||^2``:
    ``a=0: ||(2/3, -1/3, -1/3) - (1, 0, 0)||^2 = 3 * 1/9 = 1/3``;
    ``a=1: ||g_prev||^2 = 1``; ``a=2: ||(1/3, 1/3, -2/3) - (1, 0, 0)||^2 = 4/9 + 1/9 + 4/9 = 1``.
    ``<pi, C> = 7/9``, ``pi (C - <pi, C>) = (1/3)(-4/9, 2/9, 2/9)`` -> ``(-2, 1, 1) / sqrt 6``.
    Var alone: ``W = (2/3, 0, 2/3)`` -> ``(1, -2, 1) / sqrt 6``; J alone: ``U = A_k <g_prev, g>
    = (2/3, 0, 1/3)`` -> ``-(1/3, -1/3, 0)`` -> ``(-1, 1, 0) / sqrt 2``. The combined one is
    ``r_var + 2 r_J = (2, -4, 2)/27 + 2 (-3, 3, 0)/27``, neither of them nor their unit sum.

    With ``mix_weight = 1/2``: ``A_k = (1/2, 0, -1/2)``, ``C = (1/2, 1, 5/6)``
    (``a=0: ||(1/3, -1/6, -1/6) - (1, 0, 0)||^2 = 4/9 + 2/36``; ``a=2: ||(1/6, 1/6, -1/3) -
    (1, 0, 0)||^2 = 25/36 + 1/36 + 4/36``), ``<pi, C> = 7/9``, ``C - <pi, C> = (-5, 4, 1)/18``
    -> ``(-5, 4, 1) / sqrt 42``."""
    n = 4 if extra_unavailable else 3
    avail = np.array([True, True, True, False][:n])
    logits = np.zeros(n, np.float32)
    logits[avail.size - 1] = 0.0 if not extra_unavailable else 7.0  # ignored: unavailable
    q = np.array([1.0, 0.0, -1.0, 9.0][:n], np.float32)
    params = {"l": jnp.asarray(logits)}
    g_prev = {"l": jnp.asarray(np.array([1.0, 0.0, 0.0, 0.0][:n], np.float32))}
    key = jax.random.PRNGKey(0)

    def pad(v):
        return np.concatenate([np.asarray(v, np.float64), np.zeros(n - 3)])

    cases = [
        (1.0, combined_direction, pad(np.array([-2.0, 1.0, 1.0]) / math.sqrt(6))),
        (1.0, variance_direction, pad(np.array([1.0, -2.0, 1.0]) / math.sqrt(6))),
        (1.0, jbased_direction, pad(np.array([-1.0, 1.0, 0.0]) / math.sqrt(2))),
        (0.5, combined_direction, pad(np.array([-5.0, 4.0, 1.0]) / math.sqrt(42))),
    ]
    for mix, fn, expected in cases:
        ctx = make_ctx(logits, avail, q, params, np.zeros(1), np.zeros(1), g_prev, mix=mix)
        d, fb = jax.jit(lambda k, c, fn=fn: fn(k, c, linear_actor))(key, ctx)
        assert not bool(fb)
        np.testing.assert_allclose(np.asarray(d, np.float64), expected, atol=1e-6, err_msg=f"{fn.__name__} {mix}")
    unit_sum = np.array([1.0, -2.0, 1.0]) / math.sqrt(6) + np.array([-1.0, 1.0, 0.0]) / math.sqrt(2)
    assert abs(float(unit_sum @ np.array([-2.0, 1.0, 1.0])) / np.linalg.norm(unit_sum) / math.sqrt(6)) < 0.99


# ---------------------------------------------------------------------------------------
# Unit norm, fallbacks, dispatch through the perturbation.
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net():
    kp, kh, kx, kt = jax.random.split(jax.random.PRNGKey(11), 4)
    params = gru_init(kp)
    return params, jax.random.normal(kh, (H,)), jax.random.normal(kx, (I,)), tree_like(kt, params, 0.3)


def test_unit_norm_zero_off_mask_and_fallbacks(net):
    params, hidden, x, g_prev = net
    comb = jax.jit(lambda k, c: combined_direction(k, c, gru_logits))
    var = jax.jit(lambda k, c: variance_direction(k, c, gru_logits))
    rng = np.random.default_rng(2)
    key = jax.random.PRNGKey(0)
    differs = 0
    for c in range(10):
        logits, avail, q = random_case(rng)
        key, k = jax.random.split(key)
        d, fb = comb(k, make_ctx(logits, avail, q, params, hidden, x, g_prev))
        d = np.asarray(d)
        assert np.all(np.isfinite(d)) and not bool(fb)
        np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-5)
        assert np.all(d[~avail] == 0.0)
        # Before the first update g_prev counts as 0 (even if the field holds something):
        # the variance-based direction (to float32 rounding: two separately compiled
        # programs), and no fallback.
        ctx0 = make_ctx(logits, avail, q, params, hidden, x, g_prev, has_prev=False)
        d0, fb0 = comb(k, ctx0)
        d_var, _ = var(k, ctx0)
        assert not bool(fb0)
        np.testing.assert_allclose(np.asarray(d0), np.asarray(d_var), atol=1e-6)
        if avail.sum() >= 3:  # (with two actions every direction is +-(1, -1)/sqrt 2)
            differs += int(np.max(np.abs(d - np.asarray(d_var))) > 1e-3)  # with g_prev it differs
    assert differs >= 5
    # One-hot pi: a zero vector, the random fallback (and the flag).
    one_hot = np.array([0.0, -200.0, -200.0, -200.0, -200.0], np.float32)
    q = np.array([1.0, 0.0, -1.0, 2.0, 0.5], np.float32)
    d, fb = comb(key, make_ctx(one_hot, np.ones(A, bool), q, params, hidden, x, g_prev))
    assert bool(fb)
    np.testing.assert_allclose(np.asarray(d), np.asarray(random_direction(key, jnp.ones(A, bool))), atol=1e-6)
    # All advantages 0 (constant q): W = U = 0, a fallback.
    _, fb = comb(key, make_ctx(np.array([0.3, -0.2, 1.0, 0.0, 0.5], np.float32), np.ones(A, bool),
                               np.full(A, 4.0, np.float32), params, hidden, x, g_prev))
    assert bool(fb)
    # One available action: no perturbation exists, the direction is all zeros.
    d, fb = comb(key, make_ctx(np.zeros(A, np.float32), np.array([False, True, False, False, False]), q,
                               params, hidden, x, g_prev))
    assert bool(fb) and np.all(np.asarray(d) == 0.0)


def test_method_entry_dispatches_the_options(net):
    """``attack.method = "combined"`` runs Algorithm 1 along :func:`combined_direction` with
    ``K`` per ``attack.var_gram`` and ``v`` per ``attack.recurrent_grad``, bit for bit, and
    names a missing carried field."""
    params, hidden, x, g_prev = net
    logits = np.array([0.3, -0.2, 1.0, 0.0, 0.5], np.float32)
    avail = np.array([True, True, False, True, True])
    q = np.array([1.0, 0.0, -1.0, 2.0, 0.5], np.float32)
    ctx = make_ctx(logits, avail, q, params, hidden, x, g_prev, mix=0.8,
                   hidden_tangent=np.linspace(-0.5, 0.5, H))
    key = jax.random.PRNGKey(4)
    k_dir, _ = jax.random.split(key)  # make_perturbation's first split goes to the direction

    def perturb(cfg, c):
        return jax.jit(lambda k, cc: make_perturbation(cfg)(k, cc, gru_logits))(key, c)

    for recurrent_grad in ("exact", "one_step"):
        ref, _ = jax.jit(lambda k, c, e=recurrent_grad == "exact": combined_direction(k, c, gru_logits, exact_jvp=e))(
            k_dir, ctx)
        out, stats = perturb(AttackConfig(method="combined", kl_u=1.0, recurrent_grad=recurrent_grad), ctx)
        np.testing.assert_array_equal(np.asarray(stats.delta_hat), np.asarray(ref))
        assert 0.0 < float(stats.kl) <= 1.0 + 1e-6 and np.any(np.asarray(out) != logits)
    cfg = AttackConfig(method="combined")
    assert cfg.carries_hidden_tangent and not cfg.carries_history
    assert AttackConfig(method="combined", var_gram="exact").carries_history
    with pytest.raises(ValueError, match="attack.recurrent_grad='exact'.*hidden_tangent"):
        perturb(cfg, ctx._replace(hidden_tangent=None))
    with pytest.raises(ValueError, match="attack.var_gram='exact'.*history_inputs"):
        perturb(AttackConfig(method="combined", var_gram="exact"), ctx)


# ---------------------------------------------------------------------------------------
# Inside training.
# ---------------------------------------------------------------------------------------


def test_combined_trains_end_to_end_on_gather():
    """``--attack combined`` through the compiled training program (COMA on Gather, tiny
    networks, 2000 steps): the KL budget holds and is used at every window, the direction
    rarely falls back (never by construction before the first update, unlike J-based), and
    the run's numbers are finite."""
    from tram.config import EnvConfig, RunConfig, TrainConfig
    from tram.experiments.program import make_train
    from tram.learners.coma import COMAConfig

    kl_u = 2.0
    cfg = TrainConfig(env=EnvConfig("gather"),
                      learner=COMAConfig(epsilon_anneal_steps=2000, rnn_hidden=16, critic_hidden=32),
                      attack=AttackConfig(method="combined", f_a=1.0, kl_u=kl_u),
                      run=RunConfig(seeds=(0,), steps=2000, eval_interval=500, test_episodes=4))
    prog = make_train(cfg)
    state, m = jax.jit(jax.vmap(prog.train))(jnp.stack([jax.random.PRNGKey(0)]))
    assert float(np.asarray(state.learner.has_prev_grad).reshape(-1)[0]), "the actor must have been updated"
    kl_max = np.asarray(m.kl_max)[:, 1:]
    assert np.all(kl_max <= kl_u + 1e-5) and np.all(kl_max > 0.5), kl_max
    np.testing.assert_allclose(np.asarray(m.attacked_frac)[:, 1:], 1.0)
    assert np.nanmax(np.asarray(m.fallback_frac)[:, 1:]) < 0.05
    for f in ("stealth_loglik", "test_return", "train_return", "actor_loss"):
        assert np.all(np.isfinite(np.asarray(getattr(m, f))[:, 1:])), f
