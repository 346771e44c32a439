"""Load a run store for reporting: one :class:`~tram.experiments.store.Run` per
(environment, learner, attack method, f_A, KL_U), plus naming, ordering and colours.

Labels, colours and order come from the table of attack methods
(:data:`tram.attacks.methods.ATTACK_METHODS`), read when called; a run whose method is not in
the table is an error naming the run and the method (:func:`collect_runs`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tram.attacks import methods as _methods
from tram.experiments.store import CorruptRunError, Run, find_runs, load_run
from tram.report.stats import curve_with_ci
from tram.validation import ConfigError

Family = Literal["smax", "grid"]



def method_order() -> tuple[str, ...]:
    """Every report key of the table (methods, and ``worst_q_test``-style variants), in the
    order of curves, legends and tables."""
    return _methods.series_keys()


def budget_methods() -> tuple[str, ...]:
    """The attacked methods with a KL budget (var, jbased, random), in table order: the rows
    of the paper's stealth Tables 1-3 and the methods of the budget curves (Figs. 5, 6)."""
    return tuple(n for n, m in _methods.ATTACK_METHODS.items() if m.has_kl_budget)


def direction_methods() -> tuple[str, ...]:
    """The methods with a direction ``delta_hat`` (Fig. 4 rows), in table order."""
    return tuple(n for n, m in _methods.ATTACK_METHODS.items() if m.direction is not None)


PAPER_ENV_ORDER: tuple[str, ...] = (
    "3m", "6m", "2s3z", "2s_vs_1sc", "1c3s5z", "3s5z", "10m_vs_11m", "15m", "20m",
    "spread", "gather", "formation",
)
"""Environments in the paper's order (Fig. 2, App. D, Fig. 3); others follow by name."""
PRIMARY_METRIC: dict[str, str] = {"smax": "test_win_rate", "grid": "test_return"}
"""The curve / final-table metric per environment family."""
METRIC_LABELS: dict[str, str] = {
    "test_win_rate": "test win rate",
    "test_return": "test return",
    "stealth_loglik": "stealth log likelihood",
}


def method_label(method: str) -> str:
    """The label of report key ``method``; a :class:`~tram.validation.ConfigError` naming it
    if the table has no such method."""
    return _methods.series_label(method)


def method_color(method: str) -> str:
    """The colour of report key ``method``; raises like :func:`method_label`."""
    return _methods.series_colour(method)


def method_rank(method: str) -> int:
    """Position of report key ``method`` in :func:`method_order`; raises like :func:`method_label`."""
    _methods.series_method(method)
    return method_order().index(method)


def env_sort_key(env: str) -> tuple[int, str]:
    """Sort key of an environment name: the paper's order first, then the others by name."""
    return (PAPER_ENV_ORDER.index(env), "") if env in PAPER_ENV_ORDER else (len(PAPER_ENV_ORDER), env)


def fmt_num(x: float | None) -> str:
    """Short spelling of a budget value: ``1.0 -> "1"``, ``0.4 -> "0.4"``, None -> "-"."""
    return "-" if x is None else f"{x:g}"


@dataclass(frozen=True, order=True)
class RunKey:
    """What a report distinguishes runs by. ``f_a``/``kl_u`` are ``None`` for method none."""

    env: str
    learner: str
    method: str
    f_a: float | None
    kl_u: float | None

    @classmethod
    def of(cls, run: Run) -> "RunKey":
        """The key of a stored run (its env, learner, method, f_A and KL_U)."""
        return cls(run.env, run.learner, run.method, run.f_a, run.kl_u)

    @property
    def algo_name(self) -> str:
        """Algorithm name for exports: ``dop_none`` or ``dop_var_fa1_kl6``."""
        if self.method == "none":
            return f"{self.learner}_none"
        return f"{self.learner}_{self.method}_fa{fmt_num(self.f_a)}_kl{fmt_num(self.kl_u)}"


def _sort_key(key: RunKey) -> tuple:
    return (
        key.learner,
        env_sort_key(key.env),
        method_rank(key.method),
        -1.0 if key.f_a is None else key.f_a,
        -1.0 if key.kl_u is None else key.kl_u,
    )


@dataclass
class Store:
    """The runs a report uses, keyed by :class:`RunKey`, and notes on what was left out."""

    runs: dict[RunKey, Run] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def keys(self) -> list[RunKey]:
        """Every run's key, in report order."""
        return sorted(self.runs, key=_sort_key)

    def learners(self) -> list[str]:
        """The learners with at least one run, sorted."""
        return sorted({k.learner for k in self.runs})

    def envs(self, learner: str | None = None) -> list[str]:
        """The environments with a run (of ``learner`` if given), in :func:`env_sort_key` order."""
        return sorted(
            {k.env for k in self.runs if learner is None or k.learner == learner}, key=env_sort_key
        )

    def get(self, env: str, learner: str, method: str, f_a: float | None = None,
            kl_u: float | None = None) -> Run | None:
        """The run of that cell, or None (``f_a`` / ``kl_u`` are ignored where the method has
        none: the clean run, a method without a KL budget)."""
        if method == _methods.CLEAN:
            f_a = kl_u = None
        elif not _methods.series_method(method).has_kl_budget:
            kl_u = None  # e.g. the deploy-time worst-Q attack
        return self.runs.get(RunKey(env, learner, method, f_a, kl_u))

    def family(self, env: str) -> Family:
        """``"smax"`` when any run on ``env`` reports a finite win rate, else ``"grid"``."""
        return "smax" if any(key.env == env and run_has_win_rate(run) for key, run in self.runs.items()) else "grid"


