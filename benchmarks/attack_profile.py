"""Where the acting-time attack's time goes: COMA's rollout with and without TRAM, and the
attack's pieces alone, at the paper's setting (SMAX 3m, COMA's 8 environments per seed).

    python benchmarks/attack_profile.py [--env 3m] [--method var] [--steps 60] [--reps 5]

Two kinds of timing, both per acting step of all ``num_envs`` environments of one seed:

* ``rollout``: :func:`tram.learners.rollout.collect_episodes` (one batch of episodes, a
  ``lax.while_loop`` to the longest one) with COMA's freshly initialised networks, clean
  and under the attack; the difference is what the attack adds to acting;
* ``pieces``: each piece of the attack on its own, vmapped over the environments and run
  ``--steps`` times in a ``lax.scan`` on random inputs of the right shapes (so that, as
  in the rollout's loop, there is no per-call dispatch): the critic's per-action values
  for the attacker (``q_fn``), the Gram matrix of the actor's Jacobian, the whole
  direction, Algorithm 1 (:func:`tram.attacks.budget.find_beta`, and the step-by-step
  :func:`~tram.attacks.budget.find_beta_sequential` for reference), at each ``--levels``
  count, and the whole perturbation.

Each figure is the fastest of ``--reps`` calls, compiled beforehand, in CPU time of this
process (``time.process_time``: on a shared machine it is far less disturbed than wall time).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from tram.attacks.budget import BETA_SEARCH_LEVELS, find_beta, find_beta_sequential
from tram.attacks.directions import logit_gram, variance_direction
from tram.attacks.perturb import AttackConfig, make_perturbation
from tram.envs import make_env
from tram.learners import coma
from tram.learners.actor import RNNActorLogits, actor_inputs
from tram.learners.rollout import AttackHook, collect_episodes
from tram.types import ActingContext


def _fastest_s(fn, *args, reps: int) -> float:
    """Fastest seconds per call of the jitted ``fn(*args)`` over ``reps`` calls (compiled and
    run once first): on a machine shared with other processes the minimum is the least
    disturbed figure."""
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(reps):
        t = time.process_time()
        jax.block_until_ready(fn(*args))
        ts.append(time.process_time() - t)
    return float(np.min(ts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="3m")
    ap.add_argument("--method", default="var")
    ap.add_argument("--steps", type=int, default=60, help="acting steps per scan of the pieces")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--levels", default="1,3,5", help="find_beta levels (bisection steps per round) to time")
    args = ap.parse_args()

    env = make_env(args.env)
    spec = env.spec
    cfg = coma.COMAConfig()
    nets, st = coma.init_state(cfg, spec, jax.random.PRNGKey(0))
    e, n, a = cfg.num_envs, spec.num_agents, spec.num_actions
    att = AttackConfig(method=args.method, f_a=1.0, kl_u=6.0)
    perturb = make_perturbation(att)
    eps = jnp.float32(0.05)

    def hook(params):
        return AttackHook(perturb=perturb, agent=0, q_fn=coma.attack_q_fn(nets, st.critic_params, 0),
                          prev_actor_grad=jax.tree.map(jnp.zeros_like, params), has_prev_grad=jnp.bool_(False))

    def roll(params, key, attacked: bool):
        ep, rs = collect_episodes(env, nets.actor, params, key, eps, e, hook(params) if attacked else None)
        return jnp.sum(ep.lengths), rs.episode_return

    key = jax.random.PRNGKey(1)
    roll_clean = jax.jit(lambda p, k: roll(p, k, False))
    roll_att = jax.jit(lambda p, k: roll(p, k, True))
    steps = int(roll_clean(st.actor_params, key)[0]) / e  # mean episode length of this batch
    t_clean = _fastest_s(roll_clean, st.actor_params, key, reps=args.reps)
    t_att = _fastest_s(roll_att, st.actor_params, key, reps=args.reps)
    longest = int(jnp.max(collect_episodes(env, nets.actor, st.actor_params, key, eps, e)[0].lengths))
    print(f"COMA rollout on {args.env}, {e} envs, one batch (longest episode {longest} steps, mean {steps:.1f}): "
          f"clean {t_clean * 1e3:.2f} CPU ms, {args.method} {t_att * 1e3:.2f} CPU ms "
          f"(x{t_att / t_clean:.2f}; attack adds {(t_att - t_clean) / longest * 1e3:.3f} ms per acting step)")

    # ---- the pieces, on random inputs, vmapped over the environments, scanned over steps
    d_in = spec.obs_dim + a + n
    T = args.steps
    k = jax.random.split(jax.random.PRNGKey(2), 6)
    logits = jax.random.normal(k[0], (T, e, a)) * 2.0
    avail = jax.random.uniform(k[1], (T, e, a)) < 0.7
    avail = avail.at[..., 0].set(True).at[..., 1].set(True)
    q = jax.random.normal(k[2], (T, e, a))
    hid = jax.random.normal(k[3], (T, e, cfg.rnn_hidden)) * 0.3
    obs = jax.random.normal(k[4], (T, e, n, spec.obs_dim))
    state = jax.random.normal(k[5], (T, e, spec.state_dim))
    last = jnp.zeros((T, e, n), jnp.int32)
    x = actor_inputs(obs, last, a)[:, :, 0]  # [T, E, I]
    delta = jax.random.normal(k[0], (T, e, a))
    delta = jnp.where(avail, delta, 0.0)
    delta = delta / jnp.linalg.norm(delta, axis=-1, keepdims=True)
    keys = jax.random.split(k[1], T * e).reshape(T, e, -1)
    logits_fn = RNNActorLogits(nets.actor)
    params = st.actor_params
    q_fn = coma.attack_q_fn(nets, st.critic_params, 0)

    def ctx_of(l_, av_, q_, h_, x_):
        return ActingContext(logits=l_, avail=av_, q_values=q_, mix_weight=jnp.float32(1.0), actor_params=params,
                             actor_hidden=h_, actor_input=x_, prev_actor_grad=jax.tree.map(jnp.zeros_like, params),
                             has_prev_grad=jnp.bool_(False), epsilon=eps)

    def scanned(per_env):
        """``jit(scan over T of vmap over E of per_env)``, summing the outputs."""
        def body(acc, xs):
            out = jax.vmap(per_env)(*xs)
            return acc + sum(jnp.sum(o.astype(jnp.float32)) for o in jax.tree.leaves(out)), None
        return jax.jit(lambda *xs: jax.lax.scan(body, jnp.float32(0.0), xs)[0])

    pieces = {
        "actor step, all agents (context)": (
            scanned(lambda h_, x_: nets.actor.apply(params, jnp.broadcast_to(h_, (n, h_.shape[-1])),
                                                    jnp.broadcast_to(x_, (n, x_.shape[-1])))[0]), (hid, x)),
        "q_fn (COMA critic for the attacker)": (
            scanned(lambda s_, o_, a_: q_fn(s_, o_, a_, a_)), (state, obs, last)),
        "Gram matrix K": (scanned(lambda h_, x_: logit_gram(logits_fn, params, h_, x_)), (hid, x)),
        "var direction (incl. K)": (
            scanned(lambda kk, l_, av_, q_, h_, x_: variance_direction(kk, ctx_of(l_, av_, q_, h_, x_), logits_fn)),
            (keys, logits, avail, q, hid, x)),
        **{f"find_beta, levels={lv}{' (default)' if lv == BETA_SEARCH_LEVELS else ''}": (
            scanned(lambda l_, av_, d_, lv=lv: find_beta(l_, av_, d_, 6.0, att.bsn1, att.bsn2, lv)), (logits, avail, delta))
           for lv in (int(v) for v in args.levels.split(","))},
        "find_beta_sequential (paper's loop)": (
            scanned(lambda l_, av_, d_: find_beta_sequential(l_, av_, d_, 6.0, att.bsn1, att.bsn2)),
            (logits, avail, delta)),
        f"whole perturbation ({args.method})": (
            scanned(lambda kk, l_, av_, q_, h_, x_: perturb(kk, ctx_of(l_, av_, q_, h_, x_), logits_fn)),
            (keys, logits, avail, q, hid, x)),
    }
    print(f"pieces alone, vmapped over {e} envs, {T} steps in a scan (CPU ms per acting step):")
    for name, (fn, xs) in pieces.items():
        print(f"  {name}: {_fastest_s(fn, *xs, reps=args.reps) / T * 1e3:.3f}", flush=True)


if __name__ == "__main__":
    main()
