"""Where DOP's time goes: each piece of one training iteration timed on its own.

    python benchmarks/dop_profile.py [--env 3m] [--seeds 5] [--mode vmap] [--reps 5]

Every piece is compiled on its own over ``--seeds`` seeds (``vmap`` or ``map``, as
``run.seed_mode``), on buffers filled by the acting piece itself (random initial policy,
so episodes are as long as an untrained DOP's), and timed over ``--reps`` rounds (the
pieces called in turn in each round; the best call per piece is reported):

* acting: ``collect_episodes`` of 4 environments (one iteration's rollout);
* targets: sampling the 16 + 32 episodes and the TD(lambda) and tree-backup passes;
* critic: the per-timestep critic steps on those 48 episodes;
* actor: the actor batch, the critic's Q and k on it, and the chunked BPTT with the
  update, with the input and output layers outside the recurrence (``blocks=True``) and
  with every layer in the per-step scan (``actor (per-step layers)``, the default);
* policy: the off-policy batch's policy pass of the tree-backup targets, both ways;
* evaluation: 32 greedy test episodes (once per evaluation window, not per iteration);
* train_step: the whole update (targets + critic + actor + target copy).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tram.envs import make_env
from tram.learners import dop
from tram.learners.actor import floored_policy
from tram.learners.common import rmsprop
from tram.learners.episodes import buffer_sample_uniform, buffer_take, latest_indices, loss_mask, truncate_length
from tram.learners.policy_gradient import pg_loss_and_grad, policy_over_episodes
from tram.learners.rollout import collect_episodes, evaluate_greedy
from tram.learners.timechunks import map_time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="3m")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--mode", default="vmap", choices=("vmap", "map"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pieces", default="", help="comma-separated subset, e.g. actor,actor_per_step,critic_steps")
    args = ap.parse_args()
    cfg = dop.DOPConfig()
    env = make_env(args.env)
    spec = env.spec
    s = args.seeds
    keys = jax.random.split(jax.random.PRNGKey(0), s)
    eps = jnp.float32(0.5)

    def batched(fn):
        if args.mode == "vmap":
            return jax.jit(jax.vmap(fn))
        return jax.jit(lambda *xs: jax.lax.map(lambda x: fn(*x), xs))

    nets = dop.make_nets(cfg, spec.num_agents, spec.num_actions)
    state = batched(lambda k: dop.init_state(cfg, spec, k)[1])(keys)

    def act(st, k):
        ep, rs = collect_episodes(env, nets.actor, st.actor_params, k, eps, cfg.num_envs, None, jnp.float16)
        return dop.store_episodes(st, ep), rs.length

    act_j = batched(act)
    lengths = []
    for i in range(cfg.off_batch_size // cfg.num_envs + 2):
        state, ln = act_j(state, jax.random.split(jax.random.PRNGKey(100 + i), s))
        lengths.append(np.asarray(ln))
    print(f"{args.env}, {s} seeds, seed_mode={args.mode}: episode lengths mean {np.mean(lengths):.1f}, "
          f"max {np.max(lengths)}", flush=True)

    def targets(st, k):
        k_on, k_off = jax.random.split(k)
        on = buffer_sample_uniform(k_on, st.on_buffer, cfg.batch_size).as_float32()
        off = buffer_sample_uniform(k_off, st.off_buffer, cfg.off_batch_size).as_float32()
        num = jnp.maximum(truncate_length(on), truncate_length(off))
        y_on = dop.on_policy_targets(nets, st.target_params, on, cfg, num + 1)
        y_off = dop.off_policy_targets(nets, st.target_params, st.actor_params, off, eps, cfg, num + 1)
        batch = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), on, off)
        return batch, jnp.concatenate([y_on, y_off], axis=0), num

    def critic(st, batch, y, num):
        mask = loss_mask(batch.filled, batch.terminated)
        return dop.train_critic_per_timestep(nets, st.critic_params, st.critic_opt, batch, y, mask, num,
                                             rmsprop(cfg.critic_lr, cfg))[:3]

    def actor_update(st, k, per_step=False):
        idx, _ = latest_indices(k, st.on_buffer, cfg.batch_size, cfg.actor_batch)
        ep = buffer_take(st.on_buffer, idx).as_float32()
        length = truncate_length(ep)
        q = map_time(lambda sl: dop.q_values(nets, st.critic_params, sl[0], sl[1]), (ep.state, ep.obs), length, 8)
        kk = map_time(lambda x: nets.mixer.apply(st.critic_params["mixer"], x), ep.state, length, 8)
        loss, g = pg_loss_and_grad(nets.actor, st.actor_params, ep, eps, q, kk, length, cfg.time_chunk,
                                   blocks=not per_step)
        upd, opt = rmsprop(cfg.actor_lr, cfg).update(g, st.actor_opt, st.actor_params)
        return optax.apply_updates(st.actor_params, upd), opt, loss

    def policy(st, k, blocks):
        off = buffer_sample_uniform(k, st.off_buffer, cfg.off_batch_size).as_float32()
        return policy_over_episodes(nets.actor, st.actor_params, off, eps, truncate_length(off) + 1, cfg.time_chunk,
                                    blocks=blocks)

    def evaluation(st, k):
        return evaluate_greedy(env, nets.actor, st.actor_params, k, 32).episode_return

    def train_step(st, k):
        return dop.train_step(cfg, nets, st, k, eps)

    kk = jax.random.split(jax.random.PRNGKey(7), s)
    batch, y, num = batched(targets)(state, kk)
    pieces = {
        "acting (4 episodes)": (act_j, (state, kk)),
        "targets": (batched(targets), (state, kk)),
        "critic steps": (batched(critic), (state, batch, y, num)),
        "actor": (batched(actor_update), (state, kk)),
        "actor (per-step layers)": (batched(lambda st, k: actor_update(st, k, True)), (state, kk)),
        "policy (32 episodes, blocks)": (batched(lambda st, k: policy(st, k, True)), (state, kk)),
        "policy (per-step layers)": (batched(lambda st, k: policy(st, k, False)), (state, kk)),
        "evaluation (32 episodes)": (batched(evaluation), (state, kk)),
        "train_step": (batched(train_step), (state, kk)),
    }
    if args.pieces:
        wanted = args.pieces.split(",")
        pieces = {k: v for k, v in pieces.items()
                  if k.split(" (")[0].replace(" ", "_") + ("_per_step" if "per-step" in k else "") in wanted}
    compile_s = {}
    for name, (fn, a) in pieces.items():
        t = time.perf_counter()
        jax.block_until_ready(fn(*a))
        compile_s[name] = time.perf_counter() - t
    best = {name: float("inf") for name in pieces}
    for _ in range(args.reps):  # round-robin, so that load from other processes hits every piece
        for name, (fn, a) in pieces.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*a))
            best[name] = min(best[name], time.perf_counter() - t)
    for name in pieces:
        print(f"{name:26s} {best[name] * 1e3:8.1f} ms per call (best of {args.reps}; compile {compile_s[name]:.0f} s)",
              flush=True)
    print(f"critic timesteps of the timed batch (per seed): {np.asarray(num).tolist()}")


if __name__ == "__main__":
    main()
