"""Detection statistics on monitor scores: the standardised score, AUROC (ties count one
half) with a seed-level bootstrap, the detection rate at a false-alarm rate, and a
two-sided CUSUM over steps with its threshold calibrated on honest episodes.

Conventions: a larger detection statistic is more suspicious; an alarm is raised when the
statistic is strictly above the threshold. See ``docs/detection.md``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

VAR_EPS = 1e-12
"""An episode (or step) whose summed variance is at most this had a deterministic clean
policy: its score is exactly 0 and its standardised score is defined as 0."""


def standardized(score: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``z = s / sqrt(sum_t Var_t)`` elementwise (0 where the variance is at most
    :data:`VAR_EPS`). Under an honest agent ``z`` has mean 0 and variance 1 (to first order;
    ``docs/detection.md``). Same shape as the inputs, float64."""
    score, var = np.asarray(score, np.float64), np.asarray(var, np.float64)
    ok = var > VAR_EPS
    return np.where(ok, score / np.sqrt(np.where(ok, var, 1.0)), 0.0)


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """``P(X > Y) + P(X = Y) / 2`` for ``X`` a positive and ``Y`` a negative score (the
    Mann-Whitney statistic over ``n1 * n0``, from mid-ranks). NaN if either is empty."""
    pos, neg = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    n1, n0 = len(pos), len(neg)
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]))  # mid-ranks for ties
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def threshold_at_fpr(negative: np.ndarray, fpr: float) -> float:
    """The smallest observed honest value ``c`` with ``#{negative > c} <= floor(fpr * n0)``:
    alarming on ``x > c`` flags at most a fraction ``fpr`` of the honest values. ``inf`` for
    an empty sample.

    Raises:
        ValueError: ``fpr`` not in ``[0, 1)``.
    """
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr: {fpr!r} is not accepted; accepted: a number in [0, 1)")
    neg = np.sort(np.asarray(negative, np.float64).ravel())
    if neg.size == 0:
        return math.inf
    allowed = int(math.floor(fpr * neg.size + 1e-9))
    return float(neg[neg.size - 1 - allowed])


def rate_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float = 0.01) -> float:
    """Fraction of ``positive`` strictly above :func:`threshold_at_fpr` of ``negative``.
    NaN if ``positive`` is empty."""
    pos = np.asarray(positive, np.float64).ravel()
    if pos.size == 0:
        return math.nan
    return float(np.mean(pos > threshold_at_fpr(negative, fpr)))


def pairwise_mann_whitney(pos_by_group: list[np.ndarray], neg_by_group: list[np.ndarray]) -> np.ndarray:
    """``2 * U`` of every (positive group ``i``, negative group ``j``) pair, where
    ``U_ij = #{x > y} + #{x = y} / 2`` over ``x`` in ``pos_by_group[i]`` and ``y`` in
    ``neg_by_group[j]``: ``[G, G]`` int64 (twice ``U``, so every entry is an exact integer).

    Pooling groups with multiplicities ``w`` gives the pooled Mann-Whitney statistic
    ``U = w @ U_pairs @ w``, since every pooled (positive, negative) pair belongs to exactly
    one (group, group) cell; this is what makes the group bootstrap cheap."""
    out = np.zeros((len(pos_by_group), len(neg_by_group)), np.int64)
    for j, neg in enumerate(neg_by_group):
        ys = np.sort(neg)
        for i, pos in enumerate(pos_by_group):
            below = np.searchsorted(ys, pos, side="left")      # #{y < x} per x
            below_or_tie = np.searchsorted(ys, pos, side="right")  # #{y <= x}
            out[i, j] = int(below.sum()) + int(below_or_tie.sum())
    return out


