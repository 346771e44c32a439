"""``train(config)``: run every seed of a configuration in one compiled program and write
the run directory (``config.json``, ``metrics.csv``, ``summary.json``, checkpoints).

The Python loop here runs once per evaluation window (not per step or episode): it calls
``jit(vmap(run_window))`` (see :mod:`tram.experiments.program`), appends the window's rows
to ``metrics.csv`` atomically, updates the progress bar, and checkpoints the whole
training state (networks, optimisers, buffers, keys) every ``checkpoint_every_s`` seconds,
so a killed run resumes from its last checkpoint and reproduces the uninterrupted run.

Branches (the paper's Fig. 1): a run trained with ``keep_branch_point=S`` keeps, in
``branch-point/``, its state after the last evaluation that every seed reached before env
step ``S``. A run whose attack starts at ``attack.attack_start == S`` and whose config is
otherwise that run's (same environment, learner and run settings; the clean run is the
parent) starts from that state instead of from scratch. This is exact, not an
approximation: the attack is the identity before ``attack_start`` (checked once per
training iteration on the env steps before it), so the attacked run's training state at
that evaluation is the clean run's bit for bit (``tests/test_qmix.py`` checks both ways).
The branch's first evaluations are the parent's rows (its attack-statistics columns are
NaN there: no attack ran); ``summary.json`` names the parent under ``branched_from``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tram.config import TrainConfig
from tram.experiments import store
from tram.experiments.compile_cache import COMPILE_CACHE_ENV, COMPILE_CACHE_MAX_BYTES, enable_compile_cache  # noqa: F401
from tram.experiments.program import ATTACK_FIELDS, TrainProgram, make_train, over_seeds
from tram.detect.record import META_KEY as DETECTION_META_KEY, DetectionLog

METRIC_COLUMNS = store.METRIC_COLUMNS
assert METRIC_COLUMNS == ("seed", "env_steps", "test_return", "test_win_rate", "test_success", "train_return",
                          *ATTACK_FIELDS), "metrics.csv columns of the store and the program disagree"


def versions() -> dict[str, str]:
    """Versions of tram, jax, jaxlib and jaxmarl (saved with every run)."""
    import importlib.metadata as md

    out = {}
    for pkg in ("tram", "jax", "jaxlib", "jaxmarl", "flax", "optax"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


def available_memory_bytes() -> int:
    """Memory available for the run's arrays: on an accelerator (GPU), the default device's
    free memory (``bytes_limit - bytes_in_use`` of its memory stats); on the CPU, the host's
    ``MemAvailable`` (Linux)."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_memory(config: TrainConfig, program: TrainProgram, log=print) -> int:
    """Prints the memory the run's episode buffers need and refuses to start when it will
    not fit (instead of being killed later).

    Returns the estimated bytes. Raises ``MemoryError`` naming the setting to lower.
    """
    seeds = len(config.run.seeds)
    need = program.buffer_bytes_per_seed * seeds
    # Buffers are held once by the program and once more while an update samples from them
    # and checkpoints copy them; 2x plus 1 GiB for XLA's working set is the estimate.
    estimate = 2 * need + (1 << 30)
    avail = available_memory_bytes()
    log(f"memory: episode buffers {need / 2**30:.2f} GiB for {seeds} seed(s); estimated peak "
        f"{estimate / 2**30:.2f} GiB; available {avail / 2**30:.2f} GiB")
    if estimate > avail:
        raise MemoryError(
            f"the run needs about {estimate / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB is available; "
            f"lower learner.off_buffer_size (now {getattr(config.learner, 'off_buffer_size', 'n/a')}, "
            f"`--set learner.off_buffer_size=...`) or the number of seeds (now {seeds}), or keep "
            f"learner.storage_dtype=float16")
    return estimate


def _rows(config: TrainConfig, program: TrainProgram, metrics, eval_step: int) -> list[list[float]]:
    """Turns one window's vmapped metrics into ``metrics.csv`` rows (one per seed).

    ``env_steps`` is the evaluation point ``eval_step`` (a multiple of ``eval_interval``,
    or ``steps`` for the last one):
    each seed evaluates as soon as it has taken that many steps, which it overshoots by less
    than one iteration's episodes, a different amount per seed when episode lengths vary. The
    nominal point aligns the seeds for curves and CIs; the actual counts are in
    ``summary.json`` (``env_steps_actual``)."""
    m = jax.tree.map(np.asarray, metrics)
    smax = program.env.spec.family == "smax"
    rows = []
    for i, seed in enumerate(config.run.seeds):
        won = float(m.test_won[i])
        row = [seed, int(eval_step), float(m.test_return[i]),
               won if smax else math.nan, math.nan if smax else won, float(m.train_return[i])]
        row += [float(getattr(m, f)[i]) for f in ATTACK_FIELDS]
        rows.append(row)
    return rows


