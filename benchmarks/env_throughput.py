"""Environment throughput: random-policy env steps per second, tram vs JaxMARL.

For every environment (the grid tasks, if ``tram.envs.grid`` imports, and the nine paper
SMAX maps) and for 20 and 256 environments, one jitted program runs ``--steps`` env steps
of ``vmap``-ed environments inside a ``lax.scan``; actions are drawn uniformly among the
available ones, and each step also reduces the observations and state to a number (so
XLA cannot drop computing them; a learner needs them). tram's loop uses the array view (``step_arrays``, which never
auto-resets) plus an explicit auto-reset (``reset_arrays`` and a select on ``done``), so
it does the same work as JaxMARL's ``step`` (``step_env`` + ``reset`` + select). For
SMAX maps the same measurement runs with JaxMARL's ``HeuristicEnemySMAX`` on the same
scenario (the very object tram wraps, called through its own ``step`` and
``get_avail_actions``), and ``ratio`` = tram / JaxMARL (goal >= 0.9).

Timing: ahead-of-time compile (``compile s``), one warm-up run, then ``--rounds`` timed
samples alternating tram and JaxMARL (other processes share this machine); a sample
repeats the program until it lasts at least 0.25 s, and the best sample of each counts. Steps per second count environment steps (``n_envs`` per scan step).

Usage::

    python benchmarks/env_throughput.py            # everything (a few minutes)
    python benchmarks/env_throughput.py --quick    # spread, 3m, 2s_vs_1sc; 20 envs
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import jax
import jax.numpy as jnp
from tabulate import tabulate

from tram.envs.smax import PAPER_MAPS, make_smax_env

try:
    from tram.envs import grid as _grid
    from tram.envs.registry import make_env as _make_env

    GRID_TASKS: tuple[str, ...] = tuple(_grid.GRID_TASKS)
except Exception as exc:  # noqa: BLE001 - a colleague's module may be mid-edit
    print(f"grid tasks skipped: tram.envs.grid does not import ({exc!r})")
    GRID_TASKS = ()
    _make_env = None


def _sample(key: jax.Array, avail: jax.Array) -> jax.Array:
    """Uniform among available actions: ``avail [..., N, A]`` -> ``[..., N]`` int32."""
    return jax.random.categorical(key, jnp.where(avail, 0.0, -jnp.inf)).astype(jnp.int32)


def _checksum(obs: jax.Array, state: jax.Array) -> jax.Array:
    """A tiny function of observations and state, so XLA cannot drop computing them (a
    learner needs both)."""
    return 1e-9 * (jnp.sum(obs) + jnp.sum(state))


def _select(done: jax.Array, a, b):
    """``a`` where ``done`` else ``b``, leaf by leaf (one env, unbatched)."""
    return jax.tree.map(lambda x, y: jax.lax.select(done, x, y), a, b)


def tram_program(env, n_envs: int, steps: int) -> Callable:
    """``key -> total reward (+ checksum)`` of ``steps`` auto-resetting steps of ``n_envs`` tram envs."""

    def env_step(key, st, ts):
        k_act, k_step, k_reset = jax.random.split(key, 3)
        st2, ts2 = env.step_arrays(k_step, st, _sample(k_act, ts.avail))
        st_r, ts_r = env.reset_arrays(k_reset)
        ts = _select(ts2.done, ts_r, ts2)
        return _select(ts2.done, st_r, st2), ts, ts2.reward + _checksum(ts.obs, ts.state)

    def run(key):
        k0, key = jax.random.split(key)
        st, ts = jax.vmap(env.reset_arrays)(jax.random.split(k0, n_envs))

        def body(carry, k):
            st, ts = carry
            st, ts, r = jax.vmap(env_step)(jax.random.split(k, n_envs), st, ts)
            return (st, ts), jnp.sum(r)

        _, rewards = jax.lax.scan(body, (st, ts), jax.random.split(key, steps))
        return jnp.sum(rewards)

    return run


def jaxmarl_program(inner, n_envs: int, steps: int) -> Callable:
    """The same loop on JaxMARL's own env: its ``step`` (auto-reset) and avail masks."""
    agents = inner.agents

    def avail_of(st):
        av = inner.get_avail_actions(st)
        return jnp.stack([av[a] for a in agents]).astype(bool)

    def env_step(key, st, avail):
        k_act, k_step = jax.random.split(key)
        acts = _sample(k_act, avail)
        obs, st2, rewards, _, _ = inner.step(k_step, st, {a: acts[i] for i, a in enumerate(agents)})
        check = _checksum(jnp.stack([obs[a] for a in agents]), obs["world_state"])
        return st2, avail_of(st2), rewards[agents[0]] + check

    def run(key):
        k0, key = jax.random.split(key)
        _, st = jax.vmap(inner.reset)(jax.random.split(k0, n_envs))
        avail = jax.vmap(avail_of)(st)

        def body(carry, k):
            st, avail = carry
            st, avail, r = jax.vmap(env_step)(jax.random.split(k, n_envs), st, avail)
            return (st, avail), jnp.sum(r)

        _, rewards = jax.lax.scan(body, (st, avail), jax.random.split(key, steps))
        return jnp.sum(rewards)

    return run


