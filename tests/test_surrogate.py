"""Black-box TRAM (``attack.critic = "surrogate"``, tram.attacks.surrogate): the TD loss
against hand-worked numbers, the network's inputs against a step-by-step port, the rollout
feeding the direction the values the surrogate trains on, f_A = 0 equal to the clean run bit
for bit, an end-to-end run, and the config's messages."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tram.attacks.perturb import AttackConfig, identity_perturbation
from tram.attacks.surrogate import (SURROGATE_STREAM, SurrogateConfig, init_surrogate, policy_gradient_estimate,
                                    q_over_inputs, surrogate_inputs, surrogate_loss, surrogate_net, surrogate_q_fn,
                                    td_loss, update_surrogate)
from tram.config import ConfigError, EnvConfig, RunConfig, TrainConfig, build_train_config
from tram.envs import make_env
from tram.experiments.program import make_train
from tram.experiments.store import run_name
from tram.learners.actor import RNNActor
from tram.learners.dop import DOPConfig
from tram.learners.episodes import Episodes
from tram.learners.rollout import AttackHook, collect_episodes
from tram.types import AttackStepStats

# ------------------------------------------------------------------------------------------
# The TD loss, by hand
# ------------------------------------------------------------------------------------------
# One episode of T = 3 steps cut by the time limit (no termination: the post-episode slot is
# bootstrapped) and one that terminates at step 1 (padded to T = 3). gamma = lambda = 0.5.
Q_TARGET = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], np.float32)  # [T+1, A]
ACTIONS = np.array([0, 1, 0, 1], np.int32)  # target values at the taken actions: 1, 4, 5, 8
Q_ONLINE = np.array([[2.0, 0.0], [0.0, 3.0], [4.0, 0.0], [0.0, 0.0]], np.float32)  # taken: 2, 3, 4


def _hand_batch():
    reward = np.array([[1.0, 0.0, 2.0], [1.0, 3.0, 0.0]], np.float32)
    term = np.array([[0, 0, 0], [0, 1, 0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
    two = lambda x: np.stack([x, x])
    return two(Q_ONLINE), two(Q_TARGET), two(ACTIONS), reward, term, mask


def test_td_loss_matches_the_hand_computation():
    q, q_t, actions, reward, term, mask = _hand_batch()
    # Episode 1 (lambda-returns, = the n-step mixture: e.g. y_0 = .5 G1 + .25 G2 + .25 G3 with
    # G1 = 1 + .5*4 = 3, G2 = 1 + 0 + .25*5 = 2.25, G3 = 1 + 0 + .25*2 + .125*8 = 2.5):
    #   y_2 = 2 + .5*8 = 6;  y_1 = .5*2.5 + .5*(0 + .5*2 + .25*8) = 2.75;  y_0 = 2.6875
    #   errors 2 - 2.6875, 3 - 2.75, 4 - 6 -> squares .47265625 + .0625 + 4 = 4.53515625
    # Episode 2 (terminated at step 1, step 2 masked): y_1 = r_1 = 3 (no bootstrap),
    #   y_0 = .25*3 + 1 + .25*4 = 2.75; errors 2 - 2.75, 3 - 3 -> .5625
    # loss = (4.53515625 + .5625) / 5 valid steps
    got = td_loss(jnp.asarray(q), jnp.asarray(q_t), jnp.asarray(actions), jnp.asarray(reward), jnp.asarray(term),
                  jnp.asarray(mask), 0.5, 0.5)
    np.testing.assert_allclose(float(got), (4.53515625 + 0.5625) / 5.0, rtol=1e-6)
    one = td_loss(jnp.asarray(q[:1]), jnp.asarray(q_t[:1]), jnp.asarray(actions[:1]), jnp.asarray(reward[:1]),
                  jnp.asarray(term[:1]), jnp.asarray(mask[:1]), 0.5, 0.5)
    np.testing.assert_allclose(float(one), 4.53515625 / 3.0, rtol=1e-6)
    # one-step TD (lambda = 0) on episode 1: y = (1 + .5*4, 0 + .5*5, 2 + .5*8) = (3, 2.5, 6)
    td0 = td_loss(jnp.asarray(q[:1]), jnp.asarray(q_t[:1]), jnp.asarray(actions[:1]), jnp.asarray(reward[:1]),
                  jnp.asarray(term[:1]), jnp.asarray(mask[:1]), 0.5, 0.0)
    np.testing.assert_allclose(float(td0), (1.0 + 0.25 + 4.0) / 3.0, rtol=1e-6)


def test_td_loss_gradient_flows_through_the_online_values_only():
    q, q_t, actions, reward, term, mask = map(jnp.asarray, _hand_batch())
    g_q, g_t = jax.grad(td_loss, argnums=(0, 1))(q, q_t, actions, reward, term, mask, 0.5, 0.5)
    assert np.all(np.asarray(g_t) == 0.0), "the targets are held constant"
    expected = np.zeros((2, 4, 2), np.float32)  # 2 (q - y) / 5 at the taken, unmasked entries
    for e, t, err in ((0, 0, 2 - 2.6875), (0, 1, 3 - 2.75), (0, 2, 4 - 6.0), (1, 0, 2 - 2.75), (1, 1, 0.0)):
        expected[e, t, ACTIONS[t]] = 2.0 * err / 5.0
    np.testing.assert_allclose(np.asarray(g_q), expected, atol=1e-6)


# ------------------------------------------------------------------------------------------
# The network on episodes: a step-by-step port, and the rollout's view
# ------------------------------------------------------------------------------------------
def _tiny_episodes(key, e=2, t=4, n=3, d=5, a=4, lengths=(4, 2), terminated_at=(None, 1)):
    k1, k2, k3 = jax.random.split(key, 3)
    filled = np.zeros((e, t + 1), bool)
    term = np.zeros((e, t + 1), bool)
    for i, (ln, te) in enumerate(zip(lengths, terminated_at)):
        filled[i, :ln] = True
        if te is not None:
            term[i, te] = True
    return Episodes(obs=jax.random.normal(k1, (e, t + 1, n, d)), state=jnp.zeros((e, t + 1, 1)),
                    avail=jnp.ones((e, t + 1, n, a), bool),
                    actions=jax.random.randint(k2, (e, t + 1, n), 0, a),
                    reward=jax.random.normal(k3, (e, t + 1)) * jnp.asarray(filled, jnp.float32),
                    terminated=jnp.asarray(term), filled=jnp.asarray(filled))


@pytest.mark.parametrize("bootstrap", [True, False])
def test_surrogate_loss_equals_a_step_by_step_port(bootstrap):
    cfg = SurrogateConfig(hidden=8, gamma=0.9, td_lambda=0.7)
    ep = _tiny_episodes(jax.random.PRNGKey(0))
    e, t1, n, d = ep.obs.shape
    a, agent = 4, 1
    st = init_surrogate(jax.random.PRNGKey(1), d + a + n, a, cfg)
    target = init_surrogate(jax.random.PRNGKey(2), d + a + n, a, cfg).params
    net = surrogate_net(a, cfg)
    obs, acts, rew = np.asarray(ep.obs), np.asarray(ep.actions), np.asarray(ep.reward)
    filled, term = np.asarray(ep.filled), np.asarray(ep.terminated)
    total, count = 0.0, 0.0
    for i in range(e):
        h, ht, q, qt = np.zeros(8, np.float32), np.zeros(8, np.float32), [], []
        for s in range(t1):  # input: [o^k_t, onehot(a^k_{t-1}) (zeros at t = 0), onehot(k)]
            last = np.zeros(a, np.float32) if s == 0 else np.eye(a, dtype=np.float32)[acts[i, s - 1, agent]]
            x = np.concatenate([obs[i, s, agent], last, np.eye(n, dtype=np.float32)[agent]])
            out, h = net.apply(st.params, h, x)
            out_t, ht = net.apply(target, ht, x)
            q.append(np.asarray(out)[acts[i, s, agent]])
            qt.append(np.asarray(out_t)[acts[i, s, agent]])
        length = int(filled[i].sum())
        ended = bool(term[i, length - 1])
        # lambda-return written as a forward sum: G^lam_t = sum_n (1-lam) lam^(n-1) G^(n)_t,
        # the last n-step return (to the episode's end) taking the rest of the weight
        for s in range(length):
            rets = []
            for m in range(1, length - s + 1):
                g = sum(cfg.gamma ** j * rew[i, s + j] for j in range(m))
                if s + m < length:
                    g += cfg.gamma ** m * qt[s + m]
                elif bootstrap and not ended:
                    g += cfg.gamma ** m * qt[length]  # the post-episode slot
                rets.append(g)
            weights = [(1 - cfg.td_lambda) * cfg.td_lambda ** (m - 1) for m in range(1, len(rets))]
            weights.append(cfg.td_lambda ** (len(rets) - 1))
            y = sum(w * g for w, g in zip(weights, rets))
            total += (q[s] - y) ** 2
            count += 1
    got = surrogate_loss(st.params, target, ep, agent, a, bootstrap, cfg)
    np.testing.assert_allclose(float(got), total / count, rtol=2e-5)


def test_the_rollout_feeds_the_direction_the_values_the_surrogate_trains_on():
    """The surrogate's per-step Q-values inside the rollout (a recurrent ``q_fn`` with a
    carry) equal its unroll over the stored episode, slot for slot."""
    env = make_env("gather")
    spec = env.spec
    n, a, d = spec.num_agents, spec.num_actions, spec.obs_dim
    actor = RNNActor(num_actions=a, hidden=8)
    actor_params = actor.init(jax.random.PRNGKey(0), jnp.zeros(8), jnp.zeros(d + a + n))
    cfg = SurrogateConfig(hidden=8)
    agent = 2
    st = init_surrogate(jax.random.PRNGKey(3), d + a + n, a, cfg)

    def record(key, ctx, fn):  # the identity, reporting sum_a q(a) in a statistics slot
        del key, fn
        return ctx.logits, AttackStepStats.zeros()._replace(kl=jnp.sum(ctx.q_values), beta=ctx.mix_weight)

    hook = AttackHook(perturb=record, agent=agent, q_fn=surrogate_q_fn(st.params, agent, a, cfg), prev_actor_grad=None,
                      has_prev_grad=jnp.bool_(False), q_carry=jnp.zeros(8))
    ep, rs = jax.jit(lambda k: collect_episodes(env, actor, actor_params, k, jnp.float32(0.3), 3, hook))(
        jax.random.PRNGKey(4))
    q = q_over_inputs(surrogate_net(a, cfg), st.params, surrogate_inputs(ep, agent, a))  # [E, T+1, A]
    filled = np.asarray(ep.filled, np.float32)
    expected = float(np.sum(np.asarray(q).sum(-1) * filled))
    assert float(rs.attack_steps) == filled.sum()  # every action is available on Gather
    np.testing.assert_allclose(float(rs.attack.kl), expected, rtol=1e-4)
    assert float(rs.attack.beta) == filled.sum(), "mix_weight is 1"
    # and without the surrogate the same keys give the same episodes (the carry draws nothing)
    plain = AttackHook(perturb=identity_perturbation, agent=agent, q_fn=lambda s, o, c, l: (jnp.zeros(a), jnp.float32(1.0)),
                       prev_actor_grad=None, has_prev_grad=jnp.bool_(False))
    ep2, _ = jax.jit(lambda k: collect_episodes(env, actor, actor_params, k, jnp.float32(0.3), 3, plain))(
        jax.random.PRNGKey(4))
    np.testing.assert_array_equal(np.asarray(ep.actions), np.asarray(ep2.actions))


def test_policy_gradient_estimate_equals_a_step_by_step_port():
    """The black-box J-based attacker's gradient: grad of (1/#valid) sum_t A_att(t) log pi_eps(a_t | tau_t)
    over the poisoned agent's valid steps, A_att = Q_att(a_t) - <pi_eps, Q_att> held constant."""
    cfg = SurrogateConfig(hidden=8)
    ep = _tiny_episodes(jax.random.PRNGKey(8))
    e, t1, n, d = ep.obs.shape
    a, agent, eps = 4, 0, 0.2
    off = (int(ep.actions[0, 1, agent]) + 1) % a  # one unavailable action (not the taken one)
    ep = ep._replace(avail=ep.avail.at[0, 1, agent, off].set(False))
    actor = RNNActor(num_actions=a, hidden=6)
    theta = actor.init(jax.random.PRNGKey(9), jnp.zeros(6), jnp.zeros(d + a + n))
    sur = init_surrogate(jax.random.PRNGKey(10), d + a + n, a, cfg).params
    net = surrogate_net(a, cfg)
    obs, acts, avail = np.asarray(ep.obs), np.asarray(ep.actions), np.asarray(ep.avail)
    valid = [4, 2]  # episode 0 runs 4 steps; episode 1 terminates at its step 1

    def floored(logits, av):
        p = (1 - eps) * jax.nn.softmax(logits) + eps / a
        p = jnp.where(av, p, 0.0)
        return p / p.sum()

    def port(th):
        total = 0.0
        for i in range(e):
            h, hq = jnp.zeros(6), jnp.zeros(8)
            for s in range(valid[i]):
                last = np.zeros(a, np.float32) if s == 0 else np.eye(a, dtype=np.float32)[acts[i, s - 1, agent]]
                x = jnp.asarray(np.concatenate([obs[i, s, agent], last, np.eye(n, dtype=np.float32)[agent]]))
                logits, h = actor.apply(th, h, x)
                q, hq = net.apply(sur, hq, x)
                pi = floored(logits, avail[i, s, agent])
                adv = jax.lax.stop_gradient(q[acts[i, s, agent]] - jnp.sum(pi * q))
                total = total + adv * jnp.log(pi[acts[i, s, agent]])
        return total / sum(valid)

    want = jax.grad(port)(theta)
    got = policy_gradient_estimate(actor, theta, sur, ep, agent, jnp.float32(eps), cfg)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert np.all(np.isfinite(np.asarray(w)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-7)
    assert max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want)) > 1e-4


