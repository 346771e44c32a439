"""Training throughput of the learners on SMAX 3m, beside a shapes-only bound measured in
the same run.

    python benchmarks/train_throughput.py [--learners dop,coma,qmix] [--attacks var] [--seeds 5]
                                          [--env 3m] [--quick] [--no-bound] [--write-preset]

For each learner at the paper's setting (DOP: 4 envs per seed; COMA: pymarl's 8; QMIX: 1),
all seeds vmapped in one program, it reports:

* training env steps per second (summed over seeds), measured over whole evaluation
  windows after the buffers are warm (greedy evaluations included, as in a real run);
* for DOP and COMA under each attack of ``--attacks`` (default: the var-based TRAM), the
  time per env step relative to the clean run of the same learner;
* DOP's BOUND: the env steps/s of a shapes-only sketch of one DOP iteration with no masked
  work (``benchmarks/dop_bound.py``: tram's networks and shapes, the batch lengths tram's
  DOP saw in this run, read from its work counters), and tram's rate as a fraction of it;
* compile time and peak memory (max RSS of this process);
* FLOPs per training iteration and the utilisation: achieved FLOP/s divided by the matmul
  FLOP/s this script measures on this machine in the same run.

Work counters: each learner's ``train_step`` reports, per iteration and seed, the critic
timesteps it took, the slots per episode of its target passes and of its actor pass; the
means over the measured windows are the per-seed batch lengths (loops that run under
``vmap`` to the slowest seed's length do more work than these counts).

FLOPs: XLA's cost analysis counts a loop body once, whatever its trip count, so it is
applied to loop-free pieces of one update (one per-timestep critic step on the whole
batch; the target passes of one time slot; the actor's forward, recomputed forward and
backward pass of one time slot; one acting step) and multiplied by the work counters. The
critic step, the bulk of the work, is cross-checked against a hand count of its matmuls.

It also extrapolates the wall time of a 1M-step, 5-seed DOP run from the measured rate and
compares it with raw SMAX stepping at the same number of environments (context, not a goal).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tabulate import tabulate

from common import time_windows
from dop_bound import Lengths, measure_bound

from tram.attacks.perturb import AttackConfig
from tram.config import SEED_MODES, EnvConfig, RunConfig, TrainConfig
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


def measure(name: str, env_name: str, seeds: int, windows: int, eval_interval: int, attack: str = "none",
            flops: bool = True, seed_mode: str | None = None) -> dict:
    """Times ``windows`` evaluation windows of learner ``name`` (``attack``: a TRAM method or
    ``none``). Returns the rates, the work counters' per-seed means per iteration and (with
    ``flops``) the FLOP count and utilisation inputs."""
    cfg = LEARNER_CONFIGS[name]()
    att = AttackConfig() if attack == "none" else AttackConfig(method=attack, f_a=1.0, kl_u=6.0)
    config = TrainConfig(env=EnvConfig(env_name), learner=cfg, attack=att,
                         run=RunConfig(steps=eval_interval * (windows + 1), seeds=tuple(range(seeds)),
                                       eval_interval=eval_interval))
    tm = time_windows(config, windows, seed_mode)
    per_iter = lambda x: x / max(tm.updates, 1.0)
    out = {
        "learner": name, "attack": attack, "env": env_name, "seeds": seeds, "num_envs": cfg.num_envs,
        "seed_mode": tm.seed_mode, "env_steps_per_s": tm.steps_per_s, "compile_s": tm.compile_s,
        "wall_s": tm.wall_s, "total_s": tm.total_s, "total_env_steps": tm.total_env_steps,
        "rate_with_compile": tm.total_env_steps / tm.total_s,
        "updates": tm.updates, "env_steps_per_iter": per_iter(tm.env_steps),
        "mean_critic_timesteps": per_iter(tm.work["critic_timesteps"]),
        "mean_target_slots": per_iter(tm.work["target_slots"]),
        "mean_actor_slots": per_iter(tm.work["actor_slots"]),
        "test_episodes": config.run.test_episodes, "eval_interval": eval_interval,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if flops:
        units = unit_flops(name, cfg, tm.program.env.spec)
        total = (tm.work["critic_timesteps"] * units["critic_step"] + tm.work["target_slots"] * units["target_slot"]
                 + tm.work["actor_slots"] * units["actor_slot"] + tm.env_steps * units["act_step_per_env"])
        out.update(units=units, flops_per_iter=per_iter(total), flops_per_s=total / tm.wall_s)
    return out


def dop_bound(r: dict, reps: int, breakdown: bool) -> dict:
    """The shapes-only DOP bound (benchmarks/dop_bound.py) at the lengths of the DOP run ``r``."""
    lengths = Lengths.of(act=r["env_steps_per_iter"] / r["num_envs"], target=r["mean_target_slots"],
                         critic=r["mean_critic_timesteps"], actor=r["mean_actor_slots"])
    return measure_bound(r["env"], lengths, r["seeds"], r["env_steps_per_iter"], r["eval_interval"],
                         r["test_episodes"], reps=reps, breakdown=breakdown)


PRESET = Path(__file__).resolve().parent.parent / "src" / "tram" / "presets" / "throughput.json"


def write_preset(env_name: str, results: list[dict], seed_mode: str, load_start: tuple[float, ...]) -> None:
    """Saves the clean rates (env steps/s summed over 5 seeds run in ``seed_mode``) and each
    attack's cost per env step relative to clean to ``presets/throughput.json``, which `tram
    reproduce --dry-run` reads. Learners not measured in this run keep their previous entries.
    ``measured_by`` records the command, the seed mode, the date and the machine's load
    average (``os.getloadavg``) at the start (``load_start``) and at the end of the run."""
    spec = make_env(env_name).spec
    old = json.loads(PRESET.read_text()) if PRESET.exists() else {}
    rates = dict(old.get("steps_per_s", {}))
    costs = dict(old.get("attack_cost", {}))
    clean = {r["learner"]: r for r in results if r["attack"] == "none"}
    rates.update({n: round(r["env_steps_per_s"], 1) for n, r in clean.items()})
    for r in results:
        if r["attack"] != "none" and r["learner"] in clean:
            costs.setdefault(r["learner"], {})[r["attack"]] = round(
                clean[r["learner"]]["env_steps_per_s"] / r["env_steps_per_s"], 3)
    preset = {
        "steps_per_s": rates,
        "attack_cost": costs,
        "reference_env": {"name": env_name, "num_agents": spec.num_agents, "obs_dim": spec.obs_dim,
                          "state_dim": spec.state_dim},
        "seed_mode": seed_mode,
        "measured_by": (f"python benchmarks/train_throughput.py --write-preset --seed-mode {seed_mode}, "
                        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: training env steps/s summed over 5 "
                        f"seeds (run.seed_mode={seed_mode}), clean, steady state after a warm-up window; attack_cost = "
                        f"time per env step under the attack / clean, same run. Machine: {os.cpu_count()} cores, "
                        f"load average (1/5/15 min) {' '.join(f'{x:.2f}' for x in load_start)} at the start, "
                        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end: "
                        f"other processes shared the cores, so the absolute rates are low; the ratios are same-run"),
    }
    PRESET.write_text(json.dumps(preset, indent=2) + "\n")
    print(f"wrote {PRESET}")


QMIX_BASELINE = 379.0  # issue 12: QMIX on 3m, 5 seeds, env steps/s before the speed-ups
GOALS = {"dop_bound_ratio": 0.6, "qmix_vs_baseline": 2.0, "coma_var_cost": 1.3}


def _worker_args(args) -> list[str]:
    """The measurement flags handed to each worker subprocess."""
    return ["--env", args.env, "--seeds", str(args.seeds), "--windows", str(args.windows),
            "--eval-interval", str(args.eval_interval), "--bound-reps", str(args.bound_reps),
            "--seed-mode", args.seed_mode] + (["--no-flops"] if args.no_flops else []) + (
            ["--quick"] if args.quick else [])


def _in_subprocess(args, job: str, extra: list[str] | None = None) -> dict:
    """Runs one measurement (``job``: ``LEARNER:ATTACK`` or ``bound``) in a fresh Python
    process, so that each learner's compiled programs and buffers are freed before the next
    (all in one process ran out of memory). Returns the worker's JSON result."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", job, "--worker-out", str(out)]
        subprocess.run(cmd + _worker_args(args) + (extra or []), check=True)
        return json.loads(out.read_text())


def _worker(args) -> None:
    """The ``--worker`` entry point: one measurement, written as JSON to ``--worker-out``."""
    if args.worker == "bound":
        r = json.loads(args.worker_dop)
        b = dop_bound(r, args.bound_reps, breakdown=not args.quick)
        b["lengths"] = vars(b["lengths"])
    else:
        name, attack = args.worker.split(":")
        b = measure(name, args.env, args.seeds, args.windows, args.eval_interval, attack,
                    flops=not args.no_flops and attack == "none", seed_mode=args.seed_mode)
        if not args.no_flops and attack == "none":
            b["matmul_peak"] = matmul_peak()
    Path(args.worker_out).write_text(json.dumps(b))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--learners", default="dop,coma,qmix")
    ap.add_argument("--attacks", default="var",
                    help="TRAM methods timed against clean for DOP and COMA (comma list; '' for none)")
    ap.add_argument("--env", default="3m")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed-mode", default=RunConfig().seed_mode, choices=list(SEED_MODES),
                    help="how the seeds run (run.seed_mode; default: the default of `tram train`)")
    ap.add_argument("--windows", type=int, default=1, help="measured evaluation windows (after one warm-up window)")
    ap.add_argument("--eval-interval", type=int, default=5000, help="env steps per seed per window")
    ap.add_argument("--bound-reps", type=int, default=5, help="timed calls of each sketch program")
    ap.add_argument("--no-bound", action="store_true", help="skip the DOP sketch")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP counts and the matmul peak")
    ap.add_argument("--quick", action="store_true",
                    help="windows of 2000 steps, 3 timed sketch calls, no sketch breakdown (same seeds)")
    ap.add_argument("--write-preset", action="store_true",
                    help="save the measured rates to src/tram/presets/throughput.json (used by `tram reproduce`); "
                         "needs --seeds 5; learners not run keep their entries")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--worker-dop", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.windows, args.eval_interval, args.bound_reps = 1, 2000, 3
    if args.worker:
        return _worker(args)
    learners = [x for x in args.learners.split(",") if x]
    attacks = [x for x in args.attacks.split(",") if x]
    if args.write_preset and args.seeds != 5:
        ap.error(f"--write-preset needs --seeds 5 (the preset holds rates for 5 seeds), got {args.seeds}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.env}, {args.seeds} seeds, "
          f"seed_mode={args.seed_mode}, {args.windows} measured window(s) of {args.eval_interval} env steps per "
          f"seed after a warm-up window; each measurement in its own process; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    load_start = os.getloadavg()
    results = []
    for name in learners:
        runs = ["none"] + ([a for a in attacks] if name in ("dop", "coma") else [])
        for attack in runs:
            r = _in_subprocess(args, f"{name}:{attack}")
            results.append(r)
            print(f"{name}{'' if attack == 'none' else ' + ' + attack}: {r['env_steps_per_s']:,.0f} env steps/s "
                  f"steady; {r['total_s']:.0f} s wall in all for {r['total_env_steps']:,.0f} env steps "
                  f"({r['rate_with_compile']:,.0f} env steps/s with compile {r['compile_s']:.0f} s); per seed and "
                  f"iteration: {r['env_steps_per_iter']:.1f} env steps, {r['mean_critic_timesteps']:.1f} critic "
                  f"timesteps, {r['mean_target_slots']:.1f} target slots, {r['mean_actor_slots']:.1f} actor slots",
                  flush=True)
            if "units" in r:
                u = r["units"]
                print(f"  FLOPs: critic step {u['critic_step'] / 1e6:.1f} MFLOP (XLA) vs "
                      f"{u['critic_step_by_hand'] / 1e6:.1f} MFLOP (hand count); target slot "
                      f"{u['target_slot'] / 1e6:.1f}, actor slot {u['actor_slot'] / 1e6:.1f}", flush=True)
    clean = {r["learner"]: r for r in results if r["attack"] == "none"}
    bound = None
    if "dop" in clean and not args.no_bound:
        bound = _in_subprocess(args, "bound", ["--worker-dop", json.dumps(clean["dop"])])
        L = bound["lengths"]
        parts = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in bound["parts"].items())
        print(f"DOP sketch at T_act {L['act']}, T_target {L['target']}, T_critic {L['critic']}, T_actor "
              f"{L['actor']} (tram's per-seed means, rounded), {args.seeds} seeds vmapped: "
              f"{bound['iteration_s'] * 1e3:.0f} ms per iteration + {bound['evaluation_s'] * 1e3:.0f} ms per "
              f"evaluation (compile {bound['compile_s']:.0f} s)" + (f"; alone (ms): {parts}" if parts else ""),
              flush=True)

    rows = []
    for r in results:
        c = clean.get(r["learner"])
        vs_clean = f"{c['env_steps_per_s'] / r['env_steps_per_s']:.2f}" if c and r["attack"] != "none" else ""
        b = bound["bound_steps_per_s"] if bound and r["learner"] == "dop" and r["attack"] == "none" else None
        peak = r.get("matmul_peak")
        util = f"{r['flops_per_s'] / peak:.2f}" if peak and "flops_per_s" in r else ""
        rows.append([r["learner"], r["attack"], r["num_envs"], f"{r['env_steps_per_s']:,.0f}",
                     f"{r['rate_with_compile']:,.0f}", f"{r['total_s']:.0f}", vs_clean,
                     f"{b:,.0f}" if b else "", f"{r['env_steps_per_s'] / b:.2f}" if b else "",
                     f"{r['compile_s']:.0f}", f"{r['peak_rss_gib']:.1f}",
                     f"{r['flops_per_iter'] / 1e9:.2f}" if "flops_per_iter" in r else "", util])
    print(tabulate(rows, headers=["learner", "attack", "envs/seed", f"env steps/s ({args.seeds} seeds)",
                                  "with compile", "wall s", "time/step vs clean", "bound env steps/s",
                                  "tram / bound", "compile s", "peak RSS GiB", "GFLOP per update (one seed)",
                                  "utilisation"]))
    goals = []
    if bound and "dop" in clean:
        goals.append(f"DOP tram/bound {clean['dop']['env_steps_per_s'] / bound['bound_steps_per_s']:.2f} "
                     f"(goal >= {GOALS['dop_bound_ratio']})")
    if "qmix" in clean:
        goals.append(f"QMIX {clean['qmix']['env_steps_per_s']:,.0f} env steps/s = "
                     f"{clean['qmix']['env_steps_per_s'] / QMIX_BASELINE:.2f}x the issue's {QMIX_BASELINE:.0f} "
                     f"(goal >= {GOALS['qmix_vs_baseline']}x)")
    for r in results:
        if r["learner"] == "coma" and r["attack"] != "none" and "coma" in clean:
            goals.append(f"COMA {r['attack']} / clean time per env step "
                         f"{clean['coma']['env_steps_per_s'] / r['env_steps_per_s']:.2f} "
                         f"(goal <= {GOALS['coma_var_cost']})")
    if goals:
        print("goals (same-run ratios): " + "; ".join(goals))
    if args.write_preset:
        write_preset(args.env, results, args.seed_mode, load_start)
    dop_r = clean.get("dop")
    if dop_r is not None:
        raw = smax_raw_steps_per_s(args.env, dop_r["num_envs"] * dop_r["seeds"])
        hours = 1e6 * dop_r["seeds"] / dop_r["env_steps_per_s"] / 3600
        print(f"1M-step {dop_r['seeds']}-seed DOP run on {args.env}: {hours:.2f} h (extrapolated from the measured rate); "
              f"raw SMAX stepping at {dop_r['num_envs'] * dop_r['seeds']} envs: {raw:,.0f} steps/s, "
              f"training/raw = {dop_r['env_steps_per_s'] / raw:.4f}")


if __name__ == "__main__":
    main()
