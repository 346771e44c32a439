"""Figures from the run store: learning curves (paper Figs. 2, 3, 9, 10), budget curves
(Figs. 5, 6 and, with bands, 11, 12) and attack examples (Fig. 4).

Uses matplotlib's object API (``Figure`` + Agg/PDF canvases), never ``pyplot``, so no global
backend or figure state is touched. Every figure is written as PNG and PDF with fixed
metadata, so the same store gives byte-identical files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from tram.experiments.store import Run, write_bytes_atomic
from tram.attacks.methods import CLEAN, series_method
from tram.report.collect import (
    METRIC_LABELS,
    PRIMARY_METRIC,
    Store,
    budget_methods,
    direction_methods,
    fmt_num,
    method_color,
    method_label,
    method_order,
    run_curve,
)

_RC = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,
    "svg.hashsalt": "tram",
}
_PANEL_W, _PANEL_H = 3.2, 2.5
_MIN_W = 7.0
_PI_COLOR = "#555555"


def _panels(n: int, ncols: int = 4, extra_h: float = 0.6) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    width = max(_PANEL_W * ncols, _MIN_W)
    fig = Figure(figsize=(width, _PANEL_H * nrows + extra_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``out_dir/stem.png`` (150 dpi) and ``out_dir/stem.pdf`` atomically."""
    paths = []
    for fmt, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, metadata=meta)
        paths.append(write_bytes_atomic(out_dir / f"{stem}.{fmt}", buf.getvalue()))
    return paths


def _style_axis(ax, title: str, ylabel: str, metric: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("env steps")
    ax.set_ylabel(ylabel)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.25, linewidth=0.5)
    if metric == "test_win_rate":
        ax.set_ylim(-0.02, 1.02)


def _draw_curve(ax, run: Run, metric: str, color: str, alpha: float, band: bool, n_boot: int,
                label: str | None = None) -> None:
    x, mean, lo, hi = run_curve(run, metric, n_boot=n_boot)
    ax.plot(x, mean, color=color, alpha=alpha, linewidth=1.4, label=label)
    if band:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2 * alpha, linewidth=0)


def curves_title(learner: str, methods: Sequence[str], f_a: float, kl_u: float) -> str:
    """The learning-curve figure's title for the drawn ``methods`` (report keys): TRAM's
    budget when a method with a KL budget is drawn, else the frequency and the label of the
    attacks drawn (Fig. 1: the worst-Q attack), else no attack."""
    entries = [series_method(m) for m in methods]
    if any(e.has_kl_budget for e in entries):
        return (f"{learner.upper()} under training-time attacks ($f_A$={fmt_num(f_a)}, "
                f"$KL^U$={fmt_num(kl_u)}); mean and 95% bootstrap CI over seeds")
    attacks = list(dict.fromkeys(e.label[:1].lower() + e.label[1:] for e in entries if e.name != CLEAN))
    if attacks:
        return (f"{learner.upper()}, {', '.join(attacks)} ($f_A$={fmt_num(f_a)}, from the dashed line); "
                f"mean, 95% bootstrap CI")
    return f"{learner.upper()}; mean and 95% bootstrap CI over seeds"


def plot_learning_curves(
    store: Store,
    learner: str,
    envs: Sequence[str],
    f_a: float,
    kl_u: float,
    out_dir: Path,
    stem: str,
    n_boot: int = 2000,
    metric: str | None = None,
) -> list[Path]:
    """Paper Figs. 2/3: one panel per environment, one line per attack method (clean run and
    the attacked runs at ``f_a``, ``kl_u``), mean over seeds with a 95% bootstrap band.

    The metric is ``metric`` (a metrics.csv column) if given, else the test win rate on SMAX
    maps and the test return on grid tasks. Returns the paths written (PNG, PDF).
    """
    with matplotlib.rc_context(_RC):
        fig, axes = _panels(len(envs))
        present: list[str] = []
        for ax, env in zip(axes, envs):
            metric_here = metric or PRIMARY_METRIC[store.family(env)]
            for method in method_order():
                run = store.get(env, learner, method, f_a, kl_u)
                if run is None:
                    continue
                _draw_curve(ax, run, metric_here, method_color(method), 1.0, True, n_boot)
                start = run.config["attack"].get("attack_start", 0) if method != "none" else 0
                if start:  # Fig. 1: where the attack begins
                    ax.axvline(start, color="0.5", linestyle="--", linewidth=0.8)
                if method not in present:
                    present.append(method)
            _style_axis(ax, env, METRIC_LABELS[metric_here], metric_here)
        handles = [Line2D([], [], color=method_color(m), linewidth=2) for m in present]
        fig.legend(handles, [method_label(m) for m in present], loc="outside lower center",
                   ncols=max(len(present), 1), frameon=False)
        fig.suptitle(curves_title(learner, present, f_a, kl_u))
        return save_figure(fig, out_dir, stem)


