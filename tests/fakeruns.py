"""Fabricated run directories in the store format, for store and report tests.

Values are chosen so aggregates can be checked by hand:

- ``stealth_loglik`` of an attacked run is ``stealth_base(method, f_a, kl_u)`` plus a seed
  offset ``0.1 * (seed - mean seed)`` plus a window offset ``0.01 * (j - mean j)``; the
  step-0 evaluation is NaN. So each table cell (mean over seeds of the per-seed mean over
  windows) equals ``stealth_base`` exactly, while the last window alone does not.
- ``stealth_loglik_alive`` is ``stealth_loglik / ALIVE_SHARE`` (as if the poisoned agent had
  one available action on 20% of its steps, which contribute 0 to the every-step average),
  so its cell equals ``stealth_base / ALIVE_SHARE``.
- the final test metric of seed ``s`` (in ``summary.json``) is ``final_base(method) + 0.05 * s``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tram.experiments.store import (
    METRIC_COLUMNS,
    run_name,
    write_csv_atomic,
    write_json_atomic,
    write_npz_atomic,
)

STEALTH_BASE = {"var": -3.87, "jbased": -2.43, "random": -1.53}
FINAL_BASE = {"none": 0.8, "random": 0.7, "jbased": 0.4, "var": 0.1}
SMAX_ENVS = ("3m", "6m", "2s3z")
ALIVE_SHARE = 0.8


def stealth_base(method: str, f_a: float, kl_u: float) -> float:
    return STEALTH_BASE[method] * f_a * kl_u / 6.0


def fake_config(
    env: str = "3m",
    method: str = "var",
    f_a: float = 1.0,
    kl_u: float = 6.0,
    learner: str = "dop",
    seeds=(0, 1, 2),
    steps: int = 50_000,
    eval_interval: int = 10_000,
) -> dict:
    return {
        "env": {"name": env, "options": {}},
        "learner": {"name": learner, "lr": 5e-4, "gamma": 0.99, "hidden": 64},
        "attack": {"method": method, "f_a": f_a, "kl_u": kl_u, "agent": 0, "bsn1": 55, "bsn2": 15},
        "run": {"steps": steps, "seeds": list(seeds), "eval_interval": eval_interval, "test_episodes": 32},
        "versions": {"tram": "0.1.0", "jax": "0.9.2", "jaxmarl": "0.2.0"},
    }


def metric_rows(config: dict, n_evals: int | None = None) -> list[dict]:
    """Evaluation rows of every seed (``n_evals`` per seed, default steps/interval + 1)."""
    env, method = config["env"]["name"], config["attack"]["method"]
    f_a, kl_u = config["attack"]["f_a"], config["attack"]["kl_u"]
    smax = env in SMAX_ENVS
    seeds = config["run"]["seeds"]
    interval = config["run"]["eval_interval"]
    n = n_evals if n_evals is not None else config["run"]["steps"] // interval + 1
    mean_seed = float(np.mean(seeds))
    rows = []
    for seed in seeds:
        for i in range(n):
            progress = i / max(n - 1, 1)
            level = FINAL_BASE[method] + 0.05 * seed
            attacked = method != "none"
            j_mean = (n - 2) / 2
            stealth = (
                stealth_base(method, f_a, kl_u) + 0.1 * (seed - mean_seed) + 0.01 * ((i - 1) - j_mean)
                if attacked and i > 0 else math.nan
            )
            rows.append({
                "seed": seed,
                "env_steps": i * interval,
                "test_return": (level * progress * 20.0) if not smax else level * progress * 20.0 - 5,
                "test_win_rate": level * progress if smax else math.nan,
                "test_success": math.nan if smax else level * progress,
                "train_return": level * progress * 18.0,
                "stealth_loglik": stealth,
                "stealth_loglik_alive": stealth / ALIVE_SHARE,
                "kl_mean": 0.8 * kl_u if attacked else math.nan,
                "kl_max": kl_u if attacked else math.nan,
                "beta_mean": 1.5 if attacked else math.nan,
                "saturated_frac": 0.1 if attacked else math.nan,
                "fallback_frac": 0.0 if attacked else math.nan,
                "attacked_frac": f_a if attacked else math.nan,
                "pmax_before": 0.6 if attacked else math.nan,
                "pmax_after": (0.7 if method == "jbased" else 0.4) if attacked else math.nan,
            })
    return rows


def write_metric_rows(path: Path, rows: list[dict]) -> Path:
    """Writes ``metrics.csv`` with one line per row (columns a row lacks are NaN)."""
    return write_csv_atomic(path, METRIC_COLUMNS, [[r.get(c, math.nan) for c in METRIC_COLUMNS] for r in rows])


def final_metric(env: str) -> str:
    return "test_win_rate" if env in SMAX_ENVS else "test_return"


def make_fake_run(
    root: Path,
    env: str = "3m",
    method: str = "var",
    f_a: float = 1.0,
    kl_u: float = 6.0,
    *,
    learner: str = "dop",
    seeds=(0, 1, 2),
    done: bool = True,
    samples: bool = True,
    n_evals: int | None = None,
    steps: int = 50_000,
) -> Path:
    """Write one run directory under ``root``; returns its path."""
    config = fake_config(env, method, f_a, kl_u, learner, seeds, steps)
    run_dir = Path(root) / run_name(config)
    write_json_atomic(run_dir / "config.json", config)
    write_metric_rows(run_dir / "metrics.csv", metric_rows(config, n_evals))
    if method != "none" and samples:
        k, a = 12, 6
        rng = np.random.default_rng(len(env) * 7 + len(method))
        logits = rng.normal(size=(k, a))
        avail = np.ones((k, a), np.int8)
        avail[:, -1] = 0
        pi = np.exp(logits) * avail
        pi /= pi.sum(1, keepdims=True)
        d = rng.normal(size=(k, a)) * avail
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        write_npz_atomic(
            run_dir / "attack_samples.npz", pi=pi, delta_hat=d, avail=avail,
            env_steps=np.repeat(np.arange(k // 2) * 10_000, 2), seed=np.tile(np.arange(2), k // 2),
        )
    if done:
        metric = final_metric(env)
        final = {}
        for seed in seeds:
            value = FINAL_BASE[method] + 0.05 * seed
            final[str(seed)] = {metric: value * (20.0 if metric == "test_return" else 1.0)}
        write_json_atomic(run_dir / "summary.json", {
            "status": "done", "final": final, "steps_per_second": 1000.0, "wall_time_s": 50.0,
        })
    return run_dir


def make_legacy(run_dir: Path) -> None:
    """Rewrite ``run_dir/metrics.csv`` as tram wrote it before ``stealth_loglik_alive``
    existed: no every-step column, the alive average under the name ``stealth_loglik``."""
    import csv

    path = Path(run_dir) / "metrics.csv"
    rows = list(csv.reader(path.read_text().splitlines()))
    header = rows[0]
    drop = header.index("stealth_loglik")
    out = []
    for row in rows:
        row = [c for i, c in enumerate(row) if i != drop]
        out.append(row)
    out[0] = ["stealth_loglik" if c == "stealth_loglik_alive" else c for c in out[0]]
    path.write_text("".join(",".join(r) + "\n" for r in out))
