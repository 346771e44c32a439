"""Tables from the run store: the paper's Tables 1-3 (stealth log likelihood) and a
final-performance table with bootstrap CIs, each as Markdown, CSV and LaTeX.

Stealth cell value: for each seed, the mean of ``stealth_loglik`` over all evaluation windows
of the run (NaN windows, e.g. the step-0 evaluation, ignored); then the mean over seeds. The
paper reports one number per map, method and budget, which this matches.

The paper does not say over which steps Eq. 3 is averaged, so every stealth table shows both
averages (:func:`tram.attacks.budget.stealth_averages`): the cell reads ``every (alive)``,
``every`` being ``stealth_loglik`` (all steps of the poisoned agent; a step with one
available action counts with its exact value 0) and ``alive`` being ``stealth_loglik_alive``
(steps with two or more available actions only). The CSV has one column for each. Runs
written before both existed have only the alive average; their ``every`` cell is ``-``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from tram.attacks.methods import attack_method as method_spec
from tram.experiments.store import format_value, write_text_atomic
from tram.report.collect import (
    METRIC_LABELS,
    PRIMARY_METRIC,
    Store,
    budget_methods,
    final_values,
    finite_seed_means,
    fmt_num,
    method_label,
    sorted_values,
)
from tram.report.stats import bootstrap_ci

STEALTH_METRIC = "stealth_loglik"
"""Eq. 3 averaged over every step of the poisoned agent (the first number of a cell)."""
STEALTH_ALIVE_METRIC = "stealth_loglik_alive"
"""Eq. 3 averaged over the steps with two or more available actions (in parentheses)."""


@dataclass
class Table:
    """A table in two spellings: raw values for CSV, formatted strings for Markdown/LaTeX."""

    stem: str
    caption: str
    headers: list[str]
    rows: list[list]
    """Raw cells (str, int, float or None) written to CSV."""
    display_headers: list[str] | None = None
    display_rows: list[list[str]] | None = None
    """Formatted cells for Markdown and LaTeX; default: rows with floats at 2 decimals."""
    notes: list[str] = field(default_factory=list)


def _display(cell) -> str:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return "-"
    if isinstance(cell, float):
        return f"{cell:.2f}"
    return str(cell)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def write_table(table: Table, out_dir: Path) -> list[Path]:
    """Write ``stem.md``, ``stem.csv`` and ``stem.tex`` into ``out_dir``; returns the paths."""
    headers = table.display_headers or table.headers
    rows = table.display_rows or [[_display(c) for c in r] for r in table.rows]
    notes = "".join(f"\n{n}\n" for n in table.notes)
    md = f"{table.caption}\n\n{tabulate(rows, headers, tablefmt='github', disable_numparse=True)}\n{notes}"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.headers)
    for r in table.rows:
        writer.writerow(["" if c is None else format_value(c) for c in r])
    body = tabulate(rows, headers, tablefmt="latex_booktabs", disable_numparse=True)
    tex = (
        "\\begin{table}[t]\n\\centering\n"
        f"\\caption{{{_latex_escape(table.caption)}}}\n"
        f"\\label{{tab:{table.stem.replace('_', '-')}}}\n"
        f"{body}\n\\end{{table}}\n"
    )
    return [
        write_text_atomic(out_dir / f"{table.stem}.md", md),
        write_text_atomic(out_dir / f"{table.stem}.csv", buf.getvalue()),
        write_text_atomic(out_dir / f"{table.stem}.tex", tex),
    ]


def stealth_value(store: Store, env: str, learner: str, method: str, f_a: float, kl_u: float,
                  metric: str = STEALTH_METRIC) -> float | None:
    """Mean over seeds of the per-seed mean of ``metric`` (:data:`STEALTH_METRIC` or
    :data:`STEALTH_ALIVE_METRIC`) over evaluation windows; ``None`` when the run is missing
    or has no finite value."""
    if metric not in (STEALTH_METRIC, STEALTH_ALIVE_METRIC):
        raise ValueError(f"stealth metric must be {STEALTH_METRIC} or {STEALTH_ALIVE_METRIC}; got {metric!r}")
    run = store.get(env, learner, method, f_a, kl_u)
    if run is None:
        return None
    per_seed = finite_seed_means(run, metric)
    return float(per_seed.mean()) if per_seed.size else None


def _stealth_cell(every: float | None, alive: float | None) -> str:
    return f"{_display(every)} ({_display(alive)})"


def stealth_table(
    store: Store,
    learner: str,
    number: int,
    vary: str | None,
    values: Sequence[float] | None,
    f_a: float,
    kl_u: float,
) -> tuple[Table | None, list[str]]:
    """Table 1 (``vary=None``: one column per map at ``f_a``, ``kl_u``), Table 2
    (``vary="f_a"`` at ``kl_u``) or Table 3 (``vary="kl_u"`` at ``f_a``); rows are the
    methods with a KL budget in table order (var, J, random, as in the paper; a method beyond
    the paper, e.g. combined, only when the store has runs of it for ``learner``, with "-"
    on maps where it has none).

    Each cell holds both averages of Eq. 3 (see the module docstring): the CSV has a column
    ``<map>`` (``stealth_loglik``, every step) and a column ``<map> alive``
    (``stealth_loglik_alive``); Markdown and LaTeX show ``every (alive)`` in one cell.

    A map is included only when every method has a run with a stealth value (either
    average) at every column value; maps with gaps are left out and listed. ``values=None`` uses the values
    found in the store for each map (a map qualifies when at least two are found); otherwise
    exactly ``values``.

    Returns:
        ``(table or None, messages)``; ``None`` when no map is complete, with messages that
        list what is missing.
    """
    name = f"Table {number}"
    symbol = {"f_a": "f_A", "kl_u": "KL_U"}
    with_runs = {k.method for k in store.keys() if k.learner == learner}
    # The paper's rows always; a method beyond the paper (combined) only when it has runs,
    # and a map without its runs is still shown (its cells "-").
    required = tuple(m for m in budget_methods() if method_spec(m).paper)
    rows_methods = tuple(m for m in budget_methods() if m in required or m in with_runs)
    # maps and columns come from the paper's rows, so an extra method never adds or drops one
    attacked = [k for k in store.keys() if k.learner == learner and k.method in required]
    envs = [e for e in store.envs(learner) if any(k.env == e for k in attacked)]
    if vary is None:
        cols_by_env = {e: [(f_a, kl_u)] for e in envs}
        what = f"f_A={fmt_num(f_a)}, KL_U={fmt_num(kl_u)}"
    else:
        fixed_name = "kl_u" if vary == "f_a" else "f_a"
        fixed = kl_u if vary == "f_a" else f_a
        what = f"{symbol[vary]} varying, {symbol[fixed_name]}={fmt_num(fixed)}"
        cols_by_env = {}
        for e in envs:
            found = sorted_values(
                getattr(k, vary) for k in attacked if k.env == e and getattr(k, fixed_name) == fixed
            )
            vals = sorted(values) if values is not None else found
            if values is None and len(found) < 2:
                continue
            cols_by_env[e] = [(v, fixed) if vary == "f_a" else (fixed, v) for v in vals]
    messages: list[str] = []
    if not cols_by_env:
        have = ", ".join(envs) or "none"
        need = "" if vary is None else f" at two or more values of {symbol[vary]}"
        messages.append(
            f"{name} ({learner}) skipped: needs {', '.join(required)} runs{need} ({what}) "
            f"on some map; maps with attacked runs: {have}"
        )
        return None, messages
    complete: dict[str, list[float]] = {}
    for env, cols in cols_by_env.items():
        missing, cells = [], []
        for method in rows_methods:
            for fa, kl in cols:
                every = stealth_value(store, env, learner, method, fa, kl, STEALTH_METRIC)
                alive = stealth_value(store, env, learner, method, fa, kl, STEALTH_ALIVE_METRIC)
                if every is None and alive is None and method in required:
                    missing.append(f"{method} f_A={fmt_num(fa)} KL_U={fmt_num(kl)}")
                cells.append((every, alive))
        if missing:
            messages.append(f"{name} ({learner}): map {env} left out, missing {'; '.join(missing)}")
        else:
            complete[env] = cells
    if not complete:
        messages.insert(0, f"{name} ({learner}) skipped: no map has every run it needs ({what})")
        return None, messages
    headers, display_headers = ["method"], ["method"]
    for env in complete:
        for fa, kl in cols_by_env[env]:
            value = fa if vary == "f_a" else kl
            label = env if vary is None else f"{env} {symbol[vary]}={fmt_num(value)}"
            headers += [label, f"{label} alive"]
            display_headers.append(label)
    rows, display_rows = [], []
    legacy = False
    for m_i, method in enumerate(rows_methods):
        row: list = [method_label(method)]
        shown = [method_label(method)]
        for env, cells in complete.items():
            n = len(cols_by_env[env])
            for every, alive in cells[m_i * n:(m_i + 1) * n]:
                row += [every, alive]
                shown.append(_stealth_cell(every, alive))
                legacy |= every is None
        rows.append(row)
        display_rows.append(shown)
    caption = (
        f"Table {number}: stealth log likelihood of being attacked (Eq. 3), {learner.upper()}, {what}. "
        "Each cell: the average over every step of the poisoned agent (stealth_loglik; a step with "
        "one available action, e.g. a dead unit's, counts with its exact value 0), and in parentheses "
        "the average over its steps with two or more available actions only (stealth_loglik_alive). "
        "Mean over seeds of each seed's mean over all evaluation windows; smaller means a more "
        "salient attack."
    )
    notes = list(messages)
    if legacy:
        notes.append("A '-' before the parentheses: the run was recorded before tram reported "
                     "stealth_loglik over every step, and has only the alive average.")
    stem = f"table{number}_stealth_{learner}"
    return Table(stem=stem, caption=caption, headers=headers, rows=rows, display_headers=display_headers,
                 display_rows=display_rows, notes=notes), messages


def final_table(store: Store, n_boot: int = 2000, ci: float = 0.95) -> Table:
    """Final performance per (env, learner, method, f_A, KL_U): mean and IQM over seeds of
    the final test win rate (SMAX) or test return (grid tasks), each with a 95% percentile
    bootstrap CI. Final values come from ``summary.json`` (else the last evaluation)."""
    headers = ["env", "learner", "method", "f_A", "KL_U", "metric", "seeds",
               "mean", "mean_lo", "mean_hi", "iqm", "iqm_lo", "iqm_hi"]
    display_headers = ["env", "learner", "method", "f_A", "KL_U", "metric", "seeds",
                       f"mean [{100 * ci:g}% CI]", f"IQM [{100 * ci:g}% CI]"]
    rows, display_rows = [], []
    for key in store.keys():
        run = store.runs[key]
        metric = PRIMARY_METRIC[store.family(key.env)]
        vals = final_values(run, metric)
        if vals.size:
            mean = bootstrap_ci(vals, "mean", n_boot=n_boot, ci=ci)
            q = bootstrap_ci(vals, "iqm", n_boot=n_boot, ci=ci)
        else:
            mean = q = (math.nan,) * 3
        base = [key.env, key.learner, method_label(key.method), fmt_num(key.f_a), fmt_num(key.kl_u),
                METRIC_LABELS[metric], int(vals.size)]
        rows.append(base + [*mean, *q])
        display_rows.append(
            [str(c) for c in base]
            + [f"{_display(p)} [{_display(lo)}, {_display(hi)}]" for p, lo, hi in (mean, q)]
        )
    caption = (
        f"Final performance over seeds: mean and interquartile mean (IQM) with {100 * ci:g}% "
        f"percentile-bootstrap CIs ({n_boot} resamples); test win rate on SMAX maps, "
        "test return on grid tasks."
    )
    return Table(stem="final_performance", caption=caption, headers=headers, rows=rows,
                 display_headers=display_headers, display_rows=display_rows)
