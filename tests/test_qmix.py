"""QMIX and the deploy-time ``worst_q`` attack: mixer monotonicity, double-Q targets and the
loss against hand-computed numbers, epsilon-greedy acting and its schedule, the target
copy interval, the worst-Q perturbation and its ``attack_start`` gate, config errors; a CI
learning check on Gather (QMIX beats the uniform random policy, 2 seeds) and a slow check
on SMAX 3m."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tram.attacks.budget import masked_softmax
from tram.attacks.deploy import WORST_Q_BONUS, gate_perturbation, make_worst_q_perturbation, worst_q_action
from tram.attacks.perturb import AttackConfig, make_perturbation
from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.envs import make_env
from tram.envs.base import EnvSpec
from tram.envs.random_policy import random_policy_episodes
from tram.experiments.program import make_train
from tram.learners import LEARNER_CONFIGS, LEARNERS, qmix
from tram.learners.actor import RNNActor, epsilon_at
from tram.learners.episodes import Episodes, buffer_add
from tram.learners.rollout import AttackHook, collect_episodes, evaluate_greedy
from tram.types import ActingContext


# ----------------------------------------------------------------------------------------
# Mixer
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2])
def test_mixer_is_monotonic(layers):
    n, s_dim = 4, 6
    mixer = qmix.QMixer(num_agents=n, embed=8, hypernet_layers=layers, hypernet_embed=16)

    @jax.jit
    def one_seed(key):
        kp, ks, kq = jax.random.split(key, 3)
        params = mixer.init(kp, jnp.zeros((1, n)), jnp.zeros((1, s_dim)))
        states = 3.0 * jax.random.normal(ks, (64, s_dim))
        qs = 10.0 * jax.random.normal(kq, (64, n))
        weights = mixer.apply(params, states, method=qmix.QMixer.weights)
        out = mixer.apply(params, qs, states)
        grads = jax.vmap(jax.grad(lambda q, s: mixer.apply(params, q, s)))(qs, states)
        return qs, weights, out, grads

    for seed in range(4):
        qs, (w1, b1, wf, v), out, grads = one_seed(jax.random.PRNGKey(seed))
        assert w1.shape == (64, n, 8) and wf.shape == (64, 8) and b1.shape == (64, 8) and v.shape == (64,)
        assert bool(jnp.all(w1 >= 0)) and bool(jnp.all(wf >= 0))
        # the forward pass is the reference formula
        direct = jnp.sum(jax.nn.elu(jnp.einsum("bn,bne->be", qs, w1) + b1) * wf, axis=-1) + v
        np.testing.assert_allclose(np.asarray(out), np.asarray(direct), rtol=1e-5, atol=1e-5)
        assert grads.shape == (64, n)
        assert bool(jnp.all(grads >= 0)), f"dQ_tot/dQ_i < 0: {float(jnp.min(grads))}"


from conftest import set_params as _set  # noqa: E402


def _hand_mixer():
    """N = 2, embed 1, one-layer hypernets, S = 1: Q_tot = 3 elu(q0 + 2 q1 + 0.5) + 1."""
    mixer = qmix.QMixer(num_agents=2, embed=1, hypernet_layers=1)
    p = mixer.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1, 1)))
    p = jax.tree.map(lambda x: x, p)  # a mutable copy
    _set(p, ["hyper_w_1"], kernel=[0.0, 0.0], bias=[1.0, -2.0])  # |.| -> W1 = [[1], [2]]
    _set(p, ["hyper_b_1"], kernel=[0.0], bias=[0.5])
    _set(p, ["hyper_w_final"], kernel=[0.0], bias=[-3.0])  # |.| -> 3
    _set(p, ["V", "layers_0"], kernel=[0.0], bias=[0.0])
    _set(p, ["V", "layers_2"], kernel=[0.0], bias=[1.0])
    return mixer, p


def test_mixer_by_hand():
    mixer, p = _hand_mixer()
    q = jnp.array([[7.0, 20.0], [1.0, -2.0]])
    out = mixer.apply(p, q, jnp.zeros((2, 1)))
    # 3 * (7 + 40 + 0.5) + 1 = 143.5; 3 * elu(1 - 4 + 0.5) + 1 = 3 * (exp(-2.5) - 1) + 1
    np.testing.assert_allclose(np.asarray(out), [143.5, 3 * (np.exp(-2.5) - 1) + 1], rtol=1e-6)


# ----------------------------------------------------------------------------------------
# Targets and loss
# ----------------------------------------------------------------------------------------
def test_double_q_values_by_hand():
    live = jnp.array([[1.0, 5.0, 3.0], [2.0, 0.0, 4.0]])
    target = jnp.array([[10.0, 20.0, 7.0], [40.0, 50.0, 6.0]])
    avail = jnp.array([[True, False, True], [True, True, True]])
    # live argmax over available: agent 0 -> action 2 (3 > 1; 5 is unavailable), agent 1 -> 2
    np.testing.assert_array_equal(np.asarray(qmix.double_q_values(live, target, avail)), [7.0, 6.0])
    # plain max of the target over available actions
    np.testing.assert_array_equal(np.asarray(qmix.max_q_values(target, avail)), [10.0, 50.0])


def _const_agent(actor, bias, key):
    """Agent-network parameters whose output is ``bias`` at every step (fc2 kernel 0)."""
    p = actor.init(key, jnp.zeros((1, actor.hidden)), jnp.zeros((1, 1 + 3 + 2)))
    p = jax.tree.map(lambda x: x, p)
    _set(p, ["fc2"], kernel=np.zeros((actor.hidden, 3)), bias=bias)
    return p


def test_episode_targets_by_hand():
    # One episode, N = 2, A = 3, obs and state of 1 feature, 2 steps, terminated at step 1.
    t_avail = jnp.array([
        [[True, True, True], [True, True, True]],
        [[True, False, True], [True, True, True]],
        [[True, True, False], [True, False, False]],
    ])
    ep = Episodes(obs=jnp.zeros((1, 3, 2, 1)), state=jnp.zeros((1, 3, 1)), avail=t_avail[None],
                  actions=jnp.zeros((1, 3, 2), jnp.int32), reward=jnp.array([[1.0, 2.0, 0.0]]),
                  terminated=jnp.array([[False, True, False]]), filled=jnp.array([[True, True, False]]))
    mixer, mp = _hand_mixer()
    actor = RNNActor(num_actions=3, hidden=4)
    nets = qmix.QMIXNets(actor=actor, mixer=mixer)
    live = {"agent": _const_agent(actor, [1.0, 5.0, 3.0], jax.random.PRNGKey(1)), "mixer": mp}
    target = {"agent": _const_agent(actor, [10.0, 20.0, 7.0], jax.random.PRNGKey(2)), "mixer": mp}
    cfg = qmix.QMIXConfig(hypernet_layers=1, mixing_embed=1, time_chunk=2)
    # slot 1: live argmax agent 0 -> 2 (5 unavailable), agent 1 -> 1; target values [7, 20]
    #   Q_tot = 3 (7 + 40 + 0.5) + 1 = 143.5; y_0 = 1 + 0.99 * 143.5 = 143.065
    # slot 2 is after the termination: y_1 = r_1 = 2
    for length in (None, jnp.int32(2)):
        y = qmix.episode_targets(nets, live, target, ep, cfg, length)
        np.testing.assert_allclose(np.asarray(y), [[143.065, 2.0]], rtol=1e-6)
    # without double-Q: max of the target over available: [10, 20] -> 3 * 50.5 + 1 = 152.5
    y = qmix.episode_targets(nets, live, target, ep, qmix.QMIXConfig(hypernet_layers=1, mixing_embed=1,
                                                                      double_q=False))
    np.testing.assert_allclose(np.asarray(y), [[1 + 0.99 * 152.5, 2.0]], rtol=1e-6)
    # the loss: Q_tot(slot 0) of the live nets at actions 0 = 3 (1 + 2 + 0.5) + 1 = 11.5; slot 1 also 11.5
    # (actions 0), both slots valid: ((11.5 - 143.065)^2 + (11.5 - 2)^2) / 2
    loss = qmix.td_loss(live, nets, ep, jnp.array([[143.065, 2.0]]))
    np.testing.assert_allclose(float(loss), ((11.5 - 143.065) ** 2 + 9.5 ** 2) / 2, rtol=1e-5)


def _random_episodes(key, e=3, t=7, n=2, d=3, s=4, a=4):
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    lengths = jnp.array([7, 3, 5])
    slot = jnp.arange(t + 1)
    filled = slot[None] < lengths[:, None]
    term = (slot[None] == (lengths[:, None] - 1)) & jnp.array([False, True, True])[:, None]
    avail = jax.random.bernoulli(k3, 0.7, (e, t + 1, n, a)).at[..., 0].set(True)
    return Episodes(
        obs=jax.random.normal(k1, (e, t + 1, n, d)), state=jax.random.normal(k2, (e, t + 1, s)), avail=avail,
        actions=jnp.argmax(jnp.where(avail, jax.random.uniform(k4, avail.shape), -1.0), -1).astype(jnp.int32),
        reward=jax.random.normal(k5, (e, t + 1)) * filled, terminated=term, filled=filled)


def test_chunked_loss_and_grad_equal_unrolled():
    ep = _random_episodes(jax.random.PRNGKey(0))
    cfg = qmix.QMIXConfig(rnn_hidden=8, mixing_embed=4, hypernet_embed=8, time_chunk=3)
    nets = qmix.make_nets(cfg, 2, 4)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    params = {"agent": nets.actor.init(k1, jnp.zeros((1, 8)), jnp.zeros((1, 3 + 4 + 2))),
              "mixer": nets.mixer.init(k2, jnp.zeros((1, 2)), jnp.zeros((1, 4)))}

    @jax.jit
    def both(params):
        y = qmix.episode_targets(nets, params, params, ep, cfg)
        y_chunked = qmix.episode_targets(nets, params, params, ep, cfg, jnp.int32(7))
        return (y, y_chunked, jax.value_and_grad(qmix.td_loss)(params, nets, ep, y),
                qmix.td_loss_and_grad(params, nets, ep, y, jnp.int32(7), 3))

    y, y_chunked, (loss, grads), (loss_c, grads_c) = both(params)
    np.testing.assert_allclose(np.asarray(y_chunked), np.asarray(y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(loss_c), float(loss), rtol=1e-5)
    for g, gc in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_c)):
        np.testing.assert_allclose(np.asarray(gc), np.asarray(g), rtol=1e-4, atol=1e-6)


def test_agent_layers_split_equal_the_actor_step():
    """The input layers / GRU step / head split used by the training pass is RNNActor's step."""
    actor = qmix.make_nets(qmix.QMIXConfig(rnn_hidden=8), 2, 4).actor
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    params = actor.init(k1, jnp.zeros((1, 8)), jnp.zeros((1, 9)))
    h, x = jax.random.normal(k2, (5, 2, 8)), jax.random.normal(k3, (5, 2, 9))
    logits, h_new = actor.apply(params, h, x)
    h_split = qmix.agent_gru_step(params, h, qmix.agent_input_layers(params, x))
    np.testing.assert_allclose(np.asarray(h_split), np.asarray(h_new), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(qmix.agent_head(params, h_split)), np.asarray(logits), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("double_q,chunk,t", [(True, 3, 7), (False, 4, 7), (True, 2, 5)])
def test_fused_training_pass_equals_targets_then_unrolled_grad(double_q, chunk, t):
    """targets_loss_and_grad (one loop for live + target networks, chunk start states reused,
    work only up to the batch's longest episode) = episode_targets over every slot, then
    jax.value_and_grad of the loss unrolled over every slot. Live and target parameters
    differ. Float order differs (input layers per chunk): rtol 1e-5 on targets and loss,
    1e-4 (atol 1e-6) on gradients."""
    ep = _random_episodes(jax.random.PRNGKey(0))
    if t < 7:  # a batch whose longest episode (5 steps) ends before the stored limit (7)
        keep = jnp.array([2, 1, 2])
        ep = jax.tree.map(lambda x: x[keep], ep)
    cfg = qmix.QMIXConfig(rnn_hidden=8, mixing_embed=4, hypernet_embed=8, time_chunk=chunk, double_q=double_q)
    nets = qmix.make_nets(cfg, 2, 4)
    ks = jax.random.split(jax.random.PRNGKey(1), 4)

    def init(k1, k2):
        return {"agent": nets.actor.init(k1, jnp.zeros((1, 8)), jnp.zeros((1, 3 + 4 + 2))),
                "mixer": nets.mixer.init(k2, jnp.zeros((1, 2)), jnp.zeros((1, 4)))}

    params, target = init(ks[0], ks[1]), init(ks[2], ks[3])

    @jax.jit
    def both(params, target):
        y = qmix.episode_targets(nets, params, target, ep, cfg)
        length = qmix.truncate_length(ep)
        return y, jax.value_and_grad(qmix.td_loss)(params, nets, ep, y), \
            qmix.targets_loss_and_grad(nets, params, target, ep, cfg, length)

    y, (loss, grads), (loss_f, grads_f, y_f) = both(params, target)
    assert int(qmix.truncate_length(ep)) == t
    np.testing.assert_allclose(np.asarray(y_f)[:, :t], np.asarray(y)[:, :t], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(loss_f), float(loss), rtol=1e-5)
    for g, gf in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_f)):
        np.testing.assert_allclose(np.asarray(gf), np.asarray(g), rtol=1e-4, atol=1e-6)
    assert any(float(jnp.max(jnp.abs(g))) > 1e-3 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("groups", [1, 3, 5])
def test_length_groups_give_the_unrolled_loss_and_grad(groups):
    """grouped_loss_and_grad (batch sorted by length, each group to its own longest episode,
    normaliser of the whole batch) = value_and_grad of td_loss over every slot with
    episode_targets: rtol 1e-5 on the loss, 1e-4 (atol 1e-6) on gradients (float order)."""
    ep = _random_episodes(jax.random.PRNGKey(2))  # lengths 7, 3, 5
    cfg = qmix.QMIXConfig(rnn_hidden=8, mixing_embed=4, hypernet_embed=8, time_chunk=2, length_groups=groups)
    nets = qmix.make_nets(cfg, 2, 4)
    ks = jax.random.split(jax.random.PRNGKey(4), 4)
    init = lambda k1, k2: {"agent": nets.actor.init(k1, jnp.zeros((1, 8)), jnp.zeros((1, 9))),
                           "mixer": nets.mixer.init(k2, jnp.zeros((1, 2)), jnp.zeros((1, 4)))}
    params, target = init(ks[0], ks[1]), init(ks[2], ks[3])

    @jax.jit
    def both(params, target):
        y = qmix.episode_targets(nets, params, target, ep, cfg)
        return jax.value_and_grad(qmix.td_loss)(params, nets, ep, y), qmix.grouped_loss_and_grad(
            nets, params, target, ep, cfg)

    (loss, grads), (loss_g, grads_g, slots) = both(params, target)
    np.testing.assert_allclose(float(loss_g), float(loss), rtol=1e-5)
    for g, gg in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_g)):
        np.testing.assert_allclose(np.asarray(gg), np.asarray(g), rtol=1e-4, atol=1e-6)
    # work in batch-wide slots: one group runs to 7 steps; groups {7}, {5}, {3}: (7 + 5 + 3) / 3;
    # 5 groups of 3 episodes: the largest divisor of 3 not above 5 is 3
    want = {1: 7.0, 3: (7 + 5 + 3) / 3, 5: (7 + 5 + 3) / 3}[groups]
    np.testing.assert_allclose(float(slots), want, rtol=1e-6)


