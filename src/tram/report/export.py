"""Export the store in the raw-data JSON format of InstaDeep's marl-eval.

Schema (marl-eval README, "Data Structure for Raw Experiment data")::

    {env_family: {task_name: {algo_name: {
        "run_<seed>": {
            "step_0": {"step_count": int, "test_return": [float], "win_rate": [float]},
            ...
            "step_<k-1>": {...},
            "absolute_metrics": {"test_return": [float], "win_rate": [float]}
        }}}}}

- ``env_family`` is ``"smax"`` or ``"grid"``; ``task_name`` is the environment name;
  ``algo_name`` is :attr:`RunKey.algo_name` (``dop_none``, ``dop_var_fa1_kl6``), lower case as
  marl-eval lower-cases names.
- Steps are numbered in env-step order; ``absolute_metrics`` comes last (marl-eval reads the
  last key as the absolute metrics).
- Each metric list holds one number: the evaluation mean over ``test_episodes`` episodes (the
  store keeps means, not per-episode values; marl-eval accepts one-element lists).
- Metrics: ``test_return`` always; ``win_rate`` on SMAX, ``success_rate`` on grid tasks, each
  only where finite for every evaluation of the run (JSON has no NaN).
- ``absolute_metrics`` holds the final values of :meth:`Run.final`, and, for attacked runs,
  the two stealth averages of Eq. 3 (``stealth_loglik``: every step of the poisoned agent;
  ``stealth_loglik_alive``: its steps with two or more available actions), each the seed's
  mean over its evaluation windows (the number the stealth tables average over seeds). They
  appear in ``absolute_metrics`` only: the step-0 evaluation has no stealth value, and
  marl-eval expects every step to carry the same metrics. A metric without a finite value
  (e.g. ``stealth_loglik`` of a run recorded before tram reported it) is left out.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tram.report.collect import Store

_EXPORTED = (("test_return", "test_return"), ("test_win_rate", "win_rate"), ("test_success", "success_rate"))
_STEALTH = ("stealth_loglik", "stealth_loglik_alive")


def marl_eval_data(store: Store) -> dict[str, Any]:
    """The marl-eval raw-data dict for every run in ``store`` (see module docstring)."""
    data: dict[str, Any] = {}
    for key in store.keys():
        run = store.runs[key]
        family = store.family(key.env)
        task = data.setdefault(family, {}).setdefault(key.env.lower(), {})
        algo = task.setdefault(key.algo_name.lower(), {})
        for seed in run.seeds:
            rows = run.seed_rows(seed)
            metrics = [
                (col, out) for col, out in _EXPORTED
                if len(rows[col]) and np.isfinite(rows[col]).all()
                and not (family == "smax" and col == "test_success")
            ]
            entry: dict[str, Any] = {}
            for i, step in enumerate(rows["env_steps"]):
                entry[f"step_{i}"] = {"step_count": int(step)}
                for col, out in metrics:
                    entry[f"step_{i}"][out] = [float(rows[col][i])]
            absolute = {}
            for col, out in metrics:
                value = run.final(seed, col)
                if math.isfinite(value):
                    absolute[out] = [value]
            for col in _STEALTH:
                values = rows[col][np.isfinite(rows[col])] if col in rows else np.zeros(0)
                if values.size:
                    absolute[col] = [float(values.mean())]
            entry["absolute_metrics"] = absolute
            algo[f"run_{seed}"] = entry
    return data
