"""Critic targets (tram.learners.targets) against hand-computed numbers, plain-Python loops
written here from the reference formulas, and equivalences between the estimators."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tram.learners.targets import episode_mask, td_lambda_targets, tree_backup_targets

VARIANTS = pytest.mark.parametrize("use_jit", [False, True], ids=["nojit", "jit"])


def _td(use_jit):
    return jax.jit(td_lambda_targets) if use_jit else td_lambda_targets


def _tb(use_jit, n_steps):
    f = functools.partial(tree_backup_targets, n_steps=n_steps)
    return jax.jit(f) if use_jit else f


def _f32(*xs):
    return [jnp.asarray(x, jnp.float32) for x in xs]


# ---------------------------------------------------------------------------------------
# Independent plain-Python versions of the reference code (loops, no JAX).
# ---------------------------------------------------------------------------------------
def py_td_lambda(r, term, mask, q, gamma, lam):
    """rl_utils.build_td_lambda_targets, one episode, written as a plain loop."""
    T = len(r)
    ret = [0.0] * (T + 1)
    ret[T] = q[T] * (1.0 - sum(term))
    for t in range(T - 1, -1, -1):
        ret[t] = lam * gamma * ret[t + 1] + mask[t] * (r[t] + (1 - lam) * gamma * q[t + 1] * (1 - term[t]))
    return ret[:T]


def py_tree_backup(r, term, mask, q, e, c, gamma, lam, n):
    """offpg_learner.train_critic_best + offpg_utils.build_target_q, one episode, as a
    double loop over (t, j) with the explicit product of traces."""
    T = len(r)
    q = [q[t] * mask[t] for t in range(T)] + [q[T] * (1 - sum(term))]
    e = [e[t] * mask[t] for t in range(T)] + [e[T] * (1 - sum(term))]
    delta = [(r[t] + gamma * e[t + 1] - q[t]) * mask[t] for t in range(T)]
    y = []
    for t in range(T):
        total = q[t]
        for j in range(n):
            if t + j >= T:
                break
            prod = 1.0
            for m in range(1, j + 1):
                prod *= c[t + m]
            total += (gamma * lam) ** j * prod * delta[t + j]
        y.append(total)
    return y


# ---------------------------------------------------------------------------------------
# episode_mask
# ---------------------------------------------------------------------------------------
def test_episode_mask_by_hand():
    # Terminated at t=2; PyMARL also marks the post-episode slot 3 as filled.
    m = episode_mask(jnp.array([1, 1, 1, 1, 0]), jnp.array([0, 0, 1, 0, 0]))
    assert m.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(m), [1, 1, 1, 0, 0])
    # Time-limit end: nothing removed.
    np.testing.assert_array_equal(np.asarray(episode_mask(jnp.array([True] * 3), jnp.array([False] * 3))), [1, 1, 1])
    # Termination at the first step: only the (filled) post-episode slot 1 is removed; the rule
    # relies on `filled` being 0 after that slot, and is applied literally when it is not.
    np.testing.assert_array_equal(np.asarray(episode_mask(jnp.array([1, 1, 0, 0]), jnp.array([1.0, 0, 0, 0]))),
                                  [1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(episode_mask(jnp.ones(4), jnp.array([1.0, 0, 0, 0]))), [1, 0, 1, 1])


# ---------------------------------------------------------------------------------------
# TD(lambda)
# ---------------------------------------------------------------------------------------
R3, Q4, ONES3 = [1.0, 2.0, 3.0], [10.0, 20.0, 30.0, 40.0], [1.0, 1.0, 1.0]


@VARIANTS
def test_td_lambda_zero_is_one_step_td(use_jit):
    # ret_t = r_t + g q_{t+1} (1 - term_t), g = 0.5
    out = _td(use_jit)(*_f32(R3, [0, 0, 0], ONES3, Q4), 0.5, 0.0)
    np.testing.assert_allclose(np.asarray(out), [1 + 10, 2 + 15, 3 + 20], rtol=1e-6)
    out = _td(use_jit)(*_f32(R3, [0, 0, 1], ONES3, Q4), 0.5, 0.0)
    np.testing.assert_allclose(np.asarray(out), [11, 17, 3], rtol=1e-6)


@VARIANTS
def test_td_lambda_one_is_monte_carlo_plus_bootstrap(use_jit):
    # Time limit: ret_0 = 1 + 0.5*2 + 0.25*3 + 0.125*40 = 7.75; ret_1 = 2 + 1.5 + 10 = 13.5;
    # ret_2 = 3 + 20 = 23.
    out = _td(use_jit)(*_f32(R3, [0, 0, 0], ONES3, Q4), 0.5, 1.0)
    np.testing.assert_allclose(np.asarray(out), [7.75, 13.5, 23.0], rtol=1e-6)
    # Terminated at the last step: no bootstrap. ret = [1 + 1 + 0.75, 2 + 1.5, 3].
    out = _td(use_jit)(*_f32(R3, [0, 0, 1], ONES3, Q4), 0.5, 1.0)
    np.testing.assert_allclose(np.asarray(out), [2.75, 3.5, 3.0], rtol=1e-6)


@VARIANTS
def test_td_lambda_half_by_hand(use_jit):
    # g = lam = 0.5, lam*g = (1-lam)*g = 0.25, time limit:
    # ret_3 = 40; ret_2 = 0.25*40 + 3 + 0.25*40 = 23
    # ret_1 = 0.25*23 + 2 + 0.25*30 = 15.25; ret_0 = 0.25*15.25 + 1 + 0.25*20 = 9.8125
    out = _td(use_jit)(*_f32(R3, [0, 0, 0], ONES3, Q4), 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(out), [9.8125, 15.25, 23.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out), py_td_lambda(R3, [0, 0, 0], ONES3, Q4, 0.5, 0.5), rtol=1e-6)


@VARIANTS
def test_td_lambda_padding_contributes_nothing(use_jit):
    # Episode of 2 steps, terminated at t=1, padded to T=4 with junk rewards / values.
    r, term, filled = [1.0, 2.0, 99.0, 99.0], [0, 1, 0, 0], [1, 1, 1, 0]
    mask = episode_mask(jnp.array(filled), jnp.array(term))
    q = [10.0, 20.0, 77.0, 88.0, 55.0]
    out = _td(use_jit)(*_f32(r, term), mask, jnp.array(q), 0.5, 0.5)
    # ret_1 = 2 (terminal); ret_0 = 0.25*2 + 1 + 0.25*20 = 6.5; padding -> 0.
    np.testing.assert_allclose(np.asarray(out), [6.5, 2.0, 0.0, 0.0], rtol=1e-6)
    short = _td(use_jit)(*_f32([1.0, 2.0], [0, 1], [1, 1], [10.0, 20.0, -5.0]), 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(out[:2]), np.asarray(short), rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Tree backup
# ---------------------------------------------------------------------------------------
E4, C4 = [5.0, 6.0, 7.0, 8.0], [0.9, 0.5, 0.25, 0.1]


@VARIANTS
def test_tree_backup_n1_is_expected_sarsa(use_jit):
    # y_t = r_t + g E_{t+1} (Qt cancels), g = 0.5: [1 + 3, 2 + 3.5, 3 + 4]
    out = _tb(use_jit, 1)(*_f32(R3, [0, 0, 0], ONES3, Q4, E4, C4), 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(out), [4.0, 5.5, 7.0], rtol=1e-6)
    # Terminated at the last step: E_T is zeroed.
    out = _tb(use_jit, 1)(*_f32(R3, [0, 0, 1], ONES3, Q4, E4, C4), 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(out), [4.0, 5.5, 3.0], rtol=1e-6)


@VARIANTS
def test_tree_backup_by_hand(use_jit):
    # g = lam = 0.5 (g*lam = 0.25), time limit.
    # delta = [1 + 3 - 10, 2 + 3.5 - 20, 3 + 4 - 30] = [-6, -14.5, -23]
    # n=2: y_0 = 10 - 6 + 0.25*c_1*delta_1 = 4 - 0.25*0.5*14.5 = 2.1875
    #      y_1 = 20 - 14.5 + 0.25*c_2*delta_2 = 5.5 - 0.25*0.25*23 = 4.0625
    #      y_2 = 30 - 23 = 7 (nothing past the end)
    args = _f32(R3, [0, 0, 0], ONES3, Q4, E4, C4)
    out2 = _tb(use_jit, 2)(*args, 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(out2), [2.1875, 4.0625, 7.0], rtol=1e-6)
    # n=3 adds 0.25^2 * c_1 c_2 delta_2 = 0.0625*0.5*0.25*(-23) = -0.1796875 to y_0 only;
    # c_0 and the post-episode c_3 never enter.
    out3 = _tb(use_jit, 3)(*args, 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(out3), [2.0078125, 4.0625, 7.0], rtol=1e-6)
    out3b = _tb(use_jit, 3)(*_f32(R3, [0, 0, 0], ONES3, Q4, E4, [123.0, 0.5, 0.25, -7.0]), 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(out3b), np.asarray(out3), rtol=1e-6)
    # n larger than the episode changes nothing.
    np.testing.assert_allclose(np.asarray(_tb(use_jit, 9)(*args, 0.5, 0.5)), np.asarray(out3), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out3), py_tree_backup(R3, [0, 0, 0], ONES3, Q4, E4, C4, 0.5, 0.5, 3),
                               rtol=1e-6)


@VARIANTS
def test_tree_backup_terminated_vs_time_limit(use_jit):
    # Only delta_2 changes: time limit 3 + 4 - 30 = -23, terminated 3 - 30 = -27.
    # n=2, time limit: [2.1875, 4.0625, 7]; terminated: y_1 = 20 - 14.5 + 0.0625*(-27) = 3.8125,
    # y_2 = 3, y_0 unchanged (delta_2 is 2 steps away).
    limit = _tb(use_jit, 2)(*_f32(R3, [0, 0, 0], ONES3, Q4, E4, C4), 0.5, 0.5)
    term = _tb(use_jit, 2)(*_f32(R3, [0, 0, 1], ONES3, Q4, E4, C4), 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(limit), [2.1875, 4.0625, 7.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(term), [2.1875, 3.8125, 3.0], rtol=1e-6)


@VARIANTS
def test_tree_backup_padding_contributes_nothing(use_jit):
    # Episode of 2 steps terminated at t=1 padded to T=4 with junk, vs the unpadded episode.
    r, term, filled = [1.0, 2.0, 99.0, 99.0], [0, 1, 0, 0], [1, 1, 1, 0]
    mask = episode_mask(jnp.array(filled), jnp.array(term))
    q, e, c = [10.0, 20.0, 77.0, 88.0, 55.0], [5.0, 6.0, 70.0, 80.0, 50.0], [0.9, 0.5, 0.3, 0.2, 0.1]
    out = _tb(use_jit, 5)(*_f32(r, term), mask, *_f32(q, e, c), 0.5, 0.5)
    # delta_0 = 1 + 3 - 10 = -6, delta_1 = 2 + 0 - 20 = -18 (E_2 masked);
    # y_0 = 10 - 6 + 0.25*0.5*(-18) = 1.75, y_1 = 2, padding 0.
    np.testing.assert_allclose(np.asarray(out), [1.75, 2.0, 0.0, 0.0], rtol=1e-6)
    short = _tb(use_jit, 5)(*_f32([1.0, 2.0], [0, 1], [1, 1], [10.0, 20.0, -1.0], [5.0, 6.0, -1.0],
                                  [0.9, 0.5, 0.3]), 0.5, 0.5)
    np.testing.assert_allclose(np.asarray(out[:2]), np.asarray(short), rtol=1e-6)


def _random_episode(rng, T, end, terminal):
    """Random episode of ``end`` real steps padded to ``T``; PyMARL-style filled."""
    r = rng.normal(size=T)
    term = np.zeros(T)
    if terminal:
        term[end - 1] = 1.0
    filled = np.zeros(T)
    filled[: min(end + 1, T)] = 1.0  # the post-episode slot is marked too
    mask = filled.copy()
    mask[1:] *= 1.0 - term[:-1]
    q = rng.normal(size=T + 1)
    e = rng.normal(size=T + 1)
    c = rng.uniform(0.0, 1.0, size=T + 1)
    return r, term, mask, q, e, c


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 7), data=st.data(), gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0),
       n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_against_plain_loops(T, data, gamma, lam, n, seed):
    terminal = data.draw(st.booleans())
    end = data.draw(st.integers(1, T)) if terminal else T
    r, term, mask, q, e, c = _random_episode(np.random.default_rng(seed), T, end, terminal)
    np.testing.assert_allclose(np.asarray(episode_mask(jnp.asarray((np.arange(T) <= end).astype(np.float32)),
                                                       jnp.asarray(term))), mask, atol=0)
    td = td_lambda_targets(*_f32(r, term, mask, q), gamma, lam)
    np.testing.assert_allclose(np.asarray(td), py_td_lambda(r, term, mask, q, gamma, lam), rtol=1e-4, atol=1e-4)
    tb = tree_backup_targets(*_f32(r, term, mask, q, e, c), gamma, lam, n)
    np.testing.assert_allclose(np.asarray(tb), py_tree_backup(r, term, mask, q, e, c, gamma, lam, n),
                               rtol=1e-4, atol=1e-4)
    # Padding: the outputs past the episode are 0 and the first `end` equal the unpadded episode's.
    np.testing.assert_allclose(np.asarray(tb[end:]), 0.0, atol=0)
    if terminal:
        np.testing.assert_allclose(np.asarray(td[end:]), 0.0, atol=0)
        sl = lambda x: x[: end + 1]
        short_tb = tree_backup_targets(*_f32(r[:end], term[:end], mask[:end], sl(q), sl(e), sl(c)), gamma, lam, n)
        np.testing.assert_allclose(np.asarray(tb[:end]), np.asarray(short_tb), rtol=1e-5, atol=1e-5)
        short_td = td_lambda_targets(*_f32(r[:end], term[:end], mask[:end], sl(q)), gamma, lam)
        np.testing.assert_allclose(np.asarray(td[:end]), np.asarray(short_td), rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 7), data=st.data(), gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_tree_backup_with_unit_traces_and_greedy_expectation_is_td_lambda(T, data, gamma, lam, seed):
    """With c = 1, E = Qt (the policy puts all mass on the taken actions) and n >= T,
    y_t - Qt_t = delta_t + g lam (y_{t+1} - Qt_{t+1}), i.e.
    y_t = r_t + g (1 - lam) Qt_{t+1} + g lam y_{t+1}: the TD(lambda) recursion, with the
    same end conditions (y_{T-1} = r + g Qt_T (1 - terminated))."""
    terminal = data.draw(st.booleans())
    end = data.draw(st.integers(1, T)) if terminal else T
    r, term, mask, q, _, _ = _random_episode(np.random.default_rng(seed), T, end, terminal)
    tb = tree_backup_targets(*_f32(r, term, mask, q, q, np.ones(T + 1)), gamma, lam, T)
    td = td_lambda_targets(*_f32(r, term, mask, q), gamma, lam)
    np.testing.assert_allclose(np.asarray(tb), np.asarray(td), rtol=1e-4, atol=1e-4)


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 7), gamma=st.floats(0.0, 1.0), lam=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_tree_backup_unit_traces_is_expected_lambda_return(T, gamma, lam, seed):
    """With c = 1 and n >= T: y_t = r_t + g E_{t+1} + g lam (y_{t+1} - Qt_{t+1}) (a lambda-return
    whose bootstrap is the expected value), y_{T-1} = r_{T-1} + g E_T; here by a plain loop."""
    r, term, mask, q, e, _ = _random_episode(np.random.default_rng(seed), T, T, False)
    tb = tree_backup_targets(*_f32(r, term, mask, q, e, np.ones(T + 1)), gamma, lam, T + 3)
    y = [0.0] * T
    y[T - 1] = r[T - 1] + gamma * e[T]
    for t in range(T - 2, -1, -1):
        y[t] = r[t] + gamma * e[t + 1] + gamma * lam * (y[t + 1] - q[t + 1])
    np.testing.assert_allclose(np.asarray(tb), y, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------
def test_jit_vmap_over_episodes_and_agents_equals_per_episode_calls():
    rng = np.random.default_rng(0)
    T, B, N = 5, 3, 2
    eps = [_random_episode(rng, T, end, terminal) for end, terminal in [(5, False), (3, True), (5, True)]]
    r, term, mask, q, e, c = (jnp.asarray(np.stack(x), jnp.float32) for x in zip(*eps))
    td_b = jax.jit(jax.vmap(td_lambda_targets, in_axes=(0, 0, 0, 0, None, None)))(r, term, mask, q, 0.99, 0.8)
    tb_b = jax.jit(jax.vmap(functools.partial(tree_backup_targets, n_steps=5), in_axes=(0,) * 6 + (None, None)))(
        r, term, mask, q, e, c, 0.99, 0.93)
    assert td_b.shape == tb_b.shape == (B, T)
    for b in range(B):
        np.testing.assert_allclose(np.asarray(td_b[b]), np.asarray(td_lambda_targets(r[b], term[b], mask[b], q[b],
                                                                                     0.99, 0.8)), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(tb_b[b]), np.asarray(tree_backup_targets(
            r[b], term[b], mask[b], q[b], e[b], c[b], 0.99, 0.93, 5)), rtol=1e-6)
    # COMA: per-agent targets [B, T+1, N] with shared reward / termination / mask.
    q_agents = jnp.asarray(rng.normal(size=(B, T + 1, N)), jnp.float32)
    per_agent = jax.vmap(td_lambda_targets, in_axes=(None, None, None, 1, None, None), out_axes=1)
    out = jax.jit(jax.vmap(per_agent, in_axes=(0, 0, 0, 0, None, None)))(r, term, mask, q_agents, 0.99, 0.8)
    assert out.shape == (B, T, N)
    for b in range(B):
        for i in range(N):
            np.testing.assert_allclose(np.asarray(out[b, :, i]), py_td_lambda(
                *(np.asarray(x[b]) for x in (r, term, mask)), np.asarray(q_agents[b, :, i]), 0.99, 0.8), rtol=1e-5)


def test_traced_gamma_and_lambda():
    f = jax.jit(lambda g, l: td_lambda_targets(*_f32(R3, [0, 0, 0], ONES3, Q4), g, l))
    np.testing.assert_allclose(np.asarray(f(0.5, 0.5)), [9.8125, 15.25, 23.0], rtol=1e-6)
    f = jax.jit(lambda g, l: tree_backup_targets(*_f32(R3, [0, 0, 0], ONES3, Q4, E4, C4), g, l, 2))
    np.testing.assert_allclose(np.asarray(f(0.5, 0.5)), [2.1875, 4.0625, 7.0], rtol=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="target_q"):
        td_lambda_targets(*_f32(R3, [0, 0, 0], ONES3, R3), 0.5, 0.5)
    with pytest.raises(ValueError, match="n_steps"):
        tree_backup_targets(*_f32(R3, [0, 0, 0], ONES3, Q4, E4, C4), 0.5, 0.5, 0)