def test_target_copy_every_200_episodes_as_the_reference_counts():
    spec = EnvSpec(name="tiny", family="grid", num_agents=2, num_actions=4, obs_dim=3, state_dim=4,
                   episode_limit=7, agent_unit_types=("a", "a"))
    cfg = qmix.QMIXConfig(buffer_size=4, batch_size=2, rnn_hidden=8, mixing_embed=4, hypernet_embed=8)
    nets, state = qmix.init_state(cfg, spec, jax.random.PRNGKey(0))
    state = state._replace(buffer=buffer_add(state.buffer, _random_episodes(jax.random.PRNGKey(1))))
    step = jax.jit(functools.partial(qmix.train_step, cfg, nets))
    # The reference's counter is the number of episodes BEFORE the current one: 200 episodes
    # collected -> 199, no copy; 201 -> 200, copy.
    for collected, copied in ((200, False), (201, True)):
        new, info = step(state._replace(episodes=jnp.int32(collected)), jax.random.PRNGKey(2), 0.1)
        assert np.isfinite(float(info["critic_loss"])) and np.isnan(float(info["actor_loss"]))
        live = {"agent": new.actor_params, "mixer": new.critic_params}
        same = all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(live), jax.tree.leaves(new.target_params)))
        assert same == copied, collected
        assert int(new.last_target_update) == (200 if copied else 0)


