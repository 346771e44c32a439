"""A shapes-only bound for one DOP training iteration: what tram's DOP would cost with no
masked work, measured on this machine with tram's own networks.

    python benchmarks/dop_bound.py [--env 3m] [--seeds 5] [--t 40]   (standalone, one T for all)

``benchmarks/train_throughput.py`` imports :func:`measure_bound` and runs it with the batch
lengths tram's DOP saw in the same run (its work counters), so that the bound and tram's rate
are measured side by side.

The sketch is NOT a learner: the batches are random numbers of the right shapes, episodes
never end early, nothing is sampled from a buffer and no target copy is taken. It keeps every
update of one iteration of the reference (TonghanWang/DOP, ``offpg_learner.py``) at tram's
shapes (DOPConfig, the env's spec, tram's ``RNNActor``, ``DOPCritic`` and ``DOPMixer``
parameters and tram's RMSprop with clipping):

* acting: ``T_act`` steps of ``num_envs`` environments: the GRU actor on all agents, the
  floored policy, a categorical sample and a real SMAX step (tram's env), per step;
* targets: the target critic and mixer on the 48 (16 + 32) episodes x ``T_target`` slots in
  one pass, the actor's forward pass on the 32 off-policy episodes (policy for the tree
  backup), and a reverse recursion over time (TD(lambda) on the 16, a tree-backup style
  recursion on the 32);
* critic: ``T_critic`` sequential optimiser steps, each a forward and backward pass of critic
  and mixer on 48 episodes x N agents, clipped RMSprop;
* actor: the GRU forward and backward pass over the 16 newest episodes x ``T_actor`` slots x
  N agents, the current critic and mixer forward (no gradient) for the advantages and
  weights, one clipped RMSprop step;
* greedy evaluation (optional): ``test_episodes`` environments for ``T_act`` steps, the
  share of one evaluation per iteration (an evaluation every ``eval_interval`` env steps),
  since tram's measured rate includes its evaluations.

Where the sketch is cheaper than a literal port, the saving is one tram may also take
without changing any number: the GRU's non-recurrent work (first dense layer, the GRU's
input matmuls, the output layer) runs for all time steps in one matmul outside the
recurrence, and the critic inputs of all timesteps are built once. The functional GRU is
checked against ``RNNActor.apply`` when a sketch is built.

Seeds are vmapped (one program for all seeds), as tram runs them. Each episode-length
parameter is rounded to an integer (the measured means are not).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tram.envs import make_env
from tram.learners import dop
from tram.learners.actor import actor_inputs, floored_policy, greedy_actions, sample_actions
from tram.learners.common import rmsprop


@dataclass(frozen=True)
class Lengths:
    """Per-seed, per-iteration lengths the sketch runs (integers, >= 1)."""

    act: int  # env steps per environment (acting)
    target: int  # slots per episode of the target passes
    critic: int  # sequential critic steps
    actor: int  # slots per episode of the actor update

    @staticmethod
    def of(act: float, target: float, critic: float, actor: float) -> "Lengths":
        r = lambda x: max(1, int(round(x)))
        return Lengths(r(act), r(target), r(critic), r(actor))


def _take(x, a):
    return jnp.take_along_axis(x, a[..., None], axis=-1)[..., 0]


def _unroll(p, x):
    """Tram's ``RNNActor`` over time with the input layers hoisted out of the recurrence.

    ``p``: the module's ``params`` dict; ``x [T, R, I]`` -> logits ``[T, R, A]`` (zero
    initial hidden state)."""
    y = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    gi = y @ p["rnn"]["input"]["kernel"] + p["rnn"]["input"]["bias"]  # [T, R, 3H]
    wh, bh = p["rnn"]["hidden"]["kernel"], p["rnn"]["hidden"]["bias"]
    hdim = wh.shape[0]

    def step(h, gi_t):
        gh = h @ wh + bh
        i_r, i_z, i_n = jnp.split(gi_t, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
        r = jax.nn.sigmoid(i_r + h_r)
        z = jax.nn.sigmoid(i_z + h_z)
        n = jnp.tanh(i_n + r * h_n)
        h = (1.0 - z) * n + z * h
        return h, h

    _, hs = jax.lax.scan(step, jnp.zeros(x.shape[1:-1] + (hdim,), x.dtype), gi)
    return hs @ p["fc2"]["kernel"] + p["fc2"]["bias"]


class Sketch:
    """The jitted, seed-vmapped pieces of one sketched DOP iteration (see the module
    docstring). ``programs()`` returns ``{name: (fn, state)}``, each ``fn(state)`` one call."""

    def __init__(self, env_name: str, cfg: dop.DOPConfig, lengths: Lengths, seeds: int,
                 test_episodes: int = 32):
        self.env = make_env(env_name)
        spec = self.env.spec
        self.cfg, self.L, self.seeds, self.test_episodes = cfg, lengths, seeds, test_episodes
        self.n, self.a, self.d, self.s = spec.num_agents, spec.num_actions, spec.obs_dim, spec.state_dim
        self.nets = dop.make_nets(cfg, self.n, self.a)
        self.actor_opt = rmsprop(cfg.actor_lr, cfg)
        self.critic_opt = rmsprop(cfg.critic_lr, cfg)
        self._check_unroll()

    # ------------------------------------------------------------------ state
    def init(self, key):
        """One seed's parameters, optimiser states and random batches of tram's shapes."""
        cfg, n, a, d, s, L = self.cfg, self.n, self.a, self.d, self.s, self.L
        ks = jax.random.split(key, 12)
        ap = self.nets.actor.init(ks[0], jnp.zeros((1, cfg.rnn_hidden)), jnp.zeros((1, d + a + n)))
        cp = {"critic": self.nets.critic.init(ks[1], jnp.zeros((1, s + d + n))),
              "mixer": self.nets.mixer.init(ks[2], jnp.zeros((1, s)))}
        e = cfg.batch_size + cfg.off_batch_size
        tb = max(L.target, L.critic + 1)  # slots of the critic batch

        def batch(k, eps, t):
            k1, k2, k3, k4 = jax.random.split(k, 4)
            return {"obs": jax.random.normal(k1, (eps, t, n, d)), "state": jax.random.normal(k2, (eps, t, s)),
                    "actions": jax.random.randint(k3, (eps, t, n), 0, a),
                    "reward": jax.random.normal(k4, (eps, t)), "avail": jnp.ones((eps, t, n, a), bool)}

        return {"ap": ap, "cp": cp, "tp": cp, "aopt": self.actor_opt.init(ap), "copt": self.critic_opt.init(cp),
                "batch": batch(ks[3], e, tb), "latest": batch(ks[4], cfg.batch_size, L.actor),
                "key": ks[5], "eps": jnp.float32(0.5)}

    # ------------------------------------------------------------------ pieces
    def _policy(self, ap, ep, t):
        """Floored policy of the actor over ``ep``'s first ``t`` slots. ``-> [E, t, N, A]``."""
        e = ep["actions"].shape[0]
        last = jnp.concatenate([jnp.full((e, 1, self.n), -1, jnp.int32), ep["actions"][:, :t - 1]], axis=1)
        x = actor_inputs(ep["obs"][:, :t], last, self.a)  # [E, t, N, I]
        logits = _unroll(ap["params"], jnp.swapaxes(x, 0, 1)).swapaxes(0, 1)
        return logits, ep["avail"][:, :t]

    def _q(self, params, state, obs):
        return self.nets.critic.apply(params["critic"], dop.critic_inputs(state, obs))

    def _k(self, params, state):
        return self.nets.mixer.apply(params["mixer"], state)

    def acting(self, st, steps=None, num_envs=None, greedy=False):
        """``steps`` env steps of ``num_envs`` envs with the GRU actor; returns the stored data."""
        steps, num_envs = steps or self.L.act, num_envs or self.cfg.num_envs
        env, actor = self.env, self.nets.actor
        key, kr = jax.random.split(st["key"])
        es, ts = jax.vmap(env.reset_arrays)(jax.random.split(kr, num_envs))

        def body(c, _):
            key, es, ts, h, last = c
            key, k_act, k_env = jax.random.split(key, 3)
            logits, h = actor.apply(st["ap"], h, actor_inputs(ts.obs, last, self.a))
            acts = (greedy_actions(logits, ts.avail) if greedy
                    else sample_actions(k_act, floored_policy(logits, ts.avail, st["eps"])))
            es, ts = jax.vmap(env.step_arrays)(jax.random.split(k_env, num_envs), es, acts)
            return (key, es, ts, h, acts), (ts.obs.astype(jnp.float16), ts.state.astype(jnp.float16), acts, ts.reward)

        c0 = (key, es, ts, jnp.zeros((num_envs, self.n, self.cfg.rnn_hidden)),
              jnp.full((num_envs, self.n), -1, jnp.int32))
        (key, *_), ys = jax.lax.scan(body, c0, None, length=steps)
        return {**st, "key": key}, ys

    def targets(self, st):
        """Target critic + mixer on all episodes, the policy on the off-policy ones, a reverse
        recursion. Returns ``y [E, T_critic]``."""
        cfg, t = self.cfg, self.L.target
        ep = jax.tree.map(lambda x: x[:, :t], st["batch"])
        q = self._q(st["tp"], ep["state"], ep["obs"])  # [E, t, N, A]
        k = self._k(st["tp"], ep["state"])  # [E, t, N]
        qt = jnp.sum(k * _take(q, ep["actions"]), -1)  # [E, t]
        off = jax.tree.map(lambda x: x[cfg.batch_size:], ep)
        logits, avail = self._policy(st["ap"], off, t)
        pi = floored_policy(logits, avail, st["eps"])
        qo = q[cfg.batch_size:]
        expected = jnp.sum(k[cfg.batch_size:] * jnp.sum(pi * qo, -1), -1)  # [32, t]
        c = cfg.tb_lambda * jnp.prod(_take(pi, off["actions"]), -1)
        e_on = cfg.batch_size
        # bootstrap value and trace per episode: on-policy TD(lambda) uses Q_tot at the taken
        # actions and trace lambda; off-policy, the expected Q_tot and the tree-backup trace.
        boot = jnp.concatenate([qt[:e_on], expected], 0)
        trace = jnp.concatenate([jnp.full((e_on, t), cfg.td_lambda), c], 0)
        r = ep["reward"]

        def back(g_next, xs):
            r_t, boot_n, qt_n, c_n = xs
            g = r_t + cfg.gamma * (boot_n + c_n * (g_next - qt_n))
            return g, g

        xs = tuple(jnp.swapaxes(x, 0, 1) for x in (r[:, :t - 1], boot[:, 1:], qt[:, 1:], trace[:, 1:]))
        _, g = jax.lax.scan(back, boot[:, -1], xs, reverse=True)
        y = jnp.swapaxes(g, 0, 1)  # [E, t - 1]
        tc = self.L.critic
        y = jnp.pad(y, ((0, 0), (0, max(0, tc - y.shape[1]))))[:, :tc]
        return {**st, "y": jax.lax.stop_gradient(y)}

    def critic(self, st):
        """``T_critic`` sequential clipped-RMSprop steps of critic + mixer on 48 episodes."""
        tc, ep = self.L.critic, st["batch"]
        cin = dop.critic_inputs(ep["state"][:, :tc], ep["obs"][:, :tc])  # built once for all t
        xs = tuple(jnp.swapaxes(x, 0, 1) for x in (cin, ep["state"][:, :tc], ep["actions"][:, :tc], st["y"]))
        opt = self.critic_opt

        def loss(params, cin_t, s_t, a_t, y_t):
            q = self.nets.critic.apply(params["critic"], cin_t)
            q_tot = jnp.sum(self._k(params, s_t) * _take(q, a_t), -1)
            return jnp.mean((q_tot - y_t) ** 2)

        def step(carry, x):
            params, os_ = carry
            l, g = jax.value_and_grad(loss)(params, *x)
            upd, os_ = opt.update(g, os_, params)
            return (optax.apply_updates(params, upd), os_), l

        (cp, copt), ls = jax.lax.scan(step, (st["cp"], st["copt"]), xs)
        return {**st, "cp": cp, "copt": copt, "closs": jnp.mean(ls)}

    def actor(self, st):
        """Actor forward + backward over the 16 newest episodes, one clipped RMSprop step."""
        ep, t = st["latest"], self.L.actor
        q = jax.lax.stop_gradient(self._q(st["cp"], ep["state"], ep["obs"]))  # [16, t, N, A]
        k = jax.lax.stop_gradient(self._k(st["cp"], ep["state"]))

        def loss(ap):
            logits, avail = self._policy(ap, ep, t)
            pi = floored_policy(logits, avail, st["eps"])
            adv = jax.lax.stop_gradient(_take(q, ep["actions"]) - jnp.sum(pi * q, -1))
            return -jnp.mean(k * adv * jnp.log(_take(pi, ep["actions"])))

        l, g = jax.value_and_grad(loss)(st["ap"])
        upd, aopt = self.actor_opt.update(g, st["aopt"], st["ap"])
        return {**st, "ap": optax.apply_updates(st["ap"], upd), "aopt": aopt, "aloss": l}

    def iteration(self, st):
        """Acting, targets, critic training, actor update (tram's order)."""
        st, ys = self.acting(st)
        st = self.actor(self.critic(self.targets(st)))
        return st, ys

    def evaluation(self, st):
        """One greedy evaluation: ``test_episodes`` environments for ``T_act`` steps."""
        return self.acting(st, num_envs=self.test_episodes, greedy=True)[1]

    # ------------------------------------------------------------------ timing
    def _check_unroll(self):
        """The hoisted functional GRU equals ``RNNActor.apply`` step by step."""
        n, a, d = self.n, self.a, self.d
        k1, k2 = jax.random.split(jax.random.PRNGKey(1))
        ap = self.nets.actor.init(k1, jnp.zeros((1, self.cfg.rnn_hidden)), jnp.zeros((1, d + a + n)))
        x = jax.random.normal(k2, (5, 6, d + a + n))
        h = jnp.zeros((6, self.cfg.rnn_hidden))
        ref = []
        for t in range(5):
            lg, h = self.nets.actor.apply(ap, h, x[t])
            ref.append(lg)
        np.testing.assert_allclose(np.asarray(_unroll(ap["params"], x)), np.asarray(jnp.stack(ref)),
                                   rtol=2e-5, atol=2e-5)

    def programs(self, breakdown: bool = True) -> dict:
        """``{name: jitted seed-vmapped fn}``; names: iteration, evaluation (+ the pieces)."""
        init = jax.jit(jax.vmap(self.init))(jax.random.split(jax.random.PRNGKey(0), self.seeds))
        with_y = jax.jit(jax.vmap(self.targets))(init)
        progs = {"iteration": (self.iteration, init), "evaluation": (self.evaluation, init)}
        if breakdown:
            progs.update({"acting": (lambda s: self.acting(s)[1], init), "targets": (self.targets, init),
                          "critic": (self.critic, with_y), "actor": (self.actor, init)})
        return {k: (jax.jit(jax.vmap(f)), s) for k, (f, s) in progs.items()}


