"""Report statistics and make_report on fabricated stores."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from fakeruns import ALIVE_SHARE, FINAL_BASE, make_fake_run, make_legacy, stealth_base
from tram.experiments.store import load_run
from tram.report import make_report
from tram.report.collect import RunKey, collect_runs, finite_seed_means
from tram.report.stats import bootstrap_ci, ci_text, curve_with_ci, iqm, mean_ci_text

METHODS = ("none", "random", "jbased", "var")

# ---------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "x,expected",
    [
        ([1, 2, 3, 4, 100], 3.0),  # cut 1 each side: mean(2, 3, 4)
        ([4, 1, 3, 2], 2.5),  # cut 1 each side: mean(2, 3)
        ([1, 2, 9], 4.0),  # n < 4: nothing cut
        ([0, 1, 2, 3, 4, 5, 6, 100], 3.5),  # cut 2 each side: mean(2, 3, 4, 5)
        ([7], 7.0),
    ],
)
def test_iqm_hand_computed(x, expected):
    assert iqm(np.asarray(x, float)) == pytest.approx(expected)


def test_iqm_along_axis():
    x = np.array([[1, 2, 3, 4, 100], [0, 0, 0, 0, 5]], float)
    np.testing.assert_allclose(iqm(x, axis=1), [3.0, 0.0])


def test_bootstrap_ci_contains_point_and_shrinks_with_seeds():
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.5, 0.2, 5), rng.normal(0.5, 0.2, 80)
    for stat in ("mean", "iqm"):
        p5, lo5, hi5 = bootstrap_ci(few, stat)
        p80, lo80, hi80 = bootstrap_ci(many, stat)
        assert lo5 <= p5 <= hi5 and lo80 <= p80 <= hi80
        assert hi80 - lo80 < hi5 - lo5
    assert bootstrap_ci(few)[0] == pytest.approx(few.mean())
    assert bootstrap_ci(few, seed=3) == bootstrap_ci(few, seed=3)
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="stat"):
        bootstrap_ci([1.0, 2.0], "median")


def test_bootstrap_ci_coverage_is_plausible():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        lo, hi = bootstrap_ci(rng.normal(0.0, 1.0, 10), n_boot=500, seed=i)[1:]
        hits += lo <= 0.0 <= hi
    assert 0.8 <= hits / 200 <= 0.99  # percentile bootstrap under-covers a little at n=10


def test_curve_with_ci_truncates_ragged_seeds():
    xs = [[0, 10, 20, 30], [0, 10, 20], [0, 10, 20, 30]]
    ys = [[0.0, 1.0, 2.0, 3.0], [0.0, 3.0, 4.0], [0.0, 2.0, 3.0, 9.0]]
    x, mean, lo, hi = curve_with_ci(xs, ys)
    np.testing.assert_array_equal(x, [0, 10, 20])
    np.testing.assert_allclose(mean, [0.0, 2.0, 3.0])
    assert np.all(lo <= mean) and np.all(mean <= hi)
    assert lo[0] == hi[0] == 0.0
    with pytest.raises(ValueError, match="different env steps"):
        curve_with_ci([[0, 10], [0, 11]], [[1, 2], [1, 2]])


# ---------------------------------------------------------------------------- make_report


@pytest.fixture(scope="module")
def main_store(tmp_path_factory):
    """2 envs (3m: SMAX, spread: grid) x 4 methods x 3 seeds at f_A=1, KL_U=6."""
    root = tmp_path_factory.mktemp("runs")
    for env in ("3m", "spread"):
        for method in METHODS:
            make_fake_run(root, env, method)
    return root


@pytest.fixture(scope="module")
def main_report(main_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    messages: list[str] = []
    paths = make_report(main_store, out, n_boot=500, log=messages.append)
    return out, paths, messages


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_report_writes_figures_tables_and_export(main_report):
    out, paths, _ = main_report
    rel = {p.relative_to(out).as_posix() for p in paths}
    for stem in ("curves_dop_smax", "curves_dop_smax_return", "curves_dop_grid", "fig4_dop_3m", "fig4_dop_spread"):
        for ext in ("png", "pdf"):
            assert f"figures/{stem}.{ext}" in rel
    assert not any("grid_return" in r for r in rel)  # the grid tasks' curves already show the return
    for stem in ("table1_stealth_dop", "final_performance"):
        for ext in ("md", "csv", "tex"):
            assert f"tables/{stem}.{ext}" in rel
    assert "marl_eval.json" in rel and paths[-1] == out / "index.md"
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
    assert (out / "figures" / "curves_dop_smax.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "figures" / "curves_dop_smax.pdf").read_bytes()[:4] == b"%PDF"
    index = (out / "index.md").read_text()
    for p in paths[:-1]:
        assert p.relative_to(out).as_posix() in index


def test_table1_numbers(main_report):
    out, _, _ = main_report
    rows = _csv(out / "tables" / "table1_stealth_dop.csv")
    assert rows[0] == ["method", "3m", "3m alive", "spread", "spread alive"]
    assert [r[0] for r in rows[1:]] == ["Var-based TRAM", "J-based TRAM", "Random"]
    # Hand check: var on 3m. Seeds 0, 1, 2 have windows 1..5 (step 0 is NaN) with values
    # -3.87 + 0.1 (s - 1) + 0.01 (j - 2), j = 0..4: per-seed means -3.97, -3.87, -3.77 -> -3.87.
    # The alive average of every window is that value / 0.8: -3.87 / 0.8 = -4.8375.
    assert float(rows[1][1]) == pytest.approx(-3.87, abs=1e-12)
    assert float(rows[1][2]) == pytest.approx(-4.8375, abs=1e-12)
    assert float(rows[3][3]) == pytest.approx(stealth_base("random", 1.0, 6.0), abs=1e-12)
    assert float(rows[3][4]) == pytest.approx(stealth_base("random", 1.0, 6.0) / ALIVE_SHARE, abs=1e-12)
    md = (out / "tables" / "table1_stealth_dop.md").read_text()
    assert re.search(r"\| Var-based TRAM +\| -3\.87 \(-4\.84\) +\| -3\.87 \(-4\.84\) +\|", md)
    assert "every step of the poisoned agent (stealth_loglik" in md and "(stealth_loglik_alive)" in md
    tex = (out / "tables" / "table1_stealth_dop.tex").read_text()
    assert "\\begin{tabular}" in tex and "-3.87 (-4.84)" in tex and "\\toprule" in tex
    assert "stealth\\_loglik\\_alive" in tex


def test_runs_recorded_before_both_stealth_averages_still_report(tmp_path):
    """An old metrics.csv has one stealth column, the alive average, named stealth_loglik:
    it loads as stealth_loglik_alive, the every-step average is NaN, and the table says so."""
    for method in ("var", "jbased", "random"):
        run_dir = make_fake_run(tmp_path, "3m", method, samples=False)
        if method == "var":
            make_legacy(run_dir)
            header = (run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
            assert "stealth_loglik_alive" not in header and header.count("stealth_loglik") == 1
            run = load_run(run_dir)
            assert np.isnan(run.metrics["stealth_loglik"]).all()
            alive = run.metrics["stealth_loglik_alive"]
            assert np.nanmean(alive) == pytest.approx(stealth_base("var", 1.0, 6.0) / ALIVE_SHARE)
    out = tmp_path / "out"
    make_report(tmp_path, out, n_boot=100, log=None)
    rows = _csv(out / "tables" / "table1_stealth_dop.csv")
    assert rows[1][:2] == ["Var-based TRAM", ""]
    assert float(rows[1][2]) == pytest.approx(-3.87 / ALIVE_SHARE, abs=1e-12)
    assert float(rows[2][1]) == pytest.approx(stealth_base("jbased", 1.0, 6.0), abs=1e-12)
    md = (out / "tables" / "table1_stealth_dop.md").read_text()
    assert re.search(r"\| Var-based TRAM +\| - \(-4\.84\) +\|", md)
    assert "has only the alive average" in md
    data = json.loads((out / "marl_eval.json").read_text())
    absolute = data["smax"]["3m"]["dop_var_fa1_kl6"]["run_0"]["absolute_metrics"]
    assert "stealth_loglik" not in absolute
    assert absolute["stealth_loglik_alive"] == [pytest.approx((-3.87 - 0.1) / ALIVE_SHARE)]


def test_final_table_numbers(main_report):
    out, _, _ = main_report
    header, *rows = _csv(out / "tables" / "final_performance.csv")
    assert header[:7] == ["env", "learner", "method", "f_A", "KL_U", "metric", "seeds"]
    row = next(r for r in rows if r[0] == "3m" and r[2] == "Var-based TRAM")
    values = dict(zip(header, row))
    finals = FINAL_BASE["var"] + 0.05 * np.arange(3)  # 0.10, 0.15, 0.20
    assert float(values["mean"]) == pytest.approx(finals.mean())
    assert float(values["iqm"]) == pytest.approx(finals.mean())  # n=3: nothing trimmed
    assert float(values["mean_lo"]) <= float(values["mean"]) <= float(values["mean_hi"])
    assert values["metric"] == "test win rate" and values["seeds"] == "3"
    clean = next(r for r in rows if r[0] == "spread" and r[2] == "Clean (none)")
    assert clean[3] == clean[4] == "-" and clean[5] == "test return"
    assert float(dict(zip(header, clean))["mean"]) == pytest.approx(20 * (FINAL_BASE["none"] + 0.05))
    assert len(rows) == 8
    md = (out / "tables" / "final_performance.md").read_text()
    assert "0.15 [" in md


def test_marl_eval_export(main_report):
    out, _, _ = main_report
    data = json.loads((out / "marl_eval.json").read_text())
    assert sorted(data) == ["grid", "smax"]
    assert sorted(data["smax"]["3m"]) == ["dop_jbased_fa1_kl6", "dop_none", "dop_random_fa1_kl6", "dop_var_fa1_kl6"]
    run = data["smax"]["3m"]["dop_var_fa1_kl6"]["run_1"]
    keys = list(run)
    assert keys[-1] == "absolute_metrics" and keys[:-1] == [f"step_{i}" for i in range(6)]
    assert run["step_5"]["step_count"] == 50_000
    assert run["step_5"]["win_rate"] == [pytest.approx(0.15)]
    assert run["absolute_metrics"]["win_rate"] == [pytest.approx(0.15)]
    # stealth: seed 1's mean over windows (-3.87 + 0.1 * 0), and that / 0.8 for the alive average
    assert run["absolute_metrics"]["stealth_loglik"] == [pytest.approx(-3.87)]
    assert run["absolute_metrics"]["stealth_loglik_alive"] == [pytest.approx(-3.87 / ALIVE_SHARE)]
    assert "stealth_loglik" not in run["step_5"]
    grid = data["grid"]["spread"]["dop_none"]["run_0"]
    assert "win_rate" not in grid["step_0"] and "success_rate" in grid["step_0"]
    # summary.json gives the final return; the success rate falls back to the last evaluation
    assert grid["absolute_metrics"] == {"test_return": [pytest.approx(16.0)], "success_rate": [pytest.approx(0.8)]}


def test_missing_table_runs_are_reported_not_crashed(main_report):
    out, paths, messages = main_report
    assert not (out / "tables" / "table2_stealth_dop.md").exists()
    assert any(m.startswith("Table 2 (dop) skipped") for m in messages)
    assert any(m.startswith("Table 3 (dop) skipped") for m in messages)
    index = (out / "index.md").read_text()
    assert "## Skipped" in index and "Table 2 (dop) skipped" in index and "Fig. 5 (dop) skipped" in index


def test_budget_tables_and_figures(tmp_path):
    """3m has the full f_A sweep; spread only a var run at f_A=0.4, so it is left out."""
    for method in METHODS:
        make_fake_run(tmp_path, "3m", method, samples=False)
    for method in ("var", "jbased", "random"):
        for f_a in (0.4, 0.7):
            make_fake_run(tmp_path, "3m", method, f_a=f_a, samples=False, seeds=(0, 1))
    make_fake_run(tmp_path, "spread", "var", samples=False)
    make_fake_run(tmp_path, "spread", "var", f_a=0.4, samples=False)
    messages: list[str] = []
    out = tmp_path / "out"
    paths = make_report(tmp_path, out, n_boot=200, log=messages.append)
    rel = {p.relative_to(out).as_posix() for p in paths}
    assert {"figures/budget_fa_dop.png", "figures/budget_fa_dop_ci.pdf"} <= rel
    rows = _csv(out / "tables" / "table2_stealth_dop.csv")
    assert rows[0] == ["method", "3m f_A=0.4", "3m f_A=0.4 alive", "3m f_A=0.7", "3m f_A=0.7 alive",
                       "3m f_A=1", "3m f_A=1 alive"]
    assert float(rows[1][1]) == pytest.approx(stealth_base("var", 0.4, 6.0))
    assert float(rows[1][2]) == pytest.approx(stealth_base("var", 0.4, 6.0) / ALIVE_SHARE)
    assert float(rows[2][5]) == pytest.approx(stealth_base("jbased", 1.0, 6.0))
    assert any("map spread left out, missing jbased f_A=0.4" in m for m in messages)
    # Table 1 needs all three methods on a map: 3m has them, spread does not.
    assert _csv(out / "tables" / "table1_stealth_dop.csv")[0] == ["method", "3m", "3m alive"]
    assert any(m.startswith("Fig. 4 (dop) skipped") for m in messages)


def test_corrupt_and_partial_runs_are_skipped(tmp_path):
    good = make_fake_run(tmp_path, "3m", "var")
    bad = make_fake_run(tmp_path, "3m", "random")
    (bad / "metrics.csv").write_bytes((bad / "metrics.csv").read_bytes()[:-10])
    part = make_fake_run(tmp_path, "3m", "none", done=False, n_evals=3)
    messages: list[str] = []
    store = collect_runs(tmp_path, log=messages.append)
    assert [r.path for r in store.runs.values()] == [good]
    assert any(bad.name in m and "metrics.csv" in m for m in messages)
    assert any(part.name in m and "unfinished" in m for m in messages)
    assert len(collect_runs(tmp_path, include_partial=True).runs) == 2
    paths = make_report(tmp_path, tmp_path / "out", n_boot=100, log=None)
    assert (tmp_path / "out" / "index.md") in paths
    assert "skipped corrupt run" in (tmp_path / "out" / "index.md").read_text()
    paths = make_report(tmp_path, tmp_path / "out2", n_boot=100, log=None, include_partial=True)
    header, *rows = _csv(tmp_path / "out2" / "tables" / "final_performance.csv")
    clean = dict(zip(header, next(r for r in rows if r[2] == "Clean (none)")))
    # no summary.json: the last of its 3 evaluations (progress 1.0) is the final value
    assert float(clean["mean"]) == pytest.approx(FINAL_BASE["none"] + 0.05)


def test_empty_store(tmp_path):
    paths = make_report(tmp_path / "nothing", tmp_path / "out", log=None)
    assert paths == [tmp_path / "out" / "index.md"]
    assert "nothing to report" in paths[0].read_text()


def test_report_is_deterministic(main_store, main_report, tmp_path):
    out, paths, _ = main_report
    again = make_report(main_store, tmp_path, n_boot=500, log=None)
    assert [p.relative_to(tmp_path) for p in again] == [p.relative_to(out) for p in paths]
    for p in paths:
        assert (tmp_path / p.relative_to(out)).read_bytes() == p.read_bytes(), p.name


def test_curves_title_names_what_is_drawn():
    from tram.report.plots import curves_title

    assert "training-time attacks" in curves_title("dop", ["none", "var"], 1.0, 6.0)
    assert "$KL^U$=6" in curves_title("dop", ["none", "random"], 1.0, 6.0)
    t = curves_title("qmix", ["none", "worst_q_test", "worst_q_both"], 1.0, 6.0)
    assert "worst-Q" in t and "KL" not in t
    t = curves_title("dop", ["none"], 1.0, 6.0)
    assert "attack" not in t and t.startswith("DOP")


def test_finite_seed_means_over_all_rows_and_over_the_last_span(tmp_path):
    """fakeruns: seed s's test win rate at evaluation i of 0..5 (every 10k steps) is
    (0.1 + 0.05 s) * i / 5 for var; all rows average i / 5 to 0.5, the last 20k steps
    (50k and 40k; 30k is not inside) to 0.9. The step-0 stealth row is NaN and ignored."""
    make_fake_run(tmp_path, "3m", "var")
    run = next(iter(collect_runs(tmp_path).runs.values()))
    levels = np.array([0.1, 0.15, 0.2])
    np.testing.assert_allclose(finite_seed_means(run, "test_win_rate"), 0.5 * levels, rtol=1e-12)
    np.testing.assert_allclose(finite_seed_means(run, "test_win_rate", span=20_000), 0.9 * levels, rtol=1e-12)
    # stealth: rows 1..5 (step 0 is NaN); the window offsets 0.01 * (j - 2) average to 0
    np.testing.assert_allclose(finite_seed_means(run, "stealth_loglik"),
                               stealth_base("var", 1.0, 6.0) + 0.1 * np.array([-1.0, 0.0, 1.0]), rtol=1e-12)
    assert finite_seed_means(run, "stealth_loglik", span=1).size == 3  # only the last row, finite
    assert finite_seed_means(run, "test_success").size == 0  # NaN on SMAX: every seed dropped
    # rows at 20k and 30k (i = 2, 3) average to 0.5; 10k is outside (lo < env_steps <= hi)
    np.testing.assert_allclose(finite_seed_means(run, "test_win_rate", between=(10_000, 30_000)),
                               0.5 * levels, rtol=1e-12)
    assert finite_seed_means(run, "test_win_rate", between=(60_000, 90_000)).size == 0


def test_mean_ci_text():
    """One seed: the interval collapses to the point; no seeds: "-"; the mean is padded to
    ``width``; the interval is bootstrap_ci's, three decimals."""
    assert mean_ci_text([0.25]) == "0.250 [0.250, 0.250]"
    assert mean_ci_text([0.25], width=8) == "   0.250 [0.250, 0.250]"
    assert mean_ci_text(np.array([])) == "-"
    assert ci_text((0.5, 0.25, 0.75), width=6) == " 0.500 [0.250, 0.750]" and ci_text(None) == "-"
    _, lo, hi = bootstrap_ci([1.0, 2.0, 4.0], "mean", 2000, 0.95)
    assert mean_ci_text([1.0, 2.0, 4.0]) == f"2.333 [{lo:.3f}, {hi:.3f}]"