# ----------------------------------------------------------------------------------------
# Acting
# ----------------------------------------------------------------------------------------
def test_epsilon_schedule_is_the_reference_one():
    cfg = qmix.QMIXConfig()
    assert (cfg.epsilon_start, cfg.epsilon_finish, cfg.epsilon_anneal_steps) == (1.0, 0.05, 50_000)
    # DecayThenFlatSchedule(1.0, 0.05, 50000, "linear"): max(0.05, 1 - 0.95 T / 50000)
    for t, want in ((0, 1.0), (10_000, 0.81), (25_000, 0.525), (50_000, 0.05), (200_000, 0.05)):
        got = float(epsilon_at(jnp.int32(t), cfg.epsilon_start, cfg.epsilon_finish, cfg.epsilon_anneal_steps))
        assert got == pytest.approx(want, abs=1e-6), t


def test_select_actions_epsilon_greedy():
    q = jnp.array([[[1.0, 9.0, 3.0, 2.0], [0.0, -1.0, -2.0, 5.0]]])  # [B=1, N=2, A=4]
    avail = jnp.array([[[True, False, True, True], [True, True, True, False]]])
    greedy = qmix.select_actions(jax.random.PRNGKey(0), q, avail, 0.0)
    np.testing.assert_array_equal(np.asarray(greedy), [[2, 0]])  # unavailable maxima skipped
    keys = jax.random.split(jax.random.PRNGKey(1), 20_000)
    acts = np.asarray(jax.vmap(lambda k: qmix.select_actions(k, q, avail, 1.0))(keys))[:, 0]
    assert set(np.unique(acts[:, 0])) == {0, 2, 3} and set(np.unique(acts[:, 1])) == {0, 1, 2}
    np.testing.assert_allclose(np.bincount(acts[:, 0], minlength=4)[[0, 2, 3]] / len(acts), 1 / 3, atol=0.02)
    acts = np.asarray(jax.vmap(lambda k: qmix.select_actions(k, q, avail, 0.3))(keys))[:, 0]
    # greedy with probability 0.7 + 0.3 / 3 (the random draw may pick it too)
    assert np.mean(acts[:, 0] == 2) == pytest.approx(0.8, abs=0.02)


