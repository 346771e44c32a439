"""Frozen configuration dataclasses: one per concern, validated on construction.

``TrainConfig(env, learner, attack, run)`` is the full, resolved description of a run; it is
saved as ``config.json`` with every run and round-trips through :meth:`TrainConfig.to_dict`
and :meth:`TrainConfig.from_dict`.

Validation happens here, once, for every surface (CLI, sweep files, Python API): a bad value
raises :class:`ConfigError` (a ``ValueError``) whose one-line message names the key, the
value and what is accepted. Besides each field, :class:`TrainConfig` checks the fields
against each other and against the environment, without building anything heavy (the
environment's agent list comes from :func:`env_spec`, cached per name and options):

- the attacked agent exists on the environment (index in range, unit type present);
- the learner accepts the attack method (the method's entry of
  :data:`tram.attacks.methods.ATTACK_METHODS`; QMIX has no policy for TRAM's var/J-based
  directions);
- a clean run (``attack.method`` ``none``) leaves every other attack field at its default,
  since those fields would change the run's hash without changing the run.

Building a config: :func:`build_train_config` (also ``tram.build_config``) is the one builder
the CLI's ``train``, sweeps (:func:`tram.experiments.sweep.expand_grid`), ``reproduce`` and
scripts use: unset values take the dataclasses' defaults, numbers may be text (``"2e6"``), and
``section.field=value`` overrides (:func:`apply_overrides`) apply last.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tram.attacks.methods import CLEAN, accepted_methods, attack_method
from tram.attacks.perturb import AttackConfig
from tram.learners import LEARNER_CONFIGS
from tram.validation import ConfigError, real_number, whole_number

SEED_MODES = ("vmap", "map")
"""Accepted ``run.seed_mode`` values (:func:`tram.experiments.program.over_seeds`)."""

OMITTED_AT_DEFAULT: frozenset[tuple[str, str]] = frozenset({("attack", "critic")})
"""``(section, field)`` pairs left out of a run's identity (``config.json`` and its hash,
:meth:`TrainConfig.to_dict`) while the field holds its default value. A field added after
runs were stored goes here when its default reproduces the earlier behaviour: the stored runs
keep their names and are still found as finished, and a run that sets the field to another
value gets its own name. Reading a ``config.json`` without the field gives the default."""

__all__ = ["ConfigError", "EnvConfig", "RunConfig", "TrainConfig", "AttackConfig", "apply_overrides",
           "build_train_config", "env_spec", "parse_seeds", "parse_seconds", "real_number", "whole_number"]


@functools.lru_cache(maxsize=256)
def _env_spec(name: str, options: tuple[tuple[str, Any], ...]):
    from tram.envs import make_env

    return make_env(name, **dict(options)).spec


def env_spec(name: str, options: tuple[tuple[str, Any], ...] = ()):
    """The :class:`~tram.envs.base.EnvSpec` of environment ``name`` with ``options`` (agent
    count, unit types, sizes), cached; building it compiles nothing.

    Raises:
        ConfigError: unknown name, or an option the environment does not accept.
    """
    try:
        return _env_spec(name, tuple(options))
    except TypeError:  # an unhashable option value: build without the cache
        from tram.envs import make_env

        try:
            return make_env(name, **dict(options)).spec
        except (ValueError, TypeError) as e:
            raise ConfigError(f"env.options {dict(options)!r} of {name}: {e}", "env.options") from None
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"env.options {dict(options)!r} of {name}: {e}", "env.options") from None


def parse_seeds(value: Any, key: str = "run.seeds") -> tuple[int, ...]:
    """Seeds from a count (``5`` or ``"5"`` -> 0..4), a list (``[0, 3, 7]``) or text
    (``"0,3,7"``) -> a tuple of distinct non-negative ints.

    Raises:
        ConfigError: anything else (the message names ``key`` and the value).
    """
    accepted = "a seed count such as 5 (seeds 0..4) or distinct seeds >= 0 such as 0,3,7"
    try:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if "," in value:
                seeds = tuple(int(p) for p in parts if p)
            else:
                seeds = tuple(range(int(parts[0])))
        elif isinstance(value, bool):
            raise ValueError
        elif isinstance(value, int):
            seeds = tuple(range(value))
        elif isinstance(value, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            seeds = tuple(int(x) for x in value)
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: {accepted}", key) from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: {accepted}", key)
    return seeds


def parse_seconds(value: Any, key: str = "--checkpoint-every") -> float:
    """A positive, finite number of seconds (``600``, ``"1e3"``) as a float.

    Raises:
        ConfigError: NaN, infinite, zero, negative or not a number.
    """
    return real_number(value, key, 0.0, lo_open=True)


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to train on."""

    name: str = "3m"
    """An environment name from ``tram envs``."""
    options: tuple[tuple[str, Any], ...] = ()
    """Family-specific options as (key, value) pairs (hashable); see ``tram envs``."""

    def __post_init__(self):
        from tram.envs import env_names

        if not isinstance(self.name, str) or self.name not in env_names():
            raise ConfigError(f"env.name: {self.name!r} is not accepted; accepted: {', '.join(env_names())}",
                              "env.name")
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))
        env_spec(self.name, self.options)  # unknown or bad options fail here, not when training

    @property
    def spec(self):
        """The environment's :class:`~tram.envs.base.EnvSpec` (cached; see :func:`env_spec`)."""
        return env_spec(self.name, self.options)

    @property
    def options_dict(self) -> dict[str, Any]:
        """The environment's options as a dict (keyword arguments of :func:`tram.envs.make_env`)."""
        return dict(self.options)


