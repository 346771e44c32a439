"""The ``tram`` command line: ``envs``, ``train``, ``report``, ``demo``.

Every command maps onto the Python API (``tram.train``, ``tram.report``), so what the CLI
does a script can do too.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="tram: training-time attacks (TRAM) on cooperative multi-agent RL.")


def parse_steps(text: str) -> int:
    """``"2e6"`` / ``"2000000"`` / ``"2_000_000"`` -> 2000000; rejects non-positive values."""
    try:
        v = float(str(text).replace("_", ""))
    except ValueError:
        raise typer.BadParameter(f"--steps must be a number such as 2e6 or 500000, got {text!r}")
    if v < 1 or v != int(v):
        raise typer.BadParameter(f"--steps must be a whole number >= 1, got {text!r}")
    return int(v)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"5"`` -> seeds 0..4; ``"0,3,7"`` -> those seeds."""
    try:
        if "," in text:
            seeds = tuple(int(s) for s in text.split(",") if s.strip())
        else:
            seeds = tuple(range(int(text)))
    except ValueError:
        raise typer.BadParameter(f"--seeds takes a count (5) or a list (0,3,7), got {text!r}")
    if not seeds or min(seeds) < 0:
        raise typer.BadParameter(f"--seeds needs at least one non-negative seed, got {text!r}")
    return seeds


def apply_overrides(cfg_dict: dict, sets: list[str]) -> dict:
    """Applies ``section.field=value`` overrides (values parsed as Python literals)."""
    for item in sets or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise typer.BadParameter(f"--set takes section.field=value (e.g. learner.epsilon_anneal_steps=50000), got {item!r}")
        key, raw = item.split("=", 1)
        section, fld = key.split(".", 1)
        if section not in cfg_dict or not isinstance(cfg_dict[section], dict):
            raise typer.BadParameter(f"--set {item!r}: unknown section {section!r}; accepted: {', '.join(cfg_dict)}")
        if section != "env" and fld not in cfg_dict[section]:
            raise typer.BadParameter(
                f"--set {item!r}: {section} has no field {fld!r}; accepted: {', '.join(cfg_dict[section])}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if section == "env" and fld != "name":
            cfg_dict["env"].setdefault("options", {})[fld] = value
        else:
            cfg_dict[section][fld] = value
    return cfg_dict


def build_config(env: str, learner: str, steps: int, seeds: tuple[int, ...], attack: str, fa: float,
                 kl: float, attacked_agent: str, eval_interval: int, test_episodes: int, sets: list[str],
                 attack_at: str = "train", attack_start: int = 0):
    """Builds and validates a :class:`tram.config.TrainConfig` from CLI values."""
    from tram.config import EnvConfig, RunConfig, TrainConfig
    from tram.learners import LEARNER_CONFIGS
    from tram.attacks.perturb import AttackConfig

    if learner not in LEARNER_CONFIGS:
        raise typer.BadParameter(f"--learner must be one of {', '.join(LEARNER_CONFIGS)}, got {learner!r}")
    agent = int(attacked_agent) if str(attacked_agent).isdigit() else attacked_agent
    base = TrainConfig(
        env=EnvConfig(name=env),
        learner=LEARNER_CONFIGS[learner](),
        attack=AttackConfig(method=attack, f_a=fa, kl_u=kl, agent=agent, attack_at=attack_at,
                            attack_start=attack_start),
        run=RunConfig(steps=steps, seeds=seeds, eval_interval=eval_interval, test_episodes=test_episodes),
    )
    return TrainConfig.from_dict(apply_overrides(base.to_dict(), sets))


def _run_or_exit(fn, *args, **kwargs):
    """Calls ``fn``; a run-store fault ends the command with one line on stderr and an exit
    code instead of a traceback: 130 for Ctrl-C (the message says where training stopped; a
    rerun resumes), 1 when another process holds the run's lock or a write failed (the file
    is named; the last good checkpoint is kept), 2 for a damaged or edited run file."""
    from tram.experiments import store

    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt as e:
        typer.echo(str(e) or "interrupted; rerun the same command to resume", err=True)
        raise typer.Exit(code=130)
    except (store.RunLockedError, store.RunWriteError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1)
    except store.CorruptRunError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2)