# ----------------------------------------------------------------------------------------
# The worst-Q attack
# ----------------------------------------------------------------------------------------
def _contexts(key, num=256, a=6):
    k1, k2, k3 = jax.random.split(key, 3)
    avail = jax.random.bernoulli(k1, 0.5, (num, a))
    avail = avail.at[jnp.arange(num), jax.random.randint(k3, (num,), 0, a)].set(True)
    logits = 3.0 * jax.random.normal(k2, (num, a))
    q = 5.0 * jax.random.normal(jax.random.fold_in(k2, 1), (num, a))
    return logits, avail, q


def _ctx(logits, avail, q):
    z = jnp.float32(0.0)
    return ActingContext(logits=logits, avail=avail, q_values=q, mix_weight=jnp.float32(1.0), actor_params={},
                         actor_hidden=jnp.zeros(2), actor_input=jnp.zeros(2), prev_actor_grad={},
                         has_prev_grad=jnp.bool_(False), epsilon=z)


@pytest.mark.parametrize("source", ["critic", "actor"])
def test_worst_q_action_is_available_argmin(source):
    logits, avail, q = _contexts(jax.random.PRNGKey(0))
    perturb = make_worst_q_perturbation(AttackConfig(method="worst_q", f_a=1.0), source)
    keys = jax.random.split(jax.random.PRNGKey(1), logits.shape[0])
    out, stats = jax.jit(jax.vmap(lambda k, l, m, v: perturb(k, _ctx(l, m, v), None)))(keys, logits, avail, q)
    pi = np.asarray(masked_softmax(out, avail))
    values = np.asarray(logits if source == "actor" else q)
    worst = np.asarray(worst_q_action(values, avail))
    out, avail, logits = np.asarray(out), np.asarray(avail), np.asarray(logits)
    rows = np.arange(len(out))
    multi = avail.sum(-1) >= 2
    assert np.all(avail[rows, worst])  # available
    np.testing.assert_array_equal(values[rows, worst], np.where(avail, values, np.inf).min(-1))  # argmin
    np.testing.assert_array_equal(np.argmax(out[multi], -1), worst[multi])  # greedy picks it
    np.testing.assert_allclose(out[rows, worst][multi], logits.max(-1)[multi] + WORST_Q_BONUS, rtol=1e-6)
    others = np.ones_like(avail)
    others[rows, worst] = False
    np.testing.assert_array_equal(out[others], logits[others])  # the other actions are untouched
    np.testing.assert_array_equal(out[~multi], logits[~multi])  # one available action: no change
    np.testing.assert_allclose(pi[rows, worst][multi], 1.0, atol=1e-6)  # certain under the softmax
    assert np.all(np.asarray(stats.attacked) == 1.0)
    np.testing.assert_array_equal(np.asarray(stats.fallback), (~multi).astype(np.float32))


