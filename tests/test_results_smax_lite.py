"""The committed smax-lite results are reproducible from the committed runs: `tram report`
on `results/smax-lite/runs` regenerates the committed tables byte for byte (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "results" / "smax-lite"


@pytest.mark.skipif(not (ROOT / "runs").is_dir(), reason="no committed smax-lite runs")
def test_report_regenerates_the_committed_tables(tmp_path):
    from tram.report import make_report

    make_report(ROOT / "runs", tmp_path)
    committed = sorted(p.relative_to(ROOT / "report") for p in (ROOT / "report" / "tables").iterdir())
    assert committed, "results/smax-lite/report/tables is empty"
    for rel in committed:
        fresh = tmp_path / rel
        assert fresh.exists(), f"tram report no longer writes {rel}"
        assert fresh.read_bytes() == (ROOT / "report" / rel).read_bytes(), f"{rel} differs from the committed one"
    # the index names the runs directory as given on the command line, and notes a run still
    # in progress there (a local sweep; unfinished runs are never committed); the rest is equal
    drop_path = lambda text: [line for line in text.splitlines()
                              if not line.startswith("Runs: ") and "skipped unfinished run" not in line]
    assert drop_path((tmp_path / "index.md").read_text()) == drop_path((ROOT / "report" / "index.md").read_text())


def test_p4_attack_start_is_the_first_evaluation_whose_seed_mean_reaches_the_threshold():
    """Hand-built win rates of three seeds; evaluation k is at target k * interval."""
    import numpy as np

    from tram.cli import first_evaluation_reaching

    class Run:
        seeds = (0, 1, 2)
        rates = {0: [0.0, 0.5, 0.7, 0.9], 1: [0.0, 0.4, 0.5, 0.8], 2: [0.1, 0.9, 0.5, 0.6]}

        def seed_rows(self, seed):
            return {"test_win_rate": np.asarray(self.rates[seed])}

    # means per evaluation: 0.0333, 0.6, 0.5667, 0.7667 -> first >= 0.6 is k = 1
    assert first_evaluation_reaching(Run(), "test_win_rate", 0.6, 10_000) == 10_000
    assert first_evaluation_reaching(Run(), "test_win_rate", 0.7, 10_000) == 30_000
    assert first_evaluation_reaching(Run(), "test_win_rate", 0.95, 10_000) is None


def test_smax_lite_dry_run_plans_p4(tmp_path):
    from typer.testing import CliRunner

    from tram.cli import app

    r = CliRunner().invoke(app, ["reproduce", "smax-lite", "--parts", "p4", "--dry-run", "--out", str(tmp_path / "r"),
                                 "--report", str(tmp_path / "rep")])
    assert r.exit_code == 0, r.output
    assert "p4: clean QMIX on 3m, 3 seeds, 200,000 steps" in r.output
    assert "reaches 0.6" in r.output


def test_claims_fig1_windows_and_recovery(tmp_path, capsys):
    """Hand-built Fig. 1 runs (S = 50k, 100k steps, evaluation every 1k, 3 seeds): clean wins
    0.8 throughout; after S the test-only run wins 0.2 + 0.1 seed; the training-and-test run
    wins 0.2 + 0.1 seed early (S < step <= 60k) and 0.7 + 0.1 seed late (90k < step <= 100k).
    So its recovery is exactly +0.5 for every seed (paired: the point), the test-only run's 0,
    and early both attacked runs are 0.5 below clean on average (0.3 against 0.8)."""
    import importlib.util
    import json

    from fakeruns import write_metric_rows
    from tram.cli import fig1_configs
    from tram.experiments.store import run_name, write_json_atomic

    start, steps, seeds = 50_000, 100_000, (0, 1, 2)
    configs = fig1_configs("3m", steps, seeds, start, 1.0)
    assert [c.run.eval_interval for c in configs] == [1000] * 3

    def win(name, seed, step):
        if name == "none" or step <= start:
            return 0.8
        if name == "test" or step <= 75_000:
            return 0.2 + 0.1 * seed
        return 0.7 + 0.1 * seed

    for name, c in zip(("none", "test", "both"), configs):
        d = tmp_path / run_name(c.to_dict())
        write_json_atomic(d / "config.json", c.to_dict())
        rows = [{"seed": s, "env_steps": k * 1000, "test_win_rate": win(name, s, k * 1000), "test_return": 1.0}
                for s in seeds for k in range(101)]
        write_metric_rows(d / "metrics.csv", rows)
        write_json_atomic(d / "summary.json", {"status": "done", "final": {
            str(s): {"test_win_rate": win(name, s, steps)} for s in seeds}})
    spec = importlib.util.spec_from_file_location("claims", ROOT / "claims.py")
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    claims.fig1(tmp_path)
    out = capsys.readouterr().out
    assert "worst-Q at f_A = 1 from S = 50,000 to 100,000 steps" in out
    assert "early (50,000, 60,000], late (90,000, 100,000]" in out
    lines = {line.split()[0]: line for line in out.splitlines() if "(paired)" in line}
    assert sorted(lines) == ["none", "worst_q_both", "worst_q_test"]
    assert "late - early 0.000 [0.000, 0.000] (paired)" in lines["none"]
    assert "late - early 0.500 [0.500, 0.500] (paired)" in lines["worst_q_both"]
    assert "late - early 0.000 [0.000, 0.000] (paired)" in lines["worst_q_test"]
    assert "worst_q_test - none, early: -0.500 [" in out  # 0.3 - 0.8
    assert "worst_q_both - worst_q_test, late: 0.500 [" in out  # (0.7, 0.8, 0.9) against (0.2, 0.3, 0.4)
    assert json.loads((tmp_path / run_name(configs[2].to_dict()) / "config.json").read_text())["attack"]["attack_start"] == start
