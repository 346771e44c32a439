"""Frozen configuration dataclasses: one per concern, validated on construction.

``TrainConfig(env, learner, attack, run)`` is the full, resolved description of a run; it is
saved as ``config.json`` with every run and round-trips through :meth:`TrainConfig.to_dict`
and :meth:`TrainConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from tram.attacks.perturb import AttackConfig
from tram.learners import LEARNER_CONFIGS


@dataclass(frozen=True)
class EnvConfig:
    """Which environment to train on."""

    name: str = "3m"
    """An environment name from ``tram envs``."""
    options: tuple[tuple[str, Any], ...] = ()
    """Family-specific options as (key, value) pairs (hashable); see ``tram envs``."""

    def __post_init__(self):
        from tram.envs import env_names

        if self.name not in env_names():
            raise ValueError(f"env.name {self.name!r} is unknown; accepted: {', '.join(env_names())}")
        if isinstance(self.options, dict):
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))

    @property
    def options_dict(self) -> dict[str, Any]:
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

    def __post_init__(self):
        if isinstance(self.seeds, int) or not isinstance(self.seeds, (tuple, list)):
            raise ValueError(f"run.seeds must be a tuple of integers, got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"run.seeds must be >= 1 distinct non-negative integers, got {self.seeds!r}")
        for name in ("steps", "eval_interval", "test_episodes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"run.{name} must be an integer >= 1, got {v!r}")

    @property
    def num_windows(self) -> int:
        """Evaluations per seed, counting the one at step 0."""
        return -(-self.steps // self.eval_interval) + 1


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
            raise ValueError(f"learner must be one of {', '.join(LEARNER_CONFIGS)} configs, got {self.learner!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["env"]["options"] = dict(self.env.options)
        d["run"]["seeds"] = list(self.run.seeds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        learner_d = dict(d.get("learner", {}))
        name = learner_d.get("name", "dop")
        if name not in LEARNER_CONFIGS:
            raise ValueError(f"learner.name must be one of {', '.join(LEARNER_CONFIGS)}; got {name!r}")
        run_d = dict(d.get("run", {}))
        if "seeds" in run_d:
            run_d["seeds"] = tuple(run_d["seeds"])
        env_d = dict(d.get("env", {}))
        env_d["options"] = tuple(sorted(dict(env_d.get("options", {})).items()))
        return cls(
            env=EnvConfig(**env_d),
            learner=LEARNER_CONFIGS[name](**learner_d),
            attack=AttackConfig(**d.get("attack", {})),
            run=RunConfig(**run_d),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