def test_worst_q_identity_cases():
    logits, avail, q = _contexts(jax.random.PRNGKey(3), num=64)
    keys = jax.random.split(jax.random.PRNGKey(4), 64)
    run = lambda p: jax.jit(jax.vmap(lambda k, l, m, v: p(k, _ctx(l, m, v), None)))(keys, logits, avail, q)  # noqa
    # f_A = 0: bit for bit
    out, stats = run(make_worst_q_perturbation(AttackConfig(method="worst_q", f_a=0.0)))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(logits))
    assert float(jnp.sum(stats.attacked)) == 0.0
    # f_A = 0.5: about half the steps attacked, the others untouched
    out, stats = run(make_worst_q_perturbation(AttackConfig(method="worst_q", f_a=0.5)))
    changed = np.any(np.asarray(out) != np.asarray(logits), axis=-1)
    assert 0.3 < float(jnp.mean(stats.attacked)) < 0.7
    assert np.all(changed <= (np.asarray(stats.attacked) > 0))
    # before attack_start (the gate is off): bit for bit, statistics of method "none"
    full = make_worst_q_perturbation(AttackConfig(method="worst_q", f_a=1.0))
    out, stats = run(gate_perturbation(full, jnp.bool_(False)))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(logits))
    assert float(jnp.sum(stats.attacked)) == 0.0 and float(jnp.sum(stats.kl)) == 0.0
    np.testing.assert_array_equal(np.asarray(stats.pmax_after), np.asarray(stats.pmax_before))
    on_out, _ = run(gate_perturbation(full, jnp.bool_(True)))
    np.testing.assert_array_equal(np.asarray(on_out), np.asarray(run(full)[0]))
    # a gated TRAM perturbation keeps its structure (e.g. a direction) when off
    rnd = make_perturbation(AttackConfig(method="random"))
    out, _ = run(gate_perturbation(rnd, jnp.bool_(False)))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(logits))
    # make_perturbation dispatches worst_q to the critic-Q version
    np.testing.assert_array_equal(np.asarray(run(make_perturbation(AttackConfig(method="worst_q")))[0]),
                                  np.asarray(run(full)[0]))


def _worst_q_hook(cfg_attack, nets, state, agent, source="actor"):
    return AttackHook(perturb=make_worst_q_perturbation(cfg_attack, source), agent=agent,
                      q_fn=qmix.attack_q_fn(nets, state.critic_params, agent),
                      prev_actor_grad=None, has_prev_grad=jnp.bool_(False))  # QMIX has no policy gradient


