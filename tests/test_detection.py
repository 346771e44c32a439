"""Detection of the poisoned agent (tram.detect, docs/detection.md): the monitor score's
zero mean for honest agents, the statistics against hand-worked and closed-form values,
the recording's bit-identity and ``tram detect`` end to end on a tiny real run."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

import tram
from tram.detect import stats
from tram.detect.score import epsilon_greedy_policy, step_increments
from tram.learners.actor import floored_policy

LN2 = math.log(2.0)


# ------------------------------------------------------------------------- the score's mean


def test_increments_of_a_hand_policy():
    """p = (1/2, 1/4, 1/4): H = 1.5 ln 2; u(a0) = ln(1/2) + H = ln2 / 2, u(a1) = u(a2) =
    -ln2 / 2; Var[log p] = (ln 2)^2 / 4."""
    p = jnp.asarray([[0.5, 0.25, 0.25]] * 3)
    u, v = step_increments(p, jnp.asarray([0, 1, 2]))
    np.testing.assert_allclose(np.asarray(u), [LN2 / 2, -LN2 / 2, -LN2 / 2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(v), [LN2 ** 2 / 4] * 3, rtol=1e-6)
    # one available action: log 1 + 0 = 0, no variance
    u1, v1 = step_increments(jnp.asarray([0.0, 1.0, 0.0]), jnp.asarray(1))
    assert float(u1) == 0.0 and float(v1) == 0.0


def _expectations(probs: np.ndarray):
    """Enumerates every action: ``(E_p[u], E_p[u^2], v)`` per row."""
    a = probs.shape[-1]
    us = []
    for action in range(a):
        u, v = step_increments(jnp.asarray(probs), jnp.full(probs.shape[:-1], action, jnp.int32))
        us.append(np.asarray(u, np.float64))
    us = np.stack(us, -1)
    return (probs * us).sum(-1), (probs * us ** 2).sum(-1), np.asarray(v, np.float64)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), num_actions=st.integers(2, 9), eps=st.floats(0.0, 1.0),
       scale=st.floats(0.1, 20.0), greedy=st.booleans())
def test_honest_mean_is_zero_by_enumeration(seed, num_actions, eps, scale, greedy):
    """For random logits, availability and exploration floors, ``sum_a p(a) u(a) = 0`` (the
    honest agent's expected increment) and ``sum_a p(a) u(a)^2`` equals the returned
    conditional variance, under both acting distributions (floored softmax; QMIX's
    epsilon-greedy)."""
    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(16, num_actions)) * scale, jnp.float32)
    avail = rng.random((16, num_actions)) < 0.7
    avail[np.arange(16), rng.integers(0, num_actions, 16)] = True
    policy = epsilon_greedy_policy if greedy else floored_policy
    p = np.asarray(policy(logits, jnp.asarray(avail), jnp.float32(eps)), np.float64)
    mean, second, var = _expectations(p.astype(np.float32))
    # float32 logs of probabilities down to ~1e-20: the sums cancel to ~1e-5
    np.testing.assert_allclose(mean, 0.0, atol=2e-5)
    np.testing.assert_allclose(var, second, rtol=1e-3, atol=2e-5)


def test_honest_mean_is_zero_monte_carlo():
    """Sampling honest actions (200k draws per row): the mean increment is within 4
    standard errors of 0, and the sample variance matches ``v``."""
    key = jax.random.PRNGKey(3)
    logits = jax.random.normal(key, (4, 6)) * 3.0
    avail = jnp.ones((4, 6), bool).at[1, 2].set(False)
    p = floored_policy(logits, avail, jnp.float32(0.05))
    n = 200_000
    actions = jax.random.categorical(jax.random.PRNGKey(4), jnp.log(p), shape=(n, 4))
    u, v = step_increments(jnp.broadcast_to(p, (n, 4, 6)), actions)
    u = np.asarray(u, np.float64)
    se = np.sqrt(np.asarray(v[0], np.float64) / n)
    assert np.all(np.abs(u.mean(0)) < 4 * se), (u.mean(0), se)
    np.testing.assert_allclose(u.var(0), np.asarray(v[0]), rtol=0.03)


# ---------------------------------------------------------------------------- statistics


def test_auroc_hand_example_with_ties():
    """pos (1, 2, 2, 3) vs neg (2, 0): of the 8 pairs, 5 wins and 2 ties -> (5 + 1) / 8."""
    assert stats.auroc([1, 2, 2, 3], [2, 0]) == pytest.approx(0.75)
    assert stats.auroc([1, 1], [1, 1, 1]) == pytest.approx(0.5)
    assert stats.auroc([0], [1]) == 0.0 and stats.auroc([2], [1]) == 1.0
    assert math.isnan(stats.auroc([], [1]))


def test_auroc_of_two_gaussians():
    """X ~ N(d, 1), Y ~ N(0, 1): P(X > Y) = Phi(d / sqrt 2)."""
    rng = np.random.default_rng(0)
    for d in (0.0, 0.5, 1.0, 2.0):
        x, y = rng.normal(d, 1.0, 20_000), rng.normal(0.0, 1.0, 20_000)
        assert stats.auroc(x, y) == pytest.approx(norm.cdf(d / math.sqrt(2.0)), abs=0.01)


def test_bootstrap_resamples_seeds():
    """Two seeds, one perfectly separated and one not: the seed bootstrap's interval spans
    the per-seed AUROCs (1 and 0.5 for equal scores); with identical seeds it is a point."""
    pos = np.asarray([5.0, 5.0, 1.0, 1.0]); pg = np.asarray([0, 0, 1, 1])
    neg = np.asarray([0.0, 0.0, 1.0, 1.0]); ng = np.asarray([0, 0, 1, 1])
    lo, hi = stats.bootstrap_auroc(pos, neg, pg, ng, n_boot=400)
    assert lo <= 0.76 and hi == pytest.approx(1.0)  # all-seed-1 resamples give 0.5, all-seed-0 give 1
    lo, hi = stats.bootstrap_auroc([2.0, 2.0], [1.0, 1.0], [0, 1], [0, 1], n_boot=50)
    assert lo == hi == 1.0


def test_pairwise_mann_whitney_hand_example():
    """Group 0 pos (1, 2, 2, 3) against group 0 neg (2, 0): 5 wins and 2 ties, U = 6, 2U = 12.
    Group 1 pos (0,) against group 0 neg: 0 wins, 1 tie -> 2U = 1; against group 1 neg (5, 5):
    2U = 0; group 0 pos against (5, 5): 2U = 0."""
    twice_u = stats.pairwise_mann_whitney([np.array([1.0, 2, 2, 3]), np.array([0.0])],
                                          [np.array([2.0, 0]), np.array([5.0, 5])])
    assert twice_u.tolist() == [[12, 0], [1, 0]]


def test_group_bootstrap_equals_pooling_the_resampled_groups_bit_for_bit():
    """Every resample's AUROC from the (group, group) counts is the same float as auroc() of
    the pooled resampled episodes (the definition); ties, a group without negatives and
    unequal group sizes included. Same RNG draws, so the interval is the same too."""
    rng = np.random.default_rng(3)
    pos = np.round(rng.normal(0.5, 1.0, 70), 1); pg = rng.integers(0, 4, 70)
    neg = np.round(rng.normal(0.0, 1.0, 55), 1); ng = rng.integers(0, 3, 55)  # group 3: positives only
    groups = np.unique(np.concatenate([pg, ng]))
    by_pos = [pos[pg == g] for g in groups]
    by_neg = [neg[ng == g] for g in groups]
    twice_u = stats.pairwise_mann_whitney(by_pos, by_neg)
    draw = np.random.default_rng(0)
    pooled = []
    for _ in range(300):
        pick = draw.choice(groups, size=len(groups), replace=True)
        p = np.concatenate([by_pos[g] for g in pick]); q = np.concatenate([by_neg[g] for g in pick])
        if p.size and q.size:
            w = np.bincount(pick, minlength=len(groups))
            assert int(w @ twice_u @ w) / (2 * p.size * q.size) == stats.auroc(p, q)
            pooled.append(stats.auroc(p, q))
    assert stats.bootstrap_auroc(pos, neg, pg, ng, n_boot=300) == (float(np.quantile(pooled, 0.025)),
                                                                    float(np.quantile(pooled, 0.975)))
    # a NaN score takes the pooled path, whose AUROC is NaN
    lo, hi = stats.bootstrap_auroc(np.append(pos, np.nan), neg, np.append(pg, 0), ng, n_boot=20)
    assert math.isnan(lo) and math.isnan(hi)


def test_detection_rate_at_one_percent_false_alarms():
    """Honest 0..99: 1% false alarms allows one honest value above the threshold, so the
    threshold is 98 and the poisoned (97, 98.5, 99, 100, 150) are flagged 4 of 5 times."""
    neg = np.arange(100.0)
    assert stats.threshold_at_fpr(neg, 0.01) == 98.0
    assert np.mean(neg > 98.0) == 0.01
    assert stats.rate_at_fpr([97, 98.5, 99, 100, 150], neg, 0.01) == pytest.approx(0.8)
    # ties at the threshold never push the honest alarm rate above the target
    tied = np.asarray([0.0] * 99 + [5.0])
    t = stats.threshold_at_fpr(tied, 0.01)
    assert t == 0.0 and np.mean(tied > t) <= 0.01
    assert stats.threshold_at_fpr(np.arange(10.0), 0.01) == 9.0  # fewer than 100: no alarm allowed
    with pytest.raises(ValueError, match="fpr"):
        stats.threshold_at_fpr(neg, 1.0)


def test_cusum_on_a_hand_sequence():
    """z = (0, 1, 2, -1, 3), k = 0.5: C+ = (0, .5, 2, .5, 3), C- = (0, 0, 0, .5, 0)."""
    path = stats.cusum_path(np.asarray([[0.0, 1.0, 2.0, -1.0, 3.0]]), drift=0.5)
    np.testing.assert_allclose(path[0], [0.0, 0.5, 2.0, 0.5, 3.0])
    down = stats.cusum_path(np.asarray([[-2.0, -2.0, 1.0]]), drift=0.5)
    np.testing.assert_allclose(down[0], [1.5, 3.0, 1.5])
    assert stats.first_alarm(path, np.asarray([5]), 1.9).tolist() == [3.0]  # alarm at t = 2: 3 steps seen
    assert stats.first_alarm(path, np.asarray([5]), 2.5).tolist() == [5.0]
    assert stats.first_alarm(path, np.asarray([2]), 1.9).tolist() == [math.inf]  # the episode ended first
    assert stats.episode_max(path, np.asarray([3])).tolist() == [2.0]
    assert stats.median_delay(np.asarray([1.0, 3.0, math.inf])) == 3.0
    assert stats.median_delay(np.asarray([1.0, math.inf, math.inf])) == math.inf


def test_standardized_score():
    np.testing.assert_allclose(stats.standardized([2.0, -3.0, 0.0], [4.0, 9.0, 0.0]), [1.0, -1.0, 0.0])


# ------------------------------------------------------------------ recording in the program

TINY_DOP = {"learner.off_buffer_size": 64, "learner.rnn_hidden": 16, "learner.critic_hidden": 32,
            "learner.mixing_embed": 8}


def _quiet():
    return dict(progress=False, log=lambda *_: None, checkpoint_every_s=0)


def test_recording_changes_no_other_number(tmp_path, monkeypatch):
    """The same run with and without the monitor: metrics.csv byte for byte, the Fig. 4
    samples array for array and the final values are identical (the monitor draws no random
    number and feeds nothing back); only detection_samples.npz is added."""
    from tram.experiments import program, runner, store
    from tram.experiments.sweep import expand_grid

    spec = {"envs": ["gather"], "learners": ["dop"], "methods": ["var"], "seeds": 2, "steps": 750,
            "eval_interval": 250, "test_episodes": 2, "set": TINY_DOP}
    cfg = expand_grid(spec)[0]
    with_it = runner.train(cfg, tmp_path / "with", **_quiet())
    monkeypatch.setattr(runner, "make_train", lambda c: program.make_train(c, record_detection=False))
    without = runner.train(cfg, tmp_path / "without", **_quiet())
    assert (with_it / "metrics.csv").read_bytes() == (without / "metrics.csv").read_bytes()
    with np.load(with_it / "attack_samples.npz") as a, np.load(without / "attack_samples.npz") as b:
        assert sorted(a.files) == sorted(b.files) and len(a["seed"]) > 0
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert store.load_run(with_it).summary["final"] == store.load_run(without).summary["final"]
    assert (with_it / store.DETECTION_FILE).exists() and not (without / store.DETECTION_FILE).exists()


class _Killed(BaseException):
    """Stands for SIGKILL inside the process."""


def test_checkpoint_of_a_tram_without_the_monitor_resumes_exactly(tmp_path, monkeypatch):
    """A run checkpointed by a program without the monitor (older tram: fewer state leaves)
    resumes under today's program and ends equal to the uninterrupted run, file for file
    except detection_samples.npz, which holds the windows trained after the checkpoint."""
    from tram.experiments import program, runner, store
    from tram.experiments.sweep import expand_grid

    spec = {"envs": ["gather"], "learners": ["dop"], "methods": ["var"], "seeds": 2, "steps": 750,
            "eval_interval": 250, "test_episodes": 2, "set": TINY_DOP}
    cfg = expand_grid(spec)[0]
    reference = runner.train(cfg, tmp_path / "reference", **_quiet())
    real_save, calls = runner._save, []

    def save_then_die(*a, **k):
        calls.append(a[1])
        if len(calls) == 3:
            raise _Killed
        return real_save(*a, **k)

    monkeypatch.setattr(runner, "_save", save_then_die)
    monkeypatch.setattr(runner, "make_train", lambda c: program.make_train(c, record_detection=False))
    with pytest.raises(_Killed):
        runner.train(cfg, tmp_path / "old", **_quiet())
    monkeypatch.undo()
    run_dir = store.find_runs(tmp_path / "old")[0]
    assert store.load_checkpoint(run_dir)[0] == 2 and not (run_dir / store.DETECTION_FILE).exists()
    runner.train(cfg, tmp_path / "old", **_quiet())
    assert (run_dir / "metrics.csv").read_bytes() == (reference / "metrics.csv").read_bytes()
    with np.load(run_dir / "attack_samples.npz") as a, np.load(reference / "attack_samples.npz") as b:
        for k in b.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with np.load(run_dir / store.DETECTION_FILE) as a, np.load(reference / store.DETECTION_FILE) as b:
        assert sorted(set(a["env_steps"].tolist())) == [500, 750]
        late = b["env_steps"] >= 500
        for k in ("score", "var", "length", "rollout_step", "seed"):
            np.testing.assert_array_equal(a[k], b[k][late], err_msg=k)


# -------------------------------------------------------------------- tram detect end to end

SRC = Path(tram.__file__).resolve().parents[1]
TRAM = str(Path(sys.executable).parent / "tram")
ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
TINY_COMA = {"learner.rnn_hidden": 16, "learner.critic_hidden": 32, "learner.epsilon_start": 0.05,
             "learner.epsilon_finish": 0.05}


@pytest.fixture(scope="module")
def spread_store(tmp_path_factory) -> Path:
    """COMA on Spread, 2 seeds, 3000 steps: a clean run and a var-attacked run (f_A = 1,
    KL_U = 6), exploration floor 0.05 from the start."""
    from tram.experiments import runner
    from tram.experiments.sweep import expand_grid

    out = tmp_path_factory.mktemp("spread") / "runs"
    spec = {"envs": ["spread"], "learners": ["coma"], "methods": ["none", "var"], "seeds": 2, "steps": 3000,
            "eval_interval": 1000, "test_episodes": 2, "set": TINY_COMA}
    for cfg in expand_grid(spec):
        runner.train(cfg, out, **_quiet())
    return out


def _tram(*args) -> subprocess.CompletedProcess:
    return subprocess.run([TRAM, *args], env=ENV, capture_output=True, text=True, timeout=600)


def test_detect_end_to_end(spread_store, tmp_path):
    import csv

    from tram.detect.record import load_detection
    from tram.experiments import store

    runs = store.find_runs(spread_store)
    clean = next(r for r in runs if "-none-" in r.name)
    attacked = next(r for r in runs if "-var-" in r.name)
    d = load_detection(attacked / store.DETECTION_FILE)
    assert int(d["poisoned_agent"]) == 0 and int(load_detection(clean / store.DETECTION_FILE)["poisoned_agent"]) == -1
    # 3 evaluation windows after step 0, 4 rollouts of 8 episodes each, per seed
    assert d["score"].shape == (2 * 3 * 4 * 8, 3) and d["trace_u"].shape == (2 * 3 * 4, 25, 3)
    # the per-step trace of an episode sums to its score
    first = (d["seed"] == d["trace_seed"][0]) & (d["rollout_step"] == d["trace_rollout_step"][0])
    np.testing.assert_allclose(d["trace_u"][0].sum(0), d["score"][first][0], rtol=1e-4, atol=1e-4)

    res = _tram("detect", str(spread_store), "--out", str(tmp_path / "det"), "--n-boot", "200")
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(tmp_path / "det" / "detection.csv")))
    assert [r["method"] for r in rows] == ["none", "var"]
    var = rows[1]
    assert int(var["poisoned_episodes"]) == 2 * 3 * 4 * 8 and int(var["honest_episodes"]) == 2 * 2 * 3 * 4 * 8
    auroc, lo, hi = float(var["auroc"]), float(var["auroc_lo"]), float(var["auroc_hi"])
    assert 0.8 < auroc <= 1.0 and lo <= auroc <= hi  # a KL_U = 6 perturbation is plain to the monitor
    assert float(var["rate_at_fpr"]) > 0.5 and float(var["cusum_rate"]) > 0.5
    assert 1 <= float(var["median_delay"]) <= 25
    for r in rows:  # the honest agents' z: mean 0, sd 1
        assert abs(float(r["honest_mean_z"])) < 0.25 and 0.7 < float(r["honest_sd_z"]) < 1.3, r
    assert (tmp_path / "det" / "detection_frontier.png").stat().st_size > 0
    assert "AUROC" in (tmp_path / "det" / "detection.md").read_text()

    # a run without the file is skipped with a note naming it; tram report includes the table
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(spread_store, copy)
    (copy / clean.name / store.DETECTION_FILE).unlink()
    res = _tram("detect", str(copy), "--out", str(tmp_path / "det2"), "--n-boot", "50")
    assert res.returncode == 0, res.stderr
    assert f"skipped {clean.name} (no detection_samples.npz" in res.stderr
    res = _tram("report", str(spread_store), "--out", str(tmp_path / "rep"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "rep" / "tables" / "detection.csv").exists()
    assert "detection_frontier" in (tmp_path / "rep" / "index.md").read_text()


@pytest.mark.parametrize("args,needles", [
    (["--fpr", "1.5"], ["--fpr", "1.5", "(0, 1)"]),
    (["--drift", "-1"], ["--drift", "-1"]),
    (["--from-step", "x"], ["--from-step", "'x'"]),
])
def test_detect_bad_input_is_one_line(spread_store, tmp_path, args, needles):
    res = _tram("detect", str(spread_store), "--out", str(tmp_path / "o"), *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith("error:"), line
    for n in needles:
        assert n in line, line


def test_detect_on_a_store_without_detection_data(tmp_path):
    res = _tram("detect", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and res.stderr.strip().startswith("error: runs") and "does not exist" in res.stderr
