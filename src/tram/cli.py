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
                 kl: float, attacked_agent: str, eval_interval: int, test_episodes: int, sets: list[str]):
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
        attack=AttackConfig(method=attack, f_a=fa, kl_u=kl, agent=agent),
        run=RunConfig(steps=steps, seeds=seeds, eval_interval=eval_interval, test_episodes=test_episodes),
    )
    return TrainConfig.from_dict(apply_overrides(base.to_dict(), sets))


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
    learner: str = typer.Option("dop", help="dop or coma."),
    steps: str = typer.Option("2e6", help="Env steps per seed, e.g. 2e6."),
    seeds: str = typer.Option("5", help="Seed count (5) or list (0,3,7); all run in one program."),
    attack: str = typer.Option("none", help="none, random, var or jbased."),
    fa: float = typer.Option(1.0, "--fa", help="Attack frequency f_A in [0, 1]."),
    kl: float = typer.Option(6.0, "--kl", help="KL budget KL_U >= 0."),
    attacked_agent: str = typer.Option("0", help="Poisoned agent: index or unit type (zealot, colossus...)."),
    eval_interval: int = typer.Option(10_000, help="Env steps between greedy evaluations."),
    test_episodes: int = typer.Option(32, help="Greedy test episodes per evaluation."),
    out: Path = typer.Option(Path("runs"), help="Run store directory."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any field: learner.critic_lr=5e-4."),
    restart: bool = typer.Option(False, help="Ignore a checkpoint and train from scratch."),
    no_progress: bool = typer.Option(False, help="No progress bar."),
):
    """Train a learner (optionally under a TRAM attack) on all seeds at once; writes a run directory."""
    from tram.experiments.runner import train as run_train

    try:
        cfg = build_config(env, learner, parse_steps(steps), parse_seeds(seeds), attack, fa, kl, attacked_agent,
                           eval_interval, test_episodes, set_ or [])
    except (ValueError, TypeError) as e:
        raise typer.BadParameter(str(e))
    run_dir = run_train(cfg, out, progress=not no_progress, restart=restart)
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
