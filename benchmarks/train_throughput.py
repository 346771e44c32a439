"""Training throughput and arithmetic utilisation of the learners on SMAX 3m.

    python benchmarks/train_throughput.py [--learners dop,coma] [--seeds 5] [--env 3m] [--quick]

For each learner at the paper's setting (DOP: 4 envs per seed; COMA: pymarl's 8), all seeds
vmapped in one program, it reports:

* training env steps per second (summed over seeds), measured over whole evaluation
  windows after the buffers are warm (greedy evaluations included, as in a real run);
* compile time and peak memory (max RSS of this process);
* FLOPs per training iteration and the utilisation: achieved FLOP/s divided by the matmul
  FLOP/s this script measures on this machine in the same run.

FLOPs: XLA's cost analysis counts a loop body once, whatever its trip count, so it is
applied to loop-free pieces of one update (one per-timestep critic step on the whole
batch; the target passes of one time slot; the actor's forward, recomputed forward and
backward pass of one time slot; one acting step) and multiplied by the counts the program
records while training (critic timesteps, target slots, actor slots, env steps). The
critic step, the bulk of the work, is cross-checked against a hand count of its matmuls.

It also extrapolates the wall time of a 1M-step, 5-seed DOP run from the measured rate and
compares it with raw SMAX stepping at the same number of environments (context, not a goal).
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from tabulate import tabulate

from common import time_windows

from tram.attacks.perturb import AttackConfig
from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.envs import make_env
from tram.learners import LEARNER_CONFIGS, coma, dop
from tram.learners.actor import actor_inputs, floored_policy
from tram.learners.common import rmsprop
from tram.learners.policy_gradient import take


def flops_of(fn, *args) -> float:
    """XLA's FLOP count of ``jit(fn)(*args)`` (loop-free functions only)."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0))


def matmul_peak() -> float:
    """Best matmul FLOP/s over a large square and the critic's shapes (float32, all cores)."""
    best = 0.0
    key = jax.random.PRNGKey(0)
    for m, k, n in [(2048, 2048, 2048), (1440, 256, 256), (720, 256, 256)]:
        a, b = jax.random.normal(key, (m, k)), jax.random.normal(key, (k, n))
        f = jax.jit(lambda a, b: a @ b)
        f(a, b).block_until_ready()
        reps = max(3, int(2e10 / (2 * m * k * n)))
        t = time.perf_counter()
        for _ in range(reps):
            out = f(a, b)
        out.block_until_ready()
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t))
    return best


def _zeros_episodes(e, spec, slots=1):
    from tram.learners.episodes import empty_episodes

    ep = empty_episodes(e, slots - 1, spec.num_agents, spec.obs_dim, spec.state_dim, spec.num_actions)
    return ep._replace(avail=jnp.ones_like(ep.avail), filled=jnp.ones_like(ep.filled))