def plot_budget_curves(
    store: Store,
    learner: str,
    envs: Sequence[str],
    vary: str,
    values: Sequence[float],
    fixed: float,
    out_dir: Path,
    stem: str,
    show_ci: bool = False,
    n_boot: int = 2000,
) -> list[Path]:
    """Paper Figs. 5/6 (``show_ci=False``) and 11/12 (``show_ci=True``): one panel per
    environment; colour = attack method, opacity = budget value (``vary`` is ``"f_a"`` with
    ``kl_u = fixed``, or ``"kl_u"`` with ``f_a = fixed``). The clean run, if any, is drawn
    in grey for reference."""
    if vary not in ("f_a", "kl_u"):
        raise ValueError(f"vary must be 'f_a' or 'kl_u', got {vary!r}")
    symbol = {"f_a": "$f_A$", "kl_u": "$KL^U$"}
    other = "kl_u" if vary == "f_a" else "f_a"
    values = sorted(values)
    alphas = np.linspace(0.3, 1.0, len(values)) if len(values) > 1 else np.ones(1)
    with matplotlib.rc_context(_RC):
        fig, axes = _panels(len(envs), extra_h=0.9)
        present: list[str] = []
        for ax, env in zip(axes, envs):
            metric = PRIMARY_METRIC[store.family(env)]
            clean = store.get(env, learner, "none")
            if clean is not None:
                _draw_curve(ax, clean, metric, method_color("none"), 1.0, show_ci, n_boot)
                if "none" not in present:
                    present.append("none")
            for method in budget_methods()[::-1]:
                for value, alpha in zip(values, alphas):
                    budget = {vary: value, other: fixed}
                    run = store.get(env, learner, method, budget["f_a"], budget["kl_u"])
                    if run is None:
                        continue
                    _draw_curve(ax, run, metric, method_color(method), float(alpha), show_ci, n_boot)
                    if method not in present:
                        present.append(method)
            _style_axis(ax, env, METRIC_LABELS[metric], metric)
        present.sort(key=method_order().index)
        handles = [Line2D([], [], color=method_color(m), linewidth=2) for m in present]
        labels = [method_label(m) for m in present]
        handles += [Line2D([], [], color="black", alpha=float(a), linewidth=2) for a in alphas]
        labels += [f"{symbol[vary]}={fmt_num(v)}" for v in values]
        ncols = min(len(labels), 4 if len(envs) < 3 else 8)
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False)
        band = "mean and 95% bootstrap CI over seeds" if show_ci else "mean over seeds"
        fig.suptitle(f"{learner.upper()}: attack budget {symbol[vary]} "
                     f"({symbol[other]}={fmt_num(fixed)}); {band}")
        return save_figure(fig, out_dir, stem)


def pick_sample_states(samples: dict[str, np.ndarray], n_states: int) -> np.ndarray:
    """Indices of ``n_states`` samples spread evenly over the second half of training
    (samples ordered by env_steps, then seed, then position); deterministic."""
    k = samples["pi"].shape[0]
    order = np.lexsort((np.arange(k), samples["seed"], samples["env_steps"]))
    if k <= n_states:
        return order
    pos = np.round(np.linspace(0.5, 1.0, n_states) * (k - 1)).astype(int)
    return order[np.unique(pos)]


def greedy_actions(samples: dict[str, np.ndarray]) -> np.ndarray:
    """``[K]`` the most likely available action of each sampled state (``argmax pi`` over
    the available actions)."""
    return np.argmax(np.where(samples["avail"] > 0, samples["pi"], -np.inf), axis=1)


def argmax_push_fraction(samples: dict[str, np.ndarray]) -> float:
    """Fraction of sampled states where delta_hat raises the logit of the most likely
    available action (paper Sec. 4.1: J-based raises it, var-based lowers it)."""
    top = greedy_actions(samples)
    push = samples["delta_hat"][np.arange(len(top)), top]
    return float(np.mean(push > 0)) if len(top) else math.nan


def plot_attack_samples(
    runs: dict[str, Run], env: str, out_dir: Path, stem: str, n_states: int = 3
) -> list[Path]:
    """Paper Fig. 4: for a few sampled states of the attacked agent, the policy before the
    attack (pi) beside the attack direction delta_hat, one row per method. Unavailable
    actions are greyed.

    Args:
        runs: method -> run with ``attack_samples``.
    """
    methods = [m for m in direction_methods() if m in runs and runs[m].attack_samples is not None]
    if not methods:
        raise ValueError(f"no attack samples to plot for {env}")
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(max(_PANEL_W * n_states, _MIN_W), 2.4 * len(methods) + 0.7),
                     layout="constrained")
        axes = fig.subplots(len(methods), n_states, squeeze=False)
        for row, method in zip(axes, methods):
            samples = runs[method].attack_samples
            idx = pick_sample_states(samples, n_states)
            frac = argmax_push_fraction(samples)
            for j, ax in enumerate(row):
                if j >= len(idx):
                    ax.set_visible(False)
                    continue
                i = idx[j]
                pi, dh, avail = samples["pi"][i], samples["delta_hat"][i], samples["avail"][i] > 0
                a = np.arange(pi.shape[0])
                for u in np.flatnonzero(~avail):
                    ax.axvspan(u - 0.5, u + 0.5, color="0.9", linewidth=0, zorder=0)
                ax.bar(a - 0.2, pi, width=0.4, color=np.where(avail, _PI_COLOR, "0.75"))
                ax.bar(a + 0.2, dh, width=0.4, color=np.where(avail, method_color(method), "0.75"))
                ax.axhline(0.0, color="black", linewidth=0.5)
                ax.set_ylim(-1.05, 1.05)
                ax.set_xticks(a)
                ax.set_xlabel("action")
                ax.set_title(f"seed {int(samples['seed'][i])}, step {int(samples['env_steps'][i]):,}")
                if j == 0:
                    ax.set_ylabel(f"{method_label(method)}\n"
                                  rf"$\hat\delta$ raises argmax $\pi$: {100 * frac:.0f}% "
                                  f"of {len(samples['pi'])}")
        handles = [Patch(color=_PI_COLOR), *(Patch(color=method_color(m)) for m in methods),
                   Patch(color="0.85")]
        labels = [r"$\pi$ before attack"] + [rf"$\hat\delta$, {method_label(m)}" for m in methods]
        fig.legend(handles, labels + ["unavailable action"], loc="outside lower center",
                   ncols=len(labels) + 1, frameon=False)
        fig.suptitle(f"Attack examples on {env}: policy before the attack and attack direction")
        return save_figure(fig, out_dir, stem)
