"""Cost of TRAM inside training: training time per env step under each attack method divided
by the clean run's, on SMAX 3m at the paper's setting (DOP: 4 envs per seed; COMA: 8; 5
seeds vmapped), all measured in the same run. Goals: DOP <= 1.10 for var and J; COMA's var
<= 1.3.

    python benchmarks/attack_overhead.py [--learner dop|coma] [--methods none,random,jbased,var]
        [--env 3m] [--seeds 5] [--windows 1] [--quick]

The attack adds work only at acting time (per poisoned agent and step: a Jacobian of its
logits, a few small products, Algorithm 1's beta search in a few vectorised rounds); the learner's updates are
unchanged. Each method's time per env step covers collection, updates and evaluation of
whole evaluation windows after the buffers are warm.
"""

from __future__ import annotations

import argparse

from tabulate import tabulate

from common import time_windows
from tram.attacks.perturb import AttackConfig
from tram.config import EnvConfig, RunConfig, TrainConfig
from tram.learners import LEARNER_CONFIGS


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--learner", default="dop", choices=["dop", "coma"])
    ap.add_argument("--methods", default="none,random,jbased,var",
                    help="comma-separated attack methods; the first is the baseline (use none)")
    ap.add_argument("--env", default="3m")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--eval-interval", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="2 seeds, windows of 2000 steps")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.eval_interval = 2, 2000
    rows, base = [], None
    for method in args.methods.split(","):
        cfg = TrainConfig(env=EnvConfig(args.env), learner=LEARNER_CONFIGS[args.learner](),
                          attack=AttackConfig(method=method, f_a=1.0, kl_u=6.0),
                          run=RunConfig(steps=args.eval_interval * (args.windows + 1), seeds=tuple(range(args.seeds)),
                                        eval_interval=args.eval_interval))
        tm = time_windows(cfg, args.windows)
        per_step = tm.wall_s / tm.env_steps
        per_update = tm.wall_s / max(tm.updates, 1.0)
        if base is None:
            base = (per_step, per_update)
        rows.append([method, f"{tm.steps_per_s:,.0f}", f"{per_step * 1e3:.3f}", f"{per_step / base[0]:.3f}",
                     f"{per_update * 1e3:.0f}", f"{per_update / base[1]:.3f}", f"{tm.compile_s:.0f}"])
        print(rows[-1], flush=True)
    print(tabulate(rows, headers=["method", "env steps/s (all seeds)", "ms per env step", "ratio to clean",
                                  "ms per iteration", "ratio per iteration", "compile s"]))


if __name__ == "__main__":
    main()
