"""DOP: mixer, critic inputs, masks and the actor loss against hand-computed numbers; the
compiled program: determinism, one seed inside a vmapped batch equals the seed alone, an
identity perturbation equals no attack."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.learners import dop
from tram.learners.actor import floored_policy
from tram.learners.episodes import Episodes, loss_mask


def test_mixer_weights_by_hand():
    # N = 2 agents, embed 2, state dim 1: W1(s) = |s * a + b| reshaped [N, E], Wf(s) = |s * c + d|.
    mixer = dop.DOPMixer(num_agents=2, embed=2)
    params = {"params": {
        "hyper_w_1": {"kernel": jnp.array([[1.0, -2.0, 3.0, 0.5]]), "bias": jnp.array([0.0, 0.0, -1.0, 0.0])},
        "hyper_w_final": {"kernel": jnp.array([[2.0, -1.0]]), "bias": jnp.array([0.0, 0.0])},
    }}
    s = jnp.array([[2.0]])
    # W1 = |[2, -4, 5, 1]| = [[2, 4], [5, 1]]; Wf = |[4, -2]| = [4, 2]
    # k_raw = [2*4 + 4*2, 5*4 + 1*2] = [16, 22]; k = [16/38, 22/38]
    k = mixer.apply(params, s)
    np.testing.assert_allclose(np.asarray(k[0]), [16 / 38, 22 / 38], rtol=1e-6)
    q_tot = dop.mix(dop.DOPNets(None, None, mixer), {"mixer": params}, jnp.array([[1.0, -2.0]]), s)
    np.testing.assert_allclose(float(q_tot[0]), 16 / 38 - 2 * 22 / 38, rtol=1e-6)


def test_critic_inputs_order():
    state = jnp.array([7.0, 8.0])
    obs = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    x = dop.critic_inputs(state, obs)
    np.testing.assert_array_equal(np.asarray(x), [[7, 8, 1, 2, 3, 1, 0], [7, 8, 4, 5, 6, 0, 1]])


def test_loss_mask_terminated_vs_padding():
    # Episode of length 3 that terminated at step 2, padded to T = 5 (6 slots).
    filled = jnp.array([1, 1, 1, 0, 0, 0], bool)
    term = jnp.array([0, 0, 1, 0, 0, 0], bool)
    np.testing.assert_array_equal(np.asarray(loss_mask(filled, term)), [1, 1, 1, 0, 0])
    # A spurious filled slot after termination is masked by the terminated rule.
    filled2 = jnp.array([1, 1, 1, 1, 0, 0], bool)
    np.testing.assert_array_equal(np.asarray(loss_mask(filled2, term)), [1, 1, 1, 0, 0])


def test_floored_policy_spreads_epsilon_over_all_actions():
    logits = jnp.zeros(4)
    avail = jnp.array([True, True, False, False])
    p = floored_policy(logits, avail, 0.2)
    # softmax = 1/4 each; floored = 0.8/4 + 0.2/4 = 0.25 each; masked & renormalised -> 1/2.
    np.testing.assert_allclose(np.asarray(p), [0.5, 0.5, 0, 0], rtol=1e-6)
    logits = jnp.array([math.log(3.0), 0.0, 0.0, 0.0])
    p = floored_policy(logits, avail, 0.5)
    # softmax = [1/2, 1/6, 1/6, 1/6]; floored = [0.25 + 0.125, 1/12 + 0.125, ...]
    a0, a1 = 0.25 + 0.125, 1 / 12 + 0.125
    np.testing.assert_allclose(np.asarray(p), [a0 / (a0 + a1), a1 / (a0 + a1), 0, 0], rtol=1e-6)


def _tiny_episodes(key, e=2, t=4, n=2, d=3, s=2, a=3):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    filled = jnp.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    term = jnp.array([[0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], bool)
    avail = jax.random.bernoulli(k3, 0.7, (e, t + 1, n, a)).at[..., 0].set(True)
    return Episodes(
        obs=jax.random.normal(k1, (e, t + 1, n, d)),
        state=jax.random.normal(k2, (e, t + 1, s)),
        avail=avail,
        actions=jnp.argmax(jnp.where(avail, jax.random.uniform(k4, avail.shape), -1.0), axis=-1).astype(jnp.int32),
        reward=jnp.ones((e, t + 1)),
        terminated=term,
        filled=filled,
    )


def test_actor_loss_matches_direct_computation():
    cfg = dop.DOPConfig(rnn_hidden=8, critic_hidden=16, mixing_embed=4)
    nets = dop.make_nets(cfg, num_agents=2, num_actions=3)
    ep = _tiny_episodes(jax.random.PRNGKey(0))

    class Spec:
        num_agents, num_actions, obs_dim, state_dim, episode_limit = 2, 3, 3, 2, 4

    _, st = dop.init_state(cfg, Spec, jax.random.PRNGKey(1))
    eps = 0.3
    loss = float(dop.actor_loss(st.actor_params, nets, st.critic_params, ep, eps))

    pi = np.asarray(dop.policy_over_episodes(nets.actor, st.actor_params, ep, eps))
    pi_chunked = dop.policy_over_episodes(nets.actor, st.actor_params, ep, eps, length=jnp.int32(5), chunk=2,
                                          blocks=True)
    np.testing.assert_allclose(np.asarray(pi_chunked), pi, rtol=1e-6, atol=1e-7)
    q = np.asarray(dop.q_values(nets, st.critic_params, ep.state, ep.obs))
    k = np.asarray(nets.mixer.apply(st.critic_params["mixer"], ep.state))
    mask = np.asarray(loss_mask(ep.filled, ep.terminated))
    acts = np.asarray(ep.actions)
    num, den = 0.0, 0.0
    for b in range(2):
        for t in range(4):
            for i in range(2):
                if mask[b, t] == 0:
                    continue
                base = float(np.sum(pi[b, t, i] * q[b, t, i]))
                adv = q[b, t, i, acts[b, t, i]] - base
                num += k[b, t, i] * adv * math.log(pi[b, t, i, acts[b, t, i]])
                den += 1.0
    np.testing.assert_allclose(loss, -num / den, rtol=1e-5)
    # The chunked back-propagation through time gives the same loss and gradient.
    ref_loss, ref_grad = jax.value_and_grad(dop.actor_loss)(st.actor_params, nets, st.critic_params, ep, eps)
    for length, chunk in ((jnp.int32(4), 3), (jnp.int32(5), 2)):
        c_loss, c_grad = dop.actor_loss_and_grad(st.actor_params, nets, st.critic_params, ep, eps, length, chunk)
        np.testing.assert_allclose(float(c_loss), float(ref_loss), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(c_grad), jax.tree.leaves(ref_grad)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    # ... also with the input and output layers outside the recurrence (another float order)
    from tram.learners.policy_gradient import pg_loss_and_grad

    q_j, k_j = jnp.asarray(q), jnp.asarray(k)
    for length, chunk in ((jnp.int32(4), 3), (jnp.int32(5), 2)):
        b_loss, b_grad = pg_loss_and_grad(nets.actor, st.actor_params, ep, eps, q_j, k_j, length, chunk, blocks=True)
        np.testing.assert_allclose(float(b_loss), float(ref_loss), rtol=1e-5)
        for a, b in zip(jax.tree.leaves(b_grad), jax.tree.leaves(ref_grad)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    pi_steps = dop.policy_over_episodes(nets.actor, st.actor_params, ep, eps, length=jnp.int32(5), chunk=2,
                                        blocks=False)
    np.testing.assert_allclose(np.asarray(pi_steps), pi, rtol=1e-6, atol=1e-7)


def test_per_timestep_critic_steps_equal_a_loop_over_critic_loss_at():
    """The compiled loop (inputs built once, time-major) takes the same steps as a Python
    loop over ``critic_loss_at``: one RMSprop step per timestep with a valid entry, in
    increasing order, none where the mask is all zero. Same float ops: rtol 1e-6."""
    from tram.learners.common import rmsprop

    cfg = dop.DOPConfig(rnn_hidden=8, critic_hidden=16, mixing_embed=4)
    nets = dop.make_nets(cfg, num_agents=2, num_actions=3)
    ep = _tiny_episodes(jax.random.PRNGKey(2))

    class Spec:
        num_agents, num_actions, obs_dim, state_dim, episode_limit = 2, 3, 3, 2, 4

    _, st = dop.init_state(cfg, Spec, jax.random.PRNGKey(3))
    targets = jax.random.normal(jax.random.PRNGKey(4), (2, 4))
    mask = jnp.array([[1, 1, 0, 1], [1, 0, 0, 0]], jnp.float32)  # timestep 2 has no valid entry
    opt = rmsprop(cfg.critic_lr, cfg)
    params, opt_state, steps, mean_loss = dop.train_critic_per_timestep(
        nets, st.critic_params, st.critic_opt, ep, targets, mask, jnp.int32(4), opt)
    ref_p, ref_o, losses = st.critic_params, st.critic_opt, []
    for t in range(4):
        if mask[:, t].sum() == 0:
            continue
        loss, g = jax.value_and_grad(dop.critic_loss_at, argnums=1)(
            nets, ref_p, ep.state[:, t], ep.obs[:, t], ep.actions[:, t], targets[:, t], mask[:, t])
        upd, ref_o = opt.update(g, ref_o, ref_p)
        ref_p = jax.tree.map(jnp.add, ref_p, upd)
        losses.append(float(loss))
    assert int(steps) == 3
    np.testing.assert_allclose(float(mean_loss), np.mean(losses), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def _config(method="none", seeds=(0,), steps=1500, **attack):
    from tram.attacks.perturb import AttackConfig

    return TrainConfig(
        env=EnvConfig("gather"),
        learner=dop.DOPConfig(epsilon_anneal_steps=2000, off_buffer_size=64, buffer_size=32, rnn_hidden=16,
                              critic_hidden=32, mixing_embed=8),
        attack=AttackConfig(method=method, **attack),
        run=RunConfig(steps=steps, seeds=seeds, eval_interval=500, test_episodes=4),
    )


def _run(config, seeds):
    from tram.experiments.program import make_train

    prog = make_train(config)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    return jax.jit(jax.vmap(prog.train))(keys)


@functools.lru_cache(maxsize=None)
def _clean_seed_1():
    """Metrics of the clean program of ``_config()`` with seed 1 alone (shared by the tests
    below: traced, compiled and run once)."""
    return _run(_config(), (1,))[1]


@pytest.mark.slow  # reruns load from the cache bit for bit in tests/test_reliability_faults.py
def test_same_key_same_numbers():
    # a second program built from the same config (traced again; its compilation is loaded
    # from the session's cache) gives the same numbers for the same key
    m1 = _clean_seed_1()
    _, m2 = _run(_config(), (1,))
    assert float(m1.updates[0, -1]) > 0, "the run must include learner updates"
    for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# Guards the batched-LAPACK deadlock of docs/jax-cpu.md (a deadlock never ends). 900 s, not
# less: on a busy 2-core machine compiling one DOP program alone takes minutes. Slow: the
# default run's guard is tests/test_seed_modes.py (DOP vmapped over two seeds against each
# seed alone under ``map``).
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_seed_inside_vmapped_batch_equals_seed_alone():
    alone = _clean_seed_1()
    _, batch = _run(_config(), (0, 1))
    for f in ("env_steps", "test_return", "train_return", "critic_loss", "actor_loss"):
        np.testing.assert_allclose(np.asarray(getattr(batch, f))[1], np.asarray(getattr(alone, f))[0],
                                   rtol=1e-5, atol=1e-5, err_msg=f)


@pytest.mark.slow  # the default run's identity checks: tests/test_attack_training.py (KL_U = 0), tests/test_surrogate.py (f_A = 0)
def test_identity_perturbation_equals_no_attack(monkeypatch):
    from tram.types import AttackStepStats
    import tram.attacks.perturb as perturb_mod

    def identity(cfg, *_):  # make_perturbation(cfg, q_source)
        def perturb(key, ctx, logits_fn):
            return ctx.logits, AttackStepStats.zeros()
        return perturb

    monkeypatch.setattr(perturb_mod, "make_perturbation", identity)
    _, clean = _run(_config("none"), (1,))
    _, ident = _run(_config("random"), (1,))
    for f in ("env_steps", "test_return", "train_return", "critic_loss", "actor_loss"):
        np.testing.assert_array_equal(np.asarray(getattr(ident, f)), np.asarray(getattr(clean, f)), err_msg=f)
