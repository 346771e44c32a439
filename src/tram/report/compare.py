"""One question, one answer: how do attack methods compare on one cell of the grid?

``tram compare --env 8m --methods var,random --kl 2`` trains what the store lacks and
answers "does var-based TRAM hurt the team more than random at KL_U = 2?" from the runs.
This module holds the part after training: per method, the final test metric and its mean
over the last ``window`` env steps (each with a percentile-bootstrap 95% CI over seeds, as
``tram report``), the stealth of Eq. 3 (Table 1's average), and for each pair of methods the
difference of the window means with a Welch t-interval and a verdict.

Why Welch for the verdict and the bootstrap for the per-method CIs: the report's bootstrap
intervals describe one method; a decision between two methods from 3-5 seeds each needs an
interval that stays honest with so few seeds, and the percentile bootstrap is too narrow
there (with 3 seeds it can only draw 10 distinct means). Welch's interval does not assume
equal variances and widens with few seeds (t quantile with Welch-Satterthwaite degrees of
freedom). The window mean is the default measure because the last evaluation alone is the
noisiest point of a curve (32 test episodes); the final value is printed beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tram.experiments.store import Run
from tram.report.collect import final_values, finite_seed_means, method_label, run_has_win_rate
from tram.report.stats import bootstrap_ci, ci_text

PERFORMANCE_METRICS = ("test_win_rate", "test_return", "test_success")
"""Metrics ``--metric`` accepts: each is "higher is better for the team"."""

METRIC_NAMES = {"test_win_rate": "test win rate", "test_return": "test return", "test_success": "test success"}


def welch_interval(x: Sequence[float], y: Sequence[float], ci: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean(x) - mean(y), lo, hi, dof)``: Welch's t-interval of the difference of two
    means with unequal variances, ``d +- t_{dof, (1+ci)/2} * sqrt(s_x^2/n_x + s_y^2/n_y)``
    with the Welch-Satterthwaite ``dof``.

    With zero variance in both samples the interval is the point (``dof`` infinite).

    Raises:
        ValueError: fewer than 2 values in either sample, or a non-finite value.
    """
    from scipy.stats import t

    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError(f"a Welch interval needs at least 2 values per sample, got {a.size} and {b.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a Welch interval needs finite values")
    d = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se2 = va + vb
    if se2 == 0.0:
        return d, d, d, math.inf
    dof = se2 ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(t.ppf(0.5 + ci / 2.0, dof)) * math.sqrt(se2)
    return d, d - half, d + half, float(dof)


def paired_interval(x: Sequence[float], y: Sequence[float], ci: float = 0.95) -> tuple[float, float, float]:
    """``(mean(x - y), lo, hi)``: the t-interval of the mean of the paired differences
    ``x[i] - y[i]`` (the same seed measured twice, e.g. a run's win rate late in training
    against early), ``d +- t_{n-1, (1+ci)/2} * sd(x - y) / sqrt(n)``. Zero spread gives the point.

    Raises:
        ValueError: unequal lengths, fewer than 2 pairs, or a non-finite value.
    """
    from scipy.stats import t

    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"a paired interval needs two equal-length samples of at least 2 values, "
                         f"got shapes {a.shape} and {b.shape}")
    diff = a - b
    if not np.isfinite(diff).all():
        raise ValueError("a paired interval needs finite values")
    d = float(diff.mean())
    half = float(t.ppf(0.5 + ci / 2.0, diff.size - 1)) * float(diff.std(ddof=1)) / math.sqrt(diff.size)
    return d, d - half, d + half


@dataclass(frozen=True)
class MethodResult:
    """One method's numbers over its seeds; each interval is ``(mean, lo, hi)``."""

    method: str
    """The run's series key (:attr:`Run.method`: ``var``, ``worst_q_test``, ``var_surrogate``...)."""
    run: str
    """The run directory's name."""
    seeds: int
    final: tuple[float, float, float]
    window: tuple[float, float, float]
    window_values: tuple[float, ...]
    """Per seed, the mean over the window (what the verdicts compare)."""
    stealth: tuple[float, float, float] | None
    """Eq. 3 averaged over every step of the poisoned agent (Table 1's column); None for no attack."""


@dataclass(frozen=True)
class PairVerdict:
    """``a`` against ``b`` on the window means: ``difference = mean_a - mean_b``."""

    a: str
    b: str
    difference: float
    lo: float
    hi: float
    verdict: str


@dataclass(frozen=True)
class Comparison:
    """What :func:`format_comparison` prints."""

    metric: str
    window: int
    results: tuple[MethodResult, ...]
    pairs: tuple[PairVerdict, ...]


