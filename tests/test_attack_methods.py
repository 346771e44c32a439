"""The table of attack methods (``tram.attacks.methods``) and the config builder.

A toy method registered in the table (one entry plus its direction function, through
``monkeypatch``, no other file touched) must flow through config validation, the
perturbation (Algorithm 1 along its direction), run names, sweeps, the report's labels,
colours and table rows, and the CLI help. A stored run whose method is not in the table is
an error naming it, never a silently missing curve.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from typer.testing import CliRunner

import fakeruns
from tram.attacks import methods
from tram.attacks.methods import ATTACK_METHODS, AttackMethod
from tram.attacks.perturb import AttackConfig, make_perturbation
from tram.config import RunConfig, TrainConfig, build_train_config
from tram.experiments.store import run_name
from tram.learners import LEARNER_CONFIGS
from tram.types import ActingContext
from tram.validation import ConfigError

TOY_LABEL, TOY_COLOUR = "Toy fixed direction", "#123456"


def toy_direction(cfg):
    """A fixed direction: up on the first available action, down on the last, unit norm."""
    del cfg

    def direction(key, ctx, actor_logits_fn):
        del key, actor_logits_fn
        avail = ctx.avail.astype(bool)
        idx = jnp.arange(avail.shape[0])
        first = jnp.argmax(avail)
        last = avail.shape[0] - 1 - jnp.argmax(avail[::-1])
        d = jnp.where(idx == first, 1.0, 0.0) - jnp.where(idx == last, 1.0, 0.0)
        return d / jnp.sqrt(2.0), jnp.sum(avail) < 2

    return direction


@pytest.fixture
def toy(monkeypatch):
    """Registers the toy method (and its fake-run numbers) for one test."""
    monkeypatch.setitem(ATTACK_METHODS, "toy", AttackMethod(
        "toy", TOY_LABEL, TOY_COLOUR, has_kl_budget=True, needs_policy_gradient=False,
        learners=("dop", "coma"), direction=toy_direction))
    monkeypatch.setitem(fakeruns.STEALTH_BASE, "toy", -1.0)
    monkeypatch.setitem(fakeruns.FINAL_BASE, "toy", 0.5)
    return ATTACK_METHODS["toy"]


# ---------------------------------------------------------------------------- the table
def test_builtin_entries_keep_the_report_names():
    assert list(ATTACK_METHODS) == ["none", "var", "jbased", "random", "combined", "worst_q"]
    assert [ATTACK_METHODS[m].label for m in ("none", "var", "jbased", "random")] == \
        ["Clean (none)", "Var-based TRAM", "J-based TRAM", "Random"]
    assert methods.series_keys() == ("none", "var", "var_surrogate", "jbased", "jbased_surrogate", "random",
                                     "combined", "combined_surrogate", "worst_q_test", "worst_q_train",
                                     "worst_q_both")
    assert methods.series_label("worst_q_test") == "Worst-Q attack at test time only (deploy-time)"
    assert methods.series_colour("var") == "#d62728"
    assert [n for n, m in ATTACK_METHODS.items() if m.has_kl_budget] == ["var", "jbased", "random", "combined"]
    assert [n for n, m in ATTACK_METHODS.items() if m.needs_policy_gradient] == ["var", "jbased", "combined"]
    assert [n for n, m in ATTACK_METHODS.items() if not m.paper] == ["combined"]
    assert methods.accepted_methods("qmix") == ("none", "random", "worst_q")
    for m in ATTACK_METHODS.values():
        assert m.learners is None or set(m.learners) <= set(LEARNER_CONFIGS), m.name


def test_entry_contract_is_checked():
    with pytest.raises(ValueError, match="exactly one of direction"):
        AttackMethod("bad", "Bad", "#000000", has_kl_budget=True, needs_policy_gradient=False)
    with pytest.raises(ValueError, match="has_kl_budget must be True"):
        AttackMethod("bad", "Bad", "#000000", has_kl_budget=False, needs_policy_gradient=False,
                     direction=toy_direction)
    with pytest.raises(ValueError, match="learners"):
        AttackMethod("bad", "Bad", "#000000", has_kl_budget=True, needs_policy_gradient=False,
                     learners="dop", direction=toy_direction)
    with pytest.raises(ConfigError, match="'nope' is not in the table"):
        methods.series_label("nope")


# ---------------------------------------------------------------------------- the toy method
def test_toy_method_passes_config_validation(toy):
    cfg = build_train_config("gather", "dop", "toy", steps=1000, seeds=1, eval_interval=500, kl_u=2)
    assert cfg.attack.method == "toy" and cfg.attack.kl_u == 2.0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError) as err:
        build_train_config("gather", "qmix", "toy", steps=1000, seeds=1, eval_interval=500)
    assert str(err.value) == "attack method 'toy' is accepted by (dop, coma); qmix supports none, random, worst_q"
    with pytest.raises(ConfigError) as err:
        AttackConfig(method="nope")
    assert str(err.value) == ("attack.method: 'nope' is not accepted; accepted: none, var, jbased, random, "
                              "combined, worst_q, toy")


def test_toy_method_runs_algorithm_1_along_its_direction(toy):
    logits = jnp.array([1.0, 0.5, 0.0, -0.5])
    avail = jnp.array([True, True, True, True])
    z = jnp.zeros(())
    ctx = ActingContext(logits=logits, avail=avail, q_values=jnp.zeros(4), mix_weight=jnp.ones(()),
                        actor_params={}, actor_hidden=jnp.zeros(1), actor_input=jnp.zeros(1),
                        prev_actor_grad={}, has_prev_grad=jnp.array(False), epsilon=z)
    kl_u = 0.5
    out, stats = make_perturbation(AttackConfig(method="toy", kl_u=kl_u))(jax.random.PRNGKey(0), ctx, None)
    d = np.array([1.0, 0.0, 0.0, -1.0]) / np.sqrt(2.0)
    np.testing.assert_allclose(np.asarray(stats.delta_hat), d, atol=1e-7)

    # Hand reference in float64: KL(softmax(l + b d) || softmax(l)) is increasing in b;
    # the largest b with KL <= KL_U by bisection to 1e-12.
    l64 = np.asarray(logits, np.float64)

    def kl(b):
        p = np.exp(l64 - l64.max())
        p /= p.sum()
        q = np.exp(l64 + b * d - (l64 + b * d).max())
        q /= q.sum()
        return float(np.sum(q * (np.log(q) - np.log(p))))

    lo, hi = 0.0, 64.0
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if kl(mid) > kl_u else (mid, hi)
    beta = float(stats.beta)
    # Algorithm 1 returns the lower end of a bracket of width 2^-BSN2 (BSN2 = 15) around lo.
    assert lo - 2.0 ** -15 - 1e-5 <= beta <= lo + 1e-5
    assert float(stats.kl) <= kl_u + 1e-6 and float(stats.kl) == pytest.approx(kl(beta), abs=1e-5)
    # f_A = 1: the agent samples from pi' = softmax(l + beta d).
    pi_prime = np.exp(np.asarray(out, np.float64))
    pi_prime /= pi_prime.sum()
    q = np.exp(l64 + beta * d)
    np.testing.assert_allclose(pi_prime, q / q.sum(), atol=1e-5)


def test_toy_method_run_name(toy):
    cfg = build_train_config("gather", "dop", "toy", steps=2_000_000, seeds=1, f_a=0.5, kl_u=2)
    assert "-dop-toy-fa0.5-kl2-2e6steps-" in run_name(cfg.to_dict())
    worst = build_train_config("gather", "qmix", "worst_q", steps=2_000_000, seeds=1, attack_at="both")
    assert "-qmix-worst_q-fa1-both-2e6steps-" in run_name(worst.to_dict())  # no KL budget, where it acts


def test_toy_method_joins_the_default_sweep(toy):
    from tram.experiments.sweep import _cell_label, expand_grid

    configs = expand_grid({"envs": ["gather"], "steps": 1000, "seeds": 1, "eval_interval": 500})
    assert [c.attack.method for c in configs] == ["none", "var", "jbased", "random", "toy"]
    assert _cell_label(configs[-1]) == "gather/dop/toy fA=1 KL=6"
    # A method without a KL budget is one cell per f_A whatever kl_u lists.
    worst = expand_grid({"envs": ["gather"], "methods": ["worst_q"], "kl_u": [2, 6], "steps": 1000, "seeds": 1,
                         "eval_interval": 500})
    assert len(worst) == 1 and worst[0].attack.kl_u == AttackConfig().kl_u
    assert _cell_label(worst[0]) == "gather/dop/worst_q fA=1 at train"


def test_toy_method_in_the_report(toy, tmp_path):
    from tram.report import make_report
    from tram.report.collect import method_color, method_label, method_order
    from tram.report.plots import curves_title

    root = tmp_path / "runs"
    for method in ("none", "var", "jbased", "random", "toy"):
        fakeruns.make_fake_run(root, "3m", method, seeds=(0, 1))
    out = tmp_path / "report"
    make_report(root, out, n_boot=50, log=None)
    with open(out / "tables" / "table1_stealth_dop.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == ["Var-based TRAM", "J-based TRAM", "Random", TOY_LABEL]
    assert float(rows[-1][1]) == pytest.approx(-1.0, abs=1e-12)  # fakeruns: per-seed offsets cancel
    with open(out / "tables" / "final_performance.csv", newline="") as f:
        labels = [r[2] for r in list(csv.reader(f))[1:]]
    assert labels == ["Clean (none)", "Var-based TRAM", "J-based TRAM", "Random", TOY_LABEL]
    assert method_label("toy") == TOY_LABEL and method_color("toy") == TOY_COLOUR
    assert method_order()[-1] == "toy"
    assert "training-time attacks" in curves_title("dop", ["none", "toy"], 1.0, 6.0)
    assert (out / "figures" / "fig4_dop_3m.png").exists()


def test_toy_method_in_the_cli_help(toy):
    from tram.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "toy: Toy fixed direction" in text and "var: Var-based TRAM" in text


# ---------------------------------------------------------------------------- combined (App. E)
def test_combined_is_selectable_but_outside_the_papers_grid():
    """``combined`` (beyond the paper): accepted by DOP and COMA, refused by QMIX, named in
    run names and the CLI help, run by a sweep that names it, and absent from the default
    sweep (so existing sweep files keep their cells)."""
    from tram.cli import app
    from tram.experiments.sweep import _cell_label, default_methods, expand_grid

    cfg = build_train_config("gather", "coma", "combined", steps=2_000_000, seeds=1, kl_u=6)
    assert "-coma-combined-fa1-kl6-2e6steps-" in run_name(cfg.to_dict())
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError) as err:
        build_train_config("gather", "qmix", "combined", steps=1000, seeds=1, eval_interval=500)
    assert str(err.value) == ("attack method 'combined' needs a policy-gradient learner (dop, coma); "
                              "qmix supports none, random, worst_q")
    assert default_methods() == ("none", "var", "jbased", "random")
    configs = expand_grid({"envs": ["gather"], "methods": ["var", "jbased", "combined"], "steps": 1000,
                           "seeds": 3, "eval_interval": 500})
    assert [c.attack.method for c in configs] == ["var", "jbased", "combined"]
    assert _cell_label(configs[-1]) == "gather/dop/combined fA=1 KL=6"
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=400, env={"COLUMNS": "400"})
    assert "combined: Combined TRAM (App. E)" in " ".join(result.output.replace("│", " ").split())


def test_combined_in_the_stealth_table_only_with_its_runs(tmp_path, monkeypatch):
    """Table 1 keeps the paper's rows; ``combined`` is a row once the store has runs of it,
    and a map without them is still in the table (its cells "-"), never left out."""
    from tram.report import make_report

    monkeypatch.setitem(fakeruns.STEALTH_BASE, "combined", -2.0)
    monkeypatch.setitem(fakeruns.FINAL_BASE, "combined", 0.3)
    root = tmp_path / "runs"
    for env in ("3m", "2s3z"):
        for method in ("none", "var", "jbased", "random"):
            fakeruns.make_fake_run(root, env, method, seeds=(0, 1))

    def table1(out):
        make_report(root, out, n_boot=20, log=None)
        with open(out / "tables" / "table1_stealth_dop.csv", newline="") as f:
            return list(csv.reader(f))

    rows = table1(tmp_path / "before")
    assert [r[0] for r in rows[1:]] == ["Var-based TRAM", "J-based TRAM", "Random"]
    fakeruns.make_fake_run(root, "3m", "combined", seeds=(0, 1))
    rows = table1(tmp_path / "after")
    header = rows[0]
    assert [r[0] for r in rows[1:]] == ["Var-based TRAM", "J-based TRAM", "Random", "Combined TRAM (App. E)"]
    assert "3m" in header and "2s3z" in header
    combined = dict(zip(header, rows[-1]))
    assert float(combined["3m"]) == pytest.approx(-2.0, abs=1e-12)
    assert combined["2s3z"] == ""


def test_a_run_of_an_unknown_method_is_an_error_naming_it(tmp_path, monkeypatch):
    from tram.cli import app
    from tram.report import make_report

    monkeypatch.setitem(fakeruns.FINAL_BASE, "ghost", 0.5)
    monkeypatch.setitem(fakeruns.STEALTH_BASE, "ghost", -1.0)
    root = tmp_path / "runs"
    fakeruns.make_fake_run(root, "3m", "none", seeds=(0,))
    ghost = fakeruns.make_fake_run(root, "3m", "ghost", seeds=(0,))
    with pytest.raises(ConfigError) as err:
        make_report(root, tmp_path / "report", n_boot=20, log=None)
    assert "'ghost'" in str(err.value) and ghost.name in str(err.value)
    result = CliRunner().invoke(app, ["report", str(root), "--out", str(tmp_path / "cli_report")])
    assert result.exit_code == 2
    assert "'ghost'" in result.output and "ATTACK_METHODS" in result.output


# ---------------------------------------------------------------------------- the builder
def test_builder_defaults_are_the_dataclass_defaults():
    import tram

    assert tram.build_config is build_train_config
    assert build_train_config() == TrainConfig()
    cfg = build_train_config("gather", "coma", "var", steps="2e3", seeds="0,3", eval_interval="1e3",
                             sets={"learner.critic_lr": 1e-3, "attack.bsn2": 10})
    assert cfg.run == RunConfig(steps=2000, seeds=(0, 3), eval_interval=1000)
    assert (cfg.learner.name, cfg.learner.critic_lr, cfg.attack.bsn2) == ("coma", 1e-3, 10)
    same = build_train_config("gather", "coma", "var", steps=2000, seeds=[0, 3], eval_interval=1000,
                              sets=["learner.critic_lr=1e-3", "attack.bsn2=10"])
    assert same == cfg
    with pytest.raises(ConfigError, match=r"^--set 'learner\.nope=1': learner has no field 'nope'"):
        build_train_config(sets=["learner.nope=1"])


def test_sweep_does_not_import_the_cli():
    code = "import sys, tram.experiments.sweep; assert 'tram.cli' not in sys.modules, 'cycle'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_table_does_not_import_jax():
    code = ("import sys; from tram.attacks import ATTACK_METHODS; import tram.attacks.methods; "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
