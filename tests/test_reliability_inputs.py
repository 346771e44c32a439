"""Every bad input is a one-line error: exit code 2, ``error: ...`` on stderr naming the
option or key, the value and what is accepted, no traceback (issue 10, item 2).

Nothing here trains: validation happens in the config layer, before anything compiles.
Most cases run in-process through typer's CliRunner; a few run the real console script in
a subprocess (exit code, stderr only, ``--debug`` traceback, no jaxmarl print).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tram.cli import app
from tram.config import ConfigError, EnvConfig, RunConfig, TrainConfig
from tram.attacks.perturb import AttackConfig
from tram.experiments.sweep import expand_grid, load_sweep
from tram.learners import LEARNER_CONFIGS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def files(tmp_path):
    """Paths the table refers to: a plain file, binary garbage, bad sweep files, an empty dir."""
    f = {
        "FILE": tmp_path / "a_file.txt",
        "GARBAGE": tmp_path / "garbage.yaml",
        "QMIXVAR": tmp_path / "qmix_var.yaml",
        "NOUNIT": tmp_path / "no_unit.yaml",
        "EVALABC": tmp_path / "eval_abc.yaml",
        "EMPTY": tmp_path / "empty_dir",
        "OUT": tmp_path / "out",
    }
    f["FILE"].write_text("not a directory\n")
    f["GARBAGE"].write_bytes(bytes(range(256)) * 4)
    f["QMIXVAR"].write_text("envs: [gather]\nlearners: [qmix]\nmethods: [none, random, var]\nsteps: 1e3\n")
    f["NOUNIT"].write_text("envs: [3m, 2s3z]\nmethods: [var]\nattacked_agent: zealot\nsteps: 1e3\n")
    f["EVALABC"].write_text("envs: [gather]\neval_interval: abc\n")
    f["EMPTY"].mkdir()
    return {k: str(v) for k, v in f.items()}


def _argv(template: list[str], files: dict[str, str]) -> list[str]:
    return [files.get(a, a) for a in template]


# (argv, texts the one-line message must contain). FILE, GARBAGE... are replaced by paths.
CASES = [
    # ---- ended in a traceback -----------------------------------------------------------
    (["train", "--env", "3m", "--attack", "var", "--attacked-agent", "7"],
     ["--attacked-agent", "7", "out of range", "0..2", "marine"]),
    (["train", "--env", "3m", "--attack", "var", "--attacked-agent", "colossus"],
     ["--attacked-agent", "'colossus'", "3m", "0..2", "marine"]),
    (["train", "--env", "gather", "--attack", "var", "--attacked-agent", "zealot"],
     ["--attacked-agent", "'zealot'", "gather", "0..2", "agent"]),
    (["train", "--env", "3m", "--attack", "var", "--attacked-agent", "-1"],
     ["--attacked-agent", "'-1'", "index >= 0"]),
    (["train", "--env", "gather", "--learner", "qmix", "--attack", "var"],
     ["'var'", "qmix", "dop, coma", "none, random, worst_q"]),
    (["train", "--env", "gather", "--learner", "qmix", "--attack", "jbased"],
     ["'jbased'", "qmix", "dop, coma"]),
    (["train", "--env", "3m", "--set", "env.foo=1"], ["env.options", "foo", "enemy_shoots", "max_steps"]),
    (["train", "--env", "gather", "--set", "env.foo=1"], ["env.options", "foo", "grid_size"]),
    (["train", "--env", "gather", "--steps", "1e3", "--out", "FILE"], ["--out", "a_file.txt", "not a directory"]),
    (["train", "--env", "gather", "--steps", "1e3", "--out", "/proc/tram-no/such"],
     ["--out", "/proc/tram-no/such", "cannot be created"]),
    (["train", "--steps", "inf"], ["--steps", "'inf'", "whole number >= 1"]),
    (["sweep", "GARBAGE", "--dry-run"], ["sweep file", "garbage.yaml", "not UTF-8", "accepted"]),
    (["sweep", "EMPTY", "--dry-run"], ["sweep file", "empty_dir", "is a directory", "accepted"]),
    (["sweep", "demo", "--backend", "foo"], ["--backend", "'foo'", "local, ray"]),
    (["report", "EMPTY", "--out", "FILE"], ["runs", "empty_dir", "no run directory"]),
    (["demo", "--out", "FILE"], ["--out", "a_file.txt", "not a directory"]),
    # ---- accepted today and wrong ---------------------------------------------------------
    (["report", "/nonexistent/tram-runs"], ["runs", "/nonexistent/tram-runs", "does not exist"]),
    (["report", "EMPTY"], ["runs", "empty_dir", "no run directory"]),
    (["report", "FILE"], ["runs", "a_file.txt", "not a directory"]),
    (["report", "EMPTY", "--fa", "2"], ["--fa", "'2'", "[0, 1]"]),
    (["report", "EMPTY", "--kl", "-1"], ["--kl", "'-1'", ">= 0"]),
    (["train", "--env", "gather", "--checkpoint-every", "nan"], ["--checkpoint-every", "'nan'", "finite number > 0"]),
    (["train", "--env", "gather", "--checkpoint-every", "-1"], ["--checkpoint-every", "'-1'", "finite number > 0"]),
    (["train", "--env", "3m", "--attacked-agent", "2"], ["--attacked-agent", "2", "without an attack"]),
    (["train", "--env", "3m", "--attacked-agent", "zealot"], ["--attacked-agent", "'zealot'", "without an attack"]),
    (["reproduce", "paper", "--maps", "gather", "--maps", "typo", "--dry-run"],
     ["--maps", "'typo'", "not an environment", "gather", "3m"]),
    (["reproduce", "fig1", "--maps", "3m", "--dry-run"], ["--maps", "fig1", "--map"]),
    (["reproduce", "--backend", "foo", "--dry-run"], ["--backend", "'foo'", "local, ray"]),
    (["sweep", "QMIXVAR", "--dry-run"], ["learner=qmix", "method=var", "'var'", "dop, coma"]),
    (["sweep", "NOUNIT", "--dry-run"], ["env=3m", "'zealot'", "marine"]),
    # ---- unclear today ----------------------------------------------------------------
    (["train", "--attack", "var", "--fa", "often"], ["--fa", "'often'", "[0, 1]"]),
    (["train", "--steps", "nan"], ["--steps", "'nan'", "whole number >= 1"]),
    (["train", "--eval-interval", "abc"], ["--eval-interval", "'abc'", "whole number >= 1"]),
    (["sweep", "EVALABC", "--dry-run"], ["eval_interval", "'abc'", "whole number"]),
    (["reproduce", "--maps", "nosuchmap", "--dry-run"], ["--maps", "'nosuchmap'", "3m", "2s3z", "gather"]),
    # ---- other option checks ----------------------------------------------------------
    (["train", "--kl", "-3", "--attack", "var"], ["--kl", "'-3'", ">= 0"]),
    (["train", "--learner", "ppo"], ["--learner", "'ppo'", "dop, coma, qmix"]),
    (["train", "--env", "4m"], ["--env", "'4m'", "3m"]),
    (["train", "--attack", "worst"], ["--attack", "'worst'", "worst_q"]),
    (["train", "--seeds", "0,0"], ["--seeds", "'0,0'", "distinct"]),
    (["train", "--set", "learner.nope=1"], ["learner", "nope", "critic_lr"]),
    (["train", "--set", "oops"], ["--set", "'oops'", "section.field=value"]),
    (["reproduce", "fig1", "--attack-start", "5e6", "--steps", "1e6", "--dry-run"],
     ["--attack-start", "5,000,000", "1,000,000"]),
    (["reproduce", "paper", "--maps", "6m,foo", "--dry-run"], ["--maps", "'foo'"]),
    (["sweep", "no_such_sweep_or_preset"], ["no_such_sweep_or_preset", "demo", "paper_fig2"]),
]


@pytest.mark.parametrize("argv,texts", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_error(argv, texts, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # report/demo/train defaults must not write into the repo
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, _argv(argv, files))
    err = result.stderr if hasattr(result, "stderr") else result.output
    assert result.exit_code == 2, (argv, result.exit_code, result.output, repr(result.exception))
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in result.output
    for t in texts:
        assert t in lines[0], (t, lines[0])
    # Nothing was written (no stub report, no run directory).
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


# ---- accepted forms ------------------------------------------------------------------------
def test_number_forms_accepted_like_steps():
    from tram.cli import build_config

    cfg = build_config("gather", "dop", "2e3", "2", "var", "0.5", "4", "1", "1e3", "8", [], "train", "1e3")
    assert (cfg.run.steps, cfg.run.eval_interval, cfg.run.test_episodes) == (2000, 1000, 8)
    assert (cfg.attack.attack_start, cfg.attack.f_a, cfg.attack.kl_u, cfg.attack.agent) == (1000, 0.5, 4.0, 1)
    assert cfg.run.seeds == (0, 1)
    # The same config built from plain ints has the same hash-relevant dict.
    same = TrainConfig(env=EnvConfig("gather"), learner=LEARNER_CONFIGS["dop"](),
                       attack=AttackConfig(method="var", f_a=0.5, kl_u=4.0, agent=1, attack_start=1000),
                       run=RunConfig(steps=2000, seeds=(0, 1), eval_interval=1000, test_episodes=8))
    assert cfg.to_dict() == same.to_dict()


def test_readme_maps_form_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner()
    spaced = r.invoke(app, ["reproduce", "paper", "--maps", "3m", "2s3z", "--steps", "1e4", "--seeds", "1",
                            "--dry-run"])
    comma = r.invoke(app, ["reproduce", "paper", "--maps", "3m,2s3z", "--steps", "1e4", "--seeds", "1", "--dry-run"])
    repeated = r.invoke(app, ["reproduce", "--maps", "3m", "--maps", "2s3z", "--steps", "1e4", "--seeds", "1",
                              "--dry-run"])
    no_target = r.invoke(app, ["reproduce", "--maps", "3m", "2s3z", "--steps", "1e4", "--seeds", "1", "--dry-run"])
    only_3m = r.invoke(app, ["reproduce", "paper", "--maps", "3m", "--steps", "1e4", "--seeds", "1", "--dry-run"])
    for res in (spaced, comma, repeated, no_target, only_3m):
        assert res.exit_code == 0, res.output
    assert spaced.stdout == comma.stdout == repeated.stdout == no_target.stdout
    assert spaced.stdout != only_3m.stdout and "paper:" in spaced.stdout
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_sweep_dry_run_lists_only_valid_grids(tmp_path):
    spec = {"envs": ["gather", "3m"], "learners": ["dop", "qmix"], "methods": ["none", "var"], "steps": "1e3"}
    with pytest.raises(ConfigError) as err:
        expand_grid(spec)
    msg = str(err.value)
    assert "learner=qmix" in msg and "method=var" in msg and "and 1 more invalid cell" in msg
    ok = expand_grid({**spec, "learners": ["dop"]})
    assert len(ok) == 4 and all(c.run.steps == 1000 for c in ok)
    # A clean cell keeps the default attacked agent even when the sweep names one.
    cells = expand_grid({"envs": ["2s3z"], "methods": ["none", "var"], "attacked_agent": "zealot", "steps": 100})
    assert [(c.attack.method, c.attack.agent) for c in cells] == [("none", 0), ("var", "zealot")]


# ---- one rule for CLI, sweeps and the API --------------------------------------------------
@pytest.mark.parametrize("api,sweep_spec,fragment", [
    (lambda: TrainConfig(env=EnvConfig("3m"), attack=AttackConfig(method="var", agent=7)),
     {"envs": ["3m"], "methods": ["var"], "attacked_agent": 7}, "attack.agent: index 7 is out of range on 3m"),
    (lambda: TrainConfig(env=EnvConfig("gather"), learner=LEARNER_CONFIGS["qmix"](), attack=AttackConfig(method="var")),
     {"envs": ["gather"], "learners": ["qmix"], "methods": ["var"]},
     "attack method 'var' needs a policy-gradient learner (dop, coma); qmix supports none, random, worst_q"),
    (lambda: TrainConfig(env=EnvConfig("gather"), attack=AttackConfig(method="var", f_a=1.5)),
     {"envs": ["gather"], "methods": ["var"], "f_a": 1.5}, "attack.f_a: 1.5 is not accepted; accepted: a number in [0, 1]"),
    (lambda: TrainConfig.from_dict({"env": {"name": "3m", "options": {"foo": 1}}}),
     {"envs": ["3m"], "methods": ["none"], "set": {"env.foo": 1}}, "unknown SMAX option(s) foo"),
])
def test_same_message_on_every_surface(api, sweep_spec, fragment):
    with pytest.raises(ConfigError) as a:
        api()
    with pytest.raises(ConfigError) as s:
        expand_grid(sweep_spec)
    assert fragment in str(a.value) and fragment in str(s.value)


def test_api_rejects_attack_fields_of_a_clean_run():
    for kw in ({"agent": 1}, {"f_a": 0.5}, {"kl_u": 2.0}, {"attack_start": 10}, {"attack_at": "test"}):
        with pytest.raises(ConfigError) as err:
            TrainConfig(env=EnvConfig("3m"), attack=AttackConfig(**kw))
        assert "without an attack" in str(err.value) and f"attack.{next(iter(kw))}" in str(err.value)
    TrainConfig(env=EnvConfig("3m"), attack=AttackConfig(agent=0))  # the default is fine


def test_resolved_agent_index():
    cfg = TrainConfig(env=EnvConfig("2s3z"), attack=AttackConfig(method="var", agent="zealot"))
    assert cfg.attacked_agent_index == 2  # 2 stalkers, then zealots
    assert TrainConfig(env=EnvConfig("2s3z")).attacked_agent_index is None


def test_sweep_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("envs: [gather\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*not valid YAML at line"):
        load_sweep(bad)


# ---- the real console script (a handful: each starts Python) ----------------------------------
def _tram(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tram.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_console_script_error_stderr_exit_2_and_debug(tmp_path):
    p = _tram("train", "--env", "3m", "--attack", "var", "--attacked-agent", "7", cwd=tmp_path)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "error: --attacked-agent (attack.agent): index 7 is out of range on 3m (3 agents); "
        "accepted: an index 0..2 or a unit type of 3m: marine"]
    d = _tram("train", "--steps", "inf", "--debug", cwd=tmp_path)  # --debug anywhere
    assert d.returncode == 2 and "Traceback (most recent call last)" in d.stderr and "ConfigError" in d.stderr
    assert d.stderr.strip().splitlines()[-1].startswith("error: --steps (run.steps): 'inf'")
    assert not any(tmp_path.iterdir())


def test_console_script_report_on_missing_store_writes_nothing(tmp_path):
    p = _tram("report", "runs", cwd=tmp_path)
    assert p.returncode == 2 and "does not exist" in p.stderr and not (tmp_path / "report").exists()


def test_no_jaxmarl_print_on_stdout(tmp_path):
    p = _tram("reproduce", "fig1", "--map", "3m", "--steps", "2e4", "--attack-start", "1e4", "--seeds", "1",
              "--dry-run", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("fig1: 3 runs") and "submoduled" not in p.stdout + p.stderr


# ---- quiet output (issue 10, item 4) -------------------------------------------------------
_LOADER_LINE = ("E1130 04:18:11.382092    6142 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. Target machine "
                "feature {f} is not  supported on the host machine. Machine type used for XLA:CPU compilation "
                "doesn't match the machine type for execution. Compile machine features: [+avx512f,{f}] vs host "
                "machine features: [avx512f]. This could lead to execution errors such as SIGILL.\n")


def test_cache_load_filter_drops_only_tuning_flag_alarms():
    from tram.experiments.compile_cache import filter_load_messages

    version = ("W1130 04:18:11.339063    6134 pjrt_executable.cc:642] Assume version compatibility. PjRt-IFRT does "
               "not track XLA executable versions.\n")
    real = _LOADER_LINE.format(f="+avx512f")  # a real instruction set missing: must stay
    other = "some other message\n"
    text = (version + _LOADER_LINE.format(f="+prefer-no-gather") + real + _LOADER_LINE.format(f="+prefer-no-scatter")
            + _LOADER_LINE.format(f="+fast-gather") + other)
    assert filter_load_messages(text) == real + other


_CACHE_SNIPPET = """
import sys, jax, jax.numpy as jnp
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
if sys.argv[1] == "tram":
    from tram.experiments.compile_cache import enable_compile_cache
    enable_compile_cache()
else:
    jax.config.update("jax_compilation_cache_dir", sys.argv[2])
print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum()))
"""


def test_compile_cache_loads_are_quiet(tmp_path):
    def run(mode, cache):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TRAM_COMPILE_CACHE": str(cache)}
        return subprocess.run([sys.executable, "-c", _CACHE_SNIPPET, mode, str(cache)], env=env, capture_output=True,
                              text=True, timeout=300)

    avx512 = "avx512" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False
    for mode in ("plain", "tram"):
        cache = tmp_path / mode
        first, second = run(mode, cache), run(mode, cache)
        assert first.returncode == second.returncode == 0, second.stderr
        assert first.stdout == second.stdout and any(cache.rglob("*"))  # written, then loaded
        if mode == "plain":  # what JAX alone prints on this host (the reason for the filter)
            assert ("prefer-no-gather" in second.stderr) == avx512, second.stderr
        else:
            assert "cpu_aot_loader" not in second.stderr and "Assume version compatibility" not in second.stderr, \
                second.stderr
