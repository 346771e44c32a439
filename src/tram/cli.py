"""The ``tram`` command line: ``envs``, ``train``, ``sweep``, ``reproduce``, ``report``, ``detect``, ``demo``.

Every command maps onto the Python API (``tram.train``, ``tram.report``), so what the CLI
does a script can do too.

Errors: a bad input raises :class:`tram.config.ConfigError` (validated once, in the config
layer); :func:`handle_errors` turns it into one line ``error: ...`` on stderr and exit code
2, without a traceback (``tram --debug ...`` or ``TRAM_DEBUG=1`` prints it). Other modules
register their own exception types and exit codes in :data:`ERROR_EXIT_CODES`.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, NoReturn, Optional

import typer
from typer.models import OptionInfo

from tram.validation import ConfigError, real_number

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="tram: training-time attacks (TRAM) on cooperative multi-agent RL.")

ERROR_EXIT_CODES: dict[type[BaseException], int] = {ConfigError: 2}
"""Exception type -> exit code for errors printed as one line (``error: <str(e)>``). The
most specific registered type of an exception wins; anything else is a bug and keeps its
traceback."""

ERROR_MESSAGES: dict[type[BaseException], Callable[[BaseException], str]] = {}
"""Optional exception type -> message function (default: ``str(e)``)."""

_debug = {"on": os.environ.get("TRAM_DEBUG", "") not in ("", "0")}


def _register_run_store_errors() -> None:
    """Run-store faults as one line and an exit code: 2 for a damaged or edited run file, 1
    when another process holds the run's lock or a write failed (the file is named; the
    last good checkpoint is kept), 130 for Ctrl-C (the message says where training stopped
    and that a rerun resumes)."""
    from tram.experiments import store

    ERROR_EXIT_CODES.update({store.CorruptRunError: 2, store.RunLockedError: 1, store.RunWriteError: 1,
                             KeyboardInterrupt: 130})
    ERROR_MESSAGES[KeyboardInterrupt] = lambda e: str(e) or "interrupted; rerun the same command to resume"


_register_run_store_errors()


def _registered(e: BaseException) -> type[BaseException] | None:
    for klass in type(e).__mro__:
        if klass in ERROR_EXIT_CODES:
            return klass
    return None


def handle_errors(fn):
    """Decorator for a command: a registered exception becomes ``error: <message>`` on
    stderr and its exit code (traceback only under ``--debug``)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised unless registered
            klass = _registered(e)
            if klass is None:
                raise
            if _debug["on"]:
                traceback.print_exc()
            message = ERROR_MESSAGES.get(klass, str)(e)
            typer.echo(f"error: {' '.join(str(message).split())}", err=True)
            raise typer.Exit(ERROR_EXIT_CODES[klass]) from None

    return wrapped


def fail(message: str) -> NoReturn:
    """Raises a :class:`ConfigError` with ``message`` (printed as ``error: ...``, exit 2)."""
    raise ConfigError(message)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error.")):
    """tram: training-time attacks (TRAM) on cooperative multi-agent RL."""
    if debug:
        _debug["on"] = True


OPTION_OF_KEY = {
    "env.name": "--env", "learner.name": "--learner", "attack.method": "--attack", "attack.f_a": "--fa",
    "attack.kl_u": "--kl", "attack.agent": "--attacked-agent", "attack.attack_at": "--attack-at",
    "attack.attack_start": "--attack-start", "run.steps": "--steps", "run.seeds": "--seeds",
    "run.eval_interval": "--eval-interval", "run.test_episodes": "--test-episodes",
}
"""Config key -> the ``tram train`` option that sets it (named in error messages)."""


def _name_option(e: ConfigError) -> ConfigError:
    """``e`` with its leading config key shown as ``--option (key)`` when an option sets it."""
    msg, key = str(e), getattr(e, "key", None)
    opt = OPTION_OF_KEY.get(key or "")
    if opt and msg.startswith(key):
        return ConfigError(f"{opt} ({key}){msg[len(key):]}", key)
    return e


def parse_steps(text: str, option: str = "--steps", lo: int = 1) -> int:
    """``"2e6"`` / ``"2000000"`` / ``"2_000_000"`` -> 2000000; a :class:`ConfigError` naming
    ``option`` for anything but a whole number >= ``lo``."""
    from tram.config import whole_number

    return whole_number(text, option, lo)


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """``"5"`` -> seeds 0..4; ``"0,3,7"`` -> those seeds (:func:`tram.config.parse_seeds`)."""
    from tram.config import parse_seeds as _parse

    return _parse(text, option)