def test_rollout_and_evaluation_with_worst_q_on_qmix():
    env = make_env("gather")
    cfg = qmix.QMIXConfig(buffer_size=8, batch_size=2, storage_dtype="float32")
    nets, state = qmix.init_state(cfg, env.spec, jax.random.PRNGKey(0))
    agent, key = 1, jax.random.PRNGKey(5)
    roll = functools.partial(collect_episodes, env, nets.actor, state.actor_params, key, jnp.float32(0.0), 4,
                             select_actions=qmix.select_actions)
    hook = _worst_q_hook(AttackConfig(method="worst_q", f_a=1.0, agent=agent), nets, state, agent)
    gated = lambda on: hook._replace(perturb=gate_perturbation(hook.perturb, on))  # noqa: E731
    clean, _ = jax.jit(lambda: roll(None))()
    roll_gated = jax.jit(lambda on: roll(gated(on)))
    attacked, rs = roll_gated(jnp.bool_(True))
    # epsilon 0: the poisoned agent takes its lowest-Q available action, the others the greedy one
    q = qmix.agent_q_over_episodes(nets.actor, state.actor_params, attacked)
    mask = np.asarray(attacked.filled)
    avail = attacked.avail
    worst = np.asarray(jnp.argmin(jnp.where(avail, q, jnp.inf), -1))
    best = np.asarray(jnp.argmax(jnp.where(avail, q, -jnp.inf), -1))
    acts = np.asarray(attacked.actions)
    np.testing.assert_array_equal(acts[..., agent][mask], worst[..., agent][mask])
    for other in (0, 2):
        np.testing.assert_array_equal(acts[..., other][mask], best[..., other][mask])
    assert float(rs.attack.attacked) == float(rs.attack_steps) > 0
    # before attack_start (gate off) the rollout is the clean one, bit for bit
    ident, _ = roll_gated(jnp.bool_(False))
    for a, b in zip(jax.tree.leaves(ident), jax.tree.leaves(clean)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # greedy evaluation: the gated-off hook changes nothing (same env keys); on, it runs
    ev_clean = jax.jit(lambda: evaluate_greedy(env, nets.actor, state.actor_params, key, 8))()
    ev = jax.jit(lambda on: evaluate_greedy(env, nets.actor, state.actor_params, key, 8, gated(on)))
    for f in ("episode_return", "won"):
        np.testing.assert_array_equal(np.asarray(getattr(ev(jnp.bool_(False)), f)), np.asarray(getattr(ev_clean, f)))
    assert np.all(np.isfinite(np.asarray(ev(jnp.bool_(True)).episode_return)))


# ----------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,field,shown", [
    ({"batch_size": 0}, "learner.batch_size", "0"),
    ({"buffer_size": 16, "batch_size": 32}, "learner.batch_size", "32"),
    ({"gamma": 1.5}, "learner.gamma", "1.5"),
    ({"lr": 0.0}, "learner.lr", "0.0"),
    ({"grad_clip": -1.0}, "learner.grad_clip", "-1.0"),
    ({"target_update_interval": 2.5}, "learner.target_update_interval", "2.5"),
    ({"hypernet_layers": 3}, "learner.hypernet_layers", "3"),
    ({"double_q": 1}, "learner.double_q", "1"),
    ({"storage_dtype": "bfloat16"}, "learner.storage_dtype", "bfloat16"),
    ({"epsilon_finish": -0.1}, "learner.epsilon_finish", "-0.1"),
    ({"name": "dop"}, "learner.name", "dop"),
    ({"length_groups": 0}, "learner.length_groups", "0"),
])
def test_qmix_config_errors_name_field_and_value(kwargs, field, shown):
    with pytest.raises(ValueError) as err:
        qmix.QMIXConfig(**kwargs)
    assert field in str(err.value) and shown in str(err.value)


@pytest.mark.parametrize("kwargs,field,shown,accepted", [
    ({"attack_at": "deploy"}, "attack.attack_at", "'deploy'", "test, train, both"),
    ({"attack_at": None}, "attack.attack_at", "None", "test, train, both"),
    ({"attack_start": -1}, "attack.attack_start", "-1", ">= 0"),
    ({"attack_start": 1.5}, "attack.attack_start", "1.5", ">= 0"),
    ({"method": "worst"}, "attack.method", "'worst'", "worst_q"),
])
def test_attack_config_errors_name_field_value_and_accepted(kwargs, field, shown, accepted):
    with pytest.raises(ValueError) as err:
        AttackConfig(**kwargs)
    msg = str(err.value)
    assert field in msg and shown in msg and accepted in msg