def unit_flops(name: str, cfg, spec) -> dict[str, float]:
    """FLOPs of one unit of each kind of work, for one seed (see the module docstring)."""
    n, a = spec.num_agents, spec.num_actions
    key = jax.random.PRNGKey(0)
    if name == "qmix":
        return qmix_unit_flops(cfg, spec)
    mod = {"dop": dop, "coma": coma}[name]
    nets, st = mod.init_state(cfg, spec, key)
    actor = nets.actor
    h = jnp.zeros((cfg.batch_size, n, cfg.rnn_hidden))
    x = jnp.zeros((cfg.batch_size, n, spec.obs_dim + a + n))
    out = {}

    def actor_slot(params, h, x, q, act):
        def loss(p):
            logits, h2 = actor.apply(p, h, x)
            pi = floored_policy(logits, jnp.ones_like(logits, bool), 0.05)
            base = jax.lax.stop_gradient(jnp.sum(pi * q, -1))
            return -jnp.sum((take(q, act) - base) * jnp.log(take(pi, act))), h2
        (l, _), g = jax.value_and_grad(loss, has_aux=True)(params)
        return l, g

    q16 = jnp.zeros((cfg.batch_size, n, a))
    act16 = jnp.zeros((cfg.batch_size, n), jnp.int32)
    fwd = flops_of(lambda p, h, x: actor.apply(p, h, x)[0], st.actor_params, h, x)
    # recurrent_value_and_grad runs the forward pass once, then forward + backward (vjp).
    out["actor_slot"] = fwd + flops_of(actor_slot, st.actor_params, h, x, q16, act16)
    out["act_step_per_env"] = fwd / cfg.batch_size
    if name == "dop":
        e = cfg.batch_size + cfg.off_batch_size
        ep = _zeros_episodes(e, spec)
        state_t, obs_t, act_t = ep.state[:, 0], ep.obs[:, 0], ep.actions[:, 0]
        opt = rmsprop(cfg.critic_lr, cfg)

        def critic_step(params, opt_state):
            loss, g = jax.value_and_grad(dop.critic_loss_at, argnums=1)(
                nets, params, state_t, obs_t, act_t, jnp.zeros((e,)), jnp.ones((e,)))
            upd, opt_state = opt.update(g, opt_state, params)
            return jax.tree.map(jnp.add, params, upd), opt_state

        out["critic_step"] = flops_of(critic_step, st.critic_params, st.critic_opt)

        def target_slot(tp, ap):
            q = dop.q_values(nets, tp, state_t, obs_t)
            k = nets.mixer.apply(tp["mixer"], state_t)
            off = cfg.off_batch_size
            logits, _ = actor.apply(ap, jnp.zeros((off, n, cfg.rnn_hidden)),
                                    jnp.zeros((off, n, spec.obs_dim + a + n)))
            pi = floored_policy(logits, jnp.ones_like(logits, bool), 0.05)
            return jnp.sum(k * take(q, act_t)) + jnp.sum(k[-off:] * jnp.sum(pi * q[-off:], -1))

        out["target_slot"] = flops_of(target_slot, st.target_params, st.actor_params)
        b = cfg.batch_size
        out["actor_slot"] += flops_of(lambda p: (dop.q_values(nets, p, state_t[:b], obs_t[:b]),
                                                 nets.mixer.apply(p["mixer"], state_t[:b])), st.critic_params)
        # hand count of the critic step's matmuls: forward 2*MACs, backward about 2x forward
        fin = spec.state_dim + spec.obs_dim + n
        hcrit = cfg.critic_hidden
        macs = e * n * (fin * hcrit + hcrit * hcrit + hcrit * (a + 1)) + e * spec.state_dim * cfg.mixing_embed * (n + 1)
        out["critic_step_by_hand"] = 3 * 2 * macs
    else:
        e = cfg.batch_size
        fin = spec.state_dim + spec.obs_dim + 2 * n * a + n
        inp = jnp.zeros((e, n, fin))
        act_t = jnp.zeros((e, n), jnp.int32)
        opt = rmsprop(cfg.critic_lr, cfg)
        from tram.learners.coma_parts import coma_critic_loss_at

        def critic_step(params, opt_state):
            (loss, _), g = jax.value_and_grad(coma_critic_loss_at, has_aux=True)(
                params, nets.critic.apply, inp, act_t, jnp.zeros((e, n)), jnp.ones((e,)))
            upd, opt_state = opt.update(g, opt_state, params)
            return jax.tree.map(jnp.add, params, upd), opt_state

        out["critic_step"] = flops_of(critic_step, st.critic_params, st.critic_opt)
        out["target_slot"] = flops_of(lambda p: nets.critic.apply(p, inp), st.target_params)
        hcrit = cfg.critic_hidden
        out["critic_step_by_hand"] = 3 * 2 * e * n * (fin * hcrit + hcrit * hcrit + hcrit * a)
    return out


