"""How much of the learners' per-timestep work is masked (padding), at the start of a run.

    python benchmarks/padding.py [--learners dop,coma] [--env 3m] [--seeds 5] [--window 2000] [--batches 40]

For each learner, ``--seeds`` seeds act as at the start of a run (the learner's own
rollout, ``num_envs`` environments per iteration, epsilon at step 0) for one evaluation
window of ``--window`` env steps per seed, storing the episodes as the learner does. Then
``--batches`` training batches per seed are drawn with the learner's own sampling, and the
work counters the learners record in their ``info`` are computed with the same formulas:

* ``critic_timesteps`` / ``target_slots`` / ``actor_slots``: the trip counts of the loops
  that stop at the batch's longest episode (``truncate_length``; DOP: the longer of its
  on- and off-policy batches);
* ``critic_entries`` / ``actor_entries``: the valid episode-steps (loss mask) among them.

It prints, per learner and kind of work, the share that is masked:

* within a batch: slots past an episode's end but below the batch's longest episode,
  ``1 - entries / (trip count x episodes)`` (the reference pads the same way);
* across seeds under ``vmap``: each batch's loops run to the slowest seed's,
  ``1 - sum_s work_s / (S max_s work_s)``; and the window's training iterations run to
  the seed needing the most (``1 - sum_s it_s / (S max_s it_s)``);
* in total under ``vmap`` (both).

Episode lengths change as the policy learns; this measures the start of a run.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from tabulate import tabulate

from tram.envs import make_env
from tram.learners import LEARNER_CONFIGS, coma, dop
from tram.learners.actor import epsilon_at
from tram.learners.episodes import buffer_sample_uniform, buffer_take, latest_indices, loss_mask, truncate_length
from tram.learners.rollout import collect_episodes


def counters(name, cfg, st, key) -> dict:
    """The work counters of one training batch of learner ``name`` (as its ``train_step``)."""
    if name == "dop":
        k_on, k_off = jax.random.split(key)
        on = buffer_sample_uniform(k_on, st.on_buffer, cfg.batch_size)
        off = buffer_sample_uniform(k_off, st.off_buffer, cfg.off_batch_size)
        num = jnp.maximum(truncate_length(on), truncate_length(off))
        mask = jnp.concatenate([loss_mask(on.filled, on.terminated), loss_mask(off.filled, off.terminated)])
        idx, _ = latest_indices(jax.random.fold_in(key, 1), st.on_buffer, cfg.batch_size, cfg.actor_batch)
        latest = buffer_take(st.on_buffer, idx)
        return {"critic_timesteps": num, "target_slots": num + 1, "actor_slots": truncate_length(latest),
                "critic_entries": jnp.sum(mask), "actor_entries": jnp.sum(loss_mask(latest.filled, latest.terminated))}
    ep = buffer_sample_uniform(key, st.on_buffer, cfg.batch_size)
    length = truncate_length(ep)
    mask = loss_mask(ep.filled, ep.terminated)
    return {"critic_timesteps": length, "target_slots": length + 1, "actor_slots": length,
            "critic_entries": jnp.sum(mask), "actor_entries": jnp.sum(mask)}


def measure(name: str, env_name: str, seeds: int, window: int, batches: int) -> dict:
    mod = {"dop": dop, "coma": coma}[name]
    cfg = LEARNER_CONFIGS[name]()
    env = make_env(env_name)
    nets, _ = mod.init_state(cfg, env.spec, jax.random.PRNGKey(0))
    storage = jnp.float16 if cfg.storage_dtype == "float16" else jnp.float32
    eps = epsilon_at(jnp.int32(0), cfg.epsilon_start, cfg.epsilon_finish, cfg.epsilon_anneal_steps)
    state = jax.jit(jax.vmap(lambda k: mod.init_state(cfg, env.spec, k)[1]))(
        jax.random.split(jax.random.PRNGKey(1), seeds))

    @jax.jit
    def act(st, keys):
        def one(s, k):
            ep, rs = collect_episodes(env, nets.actor, s.actor_params, k, eps, cfg.num_envs, None, storage)
            return mod.store_episodes(s, ep), jnp.sum(rs.length)
        return jax.vmap(one)(st, keys)

    steps = np.zeros(seeds)
    iterations = np.zeros(seeds)
    i = 0
    while steps.min() < window:
        state, n = act(state, jax.random.split(jax.random.PRNGKey(100 + i), seeds))
        running = steps < window  # a seed stops iterating once past the window's end
        iterations += running
        steps += np.where(running, np.asarray(n), 0)
        i += 1
    sample = jax.jit(jax.vmap(lambda s, k: counters(name, cfg, s, k)))
    rows = [sample(state, jax.random.split(jax.random.PRNGKey(1000 + b), seeds)) for b in range(batches)]
    w = {k: np.stack([np.asarray(r[k], np.float64) for r in rows]) for k in rows[0]}  # [batches, S]
    e_critic = cfg.batch_size + cfg.off_batch_size if name == "dop" else cfg.batch_size
    e_actor = cfg.batch_size
    out = {"iterations": iterations.astype(int).tolist(), "mean_steps_per_iteration": float(steps.sum() / iterations.sum())}

    def shares(kind, trips, entries, e):
        t = w[trips]
        out[kind] = (1.0 - w[entries].sum() / (t * e).sum(),
                     1.0 - t.sum() / (seeds * t.max(axis=1)).sum(),
                     1.0 - w[entries].sum() / (seeds * t.max(axis=1) * e).sum())

    shares("critic", "critic_timesteps", "critic_entries", e_critic)
    shares("target", "target_slots", "critic_entries", e_critic)
    shares("actor", "actor_slots", "actor_entries", e_actor)
    out["iterations_across"] = 1.0 - iterations.sum() / (seeds * iterations.max())
    out["critic_timesteps"] = (float(w["critic_timesteps"].mean()), float(w["critic_timesteps"].max(axis=1).mean()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--learners", default="dop,coma")
    ap.add_argument("--env", default="3m")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=40)
    args = ap.parse_args()
    table = []
    for name in args.learners.split(","):
        r = measure(name, args.env, args.seeds, args.window, args.batches)
        print(f"{name}: iterations per seed in a {args.window}-step window {r['iterations']} "
              f"({r['mean_steps_per_iteration']:.0f} env steps per iteration); critic timesteps per batch: "
              f"mean {r['critic_timesteps'][0]:.1f}, mean of the max over seeds {r['critic_timesteps'][1]:.1f}",
              flush=True)
        for kind in ("critic", "target", "actor"):
            table.append([name, kind] + [f"{x:.1%}" for x in r[kind]])
        table.append([name, "iterations per window", "-", f"{r['iterations_across']:.1%}", "-"])
    print(tabulate(table, headers=["learner", "work", "masked within a batch", "masked across seeds (vmap)",
                                   "masked in total (vmap)"]))


if __name__ == "__main__":
    main()