def check_out_dir(path: Path, option: str = "--out", create: bool = True) -> Path:
    """Checks that ``path`` can be the output directory (and creates it when ``create``);
    returns it. Refuses an existing non-directory and a path that cannot be created or
    written (:class:`ConfigError` naming ``option``, the path and the reason)."""
    accepted = "accepted: a directory path you can write to"
    if path.exists() and not path.is_dir():
        fail(f"{option} {str(path)!r} is an existing file, not a directory; {accepted}")
    if not create:
        parent = path
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            fail(f"{option} {str(path)!r} cannot be created ({str(parent)!r} is not a writable directory); {accepted}")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        import tempfile

        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        fail(f"{option} {str(path)!r} cannot be created or written ({e.strerror or e}); {accepted}")
    return path


def check_backend(backend: str) -> str:
    """``backend`` if it is ``local`` or ``ray``; else a :class:`ConfigError`."""
    if backend not in ("local", "ray"):
        fail(f"--backend {backend!r} is not accepted; accepted: local, ray")
    return backend


def apply_overrides(cfg_dict: dict, sets: list[str]) -> dict:
    """:func:`tram.config.apply_overrides` (kept here for scripts that import it from the CLI)."""
    from tram.config import apply_overrides as _apply

    return _apply(cfg_dict, sets)


def build_config(env: str, learner: str, steps, seeds, attack: str, fa, kl, attacked_agent, eval_interval,
                 test_episodes, sets: list[str], attack_at: str | None = None, attack_start=None):
    """:func:`tram.config.build_train_config` from ``tram train``'s values (``None``: the
    config's default; numbers may be text such as ``"1e3"``); a bad value raises
    :class:`ConfigError` naming the option (``--fa (attack.f_a): ...``)."""
    from tram.config import build_train_config

    try:
        return build_train_config(env, learner, attack, steps=steps, seeds=seeds, f_a=fa, kl_u=kl,
                                  agent=attacked_agent, attack_at=attack_at, attack_start=attack_start,
                                  eval_interval=eval_interval, test_episodes=test_episodes, sets=sets)
    except ConfigError as e:
        raise _name_option(e) from None


class _LiveHelpOption(OptionInfo):
    """A ``typer.Option`` whose help text is computed each time the command is built, so it
    follows tables that can grow (the attack methods)."""

    help = property(lambda self: self._help_fn(), lambda self, value: None)


def _live_help_option(default, help_fn: Callable[[], str], *decls, **kwargs) -> OptionInfo:
    info = typer.Option(default, *decls, **kwargs)
    info.__class__ = _LiveHelpOption
    info._help_fn = help_fn
    return info


