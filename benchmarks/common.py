"""Shared by the training benchmarks: time whole evaluation windows of a compiled run."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from tram.experiments.program import make_train, over_seeds

WORK_KEYS = ("critic_timesteps", "target_slots", "actor_slots")


@dataclass
class WindowTiming:
    compile_s: float  # init + first window (step-0 evaluation), compile included
    wall_s: float  # the measured windows
    env_steps: float  # summed over seeds, in the measured windows
    updates: float
    work: dict[str, float]
    program: object
    seed_mode: str = "map"
    total_s: float = 0.0  # make_train, compile, window 0, the warm-up window and the measured windows
    total_env_steps: float = 0.0  # summed over seeds, all windows

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.wall_s


def time_windows(config, measured_windows: int, seed_mode: str | None = None) -> WindowTiming:
    """Compiles ``config``'s program over its seeds in ``seed_mode`` (default: the config's
    ``run.seed_mode``, what ``tram train`` runs; see ``tram.experiments.program.over_seeds``),
    runs window 0 (compile) and window 1 (warm-up: fills the buffers), then times
    ``measured_windows`` more windows (greedy evaluations included)."""
    t_start = time.perf_counter()
    prog = make_train(config)
    keys = jnp.stack([jax.random.PRNGKey(s) for s in config.run.seeds])
    init, run_window = over_seeds(prog, seed_mode or config.run.seed_mode)
    t = time.perf_counter()
    state = init(keys)
    state, m = run_window(state, jnp.int32(0))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    state, m = run_window(state, jnp.int32(prog.window_targets[1]))
    jax.block_until_ready(m)
    steps0 = np.asarray(m.env_steps).copy()
    work = {k: 0.0 for k in WORK_KEYS}
    updates = 0.0
    t = time.perf_counter()
    for w in range(2, measured_windows + 2):
        state, m = run_window(state, jnp.int32(prog.window_targets[w]))
        jax.block_until_ready(m)
        for k in work:
            work[k] += float(np.sum(np.asarray(m.work[k])))
        updates += float(np.sum(np.asarray(m.updates)))
    wall = time.perf_counter() - t
    total = time.perf_counter() - t_start
    return WindowTiming(compile_s=compile_s, wall_s=wall, env_steps=float(np.sum(np.asarray(m.env_steps) - steps0)),
                        updates=updates, work=work, program=prog,
                        total_s=total, total_env_steps=float(np.sum(np.asarray(m.env_steps))),
                        seed_mode=seed_mode or config.run.seed_mode)