def _compile(program: Callable) -> tuple[Callable, float]:
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    compiled = jax.jit(program).lower(key).compile()
    compile_s = time.perf_counter() - t0
    compiled(key).block_until_ready()  # warm-up
    return compiled, compile_s


MIN_SAMPLE_S = 0.25
"""A timed sample repeats the program until it lasts this long (short runs are noisy)."""


def _repeats(compiled: Callable) -> int:
    """How many back-to-back runs make one timed sample last >= ``MIN_SAMPLE_S``."""
    t0 = time.perf_counter()
    compiled(jax.random.PRNGKey(1)).block_until_ready()
    return max(1, int(MIN_SAMPLE_S / max(time.perf_counter() - t0, 1e-6)) + 1)


def _time_once(compiled: Callable, seed: int, repeats: int) -> float:
    """Seconds per run, averaged over ``repeats`` back-to-back runs."""
    keys = [jax.random.PRNGKey(seed * 1000 + i) for i in range(repeats)]
    t0 = time.perf_counter()
    for k in keys:
        compiled(k).block_until_ready()
    return (time.perf_counter() - t0) / repeats


def measure(env_name: str, n_envs: int, steps: int, rounds: int) -> dict:
    """One table row: best-of-``rounds`` steps/s of tram (and JaxMARL for SMAX maps)."""
    is_smax = env_name in PAPER_MAPS
    env = make_smax_env(env_name) if is_smax else _make_env(env_name)
    progs = {"tram": tram_program(env, n_envs, steps)}
    if is_smax:
        progs["jaxmarl"] = jaxmarl_program(env.inner, n_envs, steps)
    compiled, compile_s = {}, {}
    for k, p in progs.items():
        compiled[k], compile_s[k] = _compile(p)
    repeats = {k: _repeats(c) for k, c in compiled.items()}
    best = {k: float("inf") for k in progs}
    for r in range(rounds):
        for k in progs:  # alternate, so load from other processes hits both alike
            best[k] = min(best[k], _time_once(compiled[k], r + 2, repeats[k]))
    rate = {k: n_envs * steps / best[k] for k in progs}
    row = {
        "env": env_name,
        "n_envs": n_envs,
        "tram steps/s": rate["tram"],
        "jaxmarl steps/s": rate.get("jaxmarl"),
        "ratio": rate["tram"] / rate["jaxmarl"] if is_smax else None,
        "compile s": compile_s["tram"],
        "jaxmarl compile s": compile_s.get("jaxmarl"),
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="spread, 3m and 2s_vs_1sc; 20 envs; 100 steps")
    parser.add_argument("--steps", type=int, default=None, help="scan length (default 200; 100 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="timed runs per program (default 5; 3 with --quick)")
    args = parser.parse_args()
    if args.quick:
        envs = [e for e in ("spread",) if e in GRID_TASKS] + ["3m", "2s_vs_1sc"]
        sizes, steps, rounds = (20,), 100, 3
    else:
        envs = list(GRID_TASKS) + list(PAPER_MAPS)
        sizes, steps, rounds = (20, 256), 200, 5
    steps = args.steps or steps
    rounds = args.rounds or rounds
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {steps} steps per scan, best of {rounds} runs")
    rows = []
    for name in envs:
        for n in sizes:
            row = measure(name, n, steps, rounds)
            rows.append(row)
            ratio = f", ratio {row['ratio']:.2f}" if row["ratio"] is not None else ""
            print(f"  {name:>10} x{n:<4} tram {row['tram steps/s']:>10,.0f} steps/s{ratio}", flush=True)
    table = [
        [
            r["env"],
            r["n_envs"],
            f"{r['tram steps/s']:,.0f}",
            "-" if r["jaxmarl steps/s"] is None else f"{r['jaxmarl steps/s']:,.0f}",
            "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
            f"{r['compile s']:.1f}",
            "-" if r["jaxmarl compile s"] is None else f"{r['jaxmarl compile s']:.1f}",
        ]
        for r in rows
    ]
    headers = ["env", "n_envs", "tram steps/s", "jaxmarl steps/s", "ratio", "compile s", "jaxmarl compile s"]
    print(tabulate(table, headers=headers, disable_numparse=True, colalign=("left",) + ("right",) * 6))


if __name__ == "__main__":
    main()