def default_metric(runs: Sequence[Run]) -> str:
    """``test_win_rate`` when every run reports a finite win rate (SMAX; the criterion of
    :meth:`tram.report.collect.Store.family`), else ``test_return`` (the grid tasks)."""
    return "test_win_rate" if all(run_has_win_rate(r) for r in runs) else "test_return"


def method_result(run: Run, metric: str, window: int, n_boot: int = 2000) -> MethodResult:
    """The numbers of one finished run (see :class:`MethodResult`).

    Raises:
        ValueError: the run has no finite ``metric`` (e.g. a win rate on a grid task).
    """
    final = final_values(run, metric)
    win = finite_seed_means(run, metric, span=window)
    if final.size == 0 or win.size == 0:
        raise ValueError(f"run {run.name} has no finite {metric}; accepted metrics for it: "
                         + ", ".join(m for m in PERFORMANCE_METRICS if finite_seed_means(run, m).size))
    stealth = None
    if run.method != "none":
        s = finite_seed_means(run, "stealth_loglik")
        stealth = bootstrap_ci(s, n_boot=n_boot) if s.size else None
    return MethodResult(run.method, run.name, len(run.seeds), bootstrap_ci(final, n_boot=n_boot),
                        bootstrap_ci(win, n_boot=n_boot), tuple(float(v) for v in win), stealth)


def pair_verdict(a: MethodResult, b: MethodResult, metric: str, ci: float = 0.95) -> PairVerdict:
    """Welch's interval of ``a``'s window mean minus ``b``'s, and what it says: the team does
    worse under ``a`` (interval below 0), worse under ``b`` (above 0), or no difference is
    resolved (the interval contains 0); with fewer than 2 seeds on a side, no interval."""
    name_a, name_b, what = method_label(a.method), method_label(b.method), METRIC_NAMES[metric]
    if len(a.window_values) < 2 or len(b.window_values) < 2:
        return PairVerdict(a.method, b.method, a.window[0] - b.window[0], math.nan, math.nan,
                           f"no interval: {name_a} has {len(a.window_values)} seed(s), {name_b} "
                           f"{len(b.window_values)}; a CI needs at least 2 per method (--seeds 3 or more)")
    d, lo, hi, _ = welch_interval(a.window_values, b.window_values, ci)
    if hi < 0:
        verdict = f"the {what} is lower under {name_a} than under {name_b}"
    elif lo > 0:
        verdict = f"the {what} is higher under {name_a} than under {name_b}"
    else:
        verdict = (f"no difference resolved: the {round(100 * ci)}% CI contains 0 "
                   f"({len(a.window_values)} + {len(b.window_values)} seeds)")
    return PairVerdict(a.method, b.method, d, lo, hi, verdict)


def compare_runs(runs: Sequence[Run], metric: str, window: int, n_boot: int = 2000,
                 ci: float = 0.95) -> Comparison:
    """Every run's numbers and a verdict for every pair, in the order given (the first run
    against each later one, then the second against each later one, ...).

    Args:
        runs: finished runs of distinct methods (one cell each).
        metric: one of :data:`PERFORMANCE_METRICS`.
        window: env steps at the end of each seed's curve that the window mean covers.
    """
    if metric not in PERFORMANCE_METRICS:
        raise ValueError(f"metric {metric!r} is not accepted; accepted: {', '.join(PERFORMANCE_METRICS)}")
    results = tuple(method_result(r, metric, window, n_boot) for r in runs)
    pairs = tuple(pair_verdict(results[i], results[j], metric, ci)
                  for i in range(len(results)) for j in range(i + 1, len(results)))
    return Comparison(metric, window, results, pairs)


def format_comparison(c: Comparison) -> str:
    """A Markdown table (one row per method) and one line per pair."""
    what = METRIC_NAMES[c.metric]
    lines = [f"| method | seeds | {what}, final | {what}, mean over the last {c.window:,} steps | "
             "stealth (Eq. 3, every step) | run |",
             "|---|---|---|---|---|---|"]
    for r in c.results:
        lines.append(f"| {method_label(r.method)} | {r.seeds} | {ci_text(r.final)} | {ci_text(r.window)} | {ci_text(r.stealth)} | "
                     f"{r.run} |")
    lines.append("")
    lines.append("Means with 95% percentile-bootstrap CIs over seeds. Pairs: difference of the window means "
                 "(first minus second), Welch 95% CI:")
    for p in c.pairs:
        ci = "" if math.isnan(p.lo) else f" [{p.lo:+.3f}, {p.hi:+.3f}]"
        lines.append(f"- {method_label(p.a)} vs {method_label(p.b)}: {p.difference:+.3f}{ci}: {p.verdict}.")
    return "\n".join(lines)