def test_config_defaults_and_registration():
    a = AttackConfig(method="worst_q", kl_u=0.0, attack_at="both", attack_start=1000)
    assert (a.attack_at, a.attack_start) == ("both", 1000) and not a.is_identity
    assert (AttackConfig().attack_at, AttackConfig().attack_start) == ("train", 0)
    assert LEARNER_CONFIGS["qmix"] is qmix.QMIXConfig
    assert LEARNERS["qmix"] is qmix.LEARNER and qmix.LEARNER.config is qmix.QMIXConfig
    # no policy gradient: no dummy gradient fields in the state; its own acting rule and worst-Q source
    assert qmix.LEARNER.policy_gradient is None and "prev_actor_grad" not in qmix.QMIXState._fields
    assert qmix.LEARNER.select_actions is qmix.select_actions and qmix.LEARNER.worst_q_source == "actor"
    c = qmix.QMIXConfig()
    assert (c.num_envs, c.buffer_size, c.batch_size, c.lr, c.rms_alpha, c.rms_eps, c.grad_clip, c.gamma,
            c.target_update_interval, c.mixing_embed, c.hypernet_layers, c.hypernet_embed, c.double_q) == \
        (1, 5000, 32, 5e-4, 0.99, 1e-5, 10.0, 0.99, 200, 32, 2, 64, True)
    cfg = TrainConfig(env=EnvConfig("gather"), learner=c, attack=a)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("method", ["var", "jbased"])
def test_config_refuses_policy_gradient_attacks_for_qmix(method):
    # Refused when the config is built (before anything compiles), with the same message
    # on every surface (tests/test_reliability_inputs.py runs the CLI and sweep forms).
    with pytest.raises(ValueError) as err:
        TrainConfig(env=EnvConfig("gather"), learner=qmix.QMIXConfig(), attack=AttackConfig(method=method),
                    run=RunConfig(steps=100, seeds=(0,), eval_interval=50))
    assert str(err.value) == (f"attack method {method!r} needs a policy-gradient learner (dop, coma); "
                              "qmix supports none, random, worst_q")


# ----------------------------------------------------------------------------------------
# The training program
# ----------------------------------------------------------------------------------------
def _run(cfg: TrainConfig):
    prog = make_train(cfg)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in cfg.run.seeds])
    return jax.jit(jax.vmap(prog.train))(keys)[1]


def test_worst_q_switches_in_the_program():
    # Attack at train and test from step 400 on: no attacked training step before, all after.
    small = qmix.QMIXConfig(buffer_size=64, batch_size=4, rnn_hidden=16, hypernet_embed=16, mixing_embed=8)
    run = RunConfig(steps=800, seeds=(0,), eval_interval=200, test_episodes=8)
    att = AttackConfig(method="worst_q", f_a=1.0, agent=0, attack_at="both", attack_start=400)
    m = _run(TrainConfig(env=EnvConfig("gather"), learner=small, attack=att, run=run))
    attacked = np.asarray(m.attacked_frac)[0]  # windows ending at 0, 200, 400, 600, 800 steps
    steps = np.asarray(m.env_steps)[0]
    assert np.isnan(attacked[0]) and np.all(attacked[1:3] == 0.0) and np.all(attacked[3:] == 1.0), (attacked, steps)
    assert np.all(np.isfinite(np.asarray(m.critic_loss)[0, 1:]))
    assert np.all(np.isnan(np.asarray(m.actor_loss)))


# ----------------------------------------------------------------------------------------
# Learning
# ----------------------------------------------------------------------------------------
def _random_return(env_name: str, episodes: int = 256) -> float:
    env = make_env(env_name)
    stats = jax.jit(lambda k: random_policy_episodes(env, k, episodes))(jax.random.PRNGKey(123))
    return float(jnp.mean(stats.episode_return))


