"""Aggregate statistics over seeds: IQM and percentile-bootstrap confidence intervals.

Follows rliable (Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical
Precipice", NeurIPS 2021): the interquartile mean is ``scipy.stats.trim_mean(x, 0.25)`` and
intervals are percentile bootstraps that resample runs (seeds) with replacement. Written with
numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Stat = Literal["mean", "iqm"]


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of ``x`` after removing ``floor(0.25 * n)`` of the
    smallest and as many of the largest values along ``axis`` (scipy's ``trim_mean`` with
    ``proportiontocut=0.25``, as in rliable).

    E.g. ``iqm([1, 2, 3, 4, 100]) = mean([2, 3, 4]) = 3``; for ``n < 4`` nothing is cut.

    Args:
        x: ``[..., S]`` values (with ``axis=-1``).
    """
    x = np.sort(np.asarray(x, dtype=np.float64), axis=axis)
    n = x.shape[axis]
    if n == 0:
        raise ValueError("iqm of an empty sample")
    cut = (n * 25) // 100
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def _statistic(x: np.ndarray, stat: Stat, axis: int) -> np.ndarray:
    if stat == "mean":
        return np.asarray(x, dtype=np.float64).mean(axis=axis)
    if stat == "iqm":
        return iqm(x, axis=axis)
    raise ValueError(f"stat must be 'mean' or 'iqm', got {stat!r}")


def _check_ci(ci: float, n_boot: int) -> None:
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci!r}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    stat: Stat = "mean",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile-bootstrap interval of ``stat`` over seeds.

    Draws ``n_boot`` resamples of the ``S`` values with replacement, computes ``stat`` on
    each and returns the ``(1 - ci) / 2`` and ``(1 + ci) / 2`` percentiles. With one seed the
    interval collapses to the point. Deterministic for a given ``seed``.

    Args:
        samples: ``[S]`` one value per seed (finite).
        stat: ``"mean"`` or ``"iqm"`` (:func:`iqm`).
        n_boot: bootstrap resamples.
        ci: coverage, e.g. 0.95.
        seed: seed of the resampling generator.

    Returns:
        ``(point, lo, hi)``.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"samples must be a non-empty 1-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"samples must be finite, got {x.tolist()}")
    _check_ci(ci, n_boot)
    point = float(_statistic(x, stat, axis=0))
    if x.size == 1:
        return point, point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    boot = _statistic(x[idx], stat, axis=1)
    lo, hi = np.percentile(boot, [50 * (1 - ci), 50 * (1 + ci)])
    return point, float(lo), float(hi)


def mean_ci_text(samples: Sequence[float] | np.ndarray, width: int = 0, n_boot: int = 2000,
                 ci: float = 0.95) -> str:
    """``"mean [lo, hi]"`` of :func:`bootstrap_ci` over seeds, three decimals, the mean
    right-aligned in ``width`` characters; ``"-"`` for no samples. For the result scripts
    under ``results/`` that print the numbers their READMEs quote."""
    x = np.asarray(samples, dtype=np.float64)
    return ci_text(bootstrap_ci(x, "mean", n_boot, ci) if x.size else None, width)


def ci_text(interval: tuple[float, float, float] | None, width: int = 0) -> str:
    """``(point, lo, hi)`` as ``"point [lo, hi]"``, three decimals, the point right-aligned in
    ``width`` characters; ``"-"`` for None."""
    if interval is None:
        return "-"
    point, lo, hi = interval
    return f"{point:{width}.3f} [{lo:.3f}, {hi:.3f}]"


def curve_with_ci(
    x_by_seed: Sequence[Sequence[float]],
    y_by_seed: Sequence[Sequence[float]],
    stat: Stat = "mean",
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Learning curve over seeds with a pointwise percentile-bootstrap band.

    Seeds evaluate at the same env steps, so curves are aligned by position. Ragged inputs
    (a partial run whose seeds stopped at different evaluations) are truncated to the
    common prefix, i.e. the shortest seed's length; the x values of that prefix must agree
    across seeds. Each bootstrap resample draws whole seeds (the same draw for every x), as
    rliable's sample-efficiency curves do.

    Args:
        x_by_seed: ``S`` sequences of env steps ``[T_s]``.
        y_by_seed: ``S`` sequences of metric values ``[T_s]``.
        stat, n_boot, ci, seed: as in :func:`bootstrap_ci`.

    Returns:
        ``(x [T], point [T], lo [T], hi [T])`` with ``T = min_s T_s``.

    Raises:
        ValueError: no seeds, mismatched lengths within a seed, or x values that differ
            across seeds within the common prefix.
    """
    if len(x_by_seed) == 0 or len(x_by_seed) != len(y_by_seed):
        raise ValueError(
            f"need the same non-zero number of x and y sequences, got {len(x_by_seed)} and {len(y_by_seed)}"
        )
    xs = [np.asarray(x, dtype=np.float64) for x in x_by_seed]
    ys = [np.asarray(y, dtype=np.float64) for y in y_by_seed]
    for s, (x, y) in enumerate(zip(xs, ys)):
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"seed {s}: x shape {x.shape} and y shape {y.shape} must be equal and 1-D")
    t = min(len(x) for x in xs)
    x0 = xs[0][:t]
    for s, x in enumerate(xs[1:], start=1):
        if not np.array_equal(x[:t], x0):
            raise ValueError(f"seed {s} evaluates at different env steps than seed 0")
    y = np.stack([v[:t] for v in ys])  # [S, T]
    _check_ci(ci, n_boot)
    point = _statistic(y, stat, axis=0)
    if y.shape[0] == 1 or t == 0:
        return x0, point, point.copy(), point.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.shape[0], size=(n_boot, y.shape[0]))
    boot = _statistic(y[idx], stat, axis=1)  # [n_boot, T]
    lo, hi = np.percentile(boot, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return x0, point, lo, hi