def test_duplicate_runs_keep_the_one_as_long_as_the_attacked_runs(tmp_path):
    """Two finished clean runs on 3m (50k and 100k steps): alone, the longer is kept; beside an
    attacked run of 50k steps (Fig. 1's clean run beside the longer one P4 measured on), the
    50k one, and the report notes which it ignored."""
    short = make_fake_run(tmp_path, "3m", "none", steps=50_000)
    long_ = make_fake_run(tmp_path, "3m", "none", steps=100_000)
    key = RunKey("3m", "dop", "none", None, None)
    messages: list[str] = []
    assert collect_runs(tmp_path, log=messages.append).runs[key].path == long_
    assert any(f"using {long_.name}, ignoring {short.name}" in m for m in messages)
    make_fake_run(tmp_path, "3m", "var", steps=50_000)
    assert collect_runs(tmp_path).runs[key].path == short
    make_fake_run(tmp_path, "2s3z", "var", steps=100_000)  # another map's length does not count
    assert collect_runs(tmp_path).runs[key].path == short


def test_report_cli_fa_picks_the_budget_of_curves_and_table1(tmp_path):
    # var, jbased, random at f_A = 0.5 only: the default report (f_A = 1) has no Table 1; with
    # --fa 0.5 it has one, each cell stealth_base(method, 0.5, 6) (fakeruns: exact by construction)
    from typer.testing import CliRunner

    from tram.cli import app

    root = tmp_path / "runs"
    make_fake_run(root, "3m", "none", learner="dop")
    for m in ("var", "jbased", "random"):
        make_fake_run(root, "3m", m, 0.5, 6.0, learner="dop")
    r = CliRunner().invoke(app, ["report", str(root), "--out", str(tmp_path / "main")])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "main" / "tables" / "table1_stealth_dop.md").exists()
    r = CliRunner().invoke(app, ["report", str(root), "--out", str(tmp_path / "half"), "--fa", "0.5"])
    assert r.exit_code == 0, r.output
    table = (tmp_path / "half" / "tables" / "table1_stealth_dop.md").read_text()
    for m in ("var", "jbased", "random"):
        assert f"{stealth_base(m, 0.5, 6.0):.2f}" in table, (m, table)
