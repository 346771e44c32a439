"""Sweeps: a grid of (environment, learner, attack method, f_A, KL_U) cells, every seed of a
cell trained together in one program, run in-process (default) or as Ray tasks.

A sweep file (YAML) holds these keys (lists may be scalars)::

    envs: [3m, 2s3z]            # required
    learners: [dop]             # default [dop]
    methods: [none, var, jbased, random]   # default: none and the paper's methods with a KL budget
    f_a: [1.0]                  # default [1.0]; ignored for method none
    kl_u: [6.0]                 # default [6.0]; ignored for methods without a KL budget
    critics: [learner, surrogate]   # default [learner]; attack.critic, for var and jbased (others: learner)
    seeds: 5                    # a count (seeds 0..4) or a list of seeds
    steps: 2e6
    eval_interval: 10000
    test_episodes: 32
    attacked_agent: 0           # index or unit type, or a map env -> agent
    set: {learner.critic_lr: 1e-4}   # any TrainConfig field, as `tram train --set`

Methods are the names of :data:`tram.attacks.methods.ATTACK_METHODS`. A clean cell (method
``none``) does not depend on f_A or KL_U, so the grid holds it once per (env, learner); a
method without a KL budget (``worst_q``) holds KL_U at its default, once per f_A; ``critics``
(``attack.critic``, black-box TRAM) applies to the methods of
:data:`tram.attacks.methods.SURROGATE_METHODS`, the others keep the learner's critic. Unset keys
take the config defaults (:func:`tram.config.build_train_config` builds every cell). Finished cells are skipped (the run store knows them), a failing cell
is reported and the sweep goes on, and the failures are listed at the end.

Compiled programs are shared through JAX's persistent compilation cache
(:func:`tram.experiments.compile_cache.enable_compile_cache`): cells whose programs are the same
(e.g. the same cell at other ``steps`` or other seed values, a rerun, another Ray worker on
the same machine type) load the compiled program instead of compiling it (DOP on Gather:
18 s -> 3.5 s for the first evaluation window). Cells that differ in the attack method,
f_A or KL_U compile their own program: these values are constants of the program, and
compiling one takes 20-25 s against the tens of minutes a paper-scale cell trains.
"""

from __future__ import annotations

import itertools
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from tram.attacks.methods import ATTACK_METHODS, CLEAN, CRITICS, SURROGATE_METHODS, attack_method
from tram.attacks.perturb import AttackConfig
from tram.config import ConfigError, RunConfig, TrainConfig, build_train_config, parse_seeds, real_number, whole_number

SWEEP_KEYS = {
    "envs": "list of environment names (see `tram envs`)",
    "learners": "list of learners: dop, coma",
    "methods": f"list of attack methods: {', '.join(ATTACK_METHODS)}",
    "f_a": "list of attack frequencies in [0, 1]",
    "kl_u": "list of KL budgets >= 0",
    "critics": f"list of attack.critic values: {', '.join(CRITICS)} (surrogate applies to "
               f"{', '.join(SURROGATE_METHODS)}; other methods keep the learner's critic)",
    "seeds": "a seed count or a list of seeds",
    "steps": "env steps per seed, e.g. 2e6",
    "eval_interval": "env steps between evaluations",
    "test_episodes": "greedy test episodes per evaluation",
    "attacked_agent": "index or unit type, or a map env -> agent",
    "set": "map of section.field -> value overrides",
}


def default_methods() -> tuple[str, ...]:
    """The ``methods`` of a sweep file that gives none: ``none`` and every method of the
    paper in the table with a KL budget (the paper's grid: var, jbased, random), in table
    order. Methods beyond the paper (``AttackMethod.paper`` False, e.g. ``combined``) run
    only when the file names them."""
    return (CLEAN,) + tuple(n for n, m in ATTACK_METHODS.items() if m.has_kl_budget and m.paper)


class SweepError(ConfigError):
    """A sweep file or grid is invalid; the message names the key and what is accepted."""


def _as_list(value, key: str) -> list:
    if isinstance(value, (list, tuple)):
        if not value:
            raise SweepError(f"sweep key {key!r} is an empty list; give at least one value ({SWEEP_KEYS[key]})")
        return list(value)
    return [value]


def _number(value, key: str) -> float:
    try:
        return real_number(value, f"sweep key {key!r}")
    except ConfigError as e:
        raise SweepError(f"{e} ({SWEEP_KEYS[key]})", key) from None


def _whole(value, key: str) -> int:
    try:
        return whole_number(value, f"sweep key {key!r}")
    except ConfigError as e:
        raise SweepError(str(e), key) from None