def test_updates_fit_a_fixed_batch_and_copy_the_target():
    cfg = SurrogateConfig(hidden=8, lr=3e-3, target_update_interval=5)
    ep = _tiny_episodes(jax.random.PRNGKey(5))
    e, t1, n, d = ep.obs.shape
    st = init_surrogate(jax.random.PRNGKey(6), d + 4 + n, 4, cfg)
    step = jax.jit(lambda s: update_surrogate(s, ep, 0, 4, True, cfg))
    losses = []
    for i in range(5):
        before = st.target_params
        st = step(st)
        losses.append(float(st.loss))
        same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(st.target_params), jax.tree.leaves(before)))
        assert same == (i < 4), f"target copied at update {i + 1}"
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(st.target_params), jax.tree.leaves(st.params)))
    assert int(st.updates) == 5
    for _ in range(40):
        st = step(st)
    final = float(surrogate_loss(st.params, st.target_params, ep, 0, 4, True, cfg))
    assert final < 0.5 * losses[0], (losses[0], final)


# ------------------------------------------------------------------------------------------
# Inside training
# ------------------------------------------------------------------------------------------
SHORT = dict(steps=1500, eval_interval=500, test_episodes=4)
TRAINING_FIELDS = ("env_steps", "test_return", "test_won", "train_return", "critic_loss", "actor_loss")


