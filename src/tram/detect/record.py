"""``detection_samples.npz``: the monitor's per-window sample in the run store.

Arrays (``K`` episode records, ``J`` traced episodes, ``N`` agents, ``T`` episode limit)::

    score, var          [K, N] float32   sum_t u_t and sum_t Var_t[log pi] per agent
    length              [K]    int64     episode length (steps)
    env_steps           [K]    int64     the evaluation point of the window (as metrics.csv)
    rollout_step        [K]    int64     the seed's env steps when the episode began
    seed                [K]    int64
    trace_u, trace_var  [J, T, N] float32  per-step u_t and Var_t (0 after the episode's end)
    trace_length, trace_env_steps, trace_rollout_step, trace_seed   [J] int64
    poisoned_agent      []     int64     the attacked agent's index, -1 in a clean run

Each window appends, per seed, every episode of its last
:data:`tram.detect.score.ROLLOUTS_PER_WINDOW` rollouts and the trace of environment 0 of
each, in the order of the rollouts. The file is rewritten atomically after every window
(:func:`tram.experiments.store.write_npz_atomic`); a checkpoint records how many records
(``num_detection``: ``[K, J]``) it covers, so a run killed after writing a window but
before checkpointing it drops those records on resume and writes them once
(:meth:`DetectionLog.resume`), exactly like ``attack_samples.npz``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import jax
import numpy as np

from tram.experiments import store

DETECTION_FILE = store.DETECTION_FILE
EPISODE_ARRAYS = ("score", "var", "length", "env_steps", "rollout_step", "seed")
TRACE_ARRAYS = ("trace_u", "trace_var", "trace_length", "trace_env_steps", "trace_rollout_step", "trace_seed")
ARRAYS = (*EPISODE_ARRAYS, *TRACE_ARRAYS, "poisoned_agent")
META_KEY = "num_detection"
"""Checkpoint meta key: ``[K, J]`` records of the file the checkpoint covers."""


def window_records(ring, seeds, env_steps) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One window's records from the seed-stacked ring.

    Args:
        ring: :class:`tram.detect.score.DetectionRing` with leaves ``[S, R, ...]``.
        seeds: the ``S`` seeds; env_steps: the window's evaluation point (``metrics.csv``'s
            ``env_steps``; a scalar or ``[S]``).

    Returns:
        ``(episodes, traces)``: dicts of :data:`EPISODE_ARRAYS` (``[K, ...]``) and
        :data:`TRACE_ARRAYS` (``[J, ...]``); per seed, rollouts in the order they ran.
    """
    r = jax.tree.map(np.asarray, ring)
    ep = {k: [] for k in EPISODE_ARRAYS}
    tr = {k: [] for k in TRACE_ARRAYS}
    env_steps = np.broadcast_to(np.asarray(env_steps), (len(seeds),))
    for i, seed in enumerate(seeds):
        slots = [j for j in np.argsort(r.rollout_step[i], kind="stable") if r.valid[i, j]]
        for j in slots:
            b = r.score.shape[2]
            ep["score"].append(r.score[i, j])
            ep["var"].append(r.var[i, j])
            ep["length"].append(r.length[i, j].astype(np.int64))
            ep["env_steps"].append(np.full(b, env_steps[i], np.int64))
            ep["rollout_step"].append(np.full(b, r.rollout_step[i, j], np.int64))
            ep["seed"].append(np.full(b, seed, np.int64))
            tr["trace_u"].append(r.trace_u[i, j][None])
            tr["trace_var"].append(r.trace_var[i, j][None])
            tr["trace_length"].append(np.asarray([r.length[i, j, 0]], np.int64))
            tr["trace_env_steps"].append(np.asarray([env_steps[i]], np.int64))
            tr["trace_rollout_step"].append(np.asarray([r.rollout_step[i, j]], np.int64))
            tr["trace_seed"].append(np.asarray([seed], np.int64))
    n, t = r.score.shape[-1], r.trace_u.shape[-2]
    empty = {"score": (0, n), "var": (0, n), "trace_u": (0, t, n), "trace_var": (0, t, n)}
    out = []
    for d in (ep, tr):
        out.append({k: np.concatenate(v) if v else np.zeros(empty.get(k, (0,)),
                                                                np.float32 if k in empty else np.int64)
                    for k, v in d.items()})
    return out[0], out[1]


