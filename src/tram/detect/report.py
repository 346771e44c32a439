"""``tram detect``: detection of the poisoned agent from the run store (reads only).

Per run (one per environment, learner, method and budget, as :func:`tram.report.collect.collect_runs`
selects them) with a ``detection_samples.npz``:

* episodes: the recorded episodes that began at or after ``from_step`` (default: the run's
  ``attack.attack_start``; before it the poisoned agent acts honestly);
* poisoned sample: the standardised score ``z`` (:func:`tram.detect.stats.standardized`) of
  the attacked agent in each episode; honest sample: every other agent's ``z`` in the same
  episodes (in a clean run, every agent's);
* AUROC of the two-sided statistic ``|z|`` (the attack may make the agent's actions either
  less or more likely than its policy says; ``docs/detection.md``), with a percentile
  bootstrap interval over seeds; ``auroc_low`` is the one-sided AUROC of ``-z``;
* ``rate_at_fpr``: fraction of poisoned episodes with ``|z|`` above the threshold that flags
  ``fpr`` (default 1%) of the honest episodes;
* CUSUM: the two-sided CUSUM of the per-step standardised increments of the traced episodes
  (environment 0 of each recorded rollout), threshold calibrated so that ``fpr`` of the
  honest traced agent-episodes raise an alarm at some step; ``median_delay`` is the median
  number of steps to the first alarm over the poisoned traced episodes (``inf`` when half
  or more never alarm), ``cusum_rate`` the fraction that alarm;
* damage: the final value of the primary metric (grid: test return; SMAX: test win rate)
  of the matching clean run (same environment and learner, method none) minus this run's,
  both averaged over seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tram.detect import stats
from tram.detect.record import DETECTION_FILE, load_detection
from tram.experiments.store import CorruptRunError, Run
from tram.report.collect import PRIMARY_METRIC, RunKey, Store, collect_runs, final_values, fmt_num, method_color, \
    method_label
from tram.report.tables import Table, write_table

COLUMNS = ("env", "learner", "method", "f_a", "kl_u", "seeds", "poisoned_agent", "from_step", "poisoned_episodes",
           "honest_episodes", "auroc", "auroc_lo", "auroc_hi", "auroc_low", "rate_at_fpr", "cusum_threshold",
           "cusum_rate", "median_delay", "median_delay_detected", "traced_poisoned", "honest_mean_z",
           "honest_sd_z", "damage_metric", "clean_final", "final", "damage")
"""Columns of ``detection.csv`` (see the module docstring)."""


def _check_real(name: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float in the interval; a one-line :class:`ConfigError` naming
    ``name``, the value and the interval otherwise."""
    from tram.validation import ConfigError, _as_float

    v = _as_float(value)
    above = v is not None and (v > lo if lo_open else v >= lo)
    below = v is not None and (v < hi if hi_open else v <= hi)
    if v is None or not math.isfinite(v) or not (above and below):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        accepted = f"a number in {rng}" if math.isfinite(hi) else f"a finite number {'>' if lo_open else '>='} {lo:g}"
        raise ConfigError(f"{name}: {value!r} is not accepted; accepted: {accepted}", name)
    return float(v)