def _small_dop():
    return DOPConfig(epsilon_anneal_steps=2000, off_buffer_size=64, rnn_hidden=16, critic_hidden=32, mixing_embed=8)


def _run(attack):
    cfg = TrainConfig(env=EnvConfig("gather"), learner=_small_dop(), attack=attack, run=RunConfig(seeds=(0,), **SHORT))
    return jax.jit(jax.vmap(make_train(cfg).train))(jnp.stack([jax.random.PRNGKey(0)]))


@functools.lru_cache(maxsize=None)
def _clean():
    return _run(AttackConfig(method="none"))


def test_surrogate_with_fa0_equals_the_clean_run():
    state_c, clean = _clean()
    assert float(clean.updates[0, -1]) > 0
    state_s, sur = _run(AttackConfig(method="var", f_a=0.0, critic="surrogate"))
    for f in TRAINING_FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(sur, f)), np.asarray(getattr(clean, f)), err_msg=f)
    for a, b in zip(jax.tree.leaves(state_s.learner), jax.tree.leaves(state_c.learner)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(state_s.key), np.asarray(state_c.key))
    assert state_c.attacker is None
    # the surrogate trained once per iteration (4 episodes of 25 steps each on Gather)
    assert int(state_s.attacker.updates[0]) == 1500 // 100
    assert np.isfinite(float(state_s.attacker.loss[0]))