def _time(fn, st, reps: int) -> tuple[float, float]:
    """(compile s, median s per call) of ``fn(st)``."""
    t = time.perf_counter()
    compiled = fn.lower(st).compile()
    comp = time.perf_counter() - t
    jax.block_until_ready(compiled(st))
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(compiled(st))
        ts.append(time.perf_counter() - t)
    return comp, float(np.median(ts))


def measure_bound(env_name: str, lengths: Lengths, seeds: int, env_steps_per_iter: float,
                  eval_interval: int, test_episodes: int = 32, reps: int = 5, breakdown: bool = True,
                  cfg: dop.DOPConfig | None = None) -> dict:
    """Times the sketch and returns the bound.

    Args:
        lengths: the per-seed batch lengths of one iteration (see :class:`Lengths`).
        env_steps_per_iter: env steps one seed takes per iteration (all its envs).
        eval_interval: env steps per seed between evaluations (to amortise one evaluation).

    Returns:
        dict with ``iteration_s`` and ``evaluation_s`` (median seconds per call, all seeds),
        ``per_iteration_s`` (iteration + the evaluation's share), ``bound_steps_per_s``
        (``seeds * env_steps_per_iter / per_iteration_s``), ``compile_s`` and, with
        ``breakdown``, ``parts`` (seconds per call of acting, targets, critic, actor).
    """
    sk = Sketch(env_name, cfg or dop.DOPConfig(), lengths, seeds, test_episodes)
    times, compile_s = {}, 0.0
    for name, (fn, st) in sk.programs(breakdown).items():
        c, m = _time(fn, st, reps if name != "evaluation" else max(2, reps // 2))
        times[name], compile_s = m, compile_s + c
    evals_per_iter = env_steps_per_iter / eval_interval
    per_iter = times["iteration"] + evals_per_iter * times["evaluation"]
    return {"lengths": lengths, "iteration_s": times["iteration"], "evaluation_s": times["evaluation"],
            "per_iteration_s": per_iter, "bound_steps_per_s": seeds * env_steps_per_iter / per_iter,
            "compile_s": compile_s, "parts": {k: v for k, v in times.items() if k not in ("iteration", "evaluation")}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env", default="3m")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--t", type=int, default=40, help="episode length: acting steps; the batch lengths are t+1 "
                    "target slots, t critic steps, t actor slots")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    cfg = dop.DOPConfig()
    r = measure_bound(args.env, Lengths(args.t, args.t + 1, args.t, args.t), args.seeds, cfg.num_envs * args.t,
                      10_000, reps=args.reps)
    print(f"DOP sketch on {args.env}, {args.seeds} seeds vmapped, T={args.t}: "
          f"{r['iteration_s'] * 1e3:.1f} ms per iteration, evaluation {r['evaluation_s'] * 1e3:.1f} ms; "
          f"bound {r['bound_steps_per_s']:,.0f} env steps/s; parts (ms) "
          + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in r["parts"].items()))


if __name__ == "__main__":
    main()
