"""The experiment workflow end to end: a sweep killed with SIGKILL resumes (finished cells
skipped, the interrupted one resumed from its checkpoint) and ends with the same metrics as
an uninterrupted sweep; corrupt files are reported; bad sweep files name the key; the Ray
backend runs a two-cell sweep; the report reads the store."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tram.experiments import store
from tram.experiments.sweep import SweepError, expand_grid, load_sweep, run_sweep

TINY = {
    "envs": ["gather"],
    "learners": ["dop"],
    "methods": ["none", "random"],
    "seeds": 2,
    "steps": 1500,
    "eval_interval": 250,
    "test_episodes": 4,
    "set": {"learner.off_buffer_size": 64, "learner.epsilon_anneal_steps": 1000, "learner.rnn_hidden": 16,
            "learner.critic_hidden": 32, "learner.mixing_embed": 8},
}


def _metrics(root: Path) -> dict[str, dict]:
    return {p.name: store.read_metrics(p / "metrics.csv") for p in store.find_runs(root)}


def _tram(*args):
    return [str(Path(sys.executable).parent / "tram"), *args]


# slow: tests/test_reliability_faults.py kills single runs mid-window in the default run
# (SIGKILL, Ctrl-C, a kill between the rows and the checkpoint); this one kills a whole sweep
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_mid_sweep_then_rerun_equals_uninterrupted(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(TINY))
    killed = tmp_path / "killed"
    cmd = _tram("sweep", str(sweep_file), "--out", str(killed), "--checkpoint-every", "1e-9")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once the first cell has finished and the second has written a checkpoint.
    deadline = time.time() + 600
    while time.time() < deadline:
        runs = store.find_runs(killed) if killed.exists() else []
        done = [r for r in runs if store.run_status(r) == "done"]
        ckpt = [r for r in runs if (r / "checkpoint" / "meta.json").exists()]
        if done and ckpt:
            break
        if proc.poll() is not None:
            pytest.fail("the sweep finished before it could be killed; make TINY longer")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    statuses = sorted(store.run_status(r) for r in store.find_runs(killed))
    assert statuses == ["done", "partial"], statuses
    first_done = [r for r in store.find_runs(killed) if store.run_status(r) == "done"][0]
    mtime = (first_done / "summary.json").stat().st_mtime_ns

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[skip]" in out.stdout
    assert (first_done / "summary.json").stat().st_mtime_ns == mtime, "a finished run was redone"

    clean = tmp_path / "clean"
    results = run_sweep(load_sweep(sweep_file), clean, log=lambda *_: None)
    assert not any(r.error for r in results)
    a, b = _metrics(killed), _metrics(clean)
    assert sorted(a) == sorted(b)
    for name in a:
        for col in a[name]:
            np.testing.assert_array_equal(a[name][col], b[name][col], err_msg=f"{name}: {col}")


def test_corrupt_checkpoint_is_reported_not_used(tmp_path):
    from tram.config import TrainConfig
    from tram.experiments.runner import train

    cfg = expand_grid({**TINY, "methods": ["none"], "seeds": 1})[0]
    run_dir = tmp_path / store.run_name(cfg.to_dict())
    run_dir.mkdir(parents=True)
    store.write_json_atomic(run_dir / "config.json", cfg.to_dict())
    store.save_checkpoint(run_dir, 1, {"leaf_00000": np.zeros(3)}, {"num_leaves": 1, "rows": []})
    npz = next((run_dir / "checkpoint").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:20])  # truncated
    with pytest.raises(store.CorruptRunError, match="checkpoint"):
        train(TrainConfig.from_dict(cfg.to_dict()), tmp_path, progress=False, log=lambda *_: None)


def test_truncated_metrics_is_reported(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    header = ",".join(store.METRIC_COLUMNS)
    (run / "metrics.csv").write_text(header + "\n0,0,1.0\n")
    with pytest.raises(store.CorruptRunError, match="metrics.csv"):
        store.read_metrics(run / "metrics.csv")


@pytest.mark.parametrize("spec,needle", [
    ({**TINY, "envz": ["gather"]}, "envz"),
    ({**TINY, "methods": ["var", "bogus"]}, "bogus"),
    ({**TINY, "envs": ["nowhere"]}, "nowhere"),
    ({**TINY, "f_a": [1.5], "methods": ["var"]}, "f_a"),
    ({**TINY, "seeds": "many"}, "seeds"),
    ({k: v for k, v in TINY.items() if k != "envs"}, "envs"),
    ({**TINY, "set": {"learner.no_such_field": 1}}, "no_such_field"),
])
def test_bad_sweep_files_name_the_key(spec, needle):
    with pytest.raises(SweepError, match=needle):
        expand_grid(spec)


def test_clean_cells_are_not_repeated_over_budgets():
    configs = expand_grid({**TINY, "methods": ["none", "var"], "f_a": [0.5, 1.0], "kl_u": [2, 6]})
    assert sum(c.attack.method == "none" for c in configs) == 1
    assert sum(c.attack.method == "var" for c in configs) == 4


@pytest.mark.timeout(900)
def test_ray_backend_runs_a_two_cell_sweep(tmp_path):
    ray = pytest.importorskip("ray")
    # COMA: the cheapest of the learners to compile, twice at once in two Ray workers
    configs = expand_grid({**TINY, "learners": ["coma"], "steps": 500,
                           "set": {"learner.epsilon_anneal_steps": 1000, "learner.rnn_hidden": 16,
                                   "learner.critic_hidden": 32}})
    try:
        results = run_sweep(configs, tmp_path / "runs", backend="ray", log=lambda *_: None)
    finally:
        ray.shutdown()
    assert len(results) == 2 and not any(r.error for r in results), [r.error for r in results]
    assert all(store.run_status(Path(r.run_dir)) == "done" for r in results)
    # and the report reads that store
    from tram.report import make_report

    paths = make_report(tmp_path / "runs", tmp_path / "report", log=lambda *_: None)
    assert any(p.suffix == ".png" for p in paths)


@pytest.mark.timeout(600)
def test_smax_run_with_unequal_episode_lengths_is_reported(tmp_path):
    """SMAX seeds cross an evaluation point at different env steps; the store must still
    accept the run (evaluations are recorded at their nominal step) and the report use it."""
    from tram.config import TrainConfig
    from tram.experiments.runner import train
    from tram.report import make_report

    spec = {"envs": ["3m"], "learners": ["coma"], "methods": ["none"], "seeds": 2, "steps": 1200,
            "eval_interval": 400, "test_episodes": 4, "set": {"learner.rnn_hidden": 16, "learner.critic_hidden": 32}}
    cfg = expand_grid(spec)[0]
    run_dir = train(TrainConfig.from_dict(cfg.to_dict()), tmp_path / "runs", progress=False, log=lambda *_: None)
    m = store.read_metrics(run_dir / "metrics.csv")
    assert sorted(set(m["env_steps"].tolist())) == [0, 400, 800, 1200]
    actual = store.load_run(run_dir).summary["env_steps_actual"]
    assert all(v >= 1200 for v in actual.values())
    paths = make_report(tmp_path / "runs", tmp_path / "report", log=lambda *_: None)
    assert any(p.name.startswith("curves_coma_smax") for p in paths)


def test_reproduce_dry_run_prints_the_plan():
    """In-process (typer's CliRunner: the console script's start-up is tested in
    tests/test_reliability_inputs.py); ``stdout``/``stderr``/``returncode`` as a subprocess."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from tram.cli import app

    def run(*args):
        r = CliRunner().invoke(app, ["reproduce", *args])
        return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)

    res = run("paper", "--maps", "3m", "--seeds", "2", "--steps", "1e5", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "paper:" in res.stdout and "estimated" in res.stdout, res.stdout
    res = run("fig1", "--map", "gather", "--seeds", "3", "--steps", "1e5", "--attack-start", "5e4",
              "--set", "learner.num_envs=2", "--dry-run")
    assert res.returncode == 0, res.stderr
    # the clean run trains 1e5 steps per seed, each attacked run only the 5e4 after the branch point
    assert "fig1: 3 runs, 600,000 env steps in total" in res.stdout, res.stdout
    res = run("fig1", "--steps", "1e5", "--attack-start", "2e5", "--dry-run")
    assert res.returncode != 0 and "--attack-start" in res.stderr and "200,000" in res.stderr
    res = run("fig9")
    assert res.returncode != 0 and "fig9" in res.stderr
    res = run("fig1", "--set", "learner.num_envz=2", "--dry-run")
    assert res.returncode != 0 and "num_envz" in res.stderr


def test_compile_cache_follows_the_environment_variable(monkeypatch, tmp_path):
    import jax

    from tram.experiments import runner

    old, old_max = jax.config.jax_compilation_cache_dir, jax.config.jax_compilation_cache_max_size
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_compilation_cache_max_size", -1)
        monkeypatch.setenv(runner.COMPILE_CACHE_ENV, "off")
        assert runner.enable_compile_cache() is None and not jax.config.jax_compilation_cache_dir
        monkeypatch.setenv(runner.COMPILE_CACHE_ENV, str(tmp_path / "cc"))
        assert runner.enable_compile_cache() == str(tmp_path / "cc") == jax.config.jax_compilation_cache_dir
        assert jax.config.jax_compilation_cache_max_size == runner.COMPILE_CACHE_MAX_BYTES  # capped
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))  # the user's own wins
        assert runner.enable_compile_cache() == str(tmp_path / "mine")
    finally:
        jax.config.update("jax_compilation_cache_dir", old)
        jax.config.update("jax_compilation_cache_max_size", old_max)


@pytest.mark.parametrize("steps,interval,targets", [
    (2000, 100_000, (0, 2000)),          # once rounded up to 100,000 steps
    (1, 10_000, (0, 1)),                 # once 10,000
    (2500, 1000, (0, 1000, 2000, 2500)),  # a shorter last window
    (3000, 1000, (0, 1000, 2000, 3000)),
])
def test_evaluation_points_end_at_steps(steps, interval, targets):
    from tram.config import EnvConfig, RunConfig, TrainConfig
    from tram.experiments.program import make_train

    cfg = TrainConfig(env=EnvConfig("gather"), run=RunConfig(steps=steps, seeds=(0,), eval_interval=interval))
    assert make_train(cfg).window_targets == targets