def _samples(config: TrainConfig, metrics) -> dict[str, np.ndarray]:
    """The window's valid Fig. 4 samples as flat arrays (``K`` records)."""
    s = jax.tree.map(np.asarray, metrics.samples)
    valid = s.valid  # [S, M]
    seeds = np.broadcast_to(np.asarray(config.run.seeds)[:, None], valid.shape)
    steps = np.broadcast_to(np.asarray(metrics.env_steps)[:, None], valid.shape)
    return {"pi": s.pi[valid], "delta_hat": s.delta_hat[valid], "avail": s.avail[valid],
            "env_steps": steps[valid].astype(np.int64), "seed": seeds[valid].astype(np.int64)}


def _branch_window(config: TrainConfig, program: TrainProgram, branch_at: int) -> int | None:
    """The last evaluation window after which every seed is surely below env step
    ``branch_at``: a window ends within one training iteration (``num_envs`` episodes of at
    most ``episode_limit`` steps) past its target. ``None`` when there is none."""
    overshoot = config.learner.num_envs * program.env.spec.episode_limit
    ok = [w for w, t in enumerate(program.window_targets) if t + overshoot <= branch_at]
    return ok[-1] if ok else None


def branch_parent(config: TrainConfig) -> TrainConfig | None:
    """The run ``config`` branches from: the same config without attack, when the attack
    starts after step 0; ``None`` otherwise."""
    import dataclasses

    from tram.attacks.perturb import AttackConfig

    if config.attack.method == "none" or config.attack.attack_start <= 0:
        return None
    return dataclasses.replace(config, attack=AttackConfig())


