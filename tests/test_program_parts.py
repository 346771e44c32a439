"""The training program's contracts and named pieces (tram.types.Learner, tram.learners.LEARNERS,
tram.experiments.program): the learner record's construction errors, and the window-metric
rules on hand-built window sums with hand-computed expected values."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tram.attacks.perturb import AttackConfig
from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.experiments.program import (
    ATTACK_FIELDS, NAN_WITHOUT_ATTACK_STEPS, SAMPLES_PER_WINDOW, WindowAcc, _zero_window, accumulate_window,
    check_learner_state, learner_update, make_attack_hook, make_train, window_metrics, window_targets,
)
from tram.learners import LEARNER_CONFIGS, LEARNERS, coma, dop, learner_record, qmix
from tram.learners.episodes import buffer_init, empty_episodes
from tram.learners.rollout import AttackSample, EvalStats, RolloutStats
from tram.types import AttackStepStats, Learner

REQUIRED = ("name", "config", "make_nets", "init_state", "store_episodes", "ready_to_train", "train_step",
            "attack_q_fn", "buffer_bytes", "policy_gradient")


def _fields_of(rec: Learner) -> dict:
    return {f.name: getattr(rec, f.name) for f in dataclasses.fields(Learner)}


# ----------------------------------------------------------------------------------------
# The learner record and the registry
# ----------------------------------------------------------------------------------------
def test_registry_holds_each_modules_record_and_the_configs_derive_from_it():
    assert LEARNERS == {"dop": dop.LEARNER, "coma": coma.LEARNER, "qmix": qmix.LEARNER}
    assert LEARNER_CONFIGS == {"dop": dop.DOPConfig, "coma": coma.COMAConfig, "qmix": qmix.QMIXConfig}
    assert learner_record("coma") is coma.LEARNER
    with pytest.raises(ValueError, match=r"learner.name: 'ppo' is not accepted; accepted: dop, coma, qmix"):
        learner_record("ppo")
    # the actor-critic learners expose their last actor gradient; QMIX has none
    assert dop.LEARNER.policy_gradient is dop.policy_gradient and coma.LEARNER.policy_gradient is coma.policy_gradient
    assert qmix.LEARNER.policy_gradient is None
    assert (dop.LEARNER.select_actions, dop.LEARNER.worst_q_source) == (None, "critic")


@pytest.mark.parametrize("missing", REQUIRED)
def test_a_record_missing_a_field_is_a_one_line_type_error_naming_it(missing):
    kwargs = _fields_of(dop.LEARNER)
    del kwargs[missing]
    with pytest.raises(TypeError) as err:
        Learner(**kwargs)
    msg = str(err.value)
    assert f"missing field {missing!r}" in msg and "\n" not in msg


def test_policy_gradient_must_be_stated_but_may_be_none():
    kwargs = _fields_of(dop.LEARNER)
    rec = Learner(**{**kwargs, "policy_gradient": None})
    assert rec.policy_gradient is None and rec.select_actions is None and rec.worst_q_source == "critic"


@pytest.mark.parametrize("field,value,shown", [
    ("train_step", None, "field 'train_step' must be callable"),
    ("select_actions", 3, "field 'select_actions' must be callable or None"),
    ("config", dop.DOPConfig(), "field 'config' must be a class"),
    ("name", "my learner", "'my learner' is not accepted"),
    ("config", coma.COMAConfig, "has name default 'coma'"),
])
def test_bad_record_fields_are_type_errors(field, value, shown):
    with pytest.raises(TypeError, match=shown):
        Learner(**{**_fields_of(dop.LEARNER), field: value})


def test_bad_worst_q_source_names_the_accepted_values():
    with pytest.raises(ValueError, match=r"worst_q_source 'mixer' is not accepted; accepted: critic, actor"):
        Learner(**{**_fields_of(qmix.LEARNER), "worst_q_source": "mixer"})


def test_a_state_without_the_fields_the_program_reads_is_a_type_error():
    class NoCritic(NamedTuple):
        actor_params: Any

    with pytest.raises(TypeError, match=r"Learner 'dop': its state has no field 'critic_params'"):
        check_learner_state(dop.LEARNER, NoCritic(actor_params=0))
    with pytest.raises(TypeError, match="state a NamedTuple"):
        check_learner_state(dop.LEARNER, {"actor_params": 0, "critic_params": 0})


def test_make_train_refuses_a_gradient_method_for_a_learner_without_policy_gradient():
    config = TrainConfig(env=EnvConfig("gather"), learner=dop.DOPConfig(), attack=AttackConfig(method="var"))
    no_grad = dataclasses.replace(dop.LEARNER, policy_gradient=None)
    with pytest.raises(ValueError, match=r"'var' needs a policy gradient, which learner 'dop' does not provide"):
        make_train(config, learner=no_grad)


def test_attack_hook_reads_the_policy_gradient_from_the_record():
    cfg = dop.DOPConfig(buffer_size=4, batch_size=2, off_buffer_size=4, off_batch_size=2)
    from tram.envs import make_env

    spec = make_env("gather").spec
    nets, ls = dop.init_state(cfg, spec, jax.random.PRNGKey(0))
    ls = ls._replace(prev_actor_grad=jax.tree.map(jnp.ones_like, ls.prev_actor_grad), has_prev_grad=jnp.bool_(True))
    attack = AttackConfig(method="var")
    hook = make_attack_hook(dop.LEARNER, nets, attack, "perturb", 1, ls, jnp.int32(0))
    assert hook.perturb == "perturb" and hook.agent == 1 and bool(hook.has_prev_grad)
    assert all(np.all(np.asarray(x) == 1.0) for x in jax.tree.leaves(hook.prev_actor_grad))
    q, mix = hook.q_fn(jnp.zeros(spec.state_dim), jnp.zeros((spec.num_agents, spec.obs_dim)),
                       jnp.zeros(spec.num_agents, jnp.int32), jnp.zeros(spec.num_agents, jnp.int32))
    assert q.shape == (spec.num_actions,) and mix.shape == ()
    qnets, qls = qmix.init_state(qmix.QMIXConfig(buffer_size=4, batch_size=2), spec, jax.random.PRNGKey(0))
    qhook = make_attack_hook(qmix.LEARNER, qnets, AttackConfig(method="worst_q"), "p", 0, qls, jnp.int32(0))
    assert qhook.prev_actor_grad is None and not bool(qhook.has_prev_grad)


# ----------------------------------------------------------------------------------------
# learner_update: the update under a conditional, buffers outside it
# ----------------------------------------------------------------------------------------
class ToyState(NamedTuple):
    actor_params: Any
    critic_params: Any
    buffer: Any
    steps: jax.Array


def _toy_learner(threshold: int) -> Learner:
    def train_step(cfg, nets, s, key, epsilon):
        # reads the buffer (it must be passed back in) and counts the update
        return s._replace(steps=s.steps + 1), {"critic_loss": s.buffer.count.astype(jnp.float32) + epsilon,
                                               "actor_loss": jnp.float32(2.0)}

    return Learner(name="toy", config=type("ToyConfig", (), {"name": "toy"}), make_nets=lambda *a: None,
                   init_state=lambda *a: None, store_episodes=lambda s, e: s,
                   ready_to_train=lambda cfg, s: s.buffer.count >= threshold, train_step=train_step,
                   attack_q_fn=lambda *a: None, buffer_bytes=lambda *a: 0, policy_gradient=None)


@pytest.mark.parametrize("threshold,ready", [(3, True), (4, False)])
def test_learner_update_trains_only_when_ready_and_keeps_the_buffers(threshold, ready):
    buf = buffer_init(empty_episodes(4, 2, 2, 3, 3, 2))._replace(count=jnp.int32(3))
    ls = ToyState(actor_params=jnp.float32(0.0), critic_params=jnp.float32(0.0), buffer=buf, steps=jnp.int32(0))
    new, info, was_ready = jax.jit(lambda s: learner_update(_toy_learner(threshold), None, None, s,
                                                            jax.random.PRNGKey(0), jnp.float32(0.5),
                                                            ("actor_loss", "critic_loss")))(ls)
    assert bool(was_ready) == ready
    assert int(new.steps) == (1 if ready else 0) and int(new.buffer.count) == 3
    assert float(info["critic_loss"]) == (3.5 if ready else 0.0) and float(info["actor_loss"]) == (2.0 if ready else 0.0)


def test_window_targets_end_exactly_at_steps():
    assert window_targets(RunConfig(steps=1000, eval_interval=300)) == (0, 300, 600, 900, 1000)
    assert window_targets(RunConfig(steps=900, eval_interval=300)) == (0, 300, 600, 900)


# ----------------------------------------------------------------------------------------
# The window accumulator and the window-metric rules, on hand-built input
# ----------------------------------------------------------------------------------------
A = 3
INFO = ("actor_loss", "critic_loss", "critic_timesteps", "my_counter")


def _stats(**kw) -> AttackStepStats:
    base = dict(attacked=0.0, stealth_loglik=0.0, kl=0.0, beta=0.0, saturated=0.0, fallback=0.0,
                pmax_before=0.0, pmax_after=0.0)
    base.update(kw)
    return AttackStepStats(**{k: jnp.float32(v) for k, v in base.items()})


def _window(*, episodes=0.0, train_return=0.0, attack=None, attack_steps=0.0, single_steps=0.0, kl_max=0.0,
            updates=0.0, info=None) -> WindowAcc:
    w = _zero_window(INFO, A)
    info = {k: jnp.float32(v) for k, v in {**{k: 0.0 for k in INFO}, **(info or {})}.items()}
    return w._replace(episodes=jnp.float32(episodes), train_return=jnp.float32(train_return),
                      attack=attack if attack is not None else _stats(), attack_steps=jnp.float32(attack_steps),
                      single_steps=jnp.float32(single_steps), kl_max=jnp.float32(kl_max),
                      updates=jnp.float32(updates), info=info)


EVAL = EvalStats(episode_return=jnp.asarray([1.0, 2.0, 6.0], jnp.float32), won=jnp.asarray([0.0, 1.0, 1.0]))


def _val(m, f) -> float:
    return float(getattr(m, f))


def test_window_metrics_with_attack_steps():
    # 4 steps with >= 2 actions (1 of them saturated), 1 single-action step; 2 episodes, 2 updates
    a = _stats(attacked=2.0, stealth_loglik=-2.0, kl=0.8, beta=3.0, saturated=1.0, fallback=1.0,
               pmax_before=2.4, pmax_after=2.0)
    w = _window(episodes=2.0, train_return=5.0, attack=a, attack_steps=4.0, single_steps=1.0, kl_max=0.3,
                updates=2.0, info={"critic_loss": 3.0, "actor_loss": 1.0, "critic_timesteps": 10.0,
                                   "my_counter": 7.0})
    m = window_metrics(w, jnp.int32(1234), EVAL, train_attack=True)
    expected = {
        "env_steps": 1234, "test_return": 3.0, "test_won": 2.0 / 3.0, "train_return": 2.5,
        "critic_loss": 1.5, "actor_loss": 0.5,
        "stealth_loglik": -2.0 / 5.0,  # every step: the single-action step adds 0 over 5 steps
        "stealth_loglik_alive": -2.0 / 4.0,
        "kl_mean": 0.2, "kl_max": 0.3,
        "beta_mean": 3.0 / 3.0,  # over the 4 - 1 non-saturated steps
        "saturated_frac": 0.25,
        "fallback_frac": (1.0 + 1.0) / 5.0,  # 1 fallback + 1 single-action step over all 5 steps
        "attacked_frac": 0.5, "pmax_before": 0.6, "pmax_after": 0.5, "updates": 2.0,
    }
    for f, v in expected.items():
        assert _val(m, f) == pytest.approx(v, rel=1e-6), f
    assert set(m.work) == {"critic_timesteps"} and float(m.work["critic_timesteps"]) == 10.0


def test_window_metrics_without_attack_steps_are_nan_but_single_steps_count():
    # the poisoned agent only had single-action steps (e.g. dead); no episode, no update
    w = _window(attack_steps=0.0, single_steps=3.0)
    m = window_metrics(w, jnp.int32(0), EVAL, train_attack=True)
    for f in NAN_WITHOUT_ATTACK_STEPS + ("stealth_loglik_alive", "train_return", "critic_loss", "actor_loss"):
        assert math.isnan(_val(m, f)), f
    assert _val(m, "stealth_loglik") == 0.0  # 3 steps of exact value 0
    assert _val(m, "fallback_frac") == 1.0  # all 3 steps admit no perturbation
    assert _val(m, "updates") == 0.0


def test_window_metrics_with_no_step_at_all_are_nan():
    m = window_metrics(_window(episodes=4.0, train_return=-2.0), jnp.int32(0), EVAL, train_attack=True)
    for f in ATTACK_FIELDS:
        assert math.isnan(_val(m, f)), f
    assert _val(m, "train_return") == -0.5


def test_beta_mean_is_nan_when_every_step_saturated():
    a = _stats(kl=0.4, saturated=2.0, beta=0.0, attacked=1.0)
    m = window_metrics(_window(attack=a, attack_steps=2.0), jnp.int32(0), EVAL, train_attack=True)
    assert math.isnan(_val(m, "beta_mean"))
    assert _val(m, "saturated_frac") == 1.0 and _val(m, "kl_mean") == pytest.approx(0.2)
    assert _val(m, "fallback_frac") == 0.0


def test_window_metrics_without_a_training_attack_has_nan_attack_columns():
    a = _stats(attacked=2.0, stealth_loglik=-2.0, kl=0.8)
    w = _window(episodes=1.0, train_return=3.0, attack=a, attack_steps=4.0, updates=1.0,
                info={"critic_loss": 2.0, "actor_loss": -1.0})
    m = window_metrics(w, jnp.int32(5), EVAL, train_attack=False)
    for f in ATTACK_FIELDS:
        assert math.isnan(_val(m, f)), f
    assert (_val(m, "train_return"), _val(m, "critic_loss"), _val(m, "actor_loss")) == (3.0, 2.0, -1.0)


def _rollout(sample_valid: bool, pi0: float, **kw) -> RolloutStats:
    sample = AttackSample(pi=jnp.full((A,), pi0, jnp.float32), delta_hat=jnp.full((A,), -pi0, jnp.float32),
                          avail=jnp.ones((A,), bool), valid=jnp.bool_(sample_valid))
    base = dict(episode_return=jnp.asarray([1.0, 2.0]), won=jnp.zeros(2), length=jnp.asarray([3, 4], jnp.int32),
                attack=_stats(attacked=1.0, kl=0.5), attack_steps=jnp.float32(2.0),
                attack_single_action_steps=jnp.float32(1.0), attack_kl_max=jnp.float32(0.4), sample=sample)
    base.update(kw)
    return RolloutStats(**base)


def test_accumulate_window_sums_and_keeps_the_last_valid_samples_in_a_ring():
    info = {k: jnp.float32(i + 1.0) for i, k in enumerate(INFO)}
    w = _zero_window(INFO, A)
    w = accumulate_window(w, _rollout(True, 0.1), 2, jnp.bool_(True), info)
    w = accumulate_window(w, _rollout(False, 0.2, attack_kl_max=jnp.float32(0.9)), 2, jnp.bool_(False),
                          {k: jnp.float32(0.0) for k in INFO})
    for p in (0.3, 0.4, 0.5, 0.6):
        w = accumulate_window(w, _rollout(True, p), 2, jnp.bool_(True), info)
    assert float(w.episodes) == 12.0 and float(w.train_return) == 18.0
    assert float(w.attack.attacked) == 6.0 and float(w.attack.kl) == 3.0
    assert float(w.attack_steps) == 12.0 and float(w.single_steps) == 6.0
    assert float(w.kl_max) == pytest.approx(0.9) and float(w.updates) == 5.0
    assert {k: float(v) for k, v in w.info.items()} == {k: 5.0 * (i + 1.0) for i, k in enumerate(INFO)}
    # 5 valid samples (0.1, 0.3, 0.4, 0.5, 0.6) into a ring of 4: 0.6 overwrote 0.1 in slot 0
    assert SAMPLES_PER_WINDOW == 4 and int(w.sample_pos) == 1
    np.testing.assert_allclose(np.asarray(w.samples.pi[:, 0]), [0.6, 0.3, 0.4, 0.5], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(w.samples.delta_hat[:, 0]), [-0.6, -0.3, -0.4, -0.5], rtol=1e-6)
    assert np.asarray(w.samples.valid).all()