def run_detection(run: Run, data: dict[str, np.ndarray], *, fpr: float = 0.01, drift: float = 0.5,
                  n_boot: int = 1000, from_step: int | None = None) -> dict:
    """The detection numbers of one run (a dict over :data:`COLUMNS` except the damage
    columns, which :func:`detection_rows` adds).

    Args:
        run: the run; data: its :func:`tram.detect.record.load_detection` arrays.
        fpr: false-alarm rate for the thresholds; drift: the CUSUM's ``k``;
        n_boot: bootstrap resamples; from_step: keep episodes that began at or after this
            env step (default: ``attack.attack_start``, 0 for a clean run).
    """
    k = int(data["poisoned_agent"])
    if from_step is None:
        from_step = int(run.config["attack"].get("attack_start", 0) or 0) if k >= 0 else 0
    keep = data["rollout_step"] >= from_step
    z = stats.standardized(data["score"][keep], data["var"][keep])  # [K, N]
    seeds = data["seed"][keep]
    n_agents = z.shape[1]
    honest_idx = [i for i in range(n_agents) if i != k]
    honest = z[:, honest_idx]
    honest_seeds = np.repeat(seeds[:, None], len(honest_idx), axis=1)
    informative = honest[data["var"][keep][:, honest_idx] > stats.VAR_EPS]  # a deterministic policy scores 0
    out = {"poisoned_agent": k if k >= 0 else None, "from_step": from_step,
           "honest_episodes": int(honest.size), "seeds": len(np.unique(seeds)),
           "honest_mean_z": float(informative.mean()) if informative.size else math.nan,
           "honest_sd_z": float(informative.std()) if informative.size else math.nan}
    tkeep = data["trace_rollout_step"] >= from_step
    tz = stats.step_z(data["trace_u"][tkeep], data["trace_var"][tkeep])  # [J, T, N]
    tlen = data["trace_length"][tkeep]
    paths = stats.cusum_path(np.moveaxis(tz, 1, 2), drift)  # [J, N, T]
    h_paths = paths[:, honest_idx].reshape(-1, paths.shape[-1])
    h_len = np.repeat(tlen, len(honest_idx))
    h = stats.threshold_at_fpr(stats.episode_max(h_paths, h_len), fpr)
    out["cusum_threshold"] = h
    if k < 0:
        out.update(poisoned_episodes=0, auroc=math.nan, auroc_lo=math.nan, auroc_hi=math.nan, auroc_low=math.nan,
                   rate_at_fpr=math.nan, cusum_rate=math.nan, median_delay=math.nan,
                   median_delay_detected=math.nan, traced_poisoned=0)
        return out
    pois = z[:, k]
    out["poisoned_episodes"] = int(pois.size)
    out["auroc"] = stats.auroc(np.abs(pois), np.abs(honest))
    out["auroc_lo"], out["auroc_hi"] = stats.bootstrap_auroc(np.abs(pois), np.abs(honest).ravel(), seeds,
                                                             honest_seeds.ravel(), n_boot=n_boot)
    out["auroc_low"] = stats.auroc(-pois, -honest)
    out["rate_at_fpr"] = stats.rate_at_fpr(np.abs(pois), np.abs(honest), fpr)
    delays = stats.first_alarm(paths[:, k], tlen, h)
    out["traced_poisoned"] = int(delays.size)
    out["cusum_rate"] = float(np.mean(np.isfinite(delays))) if delays.size else math.nan
    out["median_delay"] = stats.median_delay(delays)
    finite = delays[np.isfinite(delays)]
    out["median_delay_detected"] = float(np.median(finite)) if finite.size else math.nan
    return out


def _damage(store: Store, key: RunKey, run: Run) -> dict:
    metric = PRIMARY_METRIC[store.family(key.env)]
    clean = store.get(key.env, key.learner, "none")
    final = final_values(run, metric)
    final_mean = float(final.mean()) if final.size else math.nan
    if clean is None:
        return {"damage_metric": metric, "clean_final": math.nan, "final": final_mean, "damage": math.nan}
    c = final_values(clean, metric)
    c_mean = float(c.mean()) if c.size else math.nan
    return {"damage_metric": metric, "clean_final": c_mean, "final": final_mean, "damage": c_mean - final_mean}


def detection_rows(store: Store, *, fpr: float = 0.01, drift: float = 0.5, n_boot: int = 1000,
                   from_step: int | None = None, log: Callable[[str], None] | None = None
                   ) -> tuple[list[dict], list[str]]:
    """``(rows, notes)``: one dict over :data:`COLUMNS` per run of ``store`` that has a
    ``detection_samples.npz`` (in the store's order), and one note per run without one (or
    with a damaged one), naming it."""
    rows, notes = [], []

    def note(m: str) -> None:
        notes.append(m)
        if log is not None:
            log(m)

    for key in store.keys():
        run = store.runs[key]
        path = run.path / DETECTION_FILE
        if not path.exists():
            note(f"detection: skipped {run.name} (no {DETECTION_FILE}; trained before tram recorded it)")
            continue
        try:
            data = load_detection(path)
        except CorruptRunError as e:
            note(f"detection: skipped {run.name}: {e}")
            continue
        row = {"env": key.env, "learner": key.learner, "method": key.method, "f_a": key.f_a, "kl_u": key.kl_u}
        row.update(run_detection(run, data, fpr=fpr, drift=drift, n_boot=n_boot, from_step=from_step))
        row.update(_damage(store, key, run))
        rows.append({c: row.get(c) for c in COLUMNS})
    if not rows and store.runs:
        note(f"detection: no run has {DETECTION_FILE}; no detection table")
    return rows, notes


def _fmt(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.{digits}f}"
    return str(x)


