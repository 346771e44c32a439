"""Reports from the run store: figures, tables and a marl-eval export. Reads only; never trains.

Entry point: :func:`make_report`. Output layout under ``out_dir``::

    index.md                                   # everything written, and what was skipped
    figures/curves_<learner>_<family>.{png,pdf}       # Figs. 2 (smax) / 3 (grid); 9, 10
    figures/curves_<learner>_smax_return.{png,pdf}    # the same SMAX runs' test return
    figures/budget_fa_<learner>[_ci].{png,pdf}        # Fig. 5 (Fig. 11 with CI bands)
    figures/budget_kl_<learner>[_ci].{png,pdf}        # Fig. 6 (Fig. 12 with CI bands)
    figures/fig4_<learner>_<env>.{png,pdf}            # Fig. 4
    tables/table{1,2,3}_stealth_<learner>.{md,csv,tex}
    tables/final_performance.{md,csv,tex}
    tables/detection.{md,csv,tex}, figures/detection_frontier.{png,pdf}   # when runs hold detection data
    marl_eval.json
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from tram.experiments.store import write_text_atomic
from tram.report.collect import (Store, budget_methods, collect_runs, direction_methods, fmt_num, method_order,
                                 sorted_values)
from tram.report.export import marl_eval_data
from tram.report.plots import plot_attack_samples, plot_budget_curves, plot_learning_curves
from tram.report.tables import final_table, stealth_table, write_table

__all__ = ["make_report"]


def _budget_envs(store: Store, learner: str, vary: str, fixed: float) -> tuple[list[str], list[float]]:
    """Envs where some attacked run varies ``vary`` at the ``fixed`` other budget, and the
    values seen there."""
    other = "kl_u" if vary == "f_a" else "f_a"
    envs, values = [], set()
    for env in store.envs(learner):
        vals = {
            getattr(k, vary) for k in store.runs
            if k.env == env and k.learner == learner and k.method in budget_methods()
            and getattr(k, other) == fixed
        }
        if len(vals) >= 2:
            envs.append(env)
            values |= vals
    return envs, sorted_values(values)


def make_report(
    runs_root: Path,
    out_dir: Path,
    *,
    f_a: float = 1.0,
    kl_u: float = 6.0,
    f_a_values: Sequence[float] | None = None,
    kl_u_values: Sequence[float] | None = None,
    include_partial: bool = False,
    n_boot: int = 2000,
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """Write every figure, table and export the runs under ``runs_root`` support.

    Reads the store only. Corrupt and (unless ``include_partial``) unfinished runs are left
    out; anything skipped (a table lacking runs, a figure with nothing to show) is listed in
    ``index.md`` and passed to ``log``. The same store gives the same files.

    Args:
        runs_root: directory searched recursively for run directories.
        out_dir: where to write (created).
        f_a, kl_u: the main budget (paper: f_A = 1, KL_U = 6) for the learning curves,
            Table 1 and Fig. 4; the fixed value in Tables 2/3 and Figs. 5/6.
        f_a_values, kl_u_values: columns of Tables 2/3; ``None`` = the values in the store.
        include_partial: also report unfinished runs (curves cut to the common prefix).
        n_boot: bootstrap resamples for CIs.
        log: called with each skip message; ``None`` to stay quiet.

    Returns:
        Paths written, ``index.md`` last.
    """
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    fig_dir, tab_dir = out_dir / "figures", out_dir / "tables"
    fig_dir.mkdir(parents=True, exist_ok=True)
    tab_dir.mkdir(parents=True, exist_ok=True)
    store = collect_runs(runs_root, include_partial=include_partial, log=log)
    notes = list(store.notes)
    sections: list[tuple[str, str, list[Path]]] = []  # (section, description, paths)

    def skip(message: str) -> None:
        notes.append(message)
        if log is not None:
            log(message)

    if not store.runs:
        skip(f"no finished runs under {runs_root}; nothing to report")

    for learner in store.learners():
        # Learning curves: Figs. 2 (SMAX) and 3 (grid), at the main budget.
        for family, fig_no in (("smax", "Fig. 2"), ("grid", "Fig. 3")):
            envs = [e for e in store.envs(learner) if store.family(e) == family
                    and any(store.get(e, learner, m, f_a, kl_u) for m in method_order())]
            if envs:
                paths = plot_learning_curves(store, learner, envs, f_a, kl_u, fig_dir,
                                             f"curves_{learner}_{family}", n_boot=n_boot)
                sections.append(("Figures", f"Learning curves, {learner}, {family} ({fig_no} style)", paths))
                if family == "smax":  # the return also grades maps where no run wins
                    paths = plot_learning_curves(store, learner, envs, f_a, kl_u, fig_dir,
                                                 f"curves_{learner}_smax_return", n_boot=n_boot, metric="test_return")
                    sections.append(("Figures", f"Learning curves, {learner}, smax, test return", paths))
        # Budget curves: Figs. 5/6 and, with CI bands, 11/12.
        for vary, fixed, tag, figs in (("f_a", kl_u, "fa", ("Fig. 5", "Fig. 11")),
                                       ("kl_u", f_a, "kl", ("Fig. 6", "Fig. 12"))):
            envs, values = _budget_envs(store, learner, vary, fixed)
            if not envs:
                skip(f"{figs[0]} ({learner}) skipped: no map has attacked runs at two or more "
                     f"values of {vary} with {'kl_u' if vary == 'f_a' else 'f_a'}={fmt_num(fixed)}")
                continue
            for show_ci, fig_no, suffix in ((False, figs[0], ""), (True, figs[1], "_ci")):
                paths = plot_budget_curves(store, learner, envs, vary, values, fixed, fig_dir,
                                           f"budget_{tag}_{learner}{suffix}", show_ci=show_ci, n_boot=n_boot)
                sections.append(("Figures", f"Attack budget {vary}, {learner} ({fig_no} style)", paths))
        # Fig. 4: attack examples at the main budget.
        any_samples = False
        for env in store.envs(learner):
            runs = {m: store.get(env, learner, m, f_a, kl_u) for m in direction_methods()}
            runs = {m: r for m, r in runs.items() if r is not None and r.attack_samples is not None}
            if runs:
                any_samples = True
                paths = plot_attack_samples(runs, env, fig_dir, f"fig4_{learner}_{env}")
                sections.append(("Figures", f"Attack examples on {env}, {learner} (Fig. 4 style)", paths))
        if not any_samples:
            skip(f"Fig. 4 ({learner}) skipped: no attacked run at f_a={fmt_num(f_a)}, "
                 f"kl_u={fmt_num(kl_u)} has attack_samples.npz")
        # Tables 1-3.
        for number, vary, values in ((1, None, None), (2, "f_a", f_a_values), (3, "kl_u", kl_u_values)):
            table, messages = stealth_table(store, learner, number, vary, values, f_a, kl_u)
            for m in messages:
                skip(m)
            if table is not None:
                sections.append(("Tables", table.caption.split(":")[0] + f" ({learner})",
                                 write_table(table, tab_dir)))

    if store.runs:
        sections.append(("Tables", "Final performance with bootstrap CIs",
                         write_table(final_table(store, n_boot=n_boot), tab_dir)))
        # Detection of the poisoned agent (tram detect), when runs recorded the monitor's scores.
        from tram.detect.report import detection_rows, detection_table, plot_frontier

        det_rows, det_notes = detection_rows(store, n_boot=n_boot)
        if not det_rows:
            skip("detection table skipped: no run has detection_samples.npz (tram detect)")
        else:
            for m in det_notes:
                skip(m)
            sections.append(("Tables", "Detection of the poisoned agent (tram detect)",
                             write_table(detection_table(det_rows, 0.01), tab_dir)))
            sections.append(("Figures", "Damage-detectability frontier (tram detect)",
                             plot_frontier(det_rows, fig_dir)))
        export = out_dir / "marl_eval.json"
        write_text_atomic(export, json.dumps(marl_eval_data(store), indent=2, allow_nan=False) + "\n")
        sections.append(("Exports", "marl-eval raw data (JSON)", [export]))

    written = [p for _, _, paths in sections for p in paths]
    lines = [f"# tram report", "", f"Runs: {len(store.runs)} from `{runs_root}`.", ""]
    for section in ("Figures", "Tables", "Exports"):
        entries = [(d, ps) for s, d, ps in sections if s == section]
        if entries:
            lines += [f"## {section}", ""]
            for desc, ps in entries:
                rels = [p.relative_to(out_dir).as_posix() for p in ps]
                links = ", ".join(f"[{r}]({r})" for r in rels)
                lines.append(f"- {desc}: {links}")
            lines.append("")
    if notes:
        lines += ["## Skipped", ""] + [f"- {n}" for n in notes] + [""]
    index = write_text_atomic(out_dir / "index.md", "\n".join(lines))
    return written + [index]
