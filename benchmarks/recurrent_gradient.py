"""One-step vs exact recurrent gradient in the attack directions, on real training states.

Trains a clean DOP run (default SMAX 3m, one seed), and at each checkpoint (env steps)
collects ``--episodes`` episodes with the current actor (the learner's epsilon at that
step). For every step of every agent with two or more available actions it computes the
four directions of :mod:`tram.attacks.directions` at that state with the learner's own
critic, mixing weight and previous actor gradient:

* variance-based, one-step Gram (``attack.var_gram = "one_step"``, the default) and exact
  Gram through the history (``"exact"``);
* J-based, one-step (``attack.recurrent_grad = "one_step"``) and exact (``"exact"``, the
  default; hidden-state tangent carried in forward mode).

It prints, per checkpoint and method, the mean / 5th percentile / minimum cosine between
the one-step and the exact unit directions, and the share of states whose target action
(``argmax delta_hat``, the action a saturated KL search pushes the policy onto) differs.
States where either direction fell back to random are left out (counted).

    PYTHONPATH=src python benchmarks/recurrent_gradient.py [--env 3m] [--checkpoints 10000 200000]
        [--episodes 16] [--seed 0] [--timing 2000]

``--timing N`` also times N env steps of attacked training (var with each Gram, J-based
with each gradient) after compilation, to say how slow the exact options are.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from tram.attacks.directions import advance_hidden_tangent, jbased_direction, variance_direction
from tram.attacks.perturb import AttackConfig
from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.experiments.program import make_train
from tram.learners import learner_record
from tram.learners.actor import RNNActorLogits, actor_inputs, epsilon_at
from tram.learners.dop import DOPConfig
from tram.learners.rollout import collect_episodes
from tram.types import ActingContext


def directions_for_episode(nets, rec, ls, episodes, e, agent, num_actions):
    """All four directions ``[T, A]`` for agent ``agent`` along episode ``e`` (T = limit + 1 slots)."""
    actor = nets.actor
    fn = RNNActorLogits(actor)
    params = ls.actor_params
    g_prev, has_grad = rec.policy_gradient(ls)
    obs, state, avail, actions = episodes.obs[e], episodes.state[e], episodes.avail[e], episodes.actions[e]
    t_slots = obs.shape[0]
    last = jnp.concatenate([jnp.full((1, actions.shape[-1]), -1, jnp.int32), actions[:-1]], axis=0)
    x_all = actor_inputs(obs.astype(jnp.float32), last, num_actions)  # [T, N, I]
    xs = x_all[:, agent]
    q_fn = rec.attack_q_fn(nets, ls.critic_params, agent)

    def scan_step(carry, x):
        h, h_dot = carry
        h_dot_new = advance_hidden_tangent(fn.step, params, h, x, g_prev, h_dot)
        h_new = fn.step(params, h, x)[1]
        return (h_new, h_dot_new), (h, h_dot)

    hidden = jnp.zeros(actor.hidden, jnp.float32)
    _, (hs, h_dots) = jax.lax.scan(scan_step, (hidden, hidden), xs)

    def at_step(t, h, h_dot, x):
        logits = fn(params, h, x)
        q, mix = q_fn(state[t].astype(jnp.float32), obs[t].astype(jnp.float32), actions[t], last[t])
        ctx = ActingContext(logits=logits, avail=avail[t, agent], q_values=q, mix_weight=mix, actor_params=params,
                            actor_hidden=h, actor_input=x, prev_actor_grad=g_prev, has_prev_grad=has_grad,
                            epsilon=jnp.float32(0.0), hidden_tangent=h_dot, history_inputs=xs, history_step=t)
        key = jax.random.PRNGKey(0)
        out = (variance_direction(key, ctx, fn), variance_direction(key, ctx, fn, exact_history=True),
               jbased_direction(key, ctx, fn), jbased_direction(key, ctx, fn, exact_history=True))
        return out

    return jax.lax.map(lambda a: at_step(*a), (jnp.arange(t_slots), hs, h_dots, xs), batch_size=8)


def summarise(name, one, exact, valid):
    cos = np.sum(one * exact, axis=-1)[valid]
    differ = (np.argmax(one, axis=-1) != np.argmax(exact, axis=-1))[valid]
    print(f"  {name:7s} states {int(valid.sum()):5d}  cosine mean {cos.mean():.4f}  p5 {np.percentile(cos, 5):.4f}  "
          f"min {cos.min():.4f}  target action differs {100 * differ.mean():.1f}%")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="3m")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[10_000, 200_000])
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing", type=int, default=0, help="also time this many env steps of attacked training")
    args = ap.parse_args()

    learner = DOPConfig()
    cfg = TrainConfig(env=EnvConfig(args.env), learner=learner, attack=AttackConfig(method="none"),
                      run=RunConfig(steps=max(args.checkpoints), seeds=(args.seed,), eval_interval=min(args.checkpoints),
                                    test_episodes=4))
    prog = make_train(cfg)
    rec = learner_record(learner.name)  # the Learner record (tram.types.Learner)
    env = prog.env
    nets = rec.make_nets(learner, env.spec.num_agents, env.spec.num_actions)
    a, n = env.spec.num_actions, env.spec.num_agents
    run_window = jax.jit(prog.run_window)
    per_episode = jax.jit(lambda ls, eps, e, k: directions_for_episode(nets, rec, ls, eps, e, k, a),
                          static_argnums=3)
    state = jax.jit(prog.init)(jax.random.PRNGKey(args.seed))
    t0 = time.perf_counter()
    for ckpt in sorted(args.checkpoints):
        state, m = run_window(state, jnp.int32(ckpt))
        steps = int(state.env_steps)
        ls = state.learner
        eps = epsilon_at(state.env_steps, learner.epsilon_start, learner.epsilon_finish, learner.epsilon_anneal_steps)
        episodes, _ = jax.jit(lambda p, k: collect_episodes(env, nets.actor, p, k, eps, args.episodes))(
            ls.actor_params, jax.random.PRNGKey(1000 + ckpt))
        dirs = {k: [] for k in ("var1", "varx", "j1", "jx")}
        fb_any, valid_all = [], []
        for e in range(args.episodes):
            length = int(episodes.lengths[e])
            for k in range(n):
                (v1, fv1), (vx, fvx), (j1, fj1), (jx, fjx) = per_episode(ls, episodes, e, k)
                multi = np.asarray(jnp.sum(episodes.avail[e, :, k], axis=-1) >= 2)
                alive = np.arange(multi.shape[0]) < length
                ok = multi & alive
                for name, d in zip(dirs, (v1, vx, j1, jx)):
                    dirs[name].append(np.asarray(d, np.float64)[ok])
                fb_any.append(np.stack([np.asarray(f)[ok] for f in (fv1, fvx, fj1, fjx)], axis=-1))
        d = {k: np.concatenate(v) for k, v in dirs.items()}
        fb = np.concatenate(fb_any)
        print(f"{args.env}, DOP, seed {args.seed}, after {steps} env steps (test win rate {float(m.test_won):.2f}, "
              f"has_prev_grad {bool(ls.has_prev_grad)}), {args.episodes} episodes x {n} agents, "
              f"{len(fb)} states with >= 2 actions ({time.perf_counter() - t0:.0f} s so far):")
        summarise("var", d["var1"], d["varx"], ~(fb[:, 0] | fb[:, 1]))
        summarise("J-based", d["j1"], d["jx"], ~(fb[:, 2] | fb[:, 3]))
        print(f"  left out (fallback in either): var {int((fb[:, 0] | fb[:, 1]).sum())}, "
              f"J {int((fb[:, 2] | fb[:, 3]).sum())}")

    if args.timing:
        print(f"timing: {args.timing} env steps of attacked DOP training on {args.env} (1 seed), after compilation")
        for attack in (AttackConfig(method="var", var_gram="one_step"), AttackConfig(method="var", var_gram="exact"),
                       AttackConfig(method="jbased", recurrent_grad="one_step"),
                       AttackConfig(method="jbased", recurrent_grad="exact")):
            c = TrainConfig(env=EnvConfig(args.env), learner=learner, attack=attack,
                            run=RunConfig(steps=3 * args.timing, seeds=(args.seed,), eval_interval=args.timing,
                                          test_episodes=4))
            p = make_train(c)
            rw = jax.jit(p.run_window)
            s = jax.jit(p.init)(jax.random.PRNGKey(args.seed))
            s, _ = rw(s, jnp.int32(args.timing))  # compile, fill the buffers
            jax.block_until_ready(s)
            t = time.perf_counter()
            s2, _ = rw(s, jnp.int32(2 * args.timing))
            jax.block_until_ready(s2)
            dt = time.perf_counter() - t
            done = int(s2.env_steps) - int(s.env_steps)
            label = f"{attack.method} var_gram={attack.var_gram}" if attack.method == "var" else \
                f"{attack.method} recurrent_grad={attack.recurrent_grad}"
            print(f"  {label:32s} {done / dt:8.0f} env steps/s")


if __name__ == "__main__":
    main()