@pytest.mark.slow  # the J-based and f_A = 0 runs exercise the same program in the default run
def test_surrogate_var_attack_end_to_end():
    state_c, clean = _clean()
    kl_u = 6.0
    state, m = _run(AttackConfig(method="var", f_a=1.0, kl_u=kl_u, critic="surrogate", attack_at="both"))
    kl_max = np.asarray(m.kl_max)[:, 1:]
    assert np.all(kl_max <= kl_u + 1e-5) and np.all(kl_max > 1.0), kl_max
    assert np.all(np.asarray(m.attacked_frac)[:, 1:] == 1.0)
    assert np.all(np.asarray(m.fallback_frac)[:, 1:] < 0.05)  # var needs no previous gradient
    assert not np.array_equal(np.asarray(m.train_return[:, 1:]), np.asarray(clean.train_return[:, 1:]))
    assert int(state.attacker.updates[0]) == 15 and np.isfinite(float(state.attacker.loss[0]))
    # the learner's state holds nothing of the attacker's
    n_learner = len(jax.tree.leaves(state_c.learner))
    assert len(jax.tree.leaves(state.learner)) == n_learner


# combined with `pytest -m slow` (tests/test_attack_combined.py trains it in the default run)
@pytest.mark.parametrize("method", ["jbased", pytest.param("combined", marks=pytest.mark.slow)])
def test_surrogate_jbased_uses_its_own_gradient_estimate(method):
    """J-based and combined read the last policy gradient: the attacker's own estimate."""
    state, m = _run(AttackConfig(method=method, f_a=1.0, kl_u=6.0, critic="surrogate"))
    fb = np.asarray(m.fallback_frac)[0, 1:]
    first = 0.4 if method == "jbased" else 0.0  # combined: var's direction until an estimate exists
    # random fallback on the first window's first two iterations (200 of its 500 steps): in
    # the first the attacker has no estimate yet; in the second its estimate, taken on the
    # first iteration's episodes at epsilon = 1 (DOP's floored policy is then uniform,
    # whatever the logits), is exactly zero, as the learner's own gradient would be. Then never.
    assert fb[0] == pytest.approx(first) and np.all(fb[1:] == 0.0), fb
    assert bool(state.attacker.has_grad[0])
    g = jax.tree.leaves(state.attacker.policy_grad)
    assert len(g) == len(jax.tree.leaves(state.learner.actor_params)) and any(float(jnp.max(jnp.abs(x))) > 0 for x in g)
    assert np.all(np.asarray(m.kl_max)[:, 1:] <= 6.0 + 1e-5)


