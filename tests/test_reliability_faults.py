"""Faults a run directory must survive (README, "Guarantees"): kill -9, Ctrl-C under a
terminal, an interrupted ``--restart``, a second process on the same run, a failing write
(``RLIMIT_FSIZE``: EFBIG), an edited ``config.json``; and ``--steps`` taken literally.

After each fault the run either ends up equal, file by file, to the uninterrupted run
(``metrics.csv`` byte for byte, ``attack_samples.npz`` and ``detection_samples.npz`` array
for array, ``config.json``, and
``summary.json`` except its timing fields), or the fault is reported in one line naming the
file, with an exit code, and without a traceback.

Kept fast: the Gather grid task, 2 seeds, 2000 steps, tiny networks and buffers, 2 test
episodes, one config for every ``tram train`` (compiled once per session: tests/conftest.py);
the ``tram`` command runs in subprocesses, so a kill is a real kill.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import tram
from tram.experiments import store

SRC = Path(tram.__file__).resolve().parents[1]
TRAM = str(Path(sys.executable).parent / "tram")
ENV = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
# A child that pauses 2 s after each metrics.csv write (tests/slow_child/sitecustomize.py), for
# the tests that must kill it right after a given evaluation of a run loaded from the cache
ENV_PAUSING = {**ENV, "PYTHONPATH": f"{Path(__file__).parent / 'slow_child'}{os.pathsep}{ENV['PYTHONPATH']}",
               "TRAM_TEST_WINDOW_DELAY_S": "2"}
# One tiny config for every run of this file (small networks and buffers): the subprocesses
# and the in-process runs compile the same program once per session, then load it from the
# session's compilation cache (tests/conftest.py sets TRAM_COMPILE_CACHE, inherited here).
TINY_DOP = {"learner.off_buffer_size": 64, "learner.rnn_hidden": 16, "learner.critic_hidden": 32,
            "learner.mixing_embed": 8}
TINY_QMIX = {"learner.buffer_size": 64, "learner.rnn_hidden": 16, "learner.hypernet_embed": 16,
             "learner.mixing_embed": 8}
ARGS = ["train", "--env", "gather", "--learner", "dop", "--attack", "var", "--steps", "2000",
        "--eval-interval", "250", "--seeds", "2", "--test-episodes", "2",
        *(a for k, v in TINY_DOP.items() for a in ("--set", f"{k}={v}")), "--no-progress"]
N_WINDOWS = 9  # evaluations at 0, 250, ..., 2000
TIMING = ("steps_per_second", "wall_time_s", "first_window_s_incl_compile")

pytestmark = pytest.mark.timeout(900)


def tram_cmd(out: Path, *extra: str, args=ARGS) -> list[str]:
    return [TRAM, *args, "--out", str(out), *extra]


def run_tram(out: Path, *extra: str, args=ARGS, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(tram_cmd(out, *extra, args=args), env=ENV, capture_output=True, text=True,
                          timeout=600, **kw)


def only_run(out: Path) -> Path:
    runs = store.find_runs(out)
    assert len(runs) == 1, runs
    return runs[0]


def data_lines(path: Path) -> int:
    """Rows of a metrics.csv being written (0 if absent)."""
    try:
        return max(len(path.read_text().splitlines()) - 1, 0)
    except FileNotFoundError:
        return 0


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def run_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def assert_same_run(a: Path, b: Path) -> None:
    """Every file of run ``a`` equals run ``b``'s (timing fields of summary.json aside)."""
    assert run_files(a) == run_files(b)
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    for s in (sa, sb):
        for k in TIMING:
            s.pop(k)
    assert sa == sb
    for name in ("attack_samples.npz", store.DETECTION_FILE):
        if (b / name).exists():
            with np.load(a / name) as x, np.load(b / name) as y:
                assert sorted(x.files) == sorted(y.files)
                for k in x.files:
                    np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name}: {k}")