def qmix_unit_flops(cfg, spec) -> dict[str, float]:
    """QMIX's work per slot of its 32-episode batch: the target pass (live and target agent
    networks, target mixer) and the loss pass (agent network and mixer, forward, then
    forward again and backward in the chunked back-propagation). Its info counts loss slots
    as ``critic_timesteps`` (``actor_slots`` is the same count, so it gets cost 0 here)."""
    from tram.learners import qmix

    n, a, e = spec.num_agents, spec.num_actions, cfg.batch_size
    nets, st = qmix.init_state(cfg, spec, jax.random.PRNGKey(0))
    h = jnp.zeros((e, n, cfg.rnn_hidden))
    x = jnp.zeros((e, n, spec.obs_dim + a + n))
    s = jnp.zeros((e, spec.state_dim))
    fwd = lambda p, h, x: nets.actor.apply(p, h, x)[0]
    agent_fwd = flops_of(fwd, st.actor_params, h, x)
    mixer_fwd = flops_of(lambda mp: nets.mixer.apply(mp, jnp.zeros((e, n)), s), st.critic_params)

    def loss(p, mp):
        q = fwd(p, h, x)
        return jnp.sum(nets.mixer.apply(mp, jnp.max(q, -1), s) ** 2)

    grad = flops_of(lambda p, mp: jax.grad(loss, argnums=(0, 1))(p, mp), st.actor_params, st.critic_params)
    return {"critic_step": agent_fwd + grad, "target_slot": 2 * agent_fwd + mixer_fwd, "actor_slot": 0.0,
            "act_step_per_env": agent_fwd / e, "critic_step_by_hand": float("nan")}