def detection_table(rows: list[dict], fpr: float) -> Table:
    """The rows as a :class:`tram.report.tables.Table` (``detection`` stem)."""
    pct = f"{100 * fpr:g}%"
    headers = ["map", "learner", "method", "f_A", "KL_U", "seeds", "AUROC abs(z) [95% CI]", "AUROC -z",
               f"rate @ {pct} FPR", f"CUSUM rate @ {pct}", "median delay (steps)", "honest z mean/sd",
               "damage"]
    disp = []
    for r in rows:
        ci = f"{_fmt(r['auroc'])} [{_fmt(r['auroc_lo'])}, {_fmt(r['auroc_hi'])}]" if r["poisoned_agent"] is not None \
            else "-"
        disp.append([r["env"], r["learner"], method_label(r["method"]), fmt_num(r["f_a"]), fmt_num(r["kl_u"]),
                     str(r["seeds"]), ci, _fmt(r["auroc_low"]), _fmt(r["rate_at_fpr"]), _fmt(r["cusum_rate"]),
                     _fmt(r["median_delay"], 0), f"{_fmt(r['honest_mean_z'])}/{_fmt(r['honest_sd_z'])}",
                     _fmt(r["damage"])])
    return Table(
        stem="detection",
        caption=(f"Detection of the poisoned agent by the policy monitor: AUROC of poisoned against honest "
                 f"agent-episodes, detection rate at {pct} false alarms, CUSUM (median steps to the first alarm, "
                 f"threshold at {pct} false alarms); damage = final clean minus final attacked primary metric"),
        headers=list(COLUMNS), rows=[[r[c] for c in COLUMNS] for r in rows], display_headers=headers,
        display_rows=disp,
        notes=["Honest agents score z with mean 0 and sd 1 (docs/detection.md); the honest column checks it. "
               "Bootstrap intervals resample seeds."])


def plot_frontier(rows: list[dict], out_dir: Path, stem: str = "detection_frontier") -> list[Path]:
    """The damage-detectability frontier: one panel per (learner, environment), one labelled
    point per attacked run (x: AUROC with its interval, y: damage). Writes PNG and PDF."""
    import matplotlib

    from tram.report.plots import _RC, _panels, save_figure

    pts = [r for r in rows if r["poisoned_agent"] is not None]
    groups = sorted({(r["learner"], r["env"]) for r in pts})
    with matplotlib.rc_context(_RC):
        fig, axes = _panels(max(len(groups), 1), ncols=3)
        if not groups:
            axes[0].text(0.5, 0.5, "no attacked run with detection data", ha="center", va="center")
        for ax, (learner, env) in zip(axes, groups):
            for r in (r for r in pts if (r["learner"], r["env"]) == (learner, env)):
                y = r["damage"] if r["damage"] is not None and math.isfinite(r["damage"]) else math.nan
                color = method_color(r["method"])
                xerr = None
                if math.isfinite(r["auroc_lo"]):
                    xerr = [[r["auroc"] - r["auroc_lo"]], [r["auroc_hi"] - r["auroc"]]]
                ax.errorbar([r["auroc"]], [y], xerr=xerr, fmt="o", color=color, ms=4, capsize=2)
                right = math.isfinite(r["auroc"]) and r["auroc"] > 0.75  # keep the label inside the axes
                ax.annotate(f"{method_label(r['method'])} fA={fmt_num(r['f_a'])} KL={fmt_num(r['kl_u'])}",
                            (r["auroc"], y), textcoords="offset points", xytext=(-4 if right else 4, 3),
                            ha="right" if right else "left", fontsize=6, color=color)
            ax.axvline(0.5, color="#999999", lw=0.6, ls="--")
            ax.set_xlim(0.0, 1.05)
            ax.set_title(f"{env} ({learner})")
            ax.set_xlabel("AUROC (poisoned vs honest, abs z)")
            metric = next(r["damage_metric"] for r in pts if (r["learner"], r["env"]) == (learner, env))
            ax.set_ylabel(f"drop in final {metric.replace('_', ' ')}")
            ax.grid(alpha=0.25, linewidth=0.5)
        return save_figure(fig, out_dir, stem)


def make_detection(runs_root: Path, out_dir: Path, *, fpr: float = 0.01, drift: float = 0.5, n_boot: int = 1000,
                   from_step: int | None = None, include_partial: bool = False,
                   log: Callable[[str], None] | None = print, store: Store | None = None
                   ) -> tuple[list[Path], list[str]]:
    """Writes ``detection.{md,csv,tex}`` and ``detection_frontier.{png,pdf}`` into ``out_dir``
    from the runs under ``runs_root`` (or the already collected ``store``).

    Returns:
        ``(paths written, notes)``; nothing is written when no run has detection data.

    Raises:
        ConfigError: ``fpr`` not in (0, 1), ``drift`` negative, ``n_boot`` < 1 or
            ``from_step`` < 0 (one line naming the option).
    """
    from tram.validation import whole_number

    fpr = _check_real("--fpr", fpr, 0.0, 1.0, lo_open=True, hi_open=True)
    drift = _check_real("--drift", drift, 0.0, math.inf)
    whole_number(n_boot, "--n-boot", lo=1)
    if from_step is not None:
        from_step = whole_number(from_step, "--from-step", lo=0)
    if store is None:
        store = collect_runs(Path(runs_root), include_partial=include_partial, log=log)
    rows, notes = detection_rows(store, fpr=fpr, drift=drift, n_boot=n_boot, from_step=from_step, log=log)
    if not rows:
        return [], notes
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_table(detection_table(rows, fpr), out_dir)
    paths += plot_frontier(rows, out_dir)
    return paths, notes