def test_surrogate_initialisation_uses_its_own_stream():
    spec = make_env("gather").spec
    cfg = TrainConfig(env=EnvConfig("gather"), learner=_small_dop(),
                      attack=AttackConfig(method="var", critic="surrogate"), run=RunConfig(seeds=(0,), **SHORT))
    st = make_train(cfg).init(jax.random.PRNGKey(7))
    ref = init_surrogate(jax.random.fold_in(jax.random.PRNGKey(7), SURROGATE_STREAM),
                         spec.obs_dim + spec.num_actions + spec.num_agents, spec.num_actions)
    for a, b in zip(jax.tree.leaves(st.attacker.params), jax.tree.leaves(ref.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------
def test_critic_values_and_messages():
    with pytest.raises(ConfigError, match=r"^attack\.critic: 'oracle' is not accepted; accepted: learner, surrogate$"):
        AttackConfig(method="var", critic="oracle")
    with pytest.raises(ConfigError, match=r"^attack\.critic: 'surrogate' is not accepted with attack\.method "
                                          r"'worst_q'; accepted: a method of var, jbased, combined with the surrogate critic"):
        AttackConfig(method="worst_q", critic="surrogate")
    assert AttackConfig(method="jbased", critic="surrogate").critic == "surrogate"
    with pytest.raises(ConfigError, match=r"attack\.critic: 'surrogate' is not accepted with attack\.method 'random'"):
        build_train_config("gather", "coma", "random", sets=["attack.critic=surrogate"])
    with pytest.raises(ConfigError, match=r"^attack\.critic: 'surrogate' given without an attack"):
        build_train_config("gather", "dop", "none", sets=["attack.critic=surrogate"])
    for msg in ("oracle", "surrogate"):  # one line each
        try:
            AttackConfig(method="worst_q", critic=msg)
        except ConfigError as e:
            assert "\n" not in str(e)


def test_critic_is_left_out_of_the_run_identity_at_its_default():
    white = build_train_config("gather", "dop", "var", steps=1000, seeds=1)
    black = build_train_config("gather", "dop", "var", steps=1000, seeds=1, sets=["attack.critic=surrogate"])
    assert white.attack.critic == "learner" and black.attack.critic == "surrogate"
    assert "critic" not in white.to_dict()["attack"]
    assert black.to_dict()["attack"]["critic"] == "surrogate"
    assert TrainConfig.from_dict(black.to_dict()) == black
    assert TrainConfig.from_dict(white.to_dict()) == white
    name_w, name_b = run_name(white.to_dict()), run_name(black.to_dict())
    assert "surrogate" not in name_w and "-fa1-kl6-surrogate-" in name_b
    assert name_w.rsplit("-", 1)[1] != name_b.rsplit("-", 1)[1]


# ------------------------------------------------------------------------------------------
# Sweeps and the report
# ------------------------------------------------------------------------------------------
def test_sweep_critics_apply_to_the_surrogate_methods_only():
    from tram.experiments.sweep import SweepError, _cell_label, expand_grid

    cells = expand_grid({"envs": ["gather"], "learners": ["coma"], "methods": ["none", "var", "jbased", "random"],
                         "critics": ["learner", "surrogate"], "steps": 1000, "seeds": 1, "eval_interval": 500})
    got = sorted((c.attack.method, c.attack.critic) for c in cells)
    assert got == [("jbased", "learner"), ("jbased", "surrogate"), ("none", "learner"), ("random", "learner"),
                   ("var", "learner"), ("var", "surrogate")]
    labels = sorted(_cell_label(c) for c in cells)
    assert "gather/coma/var fA=1 KL=6 critic=surrogate" in labels and "gather/coma/var fA=1 KL=6" in labels
    with pytest.raises(SweepError, match=r"sweep key 'critics': 'oracle' is not accepted; accepted: list of "
                                         r"attack.critic values: learner, surrogate"):
        expand_grid({"envs": ["gather"], "critics": ["oracle"], "steps": 1000})


def test_report_keeps_surrogate_runs_apart(tmp_path):
    import csv
    import json
    import sys
    from pathlib import Path

    from tram.attacks import methods
    from tram.report import make_report

    sys.path.insert(0, str(Path(__file__).parent))
    import fakeruns

    assert methods.series_key("var", "train", "surrogate") == "var_surrogate"
    assert methods.series_key("var") == "var"
    assert methods.series_label("var_surrogate") == "Var-based TRAM, surrogate critic (black-box)"
    assert methods.series_colour("var_surrogate") == "#ea9393"  # #d62728 halfway to white
    assert methods.series_colour("jbased_surrogate") == "#8fbbd9"  # #1f77b4 halfway to white
    with pytest.raises(ConfigError, match="'random_surrogate' is not in the table"):
        methods.series_label("random_surrogate")
    root = tmp_path / "runs"
    for m in ("none", "var"):
        fakeruns.make_fake_run(root, "gather", m, seeds=(0, 1))
    other = fakeruns.make_fake_run(tmp_path / "tmp", "gather", "var", seeds=(0, 1))
    cfg = json.loads((other / "config.json").read_text())
    cfg["attack"]["critic"] = "surrogate"
    (other / "config.json").write_text(json.dumps(cfg))
    other.rename(root / run_name(cfg))
    out = tmp_path / "report"
    make_report(root, out, n_boot=50, log=None)
    with open(out / "tables" / "final_performance.csv", newline="") as f:
        labels = [r[2] for r in list(csv.reader(f))[1:]]
    assert labels == ["Clean (none)", "Var-based TRAM", "Var-based TRAM, surrogate critic (black-box)"]