def _train_final(env: str, learner, steps: int, seeds=(0, 1), options=()):
    m = _run(TrainConfig(env=EnvConfig(env, options=options), learner=learner, attack=AttackConfig(),
                         run=RunConfig(steps=steps, seeds=seeds, eval_interval=steps // 4, test_episodes=32)))
    # the mean of the last two evaluations per seed
    return np.asarray(m.test_return)[:, -2:].mean(axis=1), np.asarray(m.test_won)[:, -2:].mean(axis=1)


def test_qmix_beats_random_policy_on_gather():
    rand = _random_return("gather")
    final, _ = _train_final("gather", qmix.QMIXConfig(epsilon_anneal_steps=4_000), 8_000)
    # Returns are negative distances: "a clear margin" = at least 15% closer than random (about -188).
    assert np.all(final > 0.85 * rand), f"qmix on gather: final {final} vs random {rand:.1f}"


@pytest.mark.slow
def test_qmix_wins_3m():
    # with SMAX's state scaled as SMAC's (docs/learners.md, "QMIX on SMAX"): measured 0.75 for
    # both seeds at 200k steps
    _, won = _train_final("3m", qmix.QMIXConfig(), 300_000, seeds=(0, 1), options=(("normalise_state", True),))
    print(f"QMIX on 3m, 300k steps: final test win rate per seed {won}")
    assert np.all(won >= 0.6), f"QMIX on 3m: final test win rate {won}"


def test_qmix_on_smax_warns_without_the_scaled_state():
    from tram.cli import FIG1_SETS, fig1_configs
    from tram.config import build_train_config, config_warnings

    (warning,) = config_warnings(build_train_config("3m", "qmix", "none"))
    assert "normalise_state=True" in warning and "did not learn 3m" in warning
    assert config_warnings(build_train_config("3m", "qmix", "none", sets=["env.normalise_state=True"])) == []
    assert config_warnings(build_train_config("3m", "dop", "none")) == []
    assert config_warnings(build_train_config("gather", "qmix", "none")) == []
    assert FIG1_SETS == ("env.normalise_state=True",)
    for c in fig1_configs("3m", 1000, (0,), 500, 1.0):
        assert dict(c.env.options) == {"normalise_state": True} and config_warnings(c) == []
    for c in fig1_configs("gather", 1000, (0,), 500, 1.0):  # the grid tasks have no such option
        assert dict(c.env.options) == {}


@pytest.mark.slow  # test_fig1_branch_starts_from_the_clean_runs_kept_state covers the branch in the default run
def test_fig1_branches_share_the_clean_run_until_the_attack_starts():
    # `tram reproduce fig1` runs clean, test-only and train+test worst-Q attacks as three runs:
    # they must equal the clean run bit for bit before attack_start (so they are branches of
    # it), and the test-only attack must never change training.
    small = qmix.QMIXConfig(buffer_size=64, batch_size=4, rnn_hidden=16, hypernet_embed=16, mixing_embed=8)
    run = RunConfig(steps=800, seeds=(0,), eval_interval=200, test_episodes=8)
    m = {at: _run(TrainConfig(env=EnvConfig("gather"), learner=small, run=run,
                              attack=AttackConfig(method="worst_q", f_a=1.0, attack_at=at, attack_start=400)))
         for at in ("test", "both")}
    m["none"] = _run(TrainConfig(env=EnvConfig("gather"), learner=small, run=run, attack=AttackConfig()))
    before = np.asarray(m["none"].env_steps)[0] < 400
    for at in ("test", "both"):
        for f in ("env_steps", "test_return", "train_return", "critic_loss"):
            np.testing.assert_array_equal(np.asarray(getattr(m[at], f))[0, before],
                                          np.asarray(getattr(m["none"], f))[0, before], err_msg=f"{at}: {f}")
    for f in ("env_steps", "train_return", "critic_loss"):
        np.testing.assert_array_equal(np.asarray(getattr(m["test"], f)), np.asarray(getattr(m["none"], f)), err_msg=f)


def test_fig1_branch_starts_from_the_clean_runs_kept_state(tmp_path):
    # The clean run keeps its state at the last evaluation before step 400; the run attacked
    # from 400 on starts there and ends with the numbers of the same run trained from scratch.
    import dataclasses

    from tram.experiments import store
    from tram.experiments.runner import train

    small = qmix.QMIXConfig(buffer_size=64, batch_size=4, rnn_hidden=16, hypernet_embed=16, mixing_embed=8)
    clean = TrainConfig(env=EnvConfig("gather"), learner=small, attack=AttackConfig(),
                        run=RunConfig(steps=800, seeds=(0, 1), eval_interval=200, test_episodes=8))
    both = dataclasses.replace(clean, attack=AttackConfig(method="worst_q", f_a=1.0, attack_at="both",
                                                          attack_start=400))
    logs: list[str] = []
    parent = train(clean, tmp_path / "runs", progress=False, log=logs.append, keep_branch_point=400)
    assert (parent / store.BRANCH_POINT_DIR / "meta.json").exists()
    branched = train(both, tmp_path / "runs", progress=False, log=logs.append)
    assert any("branching from" in line for line in logs), logs
    scratch = train(both, tmp_path / "scratch", progress=False, log=logs.append)

    a, b = store.load_run(branched), store.load_run(scratch)
    # gather's episodes last 25 steps, 1 env per seed: evaluations at 0 and 200 are inherited
    assert a.summary["branched_from"] == {"run": parent.name, "evaluations_inherited": 2}
    assert b.summary["branched_from"] is None
    for col in ("seed", "env_steps", "test_return", "train_return"):
        np.testing.assert_array_equal(a.metrics[col], b.metrics[col], err_msg=col)
    after = a.metrics["env_steps"] >= 400
    for col in ("attacked_frac", "kl_mean", "stealth_loglik"):
        np.testing.assert_array_equal(a.metrics[col][after], b.metrics[col][after], err_msg=col)
    assert np.all(np.isnan(a.metrics["attacked_frac"][~after]))  # no attack ran before the branch

    # The report draws both runs in one panel (Fig. 1); the worst-Q attack has no KL budget.
    import csv

    from tram.report import make_report

    paths = make_report(tmp_path / "runs", tmp_path / "report")
    assert any(p.name == "curves_qmix_grid.png" for p in paths)
    with open(tmp_path / "report" / "tables" / "final_performance.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert rows["Worst-Q attack at training and test time"]["KL_U"] == "-"
    assert rows["Worst-Q attack at training and test time"]["f_A"] == "1"
