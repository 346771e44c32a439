"""Session set-up shared by every test: one persistent XLA compilation cache per session.

Most of the suite's time is XLA compiling training programs. Many tests build the same
program more than once (a run and its rerun, a clean run and an attacked run whose
perturbation is the identity, the ``tram`` subprocesses of the fault tests, which all run
one small config), and each fresh ``make_train`` closure misses JAX's in-memory cache. With
the persistent cache on, the second build of the same program loads it instead of
compiling it again, in this process or in a ``tram`` subprocess.

The cache must be configured before the first compilation of the process (JAX decides once
whether the persistent cache is used), so it is done here, at import, not in a fixture.

Every program of the suite is compiled at LLVM level 1, the level tram compiles its training
programs at (:mod:`tram.experiments.xla_options`: the same run time, faster compilation),
also the ones tests jit directly: ``XLA_FLAGS`` gets ``--xla_backend_optimization_level=1``
unless the caller's ``XLA_FLAGS`` names a level (subprocesses inherit it).

``TRAM_COMPILE_CACHE`` is set to a fresh directory of this session (removed at the end)
unless the caller set it: CI and a fresh clone start cold, as this suite's timing budget
assumes, and the tests never write into the user's own cache
(``~/.cache/tram/xla/<host>``). Subprocesses inherit the variable. Run
``TRAM_COMPILE_CACHE=~/.cache/tram/xla/dev pytest`` to keep a warm cache across sessions,
or ``TRAM_COMPILE_CACHE=off`` to compile everything every time.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tram.experiments.compile_cache import COMPILE_CACHE_ENV, enable_compile_cache
from tram.experiments.xla_options import put_level_in_xla_flags

put_level_in_xla_flags()

_SESSION_CACHE: str | None = None
if COMPILE_CACHE_ENV not in os.environ:
    _SESSION_CACHE = tempfile.mkdtemp(prefix="tram-test-xla-")
    os.environ[COMPILE_CACHE_ENV] = _SESSION_CACHE
enable_compile_cache()


def pytest_unconfigure(config):
    """Removes the session's own compilation cache (never one the caller chose)."""
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Trainings shared by several test files (each compiled and run once per session)
# ------------------------------------------------------------------------------------------
GATHER_DOP_SEEDS = (0, 1)
GATHER_DOP_RUN = dict(steps=80_000, eval_interval=20_000, test_episodes=32)


def gather_dop_learner():
    """The DOP settings of the Gather learning checks (a short exploration schedule and a
    500-episode off-policy buffer; the rest is the reference's)."""
    from tram.learners.dop import DOPConfig

    return DOPConfig(epsilon_anneal_steps=20_000, off_buffer_size=500)


def train_vmapped(env: str, learner, attack, seeds, **run):
    """``(final TrainState, WindowMetrics)`` of ``jit(vmap(train))`` over ``seeds`` (every
    leaf with a leading seed axis)."""
    import jax
    import jax.numpy as jnp

    from tram.config import EnvConfig, RunConfig, TrainConfig
    from tram.experiments.program import make_train

    cfg = TrainConfig(env=EnvConfig(env), learner=learner, attack=attack, run=RunConfig(seeds=seeds, **run))
    prog = make_train(cfg)
    return jax.jit(jax.vmap(prog.train))(jnp.stack([jax.random.PRNGKey(s) for s in seeds]))


@pytest.fixture(scope="session")
def gather_dop_clean():
    """WindowMetrics of clean DOP on Gather, seeds 0 and 1, 80k steps, evaluations every 20k
    (32 greedy episodes): the baseline of the var attack's effect (tests/test_attack_training.py,
    slow)."""
    from tram.attacks.perturb import AttackConfig

    return train_vmapped("gather", gather_dop_learner(), AttackConfig(method="none"), GATHER_DOP_SEEDS,
                         **GATHER_DOP_RUN)[1]


def set_params(tree, path, **leaves):
    """Overwrites leaves of a flax params tree in place: ``tree["params"][path...][name] = value``
    (each value reshaped to the leaf's shape, float32); for hand-set networks in tests."""
    import jax.numpy as jnp

    node = tree["params"]
    for p in path:
        node = node[p]
    for k, v in leaves.items():
        node[k] = jnp.asarray(v, jnp.float32).reshape(node[k].shape)


# ------------------------------------------------------------------------------------------
# Heaviest files first (make test: pytest -n 2 --dist loadfile --no-loadscope-reorder)
# ------------------------------------------------------------------------------------------
# `--dist loadfile` gives each worker whole files, in collection order with
# `--no-loadscope-reorder` (by default xdist orders files by their number of tests, which put
# heavy files with few tests last and left one core idle for about a minute at the end).
# Longest processing time first: the files below, by their measured time in the default run
# (`pytest -n 2 --dist loadfile --durations=0`, 2026-11-30: 182 s down to 33 s), then the rest
# in their usual order. A file missing from the list only runs later; nothing else changes.
HEAVY_FIRST = ("test_qmix.py", "test_reliability_faults.py", "test_workflow.py", "test_detection.py",
               "test_surrogate.py", "test_smax_envs.py", "test_learning.py", "test_attack_training.py",
               "test_attack_math.py", "test_stealth.py", "test_attack_combined.py", "test_seed_modes.py",
               "test_learner_fidelity.py", "test_dop.py")


def pytest_collection_modifyitems(config, items):
    """Puts the files of :data:`HEAVY_FIRST` first, in that order (a stable sort: the order of
    the tests within a file, and of the other files, is kept)."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))
