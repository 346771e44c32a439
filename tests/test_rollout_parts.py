"""The named pieces of one acting step of tram.learners.rollout.collect_episodes, on hand-built
input with hand-computed expected values."""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from tram.learners.episodes import empty_episodes
from tram.learners.rollout import AttackSums, add_attack_step, empty_sample, initial_store, record_step, take_sample
from tram.types import AttackStepStats


def _stats(**kw) -> AttackStepStats:
    z = jnp.zeros(3, jnp.float32)
    base = dict(attacked=z, stealth_loglik=z, kl=z, beta=z, saturated=z, fallback=z, pmax_before=z, pmax_after=z)
    base.update({k: jnp.asarray(v, jnp.float32) for k, v in kw.items()})
    return AttackStepStats(**base, delta_hat=jnp.ones((3, 2)))


def test_add_attack_step_sums_multi_action_steps_and_counts_single_ones():
    # env 0: 2 actions, active; env 1: 1 action, active; env 2: 2 actions but finished
    avail = jnp.asarray([[True, True], [True, False], [True, True]])
    active = jnp.asarray([True, True, False])
    stats = _stats(attacked=[1.0, 1.0, 1.0], stealth_loglik=[-0.5, -7.0, -7.0], kl=[0.2, 9.0, 8.0],
                   beta=[4.0, 9.0, 9.0], saturated=[0.0, 1.0, 0.0], fallback=[0.0, 1.0, 1.0],
                   pmax_before=[0.7, 1.0, 0.5], pmax_after=[0.4, 1.0, 0.5])
    sums, multi = add_attack_step(AttackSums.zeros(), stats, avail, active)
    np.testing.assert_array_equal(np.asarray(multi), [True, False, False])
    assert float(sums.steps) == 1.0 and float(sums.single_steps) == 1.0  # the finished env counts nowhere
    assert float(sums.stats.stealth_loglik) == -0.5 and float(sums.stats.kl) == pytest.approx(0.2)
    assert float(sums.kl_max) == pytest.approx(0.2)  # the single-action and finished steps' KL are left out
    assert float(sums.stats.pmax_before) == pytest.approx(0.7) and float(sums.stats.fallback) == 0.0
    assert sums.stats.delta_hat is None

    # a second step: env 0 saturated (its beta is left out of the sum), env 2 active now
    stats2 = _stats(beta=[1e6, 0.0, 2.0], saturated=[1.0, 0.0, 0.0], kl=[0.1, 0.0, 0.6])
    sums2, _ = add_attack_step(sums, stats2, avail, jnp.asarray([True, False, True]))
    assert float(sums2.steps) == 3.0 and float(sums2.single_steps) == 1.0
    assert float(sums2.stats.beta) == 4.0 + 2.0 and float(sums2.stats.saturated) == 1.0
    assert float(sums2.kl_max) == pytest.approx(0.6)


def test_take_sample_keeps_the_clean_softmax_over_available_actions():
    s0 = empty_sample(3)
    logits = jnp.asarray([0.0, jnp.log(3.0), 5.0])
    avail = jnp.asarray([True, True, False])
    d = jnp.asarray([0.6, -0.8, 0.0])
    kept = take_sample(s0, jnp.bool_(False), logits, avail, d)
    assert not bool(kept.valid) and np.all(np.asarray(kept.pi) == 0.0)
    taken = take_sample(s0, jnp.bool_(True), logits, avail, d)
    np.testing.assert_allclose(np.asarray(taken.pi), [0.25, 0.75, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(taken.delta_hat), np.asarray(d))
    assert bool(taken.valid) and np.asarray(taken.avail).tolist() == [True, True, False]


def test_record_step_writes_the_step_where_taken_and_the_next_observation_after_it():
    limit, n, d, s_dim, a = 2, 1, 2, 3, 2
    store = empty_episodes(3, limit, n, d, s_dim, a)
    ts = SimpleNamespace(reward=jnp.asarray([1.0, 2.0, 3.0]), terminated=jnp.asarray([False, True, False]),
                         obs=jnp.full((3, n, d), 7.0), state=jnp.full((3, s_dim), 8.0),
                         avail=jnp.ones((3, n, a), bool))
    active = jnp.asarray([True, False, False])
    recorded = jnp.asarray([True, True, False])  # env 1 ended at the previous step: records its action only
    out = record_step(store, jnp.int32(1), limit, active, recorded, jnp.asarray([[1], [1], [1]]), ts)
    np.testing.assert_array_equal(np.asarray(out.actions[:, 1, 0]), [1, 1, 0])
    np.testing.assert_array_equal(np.asarray(out.reward[:, 1]), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(out.filled[:, 1]), [True, False, False])
    np.testing.assert_array_equal(np.asarray(out.terminated[:, 1]), [False, False, False])
    np.testing.assert_array_equal(np.asarray(out.obs[:, 2, 0, 0]), [7.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(out.state[:, 2, 0]), [8.0, 0.0, 0.0])
    # slot t + 1 past the limit is clipped to the last slot, never out of range
    out2 = record_step(store, jnp.int32(limit), limit, active, recorded, jnp.asarray([[1], [1], [1]]), ts)
    assert float(out2.state[0, limit, 0]) == 8.0 and int(out2.actions[0, limit, 0]) == 1


def test_initial_store_holds_the_reset_step_in_slot_zero():
    spec = SimpleNamespace(episode_limit=3, num_agents=2, obs_dim=2, state_dim=4, num_actions=3)
    ts = SimpleNamespace(obs=jnp.full((2, 2, 2), 0.5), state=jnp.full((2, 4), -1.0),
                         avail=jnp.asarray([[[True, False, True]] * 2] * 2))
    st = initial_store(spec, ts, 2, jnp.float16)
    assert st.obs.shape == (2, 4, 2, 2) and st.obs.dtype == jnp.float16
    assert np.all(np.asarray(st.obs[:, 0]) == 0.5) and np.all(np.asarray(st.obs[:, 1:]) == 0.0)
    assert np.all(np.asarray(st.state[:, 0]) == -1.0)
    assert np.asarray(st.avail[0, 0, 0]).tolist() == [True, False, True]
    assert not np.asarray(st.filled).any()