def _attack_help() -> str:
    from tram.attacks.methods import methods_help

    return f"Attack method (default none): {methods_help()}."


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
@handle_errors
def train(
    env: Optional[str] = typer.Option(None, help="Environment name (see `tram envs`); default 3m."),
    learner: Optional[str] = typer.Option(None, help="dop, coma or qmix; default dop."),
    steps: Optional[str] = typer.Option(None, help="Env steps per seed, e.g. 2e6 (the default)."),
    seeds: Optional[str] = typer.Option(None, help="Seed count (default 5) or list (0,3,7); all run in one "
                                        "program."),
    attack: Optional[str] = _live_help_option(None, _attack_help),
    fa: Optional[str] = typer.Option(None, "--fa", help="Attack frequency f_A in [0, 1]; default 1."),
    kl: Optional[str] = typer.Option(None, "--kl", help="KL budget KL_U >= 0; default 6 (methods with a KL "
                                     "budget)."),
    attacked_agent: Optional[str] = typer.Option(None, help="Poisoned agent: index or unit type (zealot, "
                                                 "colossus...); default 0. Needs --attack."),
    attack_at: Optional[str] = typer.Option(None, help="Where the attack acts: train (default), test or both."),
    attack_start: Optional[str] = typer.Option(None, help="Env step from which the attack acts, e.g. 1e6; "
                                               "default 0."),
    eval_interval: Optional[str] = typer.Option(None, help="Env steps between greedy evaluations, e.g. 1e4 "
                                                "(the default)."),
    test_episodes: Optional[str] = typer.Option(None, help="Greedy test episodes per evaluation; default 32."),
    out: Path = typer.Option(Path("runs"), help="Run store directory."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any field: learner.critic_lr=5e-4."),
    restart: bool = typer.Option(False, help="Ignore a checkpoint and train from scratch."),
    no_progress: bool = typer.Option(False, help="No progress bar."),
    checkpoint_every: str = typer.Option("600", help="Seconds between checkpoints (resume point if killed)."),
    wait: bool = typer.Option(False, help="If another process is training this run, wait for it "
                              "(default: say which process and exit 1)."),
):
    """Train a learner (optionally under a TRAM attack) on all seeds at once; writes a run directory."""
    from tram.config import parse_seconds

    cfg = build_config(env, learner, steps, seeds, attack, fa, kl, attacked_agent, eval_interval, test_episodes,
                       set_ or [], attack_at, attack_start)
    every = parse_seconds(checkpoint_every, "--checkpoint-every")
    check_out_dir(out)
    from tram.config import config_warnings
    from tram.experiments.runner import train as run_train

    for w in config_warnings(cfg):
        typer.echo(f"warning: {w}", err=True)

    run_dir = run_train(cfg, out, progress=not no_progress, restart=restart, checkpoint_every_s=every, wait=wait)
    typer.echo(str(run_dir))


def check_runs_dir(runs: Path) -> list[Path]:
    """The run directories under ``runs``; a :class:`ConfigError` if ``runs`` is missing, not
    a directory, or holds no run."""
    from tram.experiments import store

    accepted = "accepted: a run store directory written by `tram train` or `tram sweep`"
    if not runs.exists():
        fail(f"runs {str(runs)!r} does not exist; {accepted}")
    if not runs.is_dir():
        fail(f"runs {str(runs)!r} is not a directory; {accepted}")
    found = store.find_runs(runs)
    if not found:
        fail(f"runs {str(runs)!r} holds no run directory (no config.json below it); {accepted}")
    return found


@app.command()
@handle_errors
def report(
    runs: Path = typer.Argument(Path("runs"), help="Run store directory (read only)."),
    out: Path = typer.Option(Path("report"), help="Where figures and tables go."),
    fa: str = typer.Option("1", "--fa", help="f_A of the attacked runs the learning-curve figures and "
                                             "Table 1 show (default 1, the paper's main budget)."),
    kl: str = typer.Option("6", "--kl", help="KL_U of the attacked runs the learning-curve figures and "
                                             "Table 1 show (default 6)."),
):
    """Figures and tables (curves with CIs, Tables 1-3, Fig. 4, marl-eval JSON) from the store."""
    f_a, kl_u = real_number(fa, "--fa", 0.0, 1.0), real_number(kl, "--kl", 0.0)
    check_runs_dir(runs)
    check_out_dir(out)
    from tram.report import make_report

    paths = make_report(runs, out, f_a=f_a, kl_u=kl_u)
    typer.echo(f"wrote {len(paths)} files to {out} (index: {out / 'index.md'})")


@app.command()
@handle_errors
def detect(
    runs: Path = typer.Argument(..., help="Run store directory (read only)."),
    out: Path = typer.Option(Path("detection"), help="Where the table and the figure go."),
    fpr: float = typer.Option(0.01, "--fpr", help="False-alarm rate the thresholds are calibrated at."),
    drift: float = typer.Option(0.5, "--drift", help="CUSUM drift k (standard deviations per step)."),
    from_step: Optional[str] = typer.Option(None, "--from-step",
                                            help="Use episodes that began at or after this env step "
                                                 "(default: each run's attack.attack_start)."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples (over seeds) for the AUROC CI."),
    include_partial: bool = typer.Option(False, "--include-partial", help="Also use unfinished runs."),
):
    """Can the team detect the poisoned agent? AUROC, detection rate at 1% false alarms and CUSUM
    delay per run, and the damage-detectability figure (docs/detection.md)."""
    check_runs_dir(runs)
    check_out_dir(out)
    from tram.detect.report import make_detection

    step = None if from_step is None else parse_steps(from_step, "--from-step", lo=0)
    paths, notes = make_detection(runs, out, fpr=fpr, drift=drift, n_boot=n_boot, from_step=step,
                                  include_partial=include_partial, log=lambda m: typer.echo(m, err=True))
    if not paths:
        fail(f"runs {str(runs)!r}: no run has detection_samples.npz (runs trained before tram recorded "
             f"detection scores cannot be used; retrain them)")
    typer.echo(f"wrote {len(paths)} files to {out} (table: {out / 'detection.md'})")


def main(argv: Optional[list[str]] = None):  # pragma: no cover - the console script
    """The ``tram`` console script: ``--debug`` is accepted anywhere on the command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    cut = args.index("--") if "--" in args else len(args)
    if "--debug" in args[:cut]:
        args = ["--debug"] + [a for i, a in enumerate(args) if not (a == "--debug" and i < cut)]
    app(args=args, prog_name="tram")



PRESETS_DIR = Path(__file__).parent / "presets"
PAPER_PRESETS = ("paper_fig2", "paper_fig3", "paper_budgets", "paper_budgets_kl", "paper_appendix_d",
                 "paper_large_maps")
SMAX_LITE_PARTS = {
    "p1": ("smax_lite_p1",),                        # DOP on 3m, four methods, 3 seeds, 1M steps
    "p2": ("smax_lite_p2",),                        # COMA on 3m and 2s3z (Fig. 9), 5 seeds
    "p3": ("smax_lite_p3",),                        # DOP on 2s_vs_1sc, 3 seeds
    "p4": (),                                       # Fig. 1, QMIX on 3m: two steps, see P4 below
    "p5": ("smax_lite_p5_fa", "smax_lite_p5_kl"),   # COMA budget curves on 3m (Figs. 5/6, Tables 2/3)
}
"""The cells of ``tram reproduce smax-lite`` by part, in priority order. The preset parts run
as one sweep in the order given; part P4 (Fig. 1 with QMIX, :func:`smax_lite_p4`) runs after
them, since its second step depends on its first."""
SMAX_LITE_OUT = Path("results/smax-lite")
P4_MEASURE = {"env": "3m", "steps": 200_000, "seeds": (0, 1, 2), "eval_interval": 10_000, "test_episodes": 32}
"""P4's first step: clean QMIX on 3m (with :data:`FIG1_SETS`), long enough to see when it
reaches :data:`P4_WIN_RATE` (measured with 2 seeds: 30k to 60k steps; 0.75 at 200k)."""
FIG1_SETS = ("env.normalise_state=True",)
"""Settings of every Fig. 1 (QMIX) run on a SMAX map: the SMAX world state scaled as SMAC
scales its state (``normalise_state``, :meth:`tram.envs.smax.SmaxEnv.normalised_world_state`).
With JaxMARL's raw world state (positions up to 32) QMIX does not learn 3m: TD loss 2.9 to
14.6 and test win rate 0.0 after 730k steps, against TD loss < 0.02 and a win rate of 0.56
at 30k steps with it (``docs/learners.md``, "QMIX on SMAX")."""
P4_WIN_RATE = 0.6


def first_evaluation_reaching(run, metric: str, threshold: float, eval_interval: int) -> int | None:
    """The target env step (``k * eval_interval``) of the first evaluation ``k`` at which the
    mean over seeds of ``metric`` is at least ``threshold``, or None if none is.

    Evaluation ``k`` of every seed is the one at target ``k * eval_interval`` (each seed stops
    at the first iteration past the target, so the recorded ``env_steps`` differ slightly
    between seeds; the target is what ``--attack-start`` takes).
    """
    import numpy as np

    rows = [run.seed_rows(s)[metric] for s in run.seeds]
    n = min(len(r) for r in rows)
    if n == 0:
        return None
    mean = np.mean(np.stack([r[:n] for r in rows]), axis=0)
    hits = np.flatnonzero(mean >= threshold)
    return None if hits.size == 0 else int(hits[0]) * eval_interval


def smax_lite_p4(out: Path, backend: str, address: Optional[str], dry_run: bool) -> int:
    """Part P4 of smax-lite (the paper's Fig. 1 on SMAX): (1) clean QMIX on 3m
    (:data:`P4_MEASURE`); (2) from the first evaluation at which its mean test win rate reaches
    :data:`P4_WIN_RATE` (step ``S``), ``reproduce fig1``'s three runs with ``--attack-start S``
    and ``--steps 2S`` (as long again), the same seeds. Both steps skip finished runs, so a
    rerun continues. Returns the number of failed runs."""
    from tram.config import build_train_config
    from tram.experiments import store

    m = P4_MEASURE
    measure = build_train_config(m["env"], "qmix", "none", steps=m["steps"], seeds=m["seeds"],
                                 eval_interval=m["eval_interval"], test_episodes=m["test_episodes"], sets=FIG1_SETS)
    if dry_run:
        typer.echo(f"p4: clean QMIX on {m['env']}, {len(m['seeds'])} seeds, {m['steps']:,} steps (estimated "
                   f"{_duration(_estimate_seconds([measure]))}), then Fig. 1's three runs from the step S at which "
                   f"its mean test win rate reaches {P4_WIN_RATE}, for 2S steps")
        return 0
    failures = _run_sweep_cli([measure], out, backend, address)
    if failures:
        return failures
    run = store.load_run(out / store.run_name(measure.to_dict()))
    start = first_evaluation_reaching(run, "test_win_rate", P4_WIN_RATE, m["eval_interval"])
    if start is None or start == 0:
        typer.echo(f"p4: clean QMIX's mean test win rate never reached {P4_WIN_RATE} in {m['steps']:,} steps "
                   f"({run.path}); Fig. 1's runs are not started")
        return 0
    typer.echo(f"p4: clean QMIX reaches a mean test win rate of {P4_WIN_RATE} at {start:,} steps; "
               f"Fig. 1 runs with --attack-start {start} --steps {2 * start}")
    configs = fig1_configs(m["env"], 2 * start, m["seeds"], start, 1.0)
    failures = _run_sweep_cli(configs[:1], out, backend, address, keep_branch_point=start)
    return failures + _run_sweep_cli(configs[1:], out, backend, address)


def sweep_file(name_or_path: str) -> Path:
    """A sweep file path, or the name of a preset in ``tram/presets`` (``demo``, ``paper_fig2``...)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    preset = PRESETS_DIR / f"{name_or_path}.yaml"
    if preset.exists():
        return preset
    names = sorted(x.stem for x in PRESETS_DIR.glob("*.yaml"))
    fail(f"sweep file {name_or_path!r} does not exist and is not a preset; accepted: a YAML file or a preset: "
         f"{', '.join(names)}")


def _run_sweep_cli(configs, out: Path, backend: str, address: Optional[str], checkpoint_every: float = 600.0,
                   keep_branch_point: Optional[int] = None) -> int:
    from tram.experiments.sweep import run_sweep

    results = run_sweep(configs, out, backend=backend, address=address, log=typer.echo,
                        checkpoint_every_s=checkpoint_every, keep_branch_point=keep_branch_point)
    return sum(1 for r in results if r.error)


@app.command()
@handle_errors
def sweep(
    file: str = typer.Argument(..., help="Sweep YAML file, or a preset name (demo, paper_fig2, ...)."),
    out: Path = typer.Option(Path("runs"), help="Run store directory."),
    backend: str = typer.Option("local", help="local (in-process) or ray."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local one)."),
    dry_run: bool = typer.Option(False, help="Only list the cells (every cell is validated first)."),
    checkpoint_every: str = typer.Option("600", help="Seconds between checkpoints of a running cell."),
):
    """Run a grid of (env, learner, method, f_A, KL_U) cells; finished cells are skipped."""
    from tram.config import parse_seconds
    from tram.experiments.sweep import load_sweep

    check_backend(backend)
    every = parse_seconds(checkpoint_every, "--checkpoint-every")
    configs = load_sweep(sweep_file(file))  # every cell validated here, before anything runs
    check_out_dir(out, create=not dry_run)
    if dry_run:
        for c in configs:
            critic = f" critic={c.attack.critic}" if c.attack.critic != "learner" else ""
            typer.echo(f"{c.env.name} {c.learner.name} {c.attack.method} f_a={c.attack.f_a:g} kl_u={c.attack.kl_u:g}"
                       f"{critic} seeds={len(c.run.seeds)} steps={c.run.steps:,}")
        return
    failures = _run_sweep_cli(configs, out, backend, address, every)
    raise typer.Exit(code=1 if failures else 0)


def compare_configs(env, learner, methods: list[str], steps, seeds, fa, kl, attacked_agent, attack_at,
                    attack_start, eval_interval, test_episodes, sets: list[str]):
    """One config per report key of ``tram compare`` (``var``, ``none``, ``worst_q_test``,
    ``var_surrogate``...; :func:`tram.attacks.methods.series_parts`), named and validated as
    ``tram train`` with the same options would (so both find the same runs): the budget, the
    attacked agent, ``--attack-at`` and ``--attack-start`` go to the attacked methods only,
    ``--kl`` only to methods with a KL budget; a key that fixes where the attack acts
    (``worst_q_test``) or its critic (``var_surrogate``) sets that field."""
    from tram.attacks.methods import ATTACK_METHODS, CLEAN, series_parts

    configs = []
    for key in methods:
        method, at, critic = (key, None, None) if key in ATTACK_METHODS else series_parts(key)
        attacked = method != CLEAN
        if at is not None and attack_at is not None and at != attack_at:
            fail(f"--methods {key!r} acts at {at!r} but --attack-at is {attack_at!r}; accepted: leave --attack-at "
                 f"out, or name the method without the suffix")
        cell_sets = list(sets) + ([f"attack.critic={critic!r}"] if critic else [])
        configs.append(build_config(env, learner, steps, seeds, method, fa if attacked else None,
                                    kl if attacked and ATTACK_METHODS[method].has_kl_budget else None,
                                    attacked_agent if attacked else None, eval_interval, test_episodes, cell_sets,
                                    (at or attack_at) if attacked else None, attack_start if attacked else None))
    return configs


def parse_methods(text: str) -> list[str]:
    """``"var,random"`` -> ``["var", "random"]``: methods of the table (``none`` is the clean
    run) or report keys (``worst_q_test``, ``var_surrogate``); a :class:`ConfigError` naming
    ``--methods`` for fewer than two distinct ones or an unknown one."""
    from tram.attacks.methods import ATTACK_METHODS, series_keys

    keys = list(ATTACK_METHODS) + [k for k in series_keys() if k not in ATTACK_METHODS]
    accepted = f"accepted: two or more of {', '.join(keys)}, comma-separated, e.g. var,random"
    methods = [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        if m not in keys:
            fail(f"--methods: {m!r} is not an attack method; {accepted}")
    if len(methods) < 2 or len(set(methods)) != len(methods):
        fail(f"--methods {text!r} does not name two or more distinct methods; {accepted}")
    return methods


@app.command()
@handle_errors
def compare(
    methods: str = typer.Option(..., "--methods", help="Two or more methods, comma-separated: e.g. var,random, "
                                "none,var,jbased,random, or report keys such as worst_q_test,worst_q_both or "
                                "var,var_surrogate."),
    env: Optional[str] = typer.Option(None, help="Environment name (see `tram envs`); default 3m."),
    learner: Optional[str] = typer.Option(None, help="dop, coma or qmix; default dop."),
    fa: Optional[str] = typer.Option(None, "--fa", help="Attack frequency f_A of the attacked methods; default 1."),
    kl: Optional[str] = typer.Option(None, "--kl", help="KL budget KL_U of the methods that have one; default 6."),
    attacked_agent: Optional[str] = typer.Option(None, help="Poisoned agent: index or unit type; default 0."),
    attack_at: Optional[str] = typer.Option(None, help="Where the attacks act: train (default), test or both."),
    attack_start: Optional[str] = typer.Option(None, help="Env step from which the attacks act; default 0."),
    steps: Optional[str] = typer.Option(None, help="Env steps per seed, e.g. 1e6 (default 2e6)."),
    seeds: Optional[str] = typer.Option(None, help="Seed count (default 5) or list (0,3,7)."),
    eval_interval: Optional[str] = typer.Option(None, help="Env steps between evaluations (default 1e4)."),
    test_episodes: Optional[str] = typer.Option(None, help="Greedy test episodes per evaluation; default 32."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any field of every run: "
                                             "learner.critic_lr=5e-4."),
    metric: str = typer.Option("auto", help="test_win_rate, test_return or test_success; auto: the win rate on "
                               "SMAX, the return on the grid tasks."),
    window: Optional[str] = typer.Option(None, help="Env steps at the end of each curve that the compared mean "
                                         "covers (default: the last 10% of --steps, at least one evaluation)."),
    out: Path = typer.Option(Path("runs"), help="Run store directory (finished runs are reused)."),
    backend: str = typer.Option("local", help="local (in-process) or ray."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (default: start a local one)."),
    dry_run: bool = typer.Option(False, help="Only list the runs and which are already finished."),
):
    """Does one attack hurt the team more than another? Trains the methods' runs the store
    lacks (one cell each), then prints each method's test metric and stealth with 95% CIs over
    seeds and, per pair, the difference with a Welch 95% CI and a verdict."""
    from tram.attacks.methods import ATTACK_METHODS, CLEAN
    from tram.experiments import store
    from tram.report.compare import PERFORMANCE_METRICS, compare_runs, default_metric, format_comparison

    names = parse_methods(methods)
    check_backend(backend)
    if metric != "auto" and metric not in PERFORMANCE_METRICS:
        fail(f"--metric {metric!r} is not accepted; accepted: auto, {', '.join(PERFORMANCE_METRICS)}")
    configs = compare_configs(env, learner, names, steps, seeds, fa, kl, attacked_agent, attack_at, attack_start,
                              eval_interval, test_episodes, set_ or [])
    run_steps, interval = configs[0].run.steps, configs[0].run.eval_interval
    span = max(interval, run_steps // 10) if window is None else parse_steps(window, "--window")
    check_out_dir(out, create=not dry_run)
    dirs = [out / store.run_name(c.to_dict()) for c in configs]
    if dry_run:
        for m, d in zip(names, dirs):
            typer.echo(f"{m}: {d} ({store.run_status(d)})")
        todo = [c for c, d in zip(configs, dirs) if store.run_status(d) != "done"]
        typer.echo(f"{len(todo)} of {len(configs)} run(s) to train (estimated {_duration(_estimate_seconds(todo))})"
                   if todo else "every run is finished: the comparison needs no training")
        return
    failures = _run_sweep_cli(configs, out, backend, address)
    if failures:
        fail(f"{failures} run(s) failed (listed above); nothing compared")
    runs = [store.load_run(d) for d in dirs]
    if metric == "auto":
        metric = default_metric(runs)
    c = configs[0]
    # every attacked method got the same --fa and (where it has a KL budget) --kl
    attacked = [x.attack for x in configs if x.attack.method != CLEAN]
    budgeted = [a for a in attacked if ATTACK_METHODS[a.method].has_kl_budget]
    budget = (f", f_A = {attacked[0].f_a:g}" if attacked else "") + (f", KL_U = {budgeted[0].kl_u:g}" if budgeted else "")
    typer.echo(f"\n{c.learner.name.upper()} on {c.env.name}{budget}, {len(c.run.seeds)} seed(s) x "
               f"{run_steps:,} env steps (runs in {out}):\n")
    try:
        typer.echo(format_comparison(compare_runs(runs, metric, span)))
    except ValueError as e:
        fail(f"--metric: {e}")


@app.command()
@handle_errors
def demo(out: Path = typer.Option(Path("demo"), help="Output directory (runs/ and the report).")):
    """A small reproduction on the Gather grid task: clean, random, J-based and var-based TRAM,
    2 seeds, then the figure and the stealth table in OUT."""
    check_out_dir(out)
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
    (``presets/throughput.json``: training env steps/s summed over 5 seeds on 3m in the preset's
    ``seed_mode``, per learner; ``attack_cost``: time per env step under an attack relative to clean, per learner
    and method, a measured learner's largest cost standing in for its unmeasured methods).
    Larger maps are scaled by the critic's work, which grows with agents x (observation +
    state) features; smaller maps are not made faster than the reference: a step's fixed
    costs (the environment, the recurrent actors, the per-episode updates) dominate there
    (DOP on 2s_vs_1sc, 2 agents and a third of 3m's features, trained at about the speed of
    DOP on 3m in the smax-lite runs, not 2.8 times faster). A rough guide, not a promise."""
    import json

    from tram.envs import make_env

    measured = json.loads((PRESETS_DIR / "throughput.json").read_text())
    ref = measured["reference_env"]
    total = 0.0
    for c in configs:
        spec = make_env(c.env.name).spec
        sps = measured["steps_per_s"].get(c.learner.name, measured["steps_per_s"]["dop"])
        costs = measured.get("attack_cost", {}).get(c.learner.name, {})
        if c.attack.method != "none":
            sps /= costs.get(c.attack.method, max(costs.values(), default=1.0))
        work = spec.num_agents * (spec.obs_dim + spec.state_dim)
        ref_work = ref["num_agents"] * (ref["obs_dim"] + ref["state_dim"])
        total += c.run.steps * len(c.run.seeds) / (sps * ref_work / max(work, ref_work))
    return total


def fig1_configs(env: str, steps: int, seeds: tuple[int, ...], attack_start: int, fa: float, sets=()):
    """Fig. 1 of the paper: QMIX trained clean; from ``attack_start`` on, the poisoned agent
    takes its worst-Q action (deploy-time attack) at test time only, or at training and test
    time. Returns ``[clean, test-only, train-and-test]``. The runs are deterministic and the
    attack is gated by ``attack_start``, so all three share their first ``attack_start``
    steps bit for bit (tested in tests/test_qmix.py): `reproduce fig1` trains the clean run
    first, keeping its state at ``attack_start``, and starts both attacked runs from it
    (:func:`tram.experiments.runner.train`, ``keep_branch_point``). ``sets`` are
    ``section.field=value`` overrides for all three, applied after :data:`FIG1_SETS` (SMAX
    maps only; the grid tasks have no state option)."""
    from tram.config import build_train_config, env_spec

    if not 0 < attack_start < steps:
        fail(f"--attack-start {attack_start:,} is not accepted; accepted: a step between 0 and --steps ({steps:,}), "
             f"exclusive, so that the attack starts during the run")
    smax = env_spec(env).family == "smax"
    run = dict(steps=steps, seeds=seeds, eval_interval=max(steps // 100, 1000),
               sets=(list(FIG1_SETS) if smax else []) + list(sets))
    return [build_train_config(env, "qmix", "none", **run),
            build_train_config(env, "qmix", "worst_q", f_a=fa, attack_at="test", attack_start=attack_start, **run),
            build_train_config(env, "qmix", "worst_q", f_a=fa, attack_at="both", attack_start=attack_start, **run)]


def _maps_from_args(maps: Optional[list[str]], extra: list[str]) -> list[str]:
    """``--maps`` values, comma lists split (``--maps 3m,2s3z``), plus the extra words of the
    README form ``--maps 3m 2s3z`` (click gives those as positional arguments)."""
    out: list[str] = []
    for item in list(maps or []) + list(extra):
        out.extend(x.strip() for x in item.split(",") if x.strip())
    return out


@app.command()
@handle_errors
def reproduce(
    target: str = typer.Argument("paper", help="paper (Figs. 2, 3, 5, 6, App. D), fig1 (QMIX, deploy- vs "
                                 "training-time attack), smax-lite (the issue-sized SMAX subset, "
                                 "results/smax-lite) or demo."),
    extra: Optional[list[str]] = typer.Argument(None, hidden=True, help="More --maps values (--maps 3m 2s3z)."),
    maps: Optional[list[str]] = typer.Option(None, "--maps", help="Restrict to these environments: "
                                             "--maps 3m 2s3z, --maps 3m,2s3z or --maps 3m --maps 2s3z."),
    steps: Optional[str] = typer.Option(None, help="Env steps per seed (default: the paper's 2e6)."),
    seeds: Optional[str] = typer.Option(None, help="Seed count or list (default 5)."),
    out: Path = typer.Option(Path("runs"), help="Run store directory."),
    report_dir: Path = typer.Option(Path("report"), "--report", help="Where the report goes."),
    backend: str = typer.Option("local", help="local or ray."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address."),
    dry_run: bool = typer.Option(False, help="Print the plan and the time estimate only."),
    map_: str = typer.Option("3m", "--map", help="fig1: the SMAX map (the paper does not name it)."),
    attack_start: str = typer.Option("1e6", help="fig1: env step at which the deploy-time attack starts."),
    fa: str = typer.Option("1.0", "--fa", help="fig1: probability that the poisoned agent takes its worst-Q action."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="section.field=value override for every run "
                                             "(e.g. learner.num_envs=8)."),
    parts: Optional[str] = typer.Option(None, "--parts", help="smax-lite: the parts to run, in order, e.g. p2,p1 "
                                        f"(default: {','.join(SMAX_LITE_PARTS)})."),
):
    """Run the paper's experiment grid (or Fig. 1's three QMIX runs, or the smax-lite subset of
    issue-sized runs whose results are committed under results/smax-lite), then the report."""
    import yaml

    from tram.config import RunConfig, real_number
    from tram.envs import env_names
    from tram.experiments.sweep import expand_grid

    presets = {"paper": PAPER_PRESETS, "demo": ("demo",), "fig1": (), "smax-lite": ()}
    if target == "smax-lite":
        chosen = [p.strip().lower() for p in (parts or ",".join(SMAX_LITE_PARTS)).split(",") if p.strip()]
        for p in chosen:
            if p not in SMAX_LITE_PARTS:
                fail(f"--parts {p!r} is not a part of smax-lite; accepted: {', '.join(SMAX_LITE_PARTS)}")
        presets["smax-lite"] = tuple(dict.fromkeys(n for p in chosen for n in SMAX_LITE_PARTS[p]))
        if out == Path("runs"):
            out = SMAX_LITE_OUT / "runs"
        if report_dir == Path("report"):
            report_dir = SMAX_LITE_OUT / "report"
    elif parts is not None:
        fail(f"--parts {parts!r} applies to smax-lite only, not to {target!r}")
    extra = list(extra or [])
    if target not in presets and maps and target in env_names():
        # `tram reproduce --maps 3m 2s3z`: click took the second map for the target
        extra, target = [target] + extra, "paper"
    if target not in presets:
        fail(f"reproduce target {target!r} is not accepted; accepted: {', '.join(presets)}")
    if extra and not maps:
        fail(f"unexpected argument(s) {' '.join(extra)}; only --maps takes several values (--maps 3m 2s3z)")
    check_backend(backend)
    wanted = _maps_from_args(maps, extra)
    if target == "fig1" and wanted:
        fail(f"--maps {' '.join(wanted)} does not apply to fig1, which trains on one map; accepted: --map NAME "
             f"(default 3m)")
    steps_n = parse_steps(steps) if steps is not None else None
    seeds_t = parse_seeds(seeds) if seeds is not None else None
    specs = {name: yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text()) for name in presets[target]}
    grid_maps = list(dict.fromkeys(e for spec in specs.values() for e in spec["envs"]))
    for m in wanted:
        if m not in grid_maps:
            why = "is not in the" if m in env_names() else "is not an environment (see `tram envs`) of the"
            fail(f"--maps {m!r} {why} {target} grid; accepted: {', '.join(grid_maps)}")
    configs, seen = [], set()
    if target == "fig1":
        configs = fig1_configs(map_, steps_n or RunConfig().steps, seeds_t or RunConfig().seeds,
                               parse_steps(attack_start, "--attack-start"), real_number(fa, "--fa", 0.0, 1.0),
                               sets or [])
    for name, spec in specs.items():
        if wanted:
            spec["envs"] = [e for e in spec["envs"] if e in wanted]
            if not spec["envs"]:
                continue
        if steps_n is not None:
            spec["steps"] = steps_n
        if seeds_t is not None:
            spec["seeds"] = list(seeds_t)
        for c in expand_grid(spec, sets or []):
            if c.to_json() not in seen:
                seen.add(c.to_json())
                configs.append(c)
    check_out_dir(out, create=not dry_run)
    check_out_dir(report_dir, "--report", create=not dry_run)
    total_steps = sum(c.run.steps * len(c.run.seeds) for c in configs)
    est = _estimate_seconds(configs)
    if target == "fig1":  # the attacked runs branch from the clean one at attack_start
        inherited = 2 * configs[1].attack.attack_start * len(configs[0].run.seeds)
        est *= (total_steps - inherited) / total_steps
        total_steps -= inherited
    typer.echo(f"{target}: {len(configs)} runs, {total_steps:,} env steps in total; "
               f"estimated {_duration(est)} on this machine ({backend} backend, one run at a time)")
    with_p4 = target == "smax-lite" and "p4" in chosen
    if dry_run:
        if with_p4:
            smax_lite_p4(out, backend, address, dry_run=True)
        return
    if target == "fig1":
        failures = _run_sweep_cli(configs[:1], out, backend, address, keep_branch_point=configs[1].attack.attack_start)
        failures += _run_sweep_cli(configs[1:], out, backend, address)
    else:
        failures = _run_sweep_cli(configs, out, backend, address) if configs else 0
    if with_p4:
        failures += smax_lite_p4(out, backend, address, dry_run=False)
    from tram.report import make_report

    paths = make_report(out, report_dir)
    typer.echo(f"report: {len(paths)} files in {report_dir}")
    raise typer.Exit(code=1 if failures else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
