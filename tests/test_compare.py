"""`tram compare` and tram.report.compare: hand-worked Welch intervals and verdicts on
fabricated runs stored under the names `tram train` gives the same options (no training)."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from fakeruns import metric_rows, write_metric_rows
from tram.cli import app, compare_configs
from tram.experiments.store import load_run, run_name, write_json_atomic
from tram.report.compare import MethodResult, compare_runs, pair_verdict, paired_interval, welch_interval

T_975_DOF4 = 2.7764451051977987  # Student t quantile 0.975 at 4 degrees of freedom (tables: 2.776)


def test_welch_interval_hand_worked():
    """x = (1, 2, 3), y = (4, 5, 6): difference -3, each variance of the mean 1/3, so the
    standard error is sqrt(2/3) and the Welch-Satterthwaite dof (2/3)^2 / (2 (1/3)^2 / 2) = 4."""
    d, lo, hi, dof = welch_interval([1, 2, 3], [4, 5, 6])
    assert d == -3.0 and dof == pytest.approx(4.0)
    half = T_975_DOF4 * math.sqrt(2.0 / 3.0)
    assert lo == pytest.approx(-3.0 - half) and hi == pytest.approx(-3.0 + half)
    # unequal variances: x = (0, 0, 1, 1): var 1/3, /4 = 1/12; y = (0, 2): var 2, /2 = 1;
    # dof = (13/12)^2 / ((1/12)^2 / 3 + 1^2 / 1) = 1.171 (the smaller, noisier sample dominates)
    d, lo, hi, dof = welch_interval([0, 0, 1, 1], [0, 2])
    assert d == -0.5 and dof == pytest.approx((13 / 12) ** 2 / ((1 / 12) ** 2 / 3 + 1.0))
    assert lo < -5 and hi > 4  # t at 1.17 dof is about 10: nothing is resolved with 2 seeds this noisy
    assert welch_interval([1, 1], [2, 2]) == (-1.0, -1.0, -1.0, math.inf)
    with pytest.raises(ValueError, match="at least 2 values"):
        welch_interval([1.0], [1.0, 2.0])


T_975_DOF2 = 4.302652729911275  # Student t quantile 0.975 at 2 degrees of freedom (tables: 4.303)


def test_paired_interval_hand_worked():
    """x - y = (1, 2, 3) - (0, 1, 0) = (1, 1, 3): mean 5/3, sd sqrt(4/3), three pairs, so the
    half-width is t_{2} * sqrt(4/3) / sqrt(3) = t_{2} * 2/3."""
    d, lo, hi = paired_interval([1, 2, 3], [0, 1, 0])
    assert d == pytest.approx(5 / 3)
    assert lo == pytest.approx(5 / 3 - T_975_DOF2 * 2 / 3) and hi == pytest.approx(5 / 3 + T_975_DOF2 * 2 / 3)
    assert paired_interval([2, 3], [1, 2]) == (1.0, 1.0, 1.0)  # no spread: the point
    with pytest.raises(ValueError, match="equal-length"):
        paired_interval([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        paired_interval([1.0, math.nan], [1.0, 2.0])


def _result(method, values):
    mean = sum(values) / len(values)
    return MethodResult(method, f"run-{method}", len(values), (mean,) * 3, (mean,) * 3, tuple(values), None)


def test_pair_verdicts():
    var, rnd = _result("var", [0.1, 0.15, 0.2]), _result("random", [0.7, 0.75, 0.8])
    p = pair_verdict(var, rnd, "test_win_rate")
    assert p.difference == pytest.approx(-0.6)
    half = T_975_DOF4 * math.sqrt(2 * 0.0025 / 3)
    assert (p.lo, p.hi) == (pytest.approx(-0.6 - half), pytest.approx(-0.6 + half))
    assert p.verdict == "the test win rate is lower under Var-based TRAM than under Random"
    assert pair_verdict(rnd, var, "test_return").verdict == "the test return is higher under Random than under Var-based TRAM"
    same = pair_verdict(var, _result("jbased", [0.2, 0.1, 0.15]), "test_win_rate")
    assert same.verdict.startswith("no difference resolved: the 95% CI contains 0 (3 + 3 seeds)")
    one = pair_verdict(_result("var", [0.1]), rnd, "test_win_rate")
    assert math.isnan(one.lo) and "a CI needs at least 2 per method" in one.verdict


def test_report_keys_name_the_runs_fig1_and_the_surrogate_critic_use():
    """--methods takes report keys too: worst_q_test / worst_q_both are Fig. 1's runs (the
    names `tram reproduce fig1` gives them), var_surrogate is var with attack.critic
    surrogate; series_parts inverts series_key."""
    from tram.attacks.methods import series_key, series_parts
    from tram.cli import fig1_configs

    assert series_parts("worst_q_test") == ("worst_q", "test", None)
    assert series_parts("var_surrogate") == ("var", None, "surrogate")
    assert series_parts("jbased") == ("jbased", None, None)
    assert series_parts(series_key("worst_q", "both")) == ("worst_q", "both", None)
    assert series_parts(series_key("var", "train", "surrogate")) == ("var", None, "surrogate")
    fig1 = [run_name(c.to_dict()) for c in fig1_configs("3m", 600_000, (0, 1, 2), 300_000, 1.0)]
    ours = compare_configs("3m", "qmix", ["none", "worst_q_test", "worst_q_both"], 600_000, 3, 1.0, None, None,
                           None, 300_000, 6_000, None, ["env.normalise_state=True"])
    assert [run_name(c.to_dict()) for c in ours] == fig1  # fig1's runs scale the state (FIG1_SETS)
    sur = compare_configs("3m", "coma", ["var", "var_surrogate"], 1000, 2, None, None, None, None, None, None,
                          None, [])
    assert [c.attack.critic for c in sur] == ["learner", "surrogate"]


# fabricated runs at the names `tram compare` (and `tram train`) give these options
OPTIONS = dict(env="3m", learner="coma", steps="50000", seeds="3", fa=None, kl="2", attacked_agent=None,
               attack_at=None, attack_start=None, eval_interval="10000", test_episodes=None, sets=[])


def _store(root, methods):
    """One finished fabricated run per method; seed s's test win rate is FINAL_BASE[method] +
    0.05 s at the last evaluation (fakeruns), and its stealth is -3.87 / -2.43 / -1.53 at
    KL_U = 6 scaled by KL_U / 6."""
    for cfg in compare_configs(methods=methods, **OPTIONS):
        config = {**cfg.to_dict(), "versions": {"tram": "0", "jax": "0", "jaxmarl": "0"}}
        run_dir = root / run_name(cfg.to_dict())
        write_json_atomic(run_dir / "config.json", config)
        write_metric_rows(run_dir / "metrics.csv", metric_rows(config))
        final = {str(s): {"test_win_rate": r["test_win_rate"]} for r in metric_rows(config)
                 for s in [r["seed"]] if r["env_steps"] == 50_000}
        write_json_atomic(run_dir / "summary.json", {"status": "done", "final": final})


def test_compare_runs_on_fabricated_runs(tmp_path):
    _store(tmp_path, ["var", "random", "none"])
    runs = [load_run(tmp_path / run_name(c.to_dict())) for c in compare_configs(methods=["var", "random", "none"],
                                                                                 **OPTIONS)]
    c = compare_runs(runs, "test_win_rate", window=10_000)
    var, rnd, clean = c.results
    # window = the last 10k steps -> the last evaluation only: 0.1, 0.15, 0.2 (var)
    assert var.window_values == pytest.approx((0.1, 0.15, 0.2)) and var.window[0] == pytest.approx(0.15)
    assert var.final[0] == pytest.approx(0.15) and rnd.final[0] == pytest.approx(0.75)
    assert var.stealth[0] == pytest.approx(-3.87 * 2 / 6) and clean.stealth is None
    assert [(p.a, p.b) for p in c.pairs] == [("var", "random"), ("var", "none"), ("random", "none")]
    assert c.pairs[0].difference == pytest.approx(-0.6)
    assert "lower under Var-based TRAM than under Random" in c.pairs[0].verdict


def test_cli_compare_answers_from_the_store_without_training(tmp_path):
    _store(tmp_path, ["var", "random"])
    args = ["compare", "--methods", "var,random", "--env", "3m", "--learner", "coma", "--steps", "50000",
            "--seeds", "3", "--kl", "2", "--eval-interval", "10000", "--window", "10000", "--out", str(tmp_path)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "2 already done, 0 to run" in r.output
    assert "COMA on 3m, f_A = 1, KL_U = 2, 3 seed(s) x 50,000 env steps" in r.output
    assert "| Var-based TRAM | 3 | 0.150 [" in r.output
    assert "- Var-based TRAM vs Random: -0.600 [-0.713, -0.487]: the test win rate is lower under Var-based TRAM " \
           "than under Random." in r.output
    # the header names the budget the attacked runs used, whatever the order of the methods
    _store(tmp_path, ["none"])
    r = CliRunner().invoke(app, [*args[:2], "random,none", *args[3:]])
    assert r.exit_code == 0 and "COMA on 3m, f_A = 1, KL_U = 2, 3 seed(s)" in r.output, r.output
    dry = CliRunner().invoke(app, args + ["--dry-run"])
    assert dry.exit_code == 0 and "every run is finished: the comparison needs no training" in dry.output


@pytest.mark.parametrize("argv, message", [
    (["--methods", "var,rand"], "--methods: 'rand' is not an attack method; accepted: two or more of none, var"),
    (["--methods", "var,var"], "--methods 'var,var' does not name two or more distinct methods"),
    (["--methods", "var,random", "--kl", "-1"], "--kl (attack.kl_u): '-1' is not accepted"),
    (["--methods", "var,random", "--metric", "win"], "--metric 'win' is not accepted; accepted: auto, test_win_rate"),
    (["--methods", "worst_q_test,none", "--attack-at", "both"],
     "--methods 'worst_q_test' acts at 'test' but --attack-at is 'both'"),
])
def test_cli_compare_refuses_bad_input(tmp_path, argv, message):
    r = CliRunner().invoke(app, ["compare", *argv, "--out", str(tmp_path), "--dry-run"])
    assert r.exit_code == 2 and message in r.output, r.output
