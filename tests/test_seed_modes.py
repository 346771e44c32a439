"""``run.seed_mode``: vmapped and mapped seeds give the same numbers per seed.

Under ``vmap`` every data-dependent loop runs to the slowest seed with the others masked;
under ``map`` each seed runs alone. Masked work must not leak into a seed's numbers, so
the per-seed metrics and final parameters agree. Tolerance: rtol 1e-5, atol 1e-6 (a
batched matmul may sum in another order than a single one; over a few hundred updates the
rounding differences stay at that level on the grid task).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tram.attacks.perturb import AttackConfig
from tram.config import SEED_MODES, EnvConfig, RunConfig, TrainConfig
from tram.experiments.program import make_train, over_seeds
from tram.learners import coma, dop
from tram.validation import ConfigError

SEEDS = (0, 1)


def _config(learner):
    return TrainConfig(env=EnvConfig("gather"), learner=learner, attack=AttackConfig(),
                       run=RunConfig(steps=1000, seeds=SEEDS, eval_interval=500, test_episodes=4))


def _run(config, mode):
    prog = make_train(config)
    init, run_window = over_seeds(prog, mode)
    state = init(jnp.stack([jax.random.PRNGKey(s) for s in SEEDS]))
    metrics = []
    for target in prog.window_targets:
        state, m = run_window(state, jnp.int32(target))
        metrics.append(m)
    return state, metrics


@pytest.mark.timeout(900)
@pytest.mark.parametrize("learner", [
    dop.DOPConfig(epsilon_anneal_steps=2000, off_buffer_size=64, buffer_size=32, off_batch_size=16, batch_size=8,
                  rnn_hidden=16, critic_hidden=32, mixing_embed=8),
    pytest.param(coma.COMAConfig(epsilon_anneal_steps=2000, rnn_hidden=16, critic_hidden=32), marks=pytest.mark.slow),
], ids=["dop", "coma"])
def test_seed_modes_agree_per_seed(learner):
    config = _config(learner)
    s_v, m_v = _run(config, "vmap")
    s_m, m_m = _run(config, "map")
    assert float(np.sum(np.asarray(m_v[-1].updates))) > 0, "the run must include learner updates"
    for a, b in zip(m_v, m_m):
        np.testing.assert_array_equal(np.asarray(a.env_steps), np.asarray(b.env_steps))
        np.testing.assert_array_equal(np.asarray(a.updates), np.asarray(b.updates))
        for f in ("test_return", "train_return", "critic_loss", "actor_loss"):
            np.testing.assert_allclose(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), rtol=1e-5, atol=1e-6,
                                       err_msg=f)
        for k in a.work:
            np.testing.assert_array_equal(np.asarray(a.work[k]), np.asarray(b.work[k]), err_msg=k)
    for a, b in zip(jax.tree.leaves((s_v.learner.actor_params, s_v.learner.critic_params)),
                    jax.tree.leaves((s_m.learner.actor_params, s_m.learner.critic_params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_seed_mode_is_validated_and_not_part_of_the_run_identity():
    with pytest.raises(ConfigError, match="run.seed_mode: 'pmap' is not accepted; accepted: vmap, map"):
        RunConfig(seed_mode="pmap")
    assert SEED_MODES == ("vmap", "map")
    a = TrainConfig(run=RunConfig(seed_mode="vmap")).to_dict()
    b = TrainConfig(run=RunConfig(seed_mode="map")).to_dict()
    assert a == b and "seed_mode" not in a["run"]
    assert TrainConfig.from_dict({"run": {"seed_mode": "map"}}).run.seed_mode == "map"
    with pytest.raises(ValueError, match="run.seed_mode"):
        over_seeds(make_train(_config(dop.DOPConfig())), "pmap")


def test_seed_mode_is_an_execution_setting_settable_everywhere():
    """``--set run.seed_mode=vmap`` reaches the config (CLI, sweeps, reproduce all build through
    build_train_config), survives the hand-over to a sweep worker (``to_dict(execution=True)``),
    and stays out of the run's identity (config.json and the hash: same run directory)."""
    from tram.config import TrainConfig, build_train_config
    from tram.experiments import store

    v = build_train_config("gather", "dop", sets=["run.seed_mode=vmap"])
    m = build_train_config("gather", "dop")
    assert (v.run.seed_mode, m.run.seed_mode) == ("vmap", "map")
    assert "seed_mode" not in v.to_dict()["run"]
    assert TrainConfig.from_dict(v.to_dict(execution=True)).run.seed_mode == "vmap"
    assert store.run_name(v.to_dict()) == store.run_name(m.to_dict())