def smax_raw_steps_per_s(env_name: str, num_envs: int, steps: int = 200) -> float:
    """Random-policy SMAX env steps/s with ``num_envs`` environments in a jitted scan."""
    env = make_env(env_name)

    def run(key):
        key, rk = jax.random.split(key)
        state, ts = jax.vmap(env.reset_arrays)(jax.random.split(rk, num_envs))

        def body(c, _):
            key, state, ts, total = c
            key, ka, ke, kr = jax.random.split(key, 4)
            acts = jax.random.categorical(ka, jnp.where(ts.avail, 0.0, -jnp.inf), axis=-1).astype(jnp.int32)
            state, nxt = jax.vmap(env.step_arrays)(jax.random.split(ke, num_envs), state, acts)
            rs, rts = jax.vmap(env.reset_arrays)(jax.random.split(kr, num_envs))
            sel = lambda a, b: jnp.where(nxt.done.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
            total = total + jnp.sum(nxt.reward)  # keeps the steps from being optimised away
            return (key, jax.tree.map(sel, rs, state), jax.tree.map(sel, rts, nxt), total), None

        return jax.lax.scan(body, (key, state, ts, jnp.float32(0.0)), None, length=steps)[0][3]

    f = jax.jit(run)
    f(jax.random.PRNGKey(0)).block_until_ready()
    t = time.perf_counter()
    f(jax.random.PRNGKey(1)).block_until_ready()
    return steps * num_envs / (time.perf_counter() - t)


def measure(name: str, env_name: str, seeds: int, windows: int, eval_interval: int) -> dict:
    cfg = LEARNER_CONFIGS[name]()
    config = TrainConfig(env=EnvConfig(env_name), learner=cfg, attack=AttackConfig(),
                         run=RunConfig(steps=eval_interval * (windows + 1), seeds=tuple(range(seeds)),
                                       eval_interval=eval_interval))
    tm = time_windows(config, windows)
    units = unit_flops(name, cfg, tm.program.env.spec)
    flops = (tm.work["critic_timesteps"] * units["critic_step"] + tm.work["target_slots"] * units["target_slot"]
             + tm.work["actor_slots"] * units["actor_slot"] + tm.env_steps * units["act_step_per_env"])
    return {
        "learner": name, "env": env_name, "seeds": seeds, "num_envs": cfg.num_envs,
        "env_steps_per_s": tm.steps_per_s, "compile_s": tm.compile_s, "wall_s": tm.wall_s,
        "updates": tm.updates, "flops_per_iter": flops / max(tm.updates, 1.0),
        "flops_per_s": flops / tm.wall_s, "units": units,
        "mean_critic_timesteps": tm.work["critic_timesteps"] / max(tm.updates, 1.0),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--learners", default="dop,coma,qmix")
    ap.add_argument("--env", default="3m")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--windows", type=int, default=2, help="measured evaluation windows")
    ap.add_argument("--eval-interval", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 1 window of 2000 steps")
    ap.add_argument("--write-preset", action="store_true",
                    help="save the measured rates to src/tram/presets/throughput.json (used by `tram reproduce`)")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.windows, args.eval_interval = 2, 1, 2000
    peak = matmul_peak()
    print(f"matmul peak on this machine: {peak / 1e9:.1f} GFLOP/s (float32, best of 3 shapes)")
    rows, results = [], []
    for name in args.learners.split(","):
        r = measure(name, args.env, args.seeds, args.windows, args.eval_interval)
        results.append(r)
        u = r["units"]
        print(f"{name}: critic step {u['critic_step'] / 1e6:.1f} MFLOP (XLA) vs {u['critic_step_by_hand'] / 1e6:.1f} "
              f"MFLOP (hand count); target slot {u['target_slot'] / 1e6:.1f}, actor slot {u['actor_slot'] / 1e6:.1f}; "
              f"{r['mean_critic_timesteps']:.1f} critic timesteps per update")
        rows.append([name, args.env, r["seeds"], r["num_envs"], f"{r['env_steps_per_s']:,.0f}", f"{r['compile_s']:.0f}",
                     f"{r['peak_rss_gib']:.1f}", f"{r['flops_per_iter'] / 1e9:.2f}", f"{r['flops_per_s'] / 1e9:.1f}",
                     f"{r['flops_per_s'] / peak:.2f}"])
    print(tabulate(rows, headers=["learner", "env", "seeds", "envs/seed", "env steps/s (all seeds)", "compile s",
                                  "peak RSS GiB", "GFLOP per update (one seed)", "GFLOP/s", "utilisation"]))
    if args.write_preset:
        import json
        from pathlib import Path

        spec = make_env(args.env).spec
        preset = Path(__file__).resolve().parent.parent / "src" / "tram" / "presets" / "throughput.json"
        old = json.loads(preset.read_text()) if preset.exists() else {"steps_per_s": {}}
        old["steps_per_s"].update({r["learner"]: round(r["env_steps_per_s"] * 5 / r["seeds"], 1) for r in results})
        old["reference_env"] = {"name": args.env, "num_agents": spec.num_agents, "obs_dim": spec.obs_dim,
                                "state_dim": spec.state_dim}
        old["measured_by"] = "python benchmarks/train_throughput.py --write-preset (env steps/s summed over 5 seeds)"
        preset.write_text(json.dumps(old, indent=2) + "\n")
        print(f"wrote {preset}")
    dop_r = next((r for r in results if r["learner"] == "dop"), None)
    if dop_r is not None:
        raw = smax_raw_steps_per_s(args.env, dop_r["num_envs"] * dop_r["seeds"])
        hours = 1e6 * dop_r["seeds"] / dop_r["env_steps_per_s"] / 3600
        print(f"1M-step {dop_r['seeds']}-seed DOP run on {args.env}: {hours:.2f} h (extrapolated from the measured rate); "
              f"raw SMAX stepping at {dop_r['num_envs'] * dop_r['seeds']} envs: {raw:,.0f} steps/s, "
              f"training/raw = {dop_r['env_steps_per_s'] / raw:.4f}")


if __name__ == "__main__":
    main()
