"""The throughput preset `tram reproduce --dry-run` reads (written by
``benchmarks/train_throughput.py --write-preset``): its keys, and the estimate's arithmetic
checked by hand on a preset written here."""

from __future__ import annotations

import json

import pytest

from tram import cli
from tram.attacks.perturb import AttackConfig
from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.learners import LEARNER_CONFIGS


def test_shipped_preset_has_what_the_estimate_reads():
    p = json.loads((cli.PRESETS_DIR / "throughput.json").read_text())
    assert set(p["steps_per_s"]) >= {"dop", "coma", "qmix"}
    assert all(v > 0 for v in p["steps_per_s"].values())
    assert set(p["reference_env"]) == {"name", "num_agents", "obs_dim", "state_dim"}
    for learner, costs in p.get("attack_cost", {}).items():
        assert learner in p["steps_per_s"]
        assert all(v > 0 for v in costs.values())


def test_estimate_by_hand(tmp_path, monkeypatch):
    preset = {"steps_per_s": {"dop": 1000.0, "coma": 10000.0, "qmix": 500.0},
              "attack_cost": {"coma": {"var": 1.5, "jbased": 2.0}},
              "reference_env": {"name": "3m", "num_agents": 3, "obs_dim": 75, "state_dim": 72}}
    (tmp_path / "throughput.json").write_text(json.dumps(preset))
    monkeypatch.setattr(cli, "PRESETS_DIR", tmp_path)
    run = RunConfig(steps=100_000, seeds=(0, 1, 2, 3, 4), eval_interval=10_000)

    def cfg(learner, method="none"):
        return TrainConfig(env=EnvConfig("3m"), learner=LEARNER_CONFIGS[learner](),
                           attack=AttackConfig() if method == "none" else AttackConfig(method=method, f_a=1.0, kl_u=6.0),
                           run=run)

    # 5e5 env steps in total per run on the reference map
    assert cli._estimate_seconds([cfg("dop")]) == pytest.approx(500.0)
    assert cli._estimate_seconds([cfg("dop", "var")]) == pytest.approx(500.0)  # no cost recorded for dop
    assert cli._estimate_seconds([cfg("coma")]) == pytest.approx(50.0)
    assert cli._estimate_seconds([cfg("coma", "var")]) == pytest.approx(75.0)
    assert cli._estimate_seconds([cfg("coma", "random")]) == pytest.approx(100.0)  # largest measured cost
    assert cli._estimate_seconds([cfg("qmix"), cfg("coma", "jbased")]) == pytest.approx(1000.0 + 100.0)
    # a larger map costs more in proportion to agents x (obs + state); a smaller one no less
    def on(env):
        return TrainConfig(env=EnvConfig(env), learner=LEARNER_CONFIGS["dop"](), attack=AttackConfig(), run=run)

    assert cli._estimate_seconds([on("8m")]) == pytest.approx(500.0 * 8 * (205 + 192) / (3 * (75 + 72)))
    assert cli._estimate_seconds([on("2s_vs_1sc")]) == pytest.approx(500.0)
