"""Training throughput of each ``run.seed_mode``, measured back to back in one process.

    python benchmarks/seed_modes.py [--learner dop] [--env 3m] [--seeds 5] [--window 5000] [--rounds 2]

For each mode (:data:`tram.config.SEED_MODES`): compile, run window 0 and one warm-up
window (fills the buffers), then time ``--rounds`` windows of ``--window`` env steps per
seed, alternating the modes round by round so that load from other processes hits both.
Prints env steps/s summed over seeds per mode and checks that the modes' per-seed metrics
agree (rtol 1e-4).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from tram.attacks.perturb import AttackConfig
from tram.config import SEED_MODES, EnvConfig, RunConfig, TrainConfig
from tram.experiments.program import make_train, over_seeds
from tram.learners import LEARNER_CONFIGS


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--learner", default="dop")
    ap.add_argument("--env", default="3m")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--window", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default=",".join(SEED_MODES))
    args = ap.parse_args()
    modes = args.modes.split(",")
    config = TrainConfig(env=EnvConfig(args.env), learner=LEARNER_CONFIGS[args.learner](), attack=AttackConfig(),
                         run=RunConfig(steps=args.window * (args.rounds + 2), seeds=tuple(range(args.seeds)),
                                       eval_interval=args.window))
    prog = make_train(config)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in range(args.seeds)])
    fns, states, wall, steps, metrics = {}, {}, {}, {}, {}
    for mode in modes:
        init, run_window = over_seeds(prog, mode)
        t = time.perf_counter()
        state = init(keys)
        state, _ = run_window(state, jnp.int32(0))
        state, m = run_window(state, jnp.int32(prog.window_targets[1]))
        jax.block_until_ready(m)
        print(f"{mode}: compile + window 0 + warm-up window {time.perf_counter() - t:.0f} s", flush=True)
        fns[mode], states[mode], wall[mode], steps[mode], metrics[mode] = run_window, state, 0.0, 0.0, []
    for r in range(args.rounds):
        target = jnp.int32(prog.window_targets[r + 2])
        for mode in modes:
            before = np.asarray(states[mode].env_steps).sum()
            t = time.perf_counter()
            states[mode], m = fns[mode](states[mode], target)
            jax.block_until_ready(m)
            wall[mode] += time.perf_counter() - t
            steps[mode] += float(np.asarray(m.env_steps).sum() - before)
            metrics[mode].append(m)
            print(f"round {r}: {mode} {steps[mode] / wall[mode]:,.0f} env steps/s so far", flush=True)
    for mode in modes:
        print(f"{args.learner} {args.env} {args.seeds} seeds, seed_mode={mode}: {steps[mode] / wall[mode]:,.0f} env "
              f"steps/s (all seeds; {steps[mode]:,.0f} steps in {wall[mode]:.1f} s)")
    ref = modes[0]
    for mode in modes[1:]:
        worst = 0.0
        for a, b in zip(metrics[ref], metrics[mode]):
            for f in ("test_return", "train_return", "critic_loss", "actor_loss"):
                x, y = np.asarray(getattr(a, f)), np.asarray(getattr(b, f))
                worst = max(worst, float(np.max(np.abs(x - y) / (np.abs(x) + 1e-6))))
        print(f"{mode} vs {ref}: largest relative difference of the per-seed metrics {worst:.2e}")


if __name__ == "__main__":
    main()