def _load_branch(config: TrainConfig, out: Path, treedef, num_leaves: int, log):
    """``(start_window, state, rows, {"run": parent name, "evaluations_inherited": n})`` from
    the parent's kept branch point, or ``None`` (no parent, no branch point, or one kept for
    another step)."""
    parent = branch_parent(config)
    if parent is None:
        return None
    parent_dir = out / store.run_name(parent.to_dict())
    snap = store.load_checkpoint(parent_dir, name=store.BRANCH_POINT_DIR)
    if snap is None:
        log(f"no branch point in {parent_dir} (train it with keep_branch_point={config.attack.attack_start}); "
            f"training from scratch")
        return None
    start_window, arrays, meta = snap
    if meta.get("branch_at") != config.attack.attack_start or meta.get("num_leaves") != num_leaves:
        log(f"{parent_dir / store.BRANCH_POINT_DIR} is for step {meta.get('branch_at')}, not "
            f"{config.attack.attack_start}; training from scratch")
        return None
    return (start_window, _load_state(treedef, arrays, num_leaves), _meta_rows(meta["rows"]),
            {"run": parent_dir.name, "evaluations_inherited": start_window})


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :func:`train` between or during evaluation windows. The state
    after the last completed window has been checkpointed; the message says where training
    stopped and how to resume (``interrupted at window k of n; rerun the same command to
    resume``). A ``KeyboardInterrupt``, so scripts that catch that still do."""


def train(config: TrainConfig, out: str | Path = "runs", *, progress: bool = True,
          checkpoint_every_s: float = 600.0, restart: bool = False, log=print,
          keep_branch_point: int | None = None, wait: bool = False) -> Path:
    """Trains ``config`` (all seeds at once) and writes its run directory under ``out``.

    A finished run is never redone; a partial one resumes from its checkpoint (or from the
    start when it has none). A run whose attack starts at step ``S > 0`` starts from its
    clean parent's branch point when that exists (module docstring).

    While training, the process holds the run's lock (:class:`store.RunLock`): a second
    process on the same run raises :class:`store.RunLockedError` naming the holder's PID,
    or waits for it with ``wait=True`` (and then finds the run finished, or resumes it).

    Args:
        restart: train from scratch; the finished marker ``summary.json`` is removed before
            anything else (:func:`store.clear_run`), then the checkpoint, the branch point,
            ``metrics.csv``, ``attack_samples.npz`` and ``detection_samples.npz``.
        keep_branch_point: env step ``S``; keep the state at the last evaluation before ``S``
            in ``branch-point/`` so that runs attacked from ``S`` on can branch from it.
        wait: wait for another process training this run instead of failing.

    Returns:
        The run directory.

    Raises:
        store.RunLockedError: another process trains this run (and ``wait`` is false).
        store.CorruptRunError: ``config.json`` was edited, or a checkpoint or run file is
            damaged; the message names the file.
        store.RunWriteError: a write failed (full disk, file-size limit); the message names
            the file; the last good checkpoint is kept.
        RunInterrupted: Ctrl-C; the last completed window is checkpointed.
    """
    enable_compile_cache()
    program = make_train(config)
    cfg_dict = config.to_dict()
    run_dir = Path(out) / store.run_name(cfg_dict)
    with store.RunLock(run_dir, wait=wait, log=log):
        return _train_locked(config, program, cfg_dict, run_dir, Path(out), progress=progress,
                             checkpoint_every_s=checkpoint_every_s, restart=restart, log=log,
                             keep_branch_point=keep_branch_point)


def _meta_rows(rows) -> list[list]:
    """Checkpointed ``metrics.csv`` rows with JSON ``null`` read back as NaN."""
    return [[math.nan if v is None else v for v in r] for r in rows]


def _kept_samples(run_dir: Path, meta: dict, state, seeds) -> dict[str, list[np.ndarray]]:
    """The ``attack_samples.npz`` records that the checkpoint ``meta`` covers (records of
    windows trained after it, written before the process died, are dropped, so that the
    resumed run writes them once). Checkpoints without ``num_samples`` (older tram) keep the
    records at env steps the checkpointed state had reached, per seed."""
    if not (run_dir / store.SAMPLES_FILE).exists():
        if meta.get("num_samples"):
            raise store.CorruptRunError(
                f"{run_dir / store.SAMPLES_FILE}: missing, but the checkpoint holds "
                f"{meta['num_samples']} records of it; pass --restart to retrain this run")
        return {k: [] for k in store.SAMPLE_ARRAYS}
    prev = store.load_run(run_dir).attack_samples
    n = meta.get("num_samples")
    if n is not None:
        if len(prev["seed"]) < n:
            raise store.CorruptRunError(
                f"{run_dir / store.SAMPLES_FILE}: {len(prev['seed'])} records, but the checkpoint "
                f"was written after {n}; pass --restart to retrain this run")
        keep = np.arange(len(prev["seed"])) < n
    else:
        reached = dict(zip((int(s) for s in seeds), np.asarray(state.env_steps).tolist()))
        keep = np.asarray([e <= reached.get(int(s), -1) for s, e in zip(prev["seed"], prev["env_steps"])], bool)
    return {k: [np.asarray(v)[keep]] for k, v in prev.items()}


class StartPoint(NamedTuple):
    """Where a run's window loop starts: the next window, the seeds' state (leaves ``[S, ...]``),
    the ``metrics.csv`` rows and ``attack_samples.npz`` records already kept, the branch
    parent (``{"run": name, "evaluations_inherited": n}`` or None), whether a checkpoint
    was loaded, and the ``detection_samples.npz`` records kept (:class:`DetectionLog`)."""

    window: int
    state: Any
    rows: list
    samples: dict
    branched_from: dict | None
    from_checkpoint: bool
    detection: DetectionLog


def prepare_run_dir(run_dir: Path, cfg_dict: dict, restart: bool) -> str:
    """Cleans ``run_dir`` before training: removes temp files left by a killed writer, clears
    the run with ``restart`` (the finished marker first, so a killed restart is never
    "finished"), else checks a stored ``config.json`` against ``cfg_dict``.

    Returns:
        The run's status (:func:`store.run_status`: ``"missing"``, ``"done"`` or ``"partial"``).

    Raises:
        store.CorruptRunError: the stored ``config.json`` differs from ``cfg_dict``.
    """
    for tmp in store.stale_temp_files(run_dir):  # left by a killed writer; no writer runs now
        tmp.unlink(missing_ok=True)
    if restart:
        store.clear_run(run_dir)
    elif (run_dir / store.CONFIG_FILE).exists():
        store.verify_config(run_dir, cfg_dict)
    return store.run_status(run_dir)


def start_point(config: TrainConfig, program: TrainProgram, run_dir: Path, out: Path, init, keys, status: str,
                restart: bool, log) -> StartPoint:
    """The run's :class:`StartPoint`: its checkpoint if it has one (and not ``restart``), else
    its clean parent's branch point if that exists (module docstring), else ``init(keys)``
    at window 0.

    Raises:
        store.CorruptRunError: the checkpoint does not match this configuration, or its
            ``attack_samples.npz`` is missing or short.
    """
    samples: dict[str, list[np.ndarray]] = {k: [] for k in store.SAMPLE_ARRAYS}
    detection = DetectionLog(program.attacked_agent)
    ckpt = None if restart else store.load_checkpoint(run_dir)
    template = jax.eval_shape(init, keys)
    leaves, treedef = jax.tree.flatten(template)
    branch = None if (restart or ckpt is not None) else _load_branch(config, out, treedef, len(leaves), log)
    n_windows = len(program.window_targets)
    if branch is not None:
        start_window, state, rows, branched_from = branch
        log(f"{run_dir}: branching from {branched_from['run']} at evaluation {start_window} of "
            f"{n_windows} (the attack starts at step {config.attack.attack_start:,})")
        return StartPoint(start_window, state, rows, samples, branched_from, False, detection)
    if ckpt is not None:
        start_window, arrays, meta = ckpt
        if meta.get("num_leaves") == len(leaves):
            state = _load_state(treedef, arrays, len(leaves))
        else:  # perhaps written before tram recorded the detection monitor
            state = _load_without_detection(template, arrays, meta.get("num_leaves"))
            if state is None:
                raise store.CorruptRunError(f"{run_dir}: checkpoint does not match this configuration; "
                                            f"delete {run_dir / 'checkpoint'} or pass --restart")
        samples = _kept_samples(run_dir, meta, state, config.run.seeds)
        detection = DetectionLog.resume(run_dir, meta, program.attacked_agent)
        log(f"{run_dir}: resuming at evaluation {start_window} of {n_windows}")
        return StartPoint(start_window, state, _meta_rows(meta["rows"]), samples, meta.get("branched_from"), True,
                          detection)
    if status == "partial":
        log(f"{run_dir}: partial run without a checkpoint, restarting it from scratch")
    return StartPoint(0, init(keys), [], samples, None, False, detection)


def run_summary(config: TrainConfig, program: TrainProgram, rows: list, env_steps, steps_at_start: int,
                wall: float, compile_s: float | None, branched_from: dict | None) -> dict:
    """The ``summary.json`` of a finished run.

    Args:
        rows: every ``metrics.csv`` row (the last ``len(config.run.seeds)`` are the final
            evaluation, one per seed).
        env_steps: ``[S]`` the env steps each seed took in total.
        steps_at_start: the env steps (per seed, the minimum) at which this process started
            (0 unless resumed); the throughput counts the steps taken since then.
        wall: seconds this process trained; compile_s: its first window's seconds (with compilation).

    Returns:
        A JSON-able dict: ``status`` ``"done"``, ``final`` (``{seed: {column: value}}``),
        ``steps_per_second`` (over all seeds), ``wall_time_s``, ``first_window_s_incl_compile``,
        ``attacked_agent_index``, ``env_steps_actual`` (``{seed: steps}``), ``branched_from``
        and ``seed_mode``.
    """
    final = {}
    for r in rows[-len(config.run.seeds):]:
        final[str(r[0])] = dict(zip(METRIC_COLUMNS[1:], r[1:]))
    total_steps = int(np.sum(np.asarray(env_steps))) - steps_at_start * len(config.run.seeds)
    return {
        "status": "done",
        "final": final,
        "steps_per_second": total_steps / max(wall, 1e-9),
        "wall_time_s": wall,
        "first_window_s_incl_compile": compile_s,
        "attacked_agent_index": program.attacked_agent,
        "env_steps_actual": {str(s): int(v) for s, v in zip(config.run.seeds, np.asarray(env_steps))},
        "branched_from": branched_from,
        # an execution setting, not part of the run's identity (config.json leaves it out):
        # the mode of the process that finished the run (a resumed run may have begun in another)
        "seed_mode": config.run.seed_mode,
    }


def _train_locked(config: TrainConfig, program: TrainProgram, cfg_dict: dict, run_dir: Path, out: Path, *,
                  progress: bool, checkpoint_every_s: float, restart: bool, log,
                  keep_branch_point: int | None) -> Path:
    """:func:`train` once the run's lock is held: :func:`prepare_run_dir`, :func:`start_point`,
    :func:`run_windows`, then :func:`run_summary` is written and the checkpoint removed."""
    status = prepare_run_dir(run_dir, cfg_dict, restart)
    if status == "done":
        log(f"{run_dir}: already finished, not redone")
        return run_dir
    if program.attacked_agent is not None:
        log(f"attack: {config.attack.method} on agent {program.attacked_agent} "
            f"({program.env.spec.agent_unit_types[program.attacked_agent]}), requested {config.attack.agent!r}")
    check_memory(config, program, log)
    store.write_json_atomic(run_dir / store.CONFIG_FILE,
                            {**cfg_dict, store.HASH_KEY: store.config_hash(cfg_dict), "versions": versions()})

    init, run_window = over_seeds(program, config.run.seed_mode)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in config.run.seeds])
    start = start_point(config, program, run_dir, out, init, keys, status, restart, log)
    branch_window = None
    if keep_branch_point is not None:
        branch_window = _branch_window(config, program, int(keep_branch_point))
        if branch_window is None or (run_dir / store.BRANCH_POINT_DIR).exists():
            branch_window = None  # too early for any evaluation, or already kept
    steps_at_start = int(np.min(np.asarray(start.state.env_steps))) if start.window else 0
    t0 = time.perf_counter()
    state, rows, compile_s = run_windows(config, program, run_dir, run_window, start, steps_at_start,
                                         progress=progress, checkpoint_every_s=checkpoint_every_s,
                                         branch_window=branch_window, keep_branch_point=keep_branch_point, log=log)
    wall = time.perf_counter() - t0
    summary = run_summary(config, program, rows, state.env_steps, steps_at_start, wall, compile_s,
                          start.branched_from)
    store.write_json_atomic(run_dir / store.SUMMARY_FILE, summary)
    store.remove_checkpoint(run_dir)
    log(f"{run_dir}: done in {wall:.0f} s ({summary['steps_per_second']:.0f} env steps/s over all seeds)")
    return run_dir


def run_windows(config: TrainConfig, program: TrainProgram, run_dir: Path, run_window, start: StartPoint,
                steps_at_start: int, *, progress: bool, checkpoint_every_s: float, branch_window: int | None,
                keep_branch_point: int | None, log=print):
    """Runs the evaluation windows from ``start.window`` to the last, writing ``metrics.csv``
    and ``attack_samples.npz`` after each, keeping the branch point after window
    ``branch_window`` (if every seed is still below ``keep_branch_point``), and checkpointing
    every ``checkpoint_every_s`` seconds (not after the last window).

    ``detection_samples.npz`` gets the window's monitor records when the program records them.

    Returns:
        ``(state, rows, compile_s)``: the final state (leaves ``[S, ...]``), every
        ``metrics.csv`` row, and the first window's seconds including compilation (None if
        no window ran).

    Raises:
        RunInterrupted: Ctrl-C; the state after the last completed window is checkpointed
            (unless that is already the checkpoint).
    """
    state, rows, samples, branched_from = start.state, start.rows, start.samples, start.branched_from
    detection = start.detection
    n_windows = len(program.window_targets)
    t0 = time.perf_counter()
    last_ckpt = time.perf_counter()

    def num_samples() -> int:
        return int(sum(len(v) for v in samples["seed"]))

    # What is on disk and consistent: (next window, its state, rows written, sample records
    # written, detection records written).
    committed = (start.window, state, len(rows), num_samples(), detection.counts())
    saved_window = start.window if start.from_checkpoint else None
    bar = _progress(progress, n_windows, start.window, config)
    compile_s = None
    try:
        for w in range(start.window, n_windows):
            tw = time.perf_counter()
            state, metrics = run_window(state, jnp.int32(program.window_targets[w]))
            jax.block_until_ready(metrics)
            if compile_s is None:
                compile_s = time.perf_counter() - tw
            new_rows = _rows(config, program, metrics, program.window_targets[w])
            rows.extend(new_rows)
            store.write_csv_atomic(run_dir / store.METRICS_FILE, METRIC_COLUMNS, rows)
            if program.attacked_agent is not None:
                for k, v in _samples(config, metrics).items():
                    samples[k].append(v)
                store.write_npz_atomic(run_dir / store.SAMPLES_FILE,
                                       **{k: np.concatenate(v) for k, v in samples.items()})
            if metrics.detection is not None:
                detection.add(metrics.detection, config.run.seeds, program.window_targets[w])
                detection.write(run_dir)
            committed = (w + 1, state, len(rows), num_samples(), detection.counts())
            elapsed = time.perf_counter() - t0
            steps = int(np.min(np.asarray(metrics.env_steps)))
            sps = (steps - steps_at_start) * len(config.run.seeds) / max(elapsed, 1e-9)
            if bar is not None:
                bar.update(w, steps, sps, new_rows, program.env.spec.family)
            if w == branch_window:
                if int(np.max(np.asarray(state.env_steps))) < keep_branch_point:
                    _save(run_dir, w + 1, state, rows, name=store.BRANCH_POINT_DIR, branch_at=int(keep_branch_point))
                    log(f"{run_dir}: kept the branch point for step {keep_branch_point:,} (evaluation {w + 1})")
            if time.perf_counter() - last_ckpt >= checkpoint_every_s and w + 1 < n_windows:
                _save(run_dir, w + 1, state, rows, branched_from=branched_from, num_samples=num_samples(),
                      **{DETECTION_META_KEY: detection.counts()})
                saved_window = w + 1
                last_ckpt = time.perf_counter()
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        next_window, done_state, n_rows, n_samples, n_detection = committed
        if next_window > 0 and next_window != saved_window:
            _save(run_dir, next_window, done_state, rows[:n_rows], branched_from=branched_from, num_samples=n_samples,
                  **{DETECTION_META_KEY: n_detection})
        raise RunInterrupted(f"interrupted at window {min(next_window + 1, n_windows)} of {n_windows}; "
                             f"rerun the same command to resume") from None
    finally:
        if bar is not None:
            bar.close()
    return state, rows, compile_s


def _load_without_detection(template, arrays, num_leaves):
    """A checkpoint written by a tram without the detection monitor, as today's state, or
    None when ``num_leaves`` is not that older layout. Checkpoints are taken between
    evaluation windows, where the monitor's ring is empty (all zeros), and the monitor
    changes no other number, so the older state plus an empty ring is exactly the state
    today's program would have saved: the run resumes as if it had recorded all along
    (without the detection records of the windows before the checkpoint)."""
    ring = getattr(getattr(template, "window", None), "detection", None)
    if ring is None:
        return None
    old = template._replace(window=template.window._replace(detection=None))
    old_leaves, old_def = jax.tree.flatten(old)
    if num_leaves != len(old_leaves) or num_leaves == len(jax.tree.leaves(template)):
        return None
    state = _load_state(old_def, arrays, len(old_leaves))
    empty = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), ring)
    return state._replace(window=state.window._replace(detection=empty))


def _leaf_key(i: int) -> str:
    return f"leaf_{i:05d}"


def _load_state(treedef, arrays, num_leaves: int):
    """The training state saved by :func:`_save` (``arrays`` as :func:`store.load_checkpoint` returns them)."""
    return jax.tree.unflatten(treedef, [jnp.asarray(arrays[_leaf_key(i)]) for i in range(num_leaves)])


def _save(run_dir: Path, next_window: int, state, rows, name: str = store.CHECKPOINT_DIR, **extra):
    leaves = jax.tree.leaves(state)
    arrays = {_leaf_key(i): np.asarray(x) for i, x in enumerate(leaves)}
    store.save_checkpoint(run_dir, next_window, arrays, {"num_leaves": len(leaves), "rows": rows, **extra},
                          name=name)


class _Bar:
    """Progress bar: windows done, env steps, steps/s, the latest test metric."""

    def __init__(self, total, start, config):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} evals"),
                          TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        self.p.start()
        self.task = self.p.add_task(f"{config.env.name} {config.learner.name} {config.attack.method}",
                                    total=total, completed=start, info="compiling...")

    def update(self, w, steps, sps, rows, family):
        key = 3 if family == "smax" else 2
        name = "win" if family == "smax" else "return"
        vals = [r[key] if family == "smax" else r[2] for r in rows]
        info = f"steps {steps:,}  {sps:,.0f} steps/s  test {name} {np.nanmean(vals):.3f}"
        self.p.update(self.task, completed=w + 1, info=info)

    def close(self):
        self.p.stop()


def _progress(enabled, total, start, config):
    return _Bar(total, start, config) if enabled else None