def run_has_win_rate(run: Run) -> bool:
    """Whether any evaluation row of ``run`` has a finite test win rate (SMAX runs do; the
    grid tasks record NaN)."""
    return bool(np.isfinite(run.metrics["test_win_rate"]).any())


def _preference(run: Run, partner_steps: set[int]) -> tuple:
    steps = int(run.config["run"]["steps"])
    return (run.status == "done", steps in partner_steps, steps, len(run.seeds))


def collect_runs(
    root: Path, include_partial: bool = False, log: Callable[[str], None] | None = None
) -> Store:
    """Load every run under ``root``; corrupt runs and (by default) partial runs are left out
    with a note, and when several runs share a :class:`RunKey` one is kept (also noted): a
    finished one; then one as long (``run.steps``) as some run of another key on the same env
    and learner (the clean run trained beside the attacked ones, e.g. Fig. 1's ``2S``-step
    clean run rather than a longer clean run of the same map); then the most env steps, the
    most seeds, the first by name.

    Raises:
        ConfigError: a run's ``attack.method`` is not in the table of attack methods (the
            message names the run and the method), so that no run drops out silently.
    """
    store = Store()

    def note(message: str) -> None:
        store.notes.append(message)
        if log is not None:
            log(message)

    candidates: dict[RunKey, list[Run]] = {}
    for path in find_runs(root):
        try:
            run = load_run(path)
        except CorruptRunError as e:
            note(f"skipped corrupt run {path.name}: {e}")
            continue
        if run.status != "done" and not include_partial:
            note(f"skipped unfinished run {path.name} (pass include_partial to report it)")
            continue
        try:
            _methods.series_method(run.method)
        except ConfigError as e:
            raise ConfigError(f"run {path}: {e}; add the method to tram.attacks.methods.ATTACK_METHODS "
                              f"or move the run out of {root}", "attack.method") from None
        if len(run.seeds) == 0:
            note(f"skipped run {path.name}: no evaluation rows yet")
            continue
        candidates.setdefault(RunKey.of(run), []).append(run)
    for key in sorted(candidates, key=_sort_key):
        runs = sorted(candidates[key], key=lambda r: r.name)
        partner_steps = {int(r.config["run"]["steps"]) for k, rs in candidates.items()
                         if k != key and (k.env, k.learner) == (key.env, key.learner) for r in rs}
        best = max(runs, key=lambda r: _preference(r, partner_steps))  # max keeps the first of equals
        if len(runs) > 1:
            others = ", ".join(r.name for r in runs if r is not best)
            note(f"several runs for {key.algo_name} on {key.env}: using {best.name}, ignoring {others}")
        store.runs[key] = best
    return store


def run_curve(
    run: Run, metric: str, n_boot: int = 2000, ci: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(env_steps, mean, lo, hi)`` of ``metric`` over the run's seeds (bootstrap band;
    ragged seeds are cut to their common prefix)."""
    xs, ys = [], []
    for seed in run.seeds:
        rows = run.seed_rows(seed)
        xs.append(rows["env_steps"])
        ys.append(rows[metric])
    return curve_with_ci(xs, ys, stat="mean", n_boot=n_boot, ci=ci)


def finite_seed_means(run: Run, metric: str, span: int | None = None,
                      between: tuple[int, int] | None = None) -> np.ndarray:
    """Per seed, the mean of ``metric`` over its evaluation rows (NaN rows ignored): all of
    them; with ``span`` only those in the seed's last ``span`` env steps (``env_steps >
    max - span``); with ``between=(lo, hi)`` only those with ``lo < env_steps <= hi``.
    Seeds with no finite value there are dropped. Returns ``[S']``."""
    out = []
    for seed in run.seeds:
        rows = run.seed_rows(seed)
        v = rows[metric]
        keep = np.isfinite(v)
        if span is not None:
            keep &= rows["env_steps"] > rows["env_steps"].max() - span
        if between is not None:
            keep &= (rows["env_steps"] > between[0]) & (rows["env_steps"] <= between[1])
        if keep.any():
            out.append(float(v[keep].mean()))
    return np.asarray(out, dtype=np.float64)


def final_values(run: Run, metric: str) -> np.ndarray:
    """``[S']`` final ``metric`` per seed (:meth:`Run.final`), non-finite values dropped."""
    vals = [run.final(seed, metric) for seed in run.seeds]
    return np.asarray([v for v in vals if math.isfinite(v)], dtype=np.float64)


def sorted_values(values: Iterable[float]) -> list[float]:
    """The distinct ``values``, ascending."""
    return sorted(set(values))