@app.command()
def envs():
    """List every environment with agents, actions, observation and state sizes, episode limit."""
    from tabulate import tabulate

    from tram.envs import env_names, make_env

    rows = []
    for name in env_names():
        s = make_env(name).spec
        types = ",".join(sorted(set(s.agent_unit_types)))
        rows.append([name, s.family, s.num_agents, s.num_actions, s.obs_dim, s.state_dim, s.episode_limit, types])
    typer.echo(tabulate(rows, headers=["env", "family", "agents", "actions", "obs", "state", "limit", "unit types"]))


@app.command()
def train(
    env: str = typer.Option("3m", help="Environment name (see `tram envs`)."),
    learner: str = typer.Option("dop", help="dop, coma or qmix."),
    steps: str = typer.Option("2e6", help="Env steps per seed, e.g. 2e6."),
    seeds: str = typer.Option("5", help="Seed count (5) or list (0,3,7); all run in one program."),
    attack: str = typer.Option("none", help="none, random, var, jbased (TRAM) or worst_q (deploy-time)."),
    fa: float = typer.Option(1.0, "--fa", help="Attack frequency f_A in [0, 1]."),
    kl: float = typer.Option(6.0, "--kl", help="KL budget KL_U >= 0."),
    attacked_agent: str = typer.Option("0", help="Poisoned agent: index or unit type (zealot, colossus...)."),
    attack_at: str = typer.Option("train", help="Where the attack acts: train, test or both."),
    attack_start: int = typer.Option(0, help="Env step from which the attack acts."),
    eval_interval: int = typer.Option(10_000, help="Env steps between greedy evaluations."),
    test_episodes: int = typer.Option(32, help="Greedy test episodes per evaluation."),
    out: Path = typer.Option(Path("runs"), help="Run store directory."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any field: learner.critic_lr=5e-4."),
    restart: bool = typer.Option(False, help="Ignore a checkpoint and train from scratch."),
    no_progress: bool = typer.Option(False, help="No progress bar."),
    checkpoint_every: float = typer.Option(600.0, help="Seconds between checkpoints (resume point if killed)."),
    wait: bool = typer.Option(False, help="If another process is training this run, wait for it "
                              "(default: say which process and exit 1)."),
):
    """Train a learner (optionally under a TRAM attack) on all seeds at once; writes a run directory."""
    from tram.experiments.runner import train as run_train

    try:
        cfg = build_config(env, learner, parse_steps(steps), parse_seeds(seeds), attack, fa, kl, attacked_agent,
                           eval_interval, test_episodes, set_ or [], attack_at, attack_start)
    except (ValueError, TypeError) as e:
        raise typer.BadParameter(str(e))
    run_dir = _run_or_exit(run_train, cfg, out, progress=not no_progress, restart=restart,
                           checkpoint_every_s=checkpoint_every, wait=wait)
    typer.echo(str(run_dir))


@app.command()
def report(
    runs: Path = typer.Argument(Path("runs"), help="Run store directory (read only)."),
    out: Path = typer.Option(Path("report"), help="Where figures and tables go."),
):
    """Figures and tables (curves with CIs, Tables 1-3, Fig. 4, marl-eval JSON) from the store."""
    from tram.report import make_report

    paths = make_report(runs, out)
    typer.echo(f"wrote {len(paths)} files to {out} (index: {out / 'index.md'})")


def main():  # pragma: no cover
    app()


PRESETS_DIR = Path(__file__).parent / "presets"
PAPER_PRESETS = ("paper_fig2", "paper_fig3", "paper_budgets", "paper_budgets_kl", "paper_appendix_d",
                 "paper_large_maps")


def sweep_file(name_or_path: str) -> Path:
    """A sweep file path, or the name of a preset in ``tram/presets`` (``demo``, ``paper_fig2``...)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    names = sorted(x.stem for x in PRESETS_DIR.glob("*.yaml"))
    raise typer.BadParameter(f"sweep file {name_or_path!r} does not exist and is not a preset; presets: {', '.join(names)}")


def _run_sweep_cli(configs, out: Path, backend: str, address: Optional[str], checkpoint_every: float = 600.0,
                   keep_branch_point: Optional[int] = None) -> int:
    from tram.experiments.sweep import run_sweep

    results = _run_or_exit(run_sweep, configs, out, backend=backend, address=address, log=typer.echo,
                           checkpoint_every_s=checkpoint_every, keep_branch_point=keep_branch_point)
    return sum(1 for r in results if r.error)


@app.command()
def sweep(
    file: str = typer.Argument(..., help="Sweep YAML file, or a preset name (demo, paper_fig2, ...)."),
    out: Path = typer.Option(Path("runs"), help="Run store directory."),
    backend: str = typer.Option("local", help="local (in-process) or ray."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local one)."),
    dry_run: bool = typer.Option(False, help="Only list the cells."),
    checkpoint_every: float = typer.Option(600.0, help="Seconds between checkpoints of a running cell."),
):
    """Run a grid of (env, learner, method, f_A, KL_U) cells; finished cells are skipped."""
    from tram.experiments.sweep import SweepError, load_sweep

    try:
        configs = load_sweep(sweep_file(file))
    except SweepError as e:
        raise typer.BadParameter(str(e))
    if dry_run:
        for c in configs:
            typer.echo(f"{c.env.name} {c.learner.name} {c.attack.method} f_a={c.attack.f_a:g} kl_u={c.attack.kl_u:g} "
                       f"seeds={len(c.run.seeds)} steps={c.run.steps:,}")
        return
    failures = _run_sweep_cli(configs, out, backend, address, checkpoint_every)
    raise typer.Exit(code=1 if failures else 0)


@app.command()
def demo(out: Path = typer.Option(Path("demo"), help="Output directory (runs/ and the report).")):
    """A small reproduction on the Gather grid task: clean, random, J-based and var-based TRAM,
    2 seeds, then the figure and the stealth table in OUT."""
    from tram.experiments.sweep import load_sweep
    from tram.report import make_report

    configs = load_sweep(PRESETS_DIR / "demo.yaml")
    failures = _run_sweep_cli(configs, out / "runs", "local", None)
    paths = make_report(out / "runs", out)
    typer.echo(f"demo: wrote {len(paths)} files to {out}; see {out / 'index.md'}")
    for p in paths:
        if p.name.startswith("table1") and p.suffix == ".md":
            typer.echo(p.read_text())
    raise typer.Exit(code=1 if failures else 0)


def _duration(seconds: float) -> str:
    """``'1.8 h'`` or ``'12 min'``."""
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{max(seconds / 60, 1):.0f} min"


def _estimate_seconds(configs) -> float:
    """Wall-time estimate from throughput measured here by ``benchmarks/train_throughput.py``
    (``presets/throughput.json``: training env steps/s summed over 5 vmapped seeds on 3m, per
    learner). Other maps are scaled by the critic's work, which grows with agents x
    (observation + state) features. A rough guide, not a promise."""
    import json

    from tram.envs import make_env

    measured = json.loads((PRESETS_DIR / "throughput.json").read_text())
    ref = measured["reference_env"]
    total = 0.0
    for c in configs:
        spec = make_env(c.env.name).spec
        sps = measured["steps_per_s"].get(c.learner.name, measured["steps_per_s"]["dop"])
        work = spec.num_agents * (spec.obs_dim + spec.state_dim)
        ref_work = ref["num_agents"] * (ref["obs_dim"] + ref["state_dim"])
        total += c.run.steps * len(c.run.seeds) / (sps * ref_work / max(work, 1))
    return total


def fig1_configs(env: str, steps: int, seeds: tuple[int, ...], attack_start: int, fa: float):
    """Fig. 1 of the paper: QMIX trained clean; from ``attack_start`` on, the poisoned agent
    takes its worst-Q action (deploy-time attack) at test time only, or at training and test
    time. Returns ``[clean, test-only, train-and-test]``. The runs are deterministic and the
    attack is gated by ``attack_start``, so all three share their first ``attack_start``
    steps bit for bit (tested in tests/test_qmix.py): `reproduce fig1` trains the clean run
    first, keeping its state at ``attack_start``, and starts both attacked runs from it
    (:func:`tram.experiments.runner.train`, ``keep_branch_point``)."""
    from tram.attacks.perturb import AttackConfig
    from tram.config import EnvConfig, RunConfig, TrainConfig
    from tram.learners import LEARNER_CONFIGS

    if not 0 < attack_start < steps:
        raise ValueError(f"--attack-start must be between 0 and --steps ({steps:,}), exclusive, so that the "
                         f"attack starts during the run; got {attack_start:,}")
    run = RunConfig(steps=steps, seeds=seeds, eval_interval=max(steps // 100, 1000))
    base = dict(env=EnvConfig(env), learner=LEARNER_CONFIGS["qmix"](), run=run)
    return [TrainConfig(**base, attack=AttackConfig(method="none")),
            TrainConfig(**base, attack=AttackConfig(method="worst_q", f_a=fa, attack_at="test", attack_start=attack_start)),
            TrainConfig(**base, attack=AttackConfig(method="worst_q", f_a=fa, attack_at="both", attack_start=attack_start))]


@app.command()
def reproduce(
    target: str = typer.Argument("paper", help="paper (Figs. 2, 3, 5, 6, App. D), fig1 (QMIX, deploy- vs "
                                 "training-time attack) or demo."),
    maps: Optional[list[str]] = typer.Option(None, "--maps", help="Restrict to these environments."),
    steps: Optional[str] = typer.Option(None, help="Env steps per seed (default: the paper's 2e6)."),
    seeds: Optional[str] = typer.Option(None, help="Seed count or list (default 5)."),
    out: Path = typer.Option(Path("runs"), help="Run store directory."),
    report_dir: Path = typer.Option(Path("report"), "--report", help="Where the report goes."),
    backend: str = typer.Option("local", help="local or ray."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address."),
    dry_run: bool = typer.Option(False, help="Print the plan and the time estimate only."),
    map_: str = typer.Option("3m", "--map", help="fig1: the SMAX map (the paper does not name it)."),
    attack_start: str = typer.Option("1e6", help="fig1: env step at which the deploy-time attack starts."),
    fa: float = typer.Option(1.0, "--fa", help="fig1: probability that the poisoned agent takes its worst-Q action."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="section.field=value override for every run "
                                             "(e.g. learner.num_envs=8)."),
):
    """Run the paper's experiment grid (or Fig. 1's three QMIX runs), then the report."""
    import yaml

    from tram.experiments.sweep import SweepError, expand_grid
    from tram.report import make_report

    presets = {"paper": PAPER_PRESETS, "demo": ("demo",), "fig1": ()}
    if target not in presets:
        raise typer.BadParameter(f"reproduce target must be one of {', '.join(presets)}, got {target!r}")
    configs, seen = [], set()
    if target == "fig1":
        try:
            configs = fig1_configs(map_, parse_steps(steps or "2e6"), parse_seeds(seeds or "5"),
                                   parse_steps(attack_start), fa)
        except ValueError as e:
            raise typer.BadParameter(str(e))
    for name in presets[target]:
        spec = yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text())
        if maps:
            spec["envs"] = [e for e in spec["envs"] if e in maps]
            if not spec["envs"]:
                continue
        if steps is not None:
            spec["steps"] = parse_steps(steps)
        if seeds is not None:
            spec["seeds"] = list(parse_seeds(seeds))
        try:
            for c in expand_grid(spec):
                if c.to_json() not in seen:
                    seen.add(c.to_json())
                    configs.append(c)
        except SweepError as e:
            raise typer.BadParameter(str(e))
    if not configs:
        raise typer.BadParameter(f"--maps {maps} selects no environment of the {target} grid")
    if sets:
        from tram.config import TrainConfig

        try:
            configs = [TrainConfig.from_dict(apply_overrides(c.to_dict(), sets)) for c in configs]
        except ValueError as e:
            raise typer.BadParameter(str(e))
    total_steps = sum(c.run.steps * len(c.run.seeds) for c in configs)
    est = _estimate_seconds(configs)
    if target == "fig1":  # the attacked runs branch from the clean one at attack_start
        inherited = 2 * configs[1].attack.attack_start * len(configs[0].run.seeds)
        est *= (total_steps - inherited) / total_steps
        total_steps -= inherited
    typer.echo(f"{target}: {len(configs)} runs, {total_steps:,} env steps in total; "
               f"estimated {_duration(est)} on this machine ({backend} backend, one run at a time)")
    if dry_run:
        return
    if target == "fig1":
        failures = _run_sweep_cli(configs[:1], out, backend, address, keep_branch_point=configs[1].attack.attack_start)
        failures += _run_sweep_cli(configs[1:], out, backend, address)
    else:
        failures = _run_sweep_cli(configs, out, backend, address)
    paths = make_report(out, report_dir)
    typer.echo(f"report: {len(paths)} files in {report_dir}")
    raise typer.Exit(code=1 if failures else 0)