def expand_grid(spec: dict[str, Any], sets: list[str] = ()) -> list[TrainConfig]:
    """Expands a sweep spec (the parsed YAML) into validated, de-duplicated configs; ``sets``
    (``section.field=value`` texts) apply to every cell after the spec's ``set``."""
    from tram.learners import LEARNER_CONFIGS

    if not isinstance(spec, dict):
        raise SweepError(f"a sweep file must be a mapping of keys ({', '.join(SWEEP_KEYS)}), got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"unknown sweep key(s) {', '.join(map(repr, unknown))}; accepted: {', '.join(SWEEP_KEYS)}")
    if "envs" not in spec:
        raise SweepError(f"sweep key 'envs' is required ({SWEEP_KEYS['envs']})")
    attack_default, run_default = AttackConfig(), RunConfig()
    envs = [str(e) for e in _as_list(spec["envs"], "envs")]
    learners = [str(x) for x in _as_list(spec.get("learners", ["dop"]), "learners")]
    methods = [str(x) for x in _as_list(spec.get("methods", list(default_methods())), "methods")]
    f_as = [_number(x, "f_a") for x in _as_list(spec.get("f_a", [attack_default.f_a]), "f_a")]
    kl_us = [_number(x, "kl_u") for x in _as_list(spec.get("kl_u", [attack_default.kl_u]), "kl_u")]
    critics = [str(x) for x in _as_list(spec.get("critics", [attack_default.critic]), "critics")]
    for c in critics:
        if c not in CRITICS:
            raise SweepError(f"sweep key 'critics': {c!r} is not accepted; accepted: {SWEEP_KEYS['critics']}",
                             "critics")
    try:
        seeds = parse_seeds(spec.get("seeds", list(run_default.seeds)), "sweep key 'seeds'")
    except ConfigError as e:
        raise SweepError(str(e), "seeds") from None
    steps = _whole(spec.get("steps", run_default.steps), "steps")
    eval_interval = _whole(spec.get("eval_interval", run_default.eval_interval), "eval_interval")
    test_episodes = _whole(spec.get("test_episodes", run_default.test_episodes), "test_episodes")
    agent_spec = spec.get("attacked_agent", attack_default.agent)
    overrides = spec.get("set", {}) or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"sweep key 'set': must be a map ({SWEEP_KEYS['set']}), got {overrides!r}")
    for name in learners:
        if name not in LEARNER_CONFIGS:
            raise SweepError(f"sweep key 'learners': {name!r} is unknown; accepted: {', '.join(LEARNER_CONFIGS)}")
    cell_sets = [f"{k}={v!r}" for k, v in overrides.items()] + list(sets)

    configs: list[TrainConfig] = []
    seen = set()
    errors: list[str] = []
    for env, learner, method, f_a, kl_u, critic in itertools.product(envs, learners, methods, f_as, kl_us, critics):
        agent = agent_spec.get(env, attack_default.agent) if isinstance(agent_spec, dict) else agent_spec
        critic = critic if method in SURROGATE_METHODS else attack_default.critic
        critic_set = [f"attack.critic={critic!r}"] if critic != attack_default.critic else []
        entry = ATTACK_METHODS.get(method)
        if method == CLEAN:  # a clean cell has no budget and no attacked agent (config.py refuses them)
            f_a, kl_u, agent = attack_default.f_a, attack_default.kl_u, attack_default.agent
        elif entry is not None and not entry.has_kl_budget:
            kl_u = attack_default.kl_u
        try:
            cfg = build_train_config(env, learner, method, steps=steps, seeds=seeds, f_a=f_a, kl_u=kl_u, agent=agent,
                                     eval_interval=eval_interval, test_episodes=test_episodes,
                                     sets=critic_set + cell_sets)
        except ConfigError as e:  # every cell is checked before any runs; the first bad one is named
            errors.append(f"sweep cell (env={env}, learner={learner}, method={method}, f_a={f_a:g}, "
                          f"kl_u={kl_u:g}): {e}")
            continue
        key = cfg.to_json()
        if key not in seen:
            seen.add(key)
            configs.append(cfg)
    if errors:
        more = f" (and {len(errors) - 1} more invalid cell(s))" if len(errors) > 1 else ""
        raise SweepError(errors[0] + more)
    return configs


def load_sweep(path: str | Path) -> list[TrainConfig]:
    """Reads a sweep YAML file and expands it (see the module docstring)."""
    path = Path(path)
    accepted = "accepted: a YAML file of sweep keys (see `tram sweep --help`) or a preset name"
    if path.is_dir():
        raise SweepError(f"sweep file {str(path)!r} is a directory; {accepted}")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SweepError(f"sweep file {str(path)!r} does not exist; {accepted}") from None
    except UnicodeDecodeError:
        raise SweepError(f"sweep file {str(path)!r} is not UTF-8 text (binary?); {accepted}") from None
    except OSError as e:
        raise SweepError(f"sweep file {str(path)!r} cannot be read ({e.strerror}); {accepted}") from None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        raise SweepError(f"sweep file {str(path)!r} is not valid YAML{at} "
                         f"({getattr(e, 'problem', None) or type(e).__name__}); {accepted}") from None
    return expand_grid(spec)