def assert_one_line_error(res, *needles: str) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    res = run_tram(out)
    assert res.returncode == 0, res.stderr
    run_dir = only_run(out)
    assert store.run_status(run_dir) == "done"
    m = store.read_metrics(run_dir / "metrics.csv")
    assert sorted(set(m["env_steps"].tolist())) == [250 * i for i in range(N_WINDOWS)]
    return run_dir


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A run killed with SIGKILL after its third evaluation, once it had a checkpoint
    (``--checkpoint-every 1e-9``: one after every evaluation). Tests copy it."""
    out = tmp_path_factory.mktemp("killed")
    proc = subprocess.Popen(tram_cmd(out, "--checkpoint-every", "1e-9"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready():
        runs = store.find_runs(out)
        return bool(runs) and data_lines(runs[0] / "metrics.csv") >= 2 * 3 \
            and (runs[0] / "checkpoint" / "meta.json").exists()

    wait_for(ready, proc, "the third evaluation")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = only_run(out)
    assert store.run_status(run_dir) == "partial"
    return run_dir


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, dest)
    return dest


# ----------------------------------------------------------------------------------- kill -9


def test_sigkill_then_rerun_equals_the_uninterrupted_run(killed, reference, tmp_path):
    run_dir = copy_run(killed, tmp_path)
    res = run_tram(run_dir.parent)
    assert res.returncode == 0, res.stderr
    assert "resuming at evaluation" in res.stdout + res.stderr
    assert_same_run(run_dir, reference)  # the same files: no temporary file of the killed writer left


# ----------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_under_a_terminal(reference, tmp_path):
    """SIGINT while the progress bar is live: one line saying where and how to resume, the
    cursor shown again, exit 130; the rerun resumes and equals the uninterrupted run."""
    out = tmp_path / "runs"
    master, slave = os.openpty()
    env = {**ENV, "TERM": "xterm-256color", "COLUMNS": "120"}
    args = [a for a in ARGS if a != "--no-progress"]
    # The child must see SIGINT at its default: a parent that ignores it (a pytest-xdist worker,
    # a background job of a non-interactive shell) passes SIG_IGN on through exec, and Python
    # then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(tram_cmd(out, "--checkpoint-every", "1e9", args=args), env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    os.close(slave)
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        wait_for(lambda: bool(store.find_runs(out)) and data_lines(only_run(out) / "metrics.csv") >= 2 * 2,
                 proc, "the second evaluation")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
        os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    assert code == 130, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in text.replace("\r", "\n").splitlines() if "interrupted at window" in ln]
    assert len(lines) == 1 and lines[0].strip().endswith("rerun the same command to resume"), text[-2000:]
    assert f"of {N_WINDOWS}" in lines[0]
    assert "\x1b[?25l" in text, "the progress bar did not run live (no hidden cursor)"
    assert text.rfind("\x1b[?25h") > text.rfind("\x1b[?25l"), "cursor left hidden"
    run_dir = only_run(out)
    assert store.load_checkpoint(run_dir) is not None, "Ctrl-C did not checkpoint the last completed window"
    res = run_tram(out)
    assert res.returncode == 0, res.stderr
    assert "resuming at evaluation" in res.stdout + res.stderr
    assert_same_run(run_dir, reference)


# ------------------------------------------------------------------------ interrupted restart


def test_restart_killed_after_its_first_evaluation_is_not_finished(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path)
    # ENV_PAUSING: without the pause the restart, loaded from the cache, could write all 18
    # rows between two polls and finish
    proc = subprocess.Popen(tram_cmd(run_dir.parent, "--restart", "--checkpoint-every", "1e9"), env=ENV_PAUSING,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the old metrics.csv has 18 rows; the restart's first evaluation leaves exactly 2
    wait_for(lambda: data_lines(run_dir / "metrics.csv") == 2, proc, "the restart's first evaluation")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "a stale summary.json survived --restart"
    assert store.run_status(run_dir) == "partial"
    from tram.report.collect import collect_runs

    assert not collect_runs(run_dir.parent).runs  # the report does not take it for finished
    res = run_tram(run_dir.parent)
    assert res.returncode == 0, res.stderr
    assert "already finished" not in res.stdout + res.stderr
    assert_same_run(run_dir, reference)


# --------------------------------------------------------------------------- concurrent start


HOLD_LOCK = """
import sys
from tram.experiments.store import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_second_process_on_a_run_names_the_holder_or_waits(reference, tmp_path):
    run_dir = copy_run(reference, tmp_path)
    summary = (run_dir / "summary.json").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], env=ENV, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = run_tram(run_dir.parent)
        assert res.returncode == 1, res.stdout + res.stderr
        assert_one_line_error(res, f"process {holder.pid}", str(run_dir), "--wait")
        waiting = subprocess.Popen(tram_cmd(run_dir.parent, "--wait"), env={**ENV, "PYTHONUNBUFFERED": "1"}, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        first = waiting.stdout.readline()
        while first and "waiting for process" not in first:
            first = waiting.stdout.readline()
        assert f"waiting for process {holder.pid}" in first
        assert waiting.poll() is None  # still waiting while the lock is held
        holder.stdin.close()  # release
        rest = waiting.stdout.read()
        assert waiting.wait(timeout=300) == 0, rest
        assert "already finished" in rest
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    assert (run_dir / "summary.json").read_bytes() == summary


# ------------------------------------------------------------------------------ failing write


def test_write_error_names_the_file_and_keeps_the_checkpoint(killed, reference, tmp_path):
    """EFBIG (a 64 KiB file-size limit: metrics.csv and attack_samples.npz fit, a 3 MB
    checkpoint does not): one line naming the file, exit 1, the previous checkpoint intact,
    no temporary file left; the rerun without the limit equals the uninterrupted run."""
    run_dir = copy_run(killed, tmp_path)
    before = store.load_checkpoint(run_dir)
    assert before is not None
    meta = (run_dir / "checkpoint" / "meta.json").read_bytes()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    res = run_tram(run_dir.parent, "--checkpoint-every", "1e-9", preexec_fn=limit)
    assert res.returncode == 1, res.stdout + res.stderr
    assert_one_line_error(res, "cannot write", str(run_dir / "checkpoint" / "state-"), "EFBIG")
    assert len([ln for ln in res.stderr.splitlines() if "cannot write" in ln]) == 1
    assert (run_dir / "checkpoint" / "meta.json").read_bytes() == meta
    after = store.load_checkpoint(run_dir)
    assert after[0] == before[0]
    assert not list(run_dir.rglob(".tmp-*"))
    res = run_tram(run_dir.parent)
    assert res.returncode == 0, res.stderr
    assert_same_run(run_dir, reference)


# ------------------------------------------------------------------------------ edited config


@pytest.mark.parametrize("source", ["reference", "killed"])
def test_edited_config_is_reported_and_not_used(source, request, tmp_path):
    run_dir = copy_run(request.getfixturevalue(source), tmp_path)
    path = run_dir / "config.json"
    config = json.loads(path.read_text())
    config["attack"]["method"] = "none"  # the edit the issue reports: a var run relabelled
    store.write_json_atomic(path, config)
    with pytest.raises(store.CorruptRunError, match="config.json: edited after the run was written"):
        store.load_run(run_dir)
    from tram.report.collect import collect_runs

    collected = collect_runs(run_dir.parent, include_partial=True)
    assert not collected.runs
    assert any(str(path) in n and "edited" in n for n in collected.notes), collected.notes
    res = run_tram(run_dir.parent)  # neither "already finished" nor resumed nor overwritten
    assert res.returncode == 2, res.stdout + res.stderr
    assert_one_line_error(res, str(path), "edited")
    assert json.loads(path.read_text())["attack"]["method"] == "none"


# ------------------------------------------------------------------------- --steps literally


def test_steps_is_never_exceeded(tmp_path):
    """``--steps 2000 --eval-interval 100000`` trains 2000 steps: evaluations at 0 and 2000."""
    res = run_tram(tmp_path, args=[*ARGS[:7], "--steps", "2000", "--eval-interval", "100000", *ARGS[11:]])
    assert res.returncode == 0, res.stderr
    run_dir = only_run(tmp_path)
    assert run_dir.name.startswith("gather-dop-var-fa1-kl6-2e3steps-")
    m = store.read_metrics(run_dir / "metrics.csv")
    assert m["env_steps"].tolist() == [0, 2000, 0, 2000]
    actual = store.load_run(run_dir).summary["env_steps_actual"]
    # Gather episodes last 25 steps and a DOP iteration runs num_envs = 4 of them: a seed
    # stops within one iteration past 2000 (the same overshoot as at every evaluation).
    assert all(2000 <= v < 2000 + 25 * 4 for v in actual.values()), actual


# ------------------------------------------------- every method: resume after a kill is exact


class _Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs, no handler catches it."""


# dop-var (the attack state, loaded from ARGS's compiled program) and qmix-worst_q (the other
# learner's state) in the default run; the other methods' programs with `pytest -m slow`
@pytest.mark.parametrize("learner,method", [
    pytest.param("dop", "none", marks=pytest.mark.slow), pytest.param("dop", "random", marks=pytest.mark.slow),
    pytest.param("dop", "jbased", marks=pytest.mark.slow), ("dop", "var"), ("qmix", "worst_q")])
def test_resume_after_kill_equals_uninterrupted_for_every_method(learner, method, tmp_path, monkeypatch):
    """Killed between writing an evaluation's rows and samples and checkpointing it (the
    window in which old tram duplicated attack_samples.npz records on resume; the same holds
    for detection_samples.npz, whose records the checkpoint counts too)."""
    from tram.experiments import runner
    from tram.experiments.sweep import expand_grid

    # the same tiny networks and buffers as ARGS (dop-var is ARGS's program: loaded, not compiled)
    small = TINY_DOP if learner == "dop" else {**TINY_QMIX, "attack.attack_at": "both"}
    spec = {"envs": ["gather"], "learners": [learner], "methods": [method], "seeds": 2, "steps": 750,
            "eval_interval": 250, "test_episodes": 2, "set": small}
    cfg = expand_grid(spec)[0]
    quiet = dict(progress=False, log=lambda *_: None, checkpoint_every_s=0)
    clean = runner.train(cfg, tmp_path / "clean", **quiet)

    real_save, calls = runner._save, []

    def save_then_die(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise _Killed
        return real_save(*a, **k)

    monkeypatch.setattr(runner, "_save", save_then_die)
    with pytest.raises(_Killed):
        runner.train(cfg, tmp_path / "killed", **quiet)
    monkeypatch.setattr(runner, "_save", real_save)
    run_dir = only_run(tmp_path / "killed")
    assert store.load_checkpoint(run_dir)[0] == 1 and data_lines(run_dir / "metrics.csv") == 2 * 2
    runner.train(cfg, tmp_path / "killed", **quiet)
    assert_same_run(run_dir, clean)
    if method in ("random", "jbased", "var"):  # the TRAM directions record Fig. 4 samples
        with np.load(run_dir / "attack_samples.npz") as s:
            assert len(s["seed"]) > 0
    # every run records the monitor's scores: 3 windows after step 0, each with its last 4
    # rollouts per seed, once each although the killed process had written window 2's
    from tram.detect.record import load_detection

    det = load_detection(run_dir / store.DETECTION_FILE)
    windows = sorted(set(det["env_steps"].tolist()))
    assert windows == [250, 500, 750], windows
    for seed in (0, 1):
        for w in windows:
            rollouts = det["rollout_step"][(det["seed"] == seed) & (det["env_steps"] == w)]
            assert len(set(rollouts.tolist())) * cfg.learner.num_envs == len(rollouts) > 0
