"""The two learner choices that follow the reference code by default (docs/learners.md):

* DOP's actor batch (``learner.actor_batch``): ``reference`` reproduces the reference's
  ``sample_latest``, checked against a port of its bookkeeping (written here) over 16
  training iterations of the reference's run loop; ``latest`` always takes the newest.
* Time-limit ends (``learner.bootstrap_timeouts``, DOP, COMA, QMIX): the targets of each
  learner at a timeout, with and without the bootstrap, against hand-worked numbers; grid
  episodes end by the time limit and get the same treatment.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tram.cli import apply_overrides
from tram.config import EnvConfig, TrainConfig
from tram.envs import make_env
from tram.learners import coma, dop, qmix
from tram.learners.actor import RNNActor
from tram.learners.episodes import (
    Episodes, buffer_add, buffer_init, empty_episodes, latest_indices, target_terminated,
)
from tram.learners.rollout import collect_episodes


# ----------------------------------------------------------------------------------------
# DOP's actor batch
# ----------------------------------------------------------------------------------------
class RefOnPolicyBuffer:
    """The bookkeeping of the reference's ``ReplayBuffer`` (TonghanWang/DOP,
    ``components/episode_buffer.py``), re-written from its behaviour: which position each
    episode lands in, and which positions ``sample_latest`` returns.

    ``write_at`` is the reference's ``buffer_index`` and ``stored`` its
    ``episodes_in_buffer``; ``content[p]`` is the id of the episode at position ``p``."""

    def __init__(self, size: int):
        self.size, self.write_at, self.stored = size, 0, 0
        self.content = [None] * size

    def insert(self, ids: list[int]) -> None:
        # A batch that does not fit before the end is split: the head fills the buffer up to
        # its end, the tail goes on from position 0.
        ids = list(ids)
        while ids:
            room = self.size - self.write_at
            head, ids = ids[:room], ids[room:]
            for j, ep_id in enumerate(head):
                self.content[self.write_at + j] = ep_id
            self.write_at += len(head)
            self.stored = max(self.stored, self.write_at)
            self.write_at %= self.size

    def can_sample(self, n: int) -> bool:
        return self.stored >= n

    def sample_latest(self, n: int):
        """``("positions", [...])`` when the choice is deterministic, ``("uniform", stored)``
        when the reference draws ``n`` of the ``stored`` episodes with numpy."""
        if self.write_at - n < 0:
            if self.stored == n:  # uni_sample's special case: the first n
                return "positions", list(range(n))
            return "uniform", self.stored
        return "positions", list(range(self.write_at - n, self.write_at))


def _id_episodes(ids) -> Episodes:
    """Tiny episodes whose reward at slot 0 is their id."""
    ep = empty_episodes(len(ids), 1, 1, 1, 1, 2)
    return ep._replace(reward=ep.reward.at[:, 0].set(jnp.asarray(ids, jnp.float32)))


def test_actor_batch_reference_rule_matches_port_over_16_iterations():
    # The reference's numbers (offpg_smac.yaml, TRAM App. A): on-policy buffer 32, batch 16,
    # 4 parallel environments; training starts once the on-policy buffer holds 16 and the
    # off-policy buffer 32 episodes (run.py), i.e. after 32 episodes.
    size, n, per_iter, off_batch = 32, 16, 4, 32
    cfg = dop.DOPConfig()
    assert (cfg.buffer_size, cfg.batch_size, cfg.num_envs, cfg.off_batch_size, cfg.actor_batch) == \
        (size, n, per_iter, off_batch, "reference")
    port = RefOnPolicyBuffer(size)
    buf = buffer_init(empty_episodes(size, 1, 1, 1, 1, 2))
    pick = jax.jit(functools.partial(latest_indices, n=n, rule="reference"))
    key = jax.random.PRNGKey(7)
    inserted, trained, kinds, write_positions = 0, 0, [], []
    while trained < 16:
        ids = list(range(inserted, inserted + per_iter))
        inserted += per_iter
        port.insert(ids)
        buf = buffer_add(buf, _id_episodes(ids))
        assert int(buf.pos) == port.write_at and int(buf.count) == port.stored
        if not (port.can_sample(n) and inserted >= off_batch):
            continue
        trained += 1
        key, k = jax.random.split(key)
        idx, uniform = pick(k, buf)
        idx = np.asarray(idx)
        chosen_ids = np.asarray(buf.data.reward[idx, 0]).astype(int)
        kind, what = port.sample_latest(n)
        kinds.append(kind)
        write_positions.append(port.write_at)
        if kind == "positions":
            assert not bool(uniform)
            np.testing.assert_array_equal(idx, what)
            np.testing.assert_array_equal(chosen_ids, [port.content[p] for p in what])
        else:
            assert bool(uniform)
            assert len(set(idx.tolist())) == n and idx.min() >= 0 and idx.max() < what
            assert set(chosen_ids.tolist()) <= {port.content[p] for p in range(what)}
    # By hand: training starts with the write position at 0 and it then advances by 4, so
    # positions 0, 4, 8, 12 fall back to the uniform sample: 8 of the 16 iterations.
    assert write_positions == [0, 4, 8, 12, 16, 20, 24, 28] * 2
    assert kinds == (["uniform"] * 4 + ["positions"] * 4) * 2


def _full_buffer(capacity: int, inserted: int):
    buf = buffer_init(empty_episodes(capacity, 1, 1, 1, 1, 2))
    for start in range(0, inserted, 4):
        buf = buffer_add(buf, _id_episodes(range(start, min(start + 4, inserted))))
    return buf


def test_actor_batch_fallback_is_uniform_over_the_stored_episodes():
    buf = _full_buffer(32, 36)  # write position 4, 32 stored
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    idx, uniform = jax.vmap(lambda k: latest_indices(k, buf, 16, "reference"))(keys)
    assert bool(jnp.all(uniform))
    idx = np.asarray(idx)
    assert all(len(set(row)) == 16 for row in idx.tolist())
    freq = np.bincount(idx.ravel(), minlength=32) / len(keys)
    # each episode is in a uniform 16-of-32 sample with probability 1/2 (sd 0.008 here)
    np.testing.assert_allclose(freq, 0.5, atol=0.04)
    # different keys give different batches, the same key the same one
    assert len({tuple(sorted(r)) for r in idx[:50].tolist()}) == 50
    np.testing.assert_array_equal(np.asarray(latest_indices(keys[3], buf, 16, "reference")[0]), idx[3])


def test_actor_batch_edge_cases_and_latest_rule():
    # exactly n stored and the write position below n: the reference returns the first n
    buf = _full_buffer(16, 16)  # write position 0
    idx, uniform = latest_indices(jax.random.PRNGKey(1), buf, 16, "reference")
    assert bool(uniform)
    np.testing.assert_array_equal(np.asarray(idx), np.arange(16))
    # not full yet, write position 20 >= 16: the slice 4..19
    buf = _full_buffer(32, 20)
    idx, uniform = latest_indices(jax.random.PRNGKey(1), buf, 16, "reference")
    assert not bool(uniform)
    np.testing.assert_array_equal(np.asarray(idx), np.arange(4, 20))
    # "latest": always the newest 16, wrapping around the ring, newest last
    buf = _full_buffer(32, 36)  # ids 32..35 at positions 0..3
    idx, uniform = latest_indices(jax.random.PRNGKey(1), buf, 16, "latest")
    assert not bool(uniform)
    np.testing.assert_array_equal(np.asarray(idx), list(range(20, 32)) + [0, 1, 2, 3])
    np.testing.assert_array_equal(np.asarray(buf.data.reward[idx, 0]), np.arange(20, 36))
    with pytest.raises(ValueError, match=r"learner.actor_batch .*reference, latest.*'newest'"):
        latest_indices(jax.random.PRNGKey(1), buf, 16, "newest")


def _spec():
    return SimpleNamespace(num_agents=2, num_actions=3, obs_dim=2, state_dim=2, episode_limit=2)


def _id_episodes_for(spec, ids, key) -> Episodes:
    """Valid 2-step episodes (timeouts) with random features; reward at slot 0 is the id."""
    e, t1 = len(ids), spec.episode_limit + 1
    k1, k2, k3 = jax.random.split(key, 3)
    return Episodes(
        obs=jax.random.normal(k1, (e, t1, spec.num_agents, spec.obs_dim)),
        state=jax.random.normal(k2, (e, t1, spec.state_dim)),
        avail=jnp.ones((e, t1, spec.num_agents, spec.num_actions), bool),
        actions=jax.random.randint(k3, (e, t1, spec.num_agents), 0, spec.num_actions),
        reward=jnp.zeros((e, t1)).at[:, 0].set(jnp.asarray(ids, jnp.float32)),
        terminated=jnp.zeros((e, t1), bool),
        filled=jnp.arange(t1)[None].repeat(e, 0) < spec.episode_limit,
    )


@pytest.mark.parametrize("inserted,rule,expect_ids", [
    (48, "reference", list(range(32, 48))),  # write position 16: the slice 0..15
    (48, "latest", list(range(32, 48))),
    (32, "latest", list(range(16, 32))),     # write position 0: the newest 16
    (32, "reference", None),                 # write position 0: a uniform sample of the 32
])
def test_dop_train_step_trains_the_actor_on_the_chosen_batch(monkeypatch, inserted, rule, expect_ids):
    spec = _spec()
    cfg = dop.DOPConfig(actor_batch=rule, off_buffer_size=32, rnn_hidden=4, critic_hidden=4, mixing_embed=2,
                        storage_dtype="float32")
    nets, state = dop.init_state(cfg, spec, jax.random.PRNGKey(0))
    for start in range(0, inserted, 4):
        state = dop.store_episodes(state, _id_episodes_for(spec, range(start, start + 4),
                                                           jax.random.PRNGKey(start)))
    seen = {}

    def spy(actor_params, nets_, critic_params, ep, epsilon, length, chunk=8):
        seen["ids"] = np.asarray(ep.reward[:, 0]).astype(int)
        return jnp.float32(0.0), jax.tree.map(jnp.zeros_like, actor_params)

    monkeypatch.setattr(dop, "actor_loss_and_grad", spy)
    key = jax.random.PRNGKey(5)
    dop.train_step(cfg, nets, state, key, 0.5)
    if expect_ids is not None:
        np.testing.assert_array_equal(seen["ids"], expect_ids)
    else:
        idx, uniform = latest_indices(jax.random.fold_in(key, 1), state.on_buffer, 16, "reference")
        assert bool(uniform) and len(set(seen["ids"].tolist())) == 16
        np.testing.assert_array_equal(seen["ids"], np.asarray(state.on_buffer.data.reward[idx, 0]).astype(int))
        assert sorted(seen["ids"].tolist()) != list(range(16, 32))  # this key's sample is not the newest 16


# ----------------------------------------------------------------------------------------
# Time-limit ends
# ----------------------------------------------------------------------------------------
# Two episodes of a task with a 3-step limit, stored as the rollout stores them: episode 0
# reaches the limit (terminated False everywhere), episode 1 terminates at its step 1.
# Rewards r = [1, 2, 3]; every critic value at slot t is q_t = [10, 20, 30, 40][t] (the same
# for every agent and action); gamma = 0.5.
Q_SLOTS = [10.0, 20.0, 30.0, 40.0]


def _timeout_batch(num_agents=2, num_actions=2) -> Episodes:
    e, t1 = 2, 4
    state = jnp.broadcast_to(jnp.asarray(Q_SLOTS)[None, :, None], (e, t1, 1))
    return Episodes(
        obs=jnp.zeros((e, t1, num_agents, 1)), state=state,
        avail=jnp.ones((e, t1, num_agents, num_actions), bool),
        actions=jnp.zeros((e, t1, num_agents), jnp.int32),
        reward=jnp.array([[1.0, 2.0, 3.0, 0.0], [1.0, 2.0, 0.0, 0.0]]),
        terminated=jnp.array([[0, 0, 0, 0], [0, 1, 0, 0]], bool),
        filled=jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool),
    )


def test_target_terminated_marks_the_last_step_unless_bootstrapping():
    ep = _timeout_batch()
    np.testing.assert_array_equal(np.asarray(target_terminated(ep, False)), [[0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(np.asarray(target_terminated(ep, True)), [[0, 0, 0], [0, 1, 0]])
    assert target_terminated(ep, False).dtype == jnp.float32


class _StateCritic:
    """Every agent's value of every action is the first input feature (the state comes
    first in both DOP's and COMA's critic inputs)."""

    num_actions = 2

    def apply(self, params, x):
        return jnp.broadcast_to(x[..., :1], x.shape[:-1] + (self.num_actions,))


class _EqualMixer:
    def apply(self, params, state):
        return jnp.full(state.shape[:-1] + (2,), 0.5)


# TD(lambda), lambda = 0.5 (so lambda gamma = (1 - lambda) gamma = 0.25):
#   bootstrap:    ret_3 = 40, ret_2 = 10 + 3 + 10 = 23, ret_1 = 5.75 + 2 + 7.5 = 15.25,
#                 ret_0 = 3.8125 + 1 + 5 = 9.8125
#   no bootstrap: ret_3 = 0,  ret_2 = 3, ret_1 = 0.75 + 2 + 7.5 = 10.25, ret_0 = 2.5625 + 1 + 5 = 8.5625
#   terminated episode (both): ret_1 = 2, ret_0 = 0.5 + 1 + 5 = 6.5, masked slot 2: 0
TD_BOOT = [[9.8125, 15.25, 23.0], [6.5, 2.0, 0.0]]
TD_NOBOOT = [[8.5625, 10.25, 3.0], [6.5, 2.0, 0.0]]


@pytest.mark.parametrize("boot,expect", [(True, TD_BOOT), (False, TD_NOBOOT)])
def test_dop_on_policy_targets_at_a_timeout(boot, expect):
    nets = dop.DOPNets(actor=RNNActor(num_actions=2, hidden=4), critic=_StateCritic(), mixer=_EqualMixer())
    cfg = dop.DOPConfig(gamma=0.5, td_lambda=0.5, bootstrap_timeouts=boot)
    for length in (None, jnp.int32(4)):
        y = dop.on_policy_targets(nets, {"critic": None, "mixer": None}, _timeout_batch(), cfg, length)
        np.testing.assert_allclose(np.asarray(y), expect, rtol=1e-6)


# Tree backup, n = 2, lambda_tb = 1, epsilon = 1 (the floored policy is uniform: 1/2 per
# agent, so the trace c = 1/4 and gamma lambda c = 1/8); E_t = Q_t since the values do not
# depend on the action. delta_t = r_t + gamma E_{t+1} - Q_t, y_t = Q_t + delta_t + delta_{t+1} / 8:
#   bootstrap:    delta = [1, -3, 3 + 20 - 30 = -7];  y = [10.625, 16.125, 23]
#   no bootstrap: delta = [1, -3, 3 - 30 = -27];      y = [10.625, 13.625, 3]
#   terminated episode (both): delta = [1 + 10 - 10, 2 - 20], y = [1 + 10 - 18/8, 2, 0]
TB_BOOT = [[10.625, 16.125, 23.0], [8.75, 2.0, 0.0]]
TB_NOBOOT = [[10.625, 13.625, 3.0], [8.75, 2.0, 0.0]]


@pytest.mark.parametrize("boot,expect", [(True, TB_BOOT), (False, TB_NOBOOT)])
def test_dop_tree_backup_targets_at_a_timeout(boot, expect):
    actor = RNNActor(num_actions=2, hidden=4)
    params = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)), jnp.zeros((1, 1 + 2 + 2)))
    nets = dop.DOPNets(actor=actor, critic=_StateCritic(), mixer=_EqualMixer())
    cfg = dop.DOPConfig(gamma=0.5, tb_lambda=1.0, tb_steps=2, bootstrap_timeouts=boot)
    for length in (None, jnp.int32(4)):
        y = dop.off_policy_targets(nets, {"critic": None, "mixer": None}, params, _timeout_batch(), 1.0, cfg,
                                   length)
        np.testing.assert_allclose(np.asarray(y), expect, rtol=1e-6)


@pytest.mark.parametrize("boot,expect", [(True, TD_BOOT), (False, TD_NOBOOT)])
def test_coma_targets_at_a_timeout(boot, expect):
    nets = coma.COMANets(actor=RNNActor(num_actions=2, hidden=4), critic=_StateCritic())
    cfg = coma.COMAConfig(gamma=0.5, td_lambda=0.5, bootstrap_timeouts=boot)
    ep = _timeout_batch()
    inputs = coma.episode_critic_inputs(ep, 2)
    for length in (None, jnp.int32(3)):
        y = coma.critic_targets(nets, None, ep, inputs, cfg, length)  # [E, T, N]: both agents alike
        np.testing.assert_allclose(np.asarray(y), np.repeat(np.asarray(expect)[..., None], 2, -1), rtol=1e-6)


from conftest import set_params as _set  # noqa: E402


@pytest.mark.parametrize("boot", [True, False])
def test_qmix_targets_at_a_timeout(boot):
    # Q_tot = q_0 + q_1 (one-layer hypernets, embed 1: |W1| = [1, 1], b1 = 0, |wf| = 1, V = 0;
    # elu is the identity on the positive sums here); every agent's Q-values are [2, 5]
    # (zero output kernel), so the double-Q bootstrap value is 5 + 5 = 10.
    mixer = qmix.QMixer(num_agents=2, embed=1, hypernet_layers=1)
    mp = jax.tree.map(lambda x: x, mixer.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1, 1))))
    _set(mp, ["hyper_w_1"], kernel=[0.0, 0.0], bias=[1.0, 1.0])
    _set(mp, ["hyper_b_1"], kernel=[0.0], bias=[0.0])
    _set(mp, ["hyper_w_final"], kernel=[0.0], bias=[1.0])
    _set(mp, ["V", "layers_0"], kernel=[0.0], bias=[0.0])
    _set(mp, ["V", "layers_2"], kernel=[0.0], bias=[0.0])
    actor = RNNActor(num_actions=2, hidden=4)
    ap = jax.tree.map(lambda x: x, actor.init(jax.random.PRNGKey(1), jnp.zeros((1, 4)), jnp.zeros((1, 1 + 2 + 2))))
    _set(ap, ["fc2"], kernel=np.zeros((4, 2)), bias=[2.0, 5.0])
    params = {"agent": ap, "mixer": mp}
    nets = qmix.QMIXNets(actor=actor, mixer=mixer)
    cfg = qmix.QMIXConfig(gamma=0.5, hypernet_layers=1, mixing_embed=1, bootstrap_timeouts=boot)
    # y_t = r_t + 0.5 * 10 (1 - term_t): the timed-out episode's last step gets 3 + 5 = 8 with
    # the bootstrap and 3 without; the terminated episode's step 1 gets 2 either way (its
    # slot 2 is masked in the loss: whatever it holds carries no weight).
    y = np.asarray(qmix.episode_targets(nets, params, params, _timeout_batch(), cfg))
    np.testing.assert_allclose(y[0], [6.0, 7.0, 8.0 if boot else 3.0], rtol=1e-6)
    np.testing.assert_allclose(y[1, :2], [6.0, 2.0], rtol=1e-6)


def test_grid_episodes_end_by_the_time_limit_and_are_timeouts():
    limit = 4
    env = make_env("gather", episode_limit=limit)
    actor = RNNActor(num_actions=env.spec.num_actions, hidden=4)
    n, a = env.spec.num_agents, env.spec.num_actions
    params = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)), jnp.zeros((1, env.spec.obs_dim + a + n)))
    ep, stats = collect_episodes(env, actor, params, jax.random.PRNGKey(1), jnp.float32(1.0), 3)
    np.testing.assert_array_equal(np.asarray(stats.length), [limit] * 3)
    assert not bool(jnp.any(ep.terminated))
    last = np.zeros((3, limit))
    last[:, -1] = 1
    np.testing.assert_array_equal(np.asarray(target_terminated(ep, False)), last)
    np.testing.assert_array_equal(np.asarray(target_terminated(ep, True)), np.zeros((3, limit)))


# ----------------------------------------------------------------------------------------
# Options: defaults, errors, --set and config.json
# ----------------------------------------------------------------------------------------
def test_option_defaults_are_the_reference():
    assert dop.DOPConfig().actor_batch == "reference"
    for cls in (dop.DOPConfig, coma.COMAConfig, qmix.QMIXConfig):
        assert cls().bootstrap_timeouts is None  # resolved by TrainConfig from the environment
        for env, want in (("3m", False), ("2s3z", False), ("gather", True), ("spread", True)):
            # SMAX: the reference's SMAC setting; grid tasks: an unobserved time limit (config.py)
            assert TrainConfig(env=EnvConfig(env), learner=cls()).learner.bootstrap_timeouts is want, (cls, env)
        explicit = TrainConfig(env=EnvConfig("gather"), learner=cls(bootstrap_timeouts=False))
        assert explicit.learner.bootstrap_timeouts is False  # an explicit choice is kept


@pytest.mark.parametrize("cls,kwargs,shown,accepted", [
    (dop.DOPConfig, {"actor_batch": "newest"}, "'newest'", "reference, latest"),
    (dop.DOPConfig, {"bootstrap_timeouts": "yes"}, "'yes'", "true or false"),
    (coma.COMAConfig, {"bootstrap_timeouts": 1}, "1", "true or false"),
    (qmix.QMIXConfig, {"bootstrap_timeouts": "maybe"}, "'maybe'", "true or false"),
])
def test_option_errors_name_field_value_and_accepted(cls, kwargs, shown, accepted):
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    msg = str(err.value)
    assert f"learner.{next(iter(kwargs))}" in msg and shown in msg and accepted in msg


@pytest.mark.parametrize("learner", ["dop", "coma", "qmix"])
def test_options_through_set_and_config_json(learner):
    from tram.learners import LEARNER_CONFIGS

    base = TrainConfig(env=EnvConfig("gather"), learner=LEARNER_CONFIGS[learner]())
    sets = ["learner.bootstrap_timeouts=false"] + (["learner.actor_batch=latest"] if learner == "dop" else [])
    cfg = TrainConfig.from_dict(apply_overrides(base.to_dict(), sets))
    assert cfg.learner.bootstrap_timeouts is False
    if learner == "dop":
        assert cfg.learner.actor_batch == "latest"
    d = cfg.to_dict()["learner"]
    assert d["bootstrap_timeouts"] is False
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