@dataclass
class CellResult:
    """One sweep cell's outcome: its config, its run directory (None if it failed) and the
    error message (None if it trained)."""

    config: TrainConfig
    run_dir: str | None
    error: str | None


def _cell_label(cfg: TrainConfig) -> str:
    a = cfg.attack
    entry = attack_method(a.method)
    if a.method == CLEAN:
        att = "clean"
    else:
        att = f"{a.method} fA={a.f_a:g}" + (f" KL={a.kl_u:g}" if entry.has_kl_budget else "") \
            + (f" at {a.attack_at}" if entry.variants else "") \
            + (f" critic={a.critic}" if a.critic != AttackConfig().critic else "")
    if a.method != CLEAN and a.attack_start:
        att += f" from step {a.attack_start:,}"
    return f"{cfg.env.name}/{cfg.learner.name}/{att}"


def _run_local(cfg_dict: dict, out: str, checkpoint_every_s: float = 600.0,
               keep_branch_point: int | None = None) -> str:
    from tram.experiments.runner import train

    return str(train(TrainConfig.from_dict(cfg_dict), out, progress=False, log=lambda *_: None,
                     checkpoint_every_s=checkpoint_every_s, keep_branch_point=keep_branch_point))


def run_sweep(configs: list[TrainConfig], out: str | Path, backend: str = "local", address: str | None = None,
              log: Callable[[str], None] = print, checkpoint_every_s: float = 600.0,
              keep_branch_point: int | None = None) -> list[CellResult]:
    """Runs every cell (skipping finished ones), never stopping at a failure.

    Args:
        backend: ``local`` (in-process, one cell after another) or ``ray`` (one Ray task
            per cell on a local or existing cluster at ``address``).
        keep_branch_point: passed to :func:`tram.experiments.runner.train` for every cell
            (cells attacked from that step on, run afterwards, branch from them).

    Returns:
        One :class:`CellResult` per cell; failures carry the error text.
    """
    from tram.experiments import store

    if backend not in ("local", "ray"):
        raise SweepError(f"--backend must be local or ray, got {backend!r}")
    out = str(out)
    results: list[CellResult] = []
    todo = []
    for cfg in configs:
        run_dir = Path(out) / store.run_name(cfg.to_dict())
        if store.run_status(run_dir) == "done":
            log(f"[skip] {_cell_label(cfg)}: finished ({run_dir})")
            results.append(CellResult(cfg, str(run_dir), None))
        else:
            todo.append(cfg)
    log(f"sweep: {len(configs)} cell(s), {len(configs) - len(todo)} already done, {len(todo)} to run ({backend})")
    if backend == "local":
        for i, cfg in enumerate(todo):
            log(f"[{i + 1}/{len(todo)}] {_cell_label(cfg)}")
            try:
                results.append(CellResult(cfg, _run_local(cfg.to_dict(execution=True), out, checkpoint_every_s, keep_branch_point),
                                          None))
            except Exception as e:  # noqa: BLE001 - a failing cell must not stop the sweep
                log(f"[fail] {_cell_label(cfg)}: {type(e).__name__}: {e}")
                results.append(CellResult(cfg, None, "".join(traceback.format_exception_only(type(e), e)).strip()))
    else:
        import warnings

        import ray

        # ray.init starts Ray's own processes (GCS, raylet, ...) with subprocess, i.e. fork
        # immediately followed by exec: the child never runs JAX, so JAX's at-fork warning
        # ("os.fork() was called ... JAX is multithreaded") does not apply to it. Ray's
        # workers are started by the raylet, not forked from this process. The warning is
        # ignored around this call only; any other fork still warns.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     include_dashboard=False, configure_logging=False)
        # A task that requests no GPU gets CUDA_VISIBLE_DEVICES="" from Ray, so on a cluster
        # with GPUs each cell asks for one (one cell per GPU); on CPUs, one core per cell.
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus)(_run_local)
        futures = {remote.remote(cfg.to_dict(execution=True), str(Path(out).resolve()), checkpoint_every_s, keep_branch_point): cfg
                   for cfg in todo}
        pending = list(futures)
        done_count = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            cfg = futures[ready[0]]
            done_count += 1
            try:
                run_dir = ray.get(ready[0])
                log(f"[{done_count}/{len(todo)}] done {_cell_label(cfg)}")
                results.append(CellResult(cfg, run_dir, None))
            except Exception as e:  # noqa: BLE001
                log(f"[{done_count}/{len(todo)}] FAILED {_cell_label(cfg)}: {e}")
                results.append(CellResult(cfg, None, str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)))
    failures = [r for r in results if r.error]
    if failures:
        log(f"sweep finished with {len(failures)} failure(s):")
        for r in failures:
            log(f"  {_cell_label(r.config)}: {r.error}")
    else:
        log(f"sweep finished: {len(results)} cell(s) done")
    return results