@dataclass(frozen=True)
class RunConfig:
    """How long to train, on which seeds, and how often to evaluate."""

    steps: int = 2_000_000
    """Environment steps per seed; the last evaluation is at this step (the last window is
    shorter when ``eval_interval`` does not divide it)."""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Seeds, run together in one vmapped program."""
    eval_interval: int = 10_000
    """Env steps between evaluations (PyMARL's test_interval)."""
    test_episodes: int = 32
    """Greedy test episodes per evaluation."""
    seed_mode: str = "map"
    """How the seeds share the program (:data:`SEED_MODES`): ``map`` (default; one after
    the other in one program, each loop to its own seed's length) or ``vmap`` (batched:
    every data-dependent loop runs to the slowest seed; what a GPU wants). On this project's
    2-core CPU ``map`` trained DOP on 3m with 5 seeds at 4.0x the env steps/s of ``vmap``
    (309 vs 77 under heavy load, back to back: ``python benchmarks/seed_modes.py``). The
    same computation per seed: equal numbers up to float rounding (tests/test_seed_modes.py);
    over a long run the rounding differences can flip a sampled action, after which the
    two modes' trajectories differ as two runs' would. An execution setting: left out of
    :meth:`TrainConfig.to_dict` and therefore out of the run's name (a run resumes in
    either mode)."""

    def __post_init__(self):
        if not isinstance(self.seed_mode, str) or self.seed_mode not in SEED_MODES:
            raise ConfigError(f"run.seed_mode: {self.seed_mode!r} is not accepted; accepted: {', '.join(SEED_MODES)}",
                              "run.seed_mode")
        if not isinstance(self.seeds, (tuple, list)):
            raise ConfigError(f"run.seeds: {self.seeds!r} is not accepted; accepted: a tuple of distinct "
                              f"integers >= 0", "run.seeds")
        object.__setattr__(self, "seeds", parse_seeds(tuple(self.seeds)))
        for name in ("steps", "eval_interval", "test_episodes"):
            object.__setattr__(self, name, whole_number(getattr(self, name), f"run.{name}"))

    @property
    def num_windows(self) -> int:
        """Evaluations per seed, counting the one at step 0."""
        return -(-self.steps // self.eval_interval) + 1


def default_bootstrap_timeouts(env_name: str) -> bool:
    """The default of ``learner.bootstrap_timeouts`` on ``env_name`` (what ``config.json``
    then records): False on SMAX maps, the reference's SMAC setting (``continuing_episode:
    False``: a timeout is terminal); True on the grid tasks. Their episodes always end at the
    25-step limit and nothing in an observation or state tells the time left, so a terminal
    end makes the critic's target depend on a time it cannot see: measured here, COMA on
    Gather (2 seeds, 60k steps, `tram train --env gather --learner coma --steps 60000
    --eval-interval 20000 --seeds 2 --set learner.epsilon_anneal_steps=20000 --set
    learner.bootstrap_timeouts=...`) ends at test return -85.0 and -89.7 with bootstrapping
    and -231.4 and -216.7 without, below a random policy's -188."""
    from tram.envs import grid

    return env_name in grid.GRID_TASKS


@dataclass(frozen=True)
class TrainConfig:
    """A full run: environment, learner, attack, run length and seeds."""

    env: EnvConfig = field(default_factory=EnvConfig)
    learner: Any = None
    """A learner config (``DOPConfig`` or ``COMAConfig``); defaults to DOP."""
    attack: AttackConfig = field(default_factory=AttackConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.learner is None:
            object.__setattr__(self, "learner", LEARNER_CONFIGS["dop"]())
        if type(self.learner) not in LEARNER_CONFIGS.values():
            raise ConfigError(f"learner: {self.learner!r} is not accepted; accepted: a config of "
                              f"{', '.join(LEARNER_CONFIGS)}", "learner")
        for name, cls in (("env", EnvConfig), ("attack", AttackConfig), ("run", RunConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name}: {getattr(self, name)!r} is not accepted; accepted: a {cls.__name__}", name)
        if getattr(self.learner, "bootstrap_timeouts", False) is None:
            object.__setattr__(self, "learner", dataclasses.replace(
                self.learner, bootstrap_timeouts=default_bootstrap_timeouts(self.env.name)))
        self._check_attack()

    def _check_attack(self) -> None:
        """Cross-field checks of the attack (module docstring)."""
        a = self.attack
        if a.method == CLEAN:
            default = AttackConfig()
            changed = [f.name for f in dataclasses.fields(AttackConfig)
                       if f.name != "method" and getattr(a, f.name) != getattr(default, f.name)]
            if changed:
                f = changed[0]
                others = ", ".join(m for m in accepted_methods(self.learner.name) if m != CLEAN)
                raise ConfigError(f"attack.{f}: {getattr(a, f)!r} given without an attack (attack.method is none); "
                                  f"accepted: choose an attack method ({others}) "
                                  f"or leave attack.{f} at its default {getattr(default, f)!r}", f"attack.{f}")
            return
        learner = self.learner.name
        method = attack_method(a.method)
        if not method.accepts(learner):
            able = ", ".join(n for n in LEARNER_CONFIGS if method.accepts(n))
            need = "needs a policy-gradient learner" if method.needs_policy_gradient else "is accepted by"
            raise ConfigError(f"attack method {a.method!r} {need} ({able}); "
                              f"{learner} supports {', '.join(accepted_methods(learner))}", "attack.method")
        resolve_agent(a.agent, self.env.spec)

    @property
    def attacked_agent_index(self) -> int | None:
        """The poisoned agent's index on this environment, or ``None`` for a clean run."""
        return None if self.attack.method == CLEAN else resolve_agent(self.attack.agent, self.env.spec)

    def to_dict(self, execution: bool = False) -> dict[str, Any]:
        """The config as plain JSON values. By default the run's identity (what ``config.json``
        holds and the run's hash covers): execution settings that do not change the numbers
        (``run.seed_mode``) are left out. ``execution=True`` keeps them, for handing the
        config to another process or applying ``--set`` overrides."""
        d = dataclasses.asdict(self)
        d["env"]["options"] = dict(self.env.options)
        d["run"]["seeds"] = list(self.run.seeds)
        if not execution:
            del d["run"]["seed_mode"]  # an execution setting (RunConfig.seed_mode), not part of the run's identity
            defaults = {"env": EnvConfig(), "learner": type(self.learner)(), "attack": AttackConfig(), "run": RunConfig()}
            for sec, name in OMITTED_AT_DEFAULT:
                if name in d[sec] and d[sec][name] == getattr(defaults[sec], name):
                    del d[sec][name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """A validated config from :meth:`to_dict`'s form (keys may be missing: defaults).

        Raises:
            ConfigError: an unknown section or field, or a bad value (the message names the
                key, the value and what is accepted).
        """
        if not isinstance(d, dict):
            raise ConfigError(f"config: {d!r} is not accepted; accepted: a mapping with sections "
                              f"env, learner, attack, run", "config")
        unknown = sorted(set(d) - {"env", "learner", "attack", "run", "versions"})
        if unknown:
            raise ConfigError(f"config section {unknown[0]!r} is not accepted; accepted: env, learner, attack, run",
                              unknown[0])
        sections = {}
        for sec in ("env", "learner", "attack", "run"):
            v = d.get(sec, {})
            if not isinstance(v, dict):
                raise ConfigError(f"{sec}: {v!r} is not accepted; accepted: a mapping of {sec} fields", sec)
            sections[sec] = dict(v)
        learner_d = sections["learner"]
        name = learner_d.get("name", "dop")
        if not isinstance(name, str) or name not in LEARNER_CONFIGS:
            raise ConfigError(f"learner.name: {name!r} is not accepted; accepted: {', '.join(LEARNER_CONFIGS)}",
                              "learner.name")
        run_d = sections["run"]
        if isinstance(run_d.get("seeds"), list):
            run_d["seeds"] = tuple(run_d["seeds"])
        env_d = sections["env"]
        opts = env_d.get("options", {})
        if not isinstance(opts, (dict, tuple, list)):
            raise ConfigError(f"env.options: {opts!r} is not accepted; accepted: a mapping of option -> value",
                              "env.options")
        env_d["options"] = tuple(sorted(dict(opts).items()))
        for sec, klass in (("env", EnvConfig), ("learner", LEARNER_CONFIGS[name]), ("attack", AttackConfig),
                           ("run", RunConfig)):
            fields = [f.name for f in dataclasses.fields(klass)]
            bad = sorted(set(sections[sec]) - set(fields))
            if bad:
                raise ConfigError(f"{sec}.{bad[0]} is not a field of {sec}; accepted: {', '.join(fields)}",
                                  f"{sec}.{bad[0]}")
        try:
            learner = LEARNER_CONFIGS[name](**learner_d)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e), "learner") from None
        return cls(env=EnvConfig(**env_d), learner=learner, attack=AttackConfig(**sections["attack"]),
                   run=RunConfig(**run_d))

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def apply_overrides(cfg_dict: dict, sets: Sequence[str] | Mapping[str, Any] = ()) -> dict:
    """Applies ``section.field=value`` overrides to ``cfg_dict`` (the form of
    :meth:`TrainConfig.to_dict`) in place and returns it. ``sets`` is a list of
    ``"section.field=value"`` texts (values parsed as Python literals, else kept as text)
    or a mapping ``{"section.field": value}``; ``env.<option>`` sets an environment option.

    Raises:
        ConfigError: an item without ``section.field=``, an unknown section, or a field the
            section does not have (the message names the item and what is accepted).
    """
    if isinstance(sets, Mapping):
        sets = [f"{k}={v!r}" for k, v in sets.items()]
    for item in sets or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"--set {item!r} is not accepted; accepted: section.field=value "
                              f"(e.g. learner.epsilon_anneal_steps=50000)")
        key, raw = item.split("=", 1)
        section, fld = key.split(".", 1)
        if section not in cfg_dict or not isinstance(cfg_dict[section], dict):
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; accepted: {', '.join(cfg_dict)}")
        if section != "env" and fld not in cfg_dict[section]:
            raise ConfigError(f"--set {item!r}: {section} has no field {fld!r}; accepted: "
                              f"{', '.join(cfg_dict[section])}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        if section == "env" and fld != "name":
            cfg_dict["env"].setdefault("options", {})[fld] = value
        else:
            cfg_dict[section][fld] = value
    return cfg_dict


def config_warnings(cfg: TrainConfig) -> list[str]:
    """Measured pitfalls of ``cfg`` that are not errors, one sentence each (``tram train`` prints
    them): QMIX on a SMAX map without ``env.normalise_state=True`` (with SMAX's raw world state
    QMIX does not learn 3m; ``docs/learners.md``, "QMIX on SMAX")."""
    out = []
    if (cfg.learner.name == "qmix" and env_spec(cfg.env.name, cfg.env.options).family == "smax"
            and not dict(cfg.env.options).get("normalise_state", False)):
        out.append("QMIX on a SMAX map with SMAX's raw world state (positions up to 32) did not learn 3m in 730k "
                   "steps (test win rate 0); --set env.normalise_state=True scales the state as SMAC does "
                   "(docs/learners.md, 'QMIX on SMAX')")
    return out


def build_train_config(env: str | None = None, learner: str | None = None, attack: str | None = None, *,
                       steps: Any = None, seeds: Any = None, f_a: Any = None, kl_u: Any = None, agent: Any = None,
                       attack_at: str | None = None, attack_start: Any = None, eval_interval: Any = None,
                       test_episodes: Any = None,
                       sets: Sequence[str] | Mapping[str, Any] = ()) -> TrainConfig:
    """A validated :class:`TrainConfig` from plain values: the one builder of the CLI, sweeps,
    ``reproduce`` and scripts (``tram.build_config``).

    Every argument left at ``None`` takes the dataclass default (:class:`EnvConfig`,
    :class:`RunConfig`, :class:`~tram.attacks.perturb.AttackConfig`, the learner's config).
    Numbers may be text (``steps="2e6"``, ``f_a="0.5"``); ``seeds`` is a count, a list or
    text (:func:`parse_seeds`). ``sets`` (:func:`apply_overrides`) apply last, so they can
    change any field, e.g. ``sets=["learner.critic_lr=5e-4", "env.num_agents=4"]``.

    Example: ``build_train_config("3m", "dop", "var", steps="1e6", seeds=3, kl_u=4)``.

    Returns:
        The validated config.

    Raises:
        ConfigError: a bad value (the message names the config key, the value and what is
            accepted).
    """
    learner = "dop" if learner is None else learner
    if not isinstance(learner, str) or learner not in LEARNER_CONFIGS:
        raise ConfigError(f"learner.name: {learner!r} is not accepted; accepted: {', '.join(LEARNER_CONFIGS)}",
                          "learner.name")
    attack_kw = {k: v for k, v in dict(method=attack, f_a=f_a, kl_u=kl_u, agent=agent, attack_at=attack_at,
                                       attack_start=attack_start).items() if v is not None}
    if isinstance(seeds, (str, int)) and not isinstance(seeds, bool):
        seeds = parse_seeds(seeds)
    run_kw = {k: v for k, v in dict(steps=steps, seeds=seeds, eval_interval=eval_interval,
                                    test_episodes=test_episodes).items() if v is not None}
    base = TrainConfig(env=EnvConfig() if env is None else EnvConfig(name=env), learner=LEARNER_CONFIGS[learner](),
                       attack=AttackConfig(**attack_kw), run=RunConfig(**run_kw))
    return TrainConfig.from_dict(apply_overrides(base.to_dict(execution=True), sets))


def resolve_agent(agent: int | str, spec) -> int:
    """``attack.agent`` (an index, or a unit type such as ``"zealot"``) -> the index of that
    agent on the environment ``spec`` (the first agent of the unit type).

    Raises:
        ConfigError: the index is out of range or no agent has that unit type (the message
            lists the indices and unit types of ``spec``).
    """
    types = tuple(spec.agent_unit_types)
    accepted = f"an index 0..{len(types) - 1} or a unit type of {spec.name}: {', '.join(sorted(set(types)))}"
    if isinstance(agent, str):
        name = agent.lower()
        if name not in types:
            raise ConfigError(f"attack.agent: no agent of unit type {agent!r} on {spec.name}; accepted: {accepted}",
                              "attack.agent")
        return types.index(name)
    if not 0 <= int(agent) < len(types):
        raise ConfigError(f"attack.agent: index {agent!r} is out of range on {spec.name} ({len(types)} agents); "
                          f"accepted: {accepted}", "attack.agent")
    return int(agent)
