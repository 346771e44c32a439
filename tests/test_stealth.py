"""The two averages of Eq. 3 over the poisoned agent's steps (docs/attack-math.md, "Stealth").

* hand-worked numbers: Eq. 3 per step, then ``stealth_loglik`` (every step, a step with one
  available action counting 0) and ``stealth_loglik_alive`` (steps with >= 2 actions);
* the exact value at a single-action step is 0 for every perturbation tram has (so the
  every-step average may add those steps as zeros), and for the learners' floored policy;
* inside a training program: equal on a grid task (every action always available), and on
  3m ``stealth_loglik = stealth_loglik_alive * (1 - fallback_frac)`` under the random
  attack, whose fallback steps are exactly the single-action ones.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tram.attacks.budget import SINGLE_ACTION_STEALTH, stealth_averages, stealth_loglik, stealth_loglik_from_logits
from tram.attacks.deploy import gate_perturbation, make_worst_q_perturbation
from tram.attacks.perturb import AttackConfig, make_perturbation
from tram.learners.actor import floored_policy
from tram.types import ActingContext

A, H, I = 4, 3, 2


def test_both_averages_hand_worked():
    """A window of four steps of the poisoned agent, f_A = 1/2.

    step 1, two actions:   pi = (3/4, 1/4), pi' = (1/4, 3/4)
        L1 = 1/2 [1/4 log 3/4 + 3/4 log 1/4] + 1/2 [3/4 log 3/4 + 1/4 log 1/4]
           = 1/2 [log 3/4 + log 1/4] = 1/2 log(3/16) = -0.8369882
    step 2, three of four: pi = (1/3, 1/3, 1/3, 0), pi' = (1/2, 1/4, 1/4, 0)
        L2 = 1/2 (-log 3) + 1/2 (-log 3) = -log 3 = -1.0986123
    steps 3, 4, one action (a dead unit): L = 1 * log 1 = 0
    alive = (L1 + L2) / 2 = -0.9678002;  every = (L1 + L2 + 0 + 0) / 4 = -0.4839001
    """
    f_a = 0.5
    l1 = 0.5 * math.log(3.0 / 16.0)
    l2 = -math.log(3.0)
    assert l1 == pytest.approx(-0.8369882, abs=1e-7) and l2 == pytest.approx(-1.0986123, abs=1e-7)
    steps = [  # (clean logits, perturbed logits, avail)
        ([math.log(3.0), 0.0, 5.0, 5.0], [0.0, math.log(3.0), 5.0, 5.0], [1, 1, 0, 0]),
        ([0.0, 0.0, 0.0, 9.0], [math.log(2.0), 0.0, 0.0, -9.0], [1, 1, 1, 0]),
        ([0.3, -2.0, 7.0, 1.0], [0.3, -2.0, 7.0, 1.0], [0, 0, 0, 1]),
        ([4.0, 1.0, -1.0, 2.0], [4.0 + 1e4, 1.0, -1.0, 2.0], [1, 0, 0, 0]),
    ]
    per_step = [float(stealth_loglik_from_logits(jnp.asarray(l, jnp.float32), jnp.asarray(p, jnp.float32),
                                                 jnp.asarray(m, bool), f_a)) for l, p, m in steps]
    np.testing.assert_allclose(per_step, [l1, l2, 0.0, 0.0], rtol=1e-6, atol=0)
    assert per_step[2] == per_step[3] == SINGLE_ACTION_STEALTH == 0.0  # exact, not approximately
    # the probability form gives the same numbers
    pi1, pi1p = jnp.array([0.75, 0.25, 0, 0]), jnp.array([0.25, 0.75, 0, 0])
    assert float(stealth_loglik(pi1, pi1p, jnp.array([1, 1, 0, 0], bool), f_a)) == pytest.approx(l1, rel=1e-6)

    every, alive = stealth_averages(per_step[0] + per_step[1], 2.0, 2.0)
    assert float(alive) == pytest.approx(-0.9678002, abs=1e-6)
    assert float(every) == pytest.approx(-0.4839001, abs=1e-6)
    assert float(every) == pytest.approx(sum(per_step) / 4, rel=1e-6)


def test_averages_edge_cases():
    # no step at all: both undefined
    every, alive = stealth_averages(0.0, 0.0, 0.0)
    assert math.isnan(float(every)) and math.isnan(float(alive))
    # only single-action steps (the agent was dead the whole window): every = 0 exactly
    every, alive = stealth_averages(0.0, 0.0, 7.0)
    assert float(every) == 0.0 and math.isnan(float(alive))
    # no single-action step (the grid tasks): the two coincide
    every, alive = stealth_averages(-6.0, 4.0, 0.0)
    assert float(every) == float(alive) == -1.5
    # batched ([2] windows)
    every, alive = stealth_averages(jnp.array([-3.0, -1.0]), jnp.array([3.0, 1.0]), jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(np.asarray(every), [-0.75, -0.25])
    np.testing.assert_allclose(np.asarray(alive), [-1.0, -1.0])


def _lin_logits(params, hidden, x):
    return jnp.tanh(jnp.concatenate([hidden, x]) @ params["w1"]) @ params["w2"] + params["b"]


@pytest.fixture(scope="module")
def single_action_ctxs():
    """Contexts of one environment step where only one action is available (4 cases)."""
    key = jax.random.PRNGKey(5)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w1": jax.random.normal(k1, (H + I, 5)), "w2": jax.random.normal(k2, (5, A)), "b": jnp.zeros(A)}
    g_prev = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
    rng = np.random.default_rng(0)
    ctxs = []
    for only in range(A):
        avail = np.zeros(A, bool)
        avail[only] = True
        h, x = rng.normal(size=H).astype(np.float32), rng.normal(size=I).astype(np.float32)
        logits = _lin_logits(params, jnp.asarray(h), jnp.asarray(x)) * 3.0
        ctxs.append(ActingContext(
            logits=logits, avail=jnp.asarray(avail), q_values=jnp.asarray(rng.normal(size=A), jnp.float32),
            mix_weight=jnp.float32(0.7), actor_params=params, actor_hidden=jnp.asarray(h), actor_input=jnp.asarray(x),
            prev_actor_grad=g_prev, has_prev_grad=jnp.array(True), epsilon=jnp.float32(0.3),
            # J-based's default exact recurrent gradient reads the carried d h / d theta . g_prev
            hidden_tangent=jnp.asarray(rng.normal(size=H), jnp.float32)))
    return ctxs


@pytest.mark.parametrize("f_a", [1.0, 0.4])
@pytest.mark.parametrize("method", ["none", "random", "var", "jbased", "worst_q", "gated_off"])
def test_single_action_step_has_exact_stealth_zero(single_action_ctxs, method, f_a):
    """Every perturbation reports exactly 0 for Eq. 3 at a single-action step, the value the
    every-step average adds for those steps without summing them."""
    cfg = AttackConfig(method=method if method != "gated_off" else "var", f_a=f_a, kl_u=6.0)
    if method == "worst_q":
        perturb = make_worst_q_perturbation(cfg)
    elif method == "gated_off":
        perturb = gate_perturbation(make_perturbation(cfg), jnp.array(False))
    else:
        perturb = make_perturbation(cfg)
    for i, ctx in enumerate(single_action_ctxs):
        out, stats = perturb(jax.random.PRNGKey(i), ctx, _lin_logits)
        assert float(stats.stealth_loglik) == 0.0, (method, i, float(stats.stealth_loglik))
        # the executed distribution is the one available action, under any floor
        avail = ctx.avail
        for eps in (0.0, 0.3, 1.0):
            p = np.asarray(floored_policy(out, avail, eps))
            assert p[int(np.argmax(np.asarray(avail)))] == 1.0 and p.sum() == 1.0


def _run(env, learner, attack, steps):
    from tram.config import EnvConfig, RunConfig, TrainConfig
    from tram.experiments.program import make_train

    cfg = TrainConfig(env=EnvConfig(env), learner=learner, attack=attack,
                      run=RunConfig(seeds=(0,), steps=steps, eval_interval=steps // 2, test_episodes=2))
    prog = make_train(cfg)
    _, m = jax.jit(jax.vmap(prog.train))(jax.random.PRNGKey(0)[None])
    return jax.tree.map(np.asarray, m)


def test_inside_training_grid_equal_and_3m_scaled_by_the_alive_share():
    from tram.learners.coma import COMAConfig

    learner = COMAConfig(epsilon_anneal_steps=2000, rnn_hidden=16, critic_hidden=32)
    attack = AttackConfig(method="random", f_a=1.0, kl_u=2.0)
    grid = _run("spread", learner, attack, 1000)
    every, alive = grid.stealth_loglik[0, 1:], grid.stealth_loglik_alive[0, 1:]
    assert np.all(np.isfinite(every)) and np.all(every < 0)
    np.testing.assert_array_equal(every, alive)  # every action is always available on the grid
    assert np.isnan(grid.stealth_loglik[0, 0]) and np.isnan(grid.stealth_loglik_alive[0, 0])

    smax = _run("3m", learner, attack, 3000)
    every, alive = smax.stealth_loglik[0, 1:], smax.stealth_loglik_alive[0, 1:]
    single_share = smax.fallback_frac[0, 1:]  # random: fallback <=> one available action
    assert np.all(single_share > 0), "agents die on 3m within a few hundred steps"
    np.testing.assert_allclose(every, alive * (1.0 - single_share), rtol=2e-5)
    assert np.all(every > alive)  # less negative: the dead steps count as 0