def bootstrap_auroc(positive: np.ndarray, negative: np.ndarray, pos_groups: np.ndarray, neg_groups: np.ndarray,
                    n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`auroc`, resampling GROUPS (seeds) with
    replacement and pooling their episodes: episodes of one seed share a training run, so
    they are not independent draws and resampling them would understate the uncertainty.
    With a single group the interval resamples episodes instead (and says less).

    Each resample's AUROC is computed from the (group, group) Mann-Whitney counts of
    :func:`pairwise_mann_whitney`, sorted once, instead of ranking the pooled resample
    again: the numerator and the denominator are the same exact integers (halves) as
    :func:`auroc` of the pooled resample gives, so every value is the same float, bit for bit
    (tested), at ``O(G^2)`` per resample instead of a sort of every pooled episode. Scores
    with a NaN take the pooled path (``auroc`` propagates the NaN).

    Args:
        positive, negative: ``[n1]``, ``[n0]`` scores; pos_groups, neg_groups: their seeds.

    Returns:
        ``(lo, hi)``; NaNs if either sample is empty.
    """
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    pg, ng = np.asarray(pos_groups), np.asarray(neg_groups)
    if pos.size == 0 or neg.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    groups = np.unique(np.concatenate([pg, ng]))
    vals = []
    if len(groups) >= 2:
        by_pos = [pos[pg == g] for g in groups]
        by_neg = [neg[ng == g] for g in groups]
        exact = bool(np.isfinite(pos).all() and np.isfinite(neg).all())
        twice_u = pairwise_mann_whitney(by_pos, by_neg) if exact else None
        n_pos = np.array([len(p) for p in by_pos], np.int64)
        n_neg = np.array([len(q) for q in by_neg], np.int64)
        for _ in range(n_boot):
            pick = rng.choice(len(groups), size=len(groups), replace=True)
            n1, n0 = int(n_pos[pick].sum()), int(n_neg[pick].sum())
            if not (n1 and n0):
                continue
            if exact:
                w = np.bincount(pick, minlength=len(groups))
                vals.append(float(int(w @ twice_u @ w) / (2 * n1 * n0)))
            else:
                vals.append(auroc(np.concatenate([by_pos[g] for g in pick]),
                                  np.concatenate([by_neg[g] for g in pick])))
    else:
        for _ in range(n_boot):
            vals.append(auroc(rng.choice(pos, pos.size), rng.choice(neg, neg.size)))
    if not vals:
        return math.nan, math.nan
    a = (1.0 - ci) / 2.0
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1.0 - a))


def step_z(u: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Per-step standardised increments ``u_t / sqrt(Var_t)`` (0 where ``Var_t`` is at most
    :data:`VAR_EPS`, i.e. the step admitted one action or the policy was deterministic)."""
    return standardized(u, var)


def cusum_path(z: np.ndarray, drift: float = 0.5) -> np.ndarray:
    """Two-sided CUSUM of standardised increments along the last axis::

        C+_t = max(0, C+_{t-1} + z_t - k),  C-_t = max(0, C-_{t-1} - z_t - k),  C+_0 = C-_0 = 0

    Returns ``max(C+_t, C-_t)`` with the shape of ``z`` (Page's test; ``k = drift`` is the
    per-step shift, in standard deviations, that it is tuned to, half of the shift one
    expects to detect)."""
    z = np.asarray(z, np.float64)
    up = np.zeros(z.shape[:-1])
    dn = np.zeros(z.shape[:-1])
    out = np.zeros_like(z)
    for t in range(z.shape[-1]):
        up = np.maximum(0.0, up + z[..., t] - drift)
        dn = np.maximum(0.0, dn - z[..., t] - drift)
        out[..., t] = np.maximum(up, dn)
    return out


def first_alarm(paths: np.ndarray, lengths: np.ndarray, threshold: float) -> np.ndarray:
    """Detection delay per episode: the number of steps observed up to and including the
    first step ``t < length`` with ``path_t > threshold`` (``t + 1``), ``inf`` if none.
    ``paths [M, T]``, ``lengths [M]`` -> ``[M]`` float."""
    paths = np.asarray(paths, np.float64)
    t = np.arange(paths.shape[-1])
    hit = (paths > threshold) & (t[None, :] < np.asarray(lengths)[:, None])
    first = np.argmax(hit, axis=-1).astype(np.float64) + 1.0
    return np.where(hit.any(axis=-1), first, math.inf)


def episode_max(paths: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``max_{t < length} path_t`` per episode (0 for an empty episode). ``[M, T] -> [M]``."""
    paths = np.asarray(paths, np.float64)
    t = np.arange(paths.shape[-1])
    return np.max(np.where(t[None, :] < np.asarray(lengths)[:, None], paths, 0.0), axis=-1, initial=0.0)


def median_delay(delays: np.ndarray) -> float:
    """Median of delays with ``inf`` for episodes never flagged (``inf`` when half or more
    were never flagged; NaN for none)."""
    d = np.asarray(delays, np.float64)
    if d.size == 0:
        return math.nan
    return float(np.median(d))