def load_detection(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``detection_samples.npz`` (see the module docstring), validated.

    Raises:
        store.CorruptRunError: unreadable, an array missing, or shapes that disagree (the
            message names the file).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise store.CorruptRunError(f"{path}: unreadable npz ({type(e).__name__}: {e})") from None
    missing = [k for k in ARRAYS if k not in arrays]
    if missing:
        raise store.CorruptRunError(f"{path}: missing arrays {missing} (expected {', '.join(ARRAYS)})")
    score = arrays["score"]
    if score.ndim != 2:
        raise store.CorruptRunError(f"{path}: score must be [K, N], got shape {score.shape}")
    k, n = score.shape
    if arrays["var"].shape != score.shape:
        raise store.CorruptRunError(f"{path}: var has shape {arrays['var'].shape}, score has {score.shape}")
    for name in ("length", "env_steps", "rollout_step", "seed"):
        if arrays[name].shape != (k,):
            raise store.CorruptRunError(f"{path}: {name} has shape {arrays[name].shape}, expected ({k},)")
    tu = arrays["trace_u"]
    if tu.ndim != 3 or tu.shape[2] != n or arrays["trace_var"].shape != tu.shape:
        raise store.CorruptRunError(f"{path}: trace_u/trace_var must be [J, T, {n}], got "
                                    f"{tu.shape} and {arrays['trace_var'].shape}")
    for name in ("trace_length", "trace_env_steps", "trace_rollout_step", "trace_seed"):
        if arrays[name].shape != (tu.shape[0],):
            raise store.CorruptRunError(f"{path}: {name} has shape {arrays[name].shape}, expected ({tu.shape[0]},)")
    if arrays["poisoned_agent"].shape != () or not -1 <= int(arrays["poisoned_agent"]) < n:
        raise store.CorruptRunError(f"{path}: poisoned_agent must be a scalar in -1..{n - 1}, "
                                    f"got {arrays['poisoned_agent']!r}")
    return arrays


class DetectionLog:
    """The records of ``detection_samples.npz`` a training process holds and rewrites.

    ``poisoned_agent``: the attacked agent's index, or None for a clean run.
    """

    def __init__(self, poisoned_agent: int | None):
        self.poisoned_agent = -1 if poisoned_agent is None else int(poisoned_agent)
        self.episodes: dict[str, list[np.ndarray]] = {k: [] for k in EPISODE_ARRAYS}
        self.traces: dict[str, list[np.ndarray]] = {k: [] for k in TRACE_ARRAYS}

    @classmethod
    def resume(cls, run_dir: Path, meta: dict, poisoned_agent: int | None) -> "DetectionLog":
        """The log holding exactly the records the checkpoint ``meta`` covers (records written
        after it by a process that then died are dropped, so that the resumed run writes them
        once). A checkpoint without :data:`META_KEY` (older tram) covers none.

        Raises:
            store.CorruptRunError: the file is missing or shorter than the checkpoint says.
        """
        log = cls(poisoned_agent)
        counts = meta.get(META_KEY) or [0, 0]
        path = Path(run_dir) / DETECTION_FILE
        if not path.exists():
            if any(counts):
                raise store.CorruptRunError(f"{path}: missing, but the checkpoint holds {counts[0]} records of "
                                            f"it; pass --restart to retrain this run")
            return log
        prev = load_detection(path)
        have = [len(prev["seed"]), len(prev["trace_seed"])]
        if have[0] < counts[0] or have[1] < counts[1]:
            raise store.CorruptRunError(f"{path}: {have[0]} records, but the checkpoint was written after "
                                        f"{counts[0]}; pass --restart to retrain this run")
        for k in EPISODE_ARRAYS:
            log.episodes[k].append(prev[k][: counts[0]])
        for k in TRACE_ARRAYS:
            log.traces[k].append(prev[k][: counts[1]])
        return log

    def counts(self) -> list[int]:
        """``[K, J]``: episode and trace records held (for the checkpoint's meta)."""
        return [int(sum(len(v) for v in self.episodes["seed"])), int(sum(len(v) for v in self.traces["trace_seed"]))]

    def add(self, ring, seeds, env_steps) -> None:
        """Appends one window (:func:`window_records`)."""
        ep, tr = window_records(ring, seeds, env_steps)
        for k, v in ep.items():
            self.episodes[k].append(v)
        for k, v in tr.items():
            self.traces[k].append(v)

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array of the file (module docstring)."""
        out = {k: np.concatenate(v) for k, v in {**self.episodes, **self.traces}.items() if v}
        out["poisoned_agent"] = np.asarray(self.poisoned_agent, np.int64)
        return out

    def write(self, run_dir: Path) -> Path:
        """Rewrites ``run_dir/detection_samples.npz`` atomically."""
        return store.write_npz_atomic(Path(run_dir) / DETECTION_FILE, **self.arrays())
