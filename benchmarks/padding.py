"""How much of the learners' per-timestep work is masked (padding), on a short run.

    python benchmarks/padding.py [--learners dop,coma] [--env 3m] [--seeds 5] [--iterations 40]

Runs ``--seeds`` seeds vmapped (``run.seed_mode=vmap``), fills the buffers, then steps
``--iterations`` training iterations one at a time and reads, per seed and iteration, the
work counters the learners record in their ``info``:

* ``critic_timesteps`` (per-timestep critic steps taken), ``target_slots`` and
  ``actor_slots`` (slots per episode of the target and actor passes): the trip counts of
  the loops that stop at the batch's longest episode;
* ``critic_entries`` and ``actor_entries``: the valid episode-steps (loss mask) among them.

It prints, per learner and kind of work, the share that is masked:

* within a batch: slots past an episode's end but below the batch's longest episode
  (``1 - entries / (trip count x episodes)``); the reference pads the same way;
* across seeds under vmap: every loop runs to the slowest seed
  (``1 - sum_s work_s / (S max_s work_s)`` per iteration), and the windows' training
  iterations run to the seed needing the most (measured on one evaluation window);
* both together: the share of the vmapped program's per-timestep work that is masked.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from tabulate import tabulate

from tram.attacks.perturb import AttackConfig
from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.experiments.program import make_train, over_seeds
from tram.learners import LEARNER_CONFIGS


def batch_sizes(name: str, cfg) -> tuple[int, int]:
    """Episodes in the critic batch and in the actor batch of learner ``name``."""
    if name == "dop":
        return cfg.batch_size + cfg.off_batch_size, cfg.batch_size
    return cfg.batch_size, cfg.batch_size


def measure(name: str, env: str, seeds: int, iterations: int, window_steps: int) -> dict:
    """Per-iteration work counters of ``seeds`` vmapped seeds; returns the masked shares."""
    cfg = LEARNER_CONFIGS[name]()
    config = TrainConfig(env=EnvConfig(env), learner=cfg, attack=AttackConfig(),
                         run=RunConfig(steps=10 * window_steps, seeds=tuple(range(seeds)), eval_interval=window_steps))
    prog = make_train(config)
    init, run_window = over_seeds(prog, "vmap")
    state = init(jnp.stack([jax.random.PRNGKey(s) for s in range(seeds)]))
    # one window to fill the buffers, one measured for the iterations per seed
    state, _ = run_window(state, jnp.int32(window_steps))
    state, m = run_window(state, jnp.int32(2 * window_steps))
    its = np.asarray(m.updates)
    step = jax.jit(jax.vmap(prog.iteration))
    keys = ("critic_timesteps", "target_slots", "actor_slots", "critic_entries", "actor_entries")
    rows = {k: [] for k in keys}
    for _ in range(iterations):
        before = {k: np.asarray(state.window.info[k]) for k in keys}
        state = step(state)
        for k in keys:
            rows[k].append(np.asarray(state.window.info[k]) - before[k])
    w = {k: np.stack(v) for k, v in rows.items()}  # [iterations, S]
    e_critic, e_actor = batch_sizes(name, cfg)
    out = {"learner": name, "iterations_per_window": its.tolist()}

    def across(x):  # share masked by running every seed to the slowest, per iteration
        return 1.0 - x.sum() / (x.shape[1] * x.max(axis=1)).sum()

    # the critic: DOP's per-timestep steps skip timesteps without a valid entry; COMA's
    # loop covers every slot below the longest episode
    out["critic_within"] = 1.0 - w["critic_entries"].sum() / (w["critic_timesteps"] * e_critic).sum()
    out["critic_across"] = across(w["critic_timesteps"])
    out["critic_total"] = 1.0 - w["critic_entries"].sum() / (seeds * w["critic_timesteps"].max(axis=1) * e_critic).sum()
    out["target_within"] = 1.0 - w["critic_entries"].sum() / (w["target_slots"] * e_critic).sum()
    out["target_across"] = across(w["target_slots"])
    out["target_total"] = 1.0 - w["critic_entries"].sum() / (seeds * w["target_slots"].max(axis=1) * e_critic).sum()
    out["actor_within"] = 1.0 - w["actor_entries"].sum() / (w["actor_slots"] * e_actor).sum()
    out["actor_across"] = across(w["actor_slots"])
    out["actor_total"] = 1.0 - w["actor_entries"].sum() / (seeds * w["actor_slots"].max(axis=1) * e_actor).sum()
    out["iterations_across"] = 1.0 - its.sum() / (seeds * its.max())
    out["mean_critic_timesteps"] = float(w["critic_timesteps"].mean())
    out["mean_max_critic_timesteps"] = float(w["critic_timesteps"].max(axis=1).mean())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--learners", default="dop,coma")
    ap.add_argument("--env", default="3m")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--window-steps", type=int, default=2000)
    args = ap.parse_args()
    table = []
    for name in args.learners.split(","):
        r = measure(name, args.env, args.seeds, args.iterations, args.window_steps)
        print(f"{name}: training iterations per seed in one {args.window_steps}-step window: "
              f"{r['iterations_per_window']}; critic timesteps per iteration: mean {r['mean_critic_timesteps']:.1f}, "
              f"mean of the per-iteration max over seeds {r['mean_max_critic_timesteps']:.1f}")
        for kind in ("critic", "target", "actor"):
            table.append([name, kind, f"{r[kind + '_within']:.1%}", f"{r[kind + '_across']:.1%}",
                          f"{r[kind + '_total']:.1%}"])
        table.append([name, "iterations per window", "-", f"{r['iterations_across']:.1%}", "-"])
    print(tabulate(table, headers=["learner", "work", "masked within a batch", "masked across seeds (vmap)",
                                   "masked in total (vmap)"]))


if __name__ == "__main__":
    main()
