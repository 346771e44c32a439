"""The named pieces of tram.experiments.runner.train: preparing the run directory, where the
window loop starts (fresh, resumed), and the summary of a finished run, on hand-built input."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import pytest

from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.experiments import store
from tram.experiments.runner import METRIC_COLUMNS, _save, prepare_run_dir, run_summary, start_point
from tram.learners.dop import DOPConfig

CONFIG = TrainConfig(env=EnvConfig("gather"), learner=DOPConfig(), run=RunConfig(steps=300, eval_interval=100,
                                                                                  seeds=(3, 7)))
PROGRAM = SimpleNamespace(attacked_agent=None, window_targets=(0, 100, 200, 300))


class ToyState(NamedTuple):
    env_steps: object
    w: object


def _init(keys):
    return ToyState(env_steps=jnp.zeros(keys.shape[0], jnp.int32), w=jnp.ones((keys.shape[0], 2)))


def _row(seed, steps, ret):
    return [seed, steps, ret, math.nan, 0.5, -1.0] + [math.nan] * (len(METRIC_COLUMNS) - 6)


def test_run_summary_counts_the_steps_this_process_took():
    rows = [_row(3, 200, 1.0), _row(7, 200, 2.0), _row(3, 300, 4.0), _row(7, 300, 6.0)]
    s = run_summary(CONFIG, PROGRAM, rows, np.asarray([320, 340]), 150, 2.0, 1.5, None)
    # (320 + 340) steps in all, of which 2 seeds x 150 were taken before this process resumed
    assert s["steps_per_second"] == pytest.approx((660 - 300) / 2.0)
    assert s["env_steps_actual"] == {"3": 320, "7": 340}
    assert s["final"]["3"]["env_steps"] == 300 and s["final"]["7"]["test_return"] == 6.0
    assert list(s["final"]["3"]) == list(METRIC_COLUMNS[1:])
    assert (s["status"], s["wall_time_s"], s["first_window_s_incl_compile"], s["attacked_agent_index"],
            s["branched_from"], s["seed_mode"]) == ("done", 2.0, 1.5, None, None, CONFIG.run.seed_mode)


def test_prepare_run_dir_removes_stale_temp_files_and_clears_on_restart(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f"{store._TMP_PREFIX}metrics.csv").write_text("half")
    cfg = CONFIG.to_dict()
    assert prepare_run_dir(run_dir, cfg, restart=False) == "missing"
    assert store.stale_temp_files(run_dir) == []
    store.write_json_atomic(run_dir / store.CONFIG_FILE, {**cfg, store.HASH_KEY: store.config_hash(cfg)})
    store.write_json_atomic(run_dir / store.SUMMARY_FILE, {"status": "done"})
    assert prepare_run_dir(run_dir, cfg, restart=False) == "done"
    assert prepare_run_dir(run_dir, cfg, restart=True) == "partial"  # config.json is kept
    assert not (run_dir / store.SUMMARY_FILE).exists()


def test_start_point_fresh_then_from_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keys = jnp.zeros((2, 2), jnp.uint32)
    logs = []
    fresh = start_point(CONFIG, PROGRAM, run_dir, tmp_path, _init, keys, "missing", False, logs.append)
    assert (fresh.window, fresh.rows, fresh.branched_from, fresh.from_checkpoint) == (0, [], None, False)
    np.testing.assert_array_equal(np.asarray(fresh.state.w), np.ones((2, 2)))

    saved = ToyState(env_steps=jnp.asarray([120, 130], jnp.int32), w=jnp.full((2, 2), 5.0))
    rows = [_row(3, 0, 1.0), _row(7, 0, 2.0), _row(3, 100, 3.0), _row(7, 100, 4.0)]
    _save(run_dir, 2, saved, rows, branched_from=None, num_samples=0)
    resumed = start_point(CONFIG, PROGRAM, run_dir, tmp_path, _init, keys, "partial", False, logs.append)
    assert (resumed.window, resumed.from_checkpoint) == (2, True)
    np.testing.assert_array_equal(np.asarray(resumed.state.env_steps), [120, 130])
    np.testing.assert_array_equal(np.asarray(resumed.state.w), np.full((2, 2), 5.0))
    assert len(resumed.rows) == 4 and math.isnan(resumed.rows[0][3]) and resumed.rows[3][2] == 4.0
    assert any("resuming at evaluation 2 of 4" in m for m in logs)
    # restart ignores the checkpoint
    again = start_point(CONFIG, PROGRAM, run_dir, tmp_path, _init, keys, "partial", True, logs.append)
    assert again.window == 0 and not again.from_checkpoint

    # a checkpoint of another state structure is refused, naming the run
    def other_init(keys):
        return (jnp.zeros(2),)

    with pytest.raises(store.CorruptRunError, match="checkpoint does not match this configuration"):
        start_point(CONFIG, PROGRAM, run_dir, tmp_path, other_init, keys, "partial", False, logs.append)
