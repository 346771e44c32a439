"""The XLA options tram compiles its training programs with: LLVM optimisation level 1.

XLA:CPU's default backend optimisation level is 2 (LLVM's full ``-O2`` pipeline on the code
XLA generates for its fusions). tram compiles its training programs (:func:`tram.experiments.
program.over_seeds`) at level 1 instead, for three measured reasons (jaxlib 0.9.2, 2-core AMD
EPYC with AVX-512; two seeds vmapped, compilation cache off, one run per level in the same
session):

* **Run time is the same.** The heavy work of a training program is matmuls and
  convolutions, which XLA hands to its runtime libraries whatever the level; the code LLVM
  generates is elementwise glue. Seconds per run after compilation, level 2 against 1:
  DOP on Gather, 40k steps 24.3 / 24.9; COMA with the var attack on Gather, 40k steps
  4.1 / 3.8; QMIX on Gather, 20k steps 29.0 / 27.3; DOP on 3m, 6k steps 18.5-19.0 /
  17.5-18.2; COMA var on 3m, 20k steps 5.3-5.5 / 5.1-6.0.
* **Compilation is faster**: 19.4 -> 14.3 s (DOP Gather), 21.0 -> 12.9 s (COMA var Gather),
  19.5 -> 17.5 s (QMIX Gather), 28.2 -> 25.1 s (DOP 3m), 27.1 -> 22.3 s (COMA var 3m),
  trace and lowering included. Every run pays it once, and the test suite, which compiles
  dozens of short programs, pays it dozens of times. Level 0 halves compilation again but
  runs 3-4.5x slower, so it is not used.
* **Level 2 crashes on one program.** Compiling COMA on 3m with the surrogate critic
  (``attack.critic = "surrogate"``) ends the process with a segmentation fault inside XLA's
  CPU backend at level 2 (``tram train --env 3m --learner coma --attack var --set
  attack.critic=surrogate --steps 3000 --seeds 1`` exits with 139); at level 1 it compiles
  and runs.

The level is an execution setting, not part of a run's identity: it changes no operation of
the program, only how LLVM schedules and vectorises XLA's generated loops (which may round
differently in the last bit; every equality the tests assert holds within one level). Set
the level yourself with ``XLA_FLAGS=--xla_backend_optimization_level=N``: when ``XLA_FLAGS``
names the level, tram passes no option and yours applies. On another backend (a GPU) tram
passes no option either: the measurements above are of XLA:CPU, and none was made on a GPU.
"""

from __future__ import annotations

import os

import jax

BACKEND_OPT_LEVEL = 1
"""LLVM optimisation level of tram's training programs (XLA's default is 2); see the module."""

_LEVEL_FLAG = "xla_backend_optimization_level"


def level_in_xla_flags() -> bool:
    """Whether ``XLA_FLAGS`` names the backend optimisation level (then it is the user's)."""
    return _LEVEL_FLAG in os.environ.get("XLA_FLAGS", "")


def put_level_in_xla_flags() -> None:
    """Appends ``--xla_backend_optimization_level=1`` to ``XLA_FLAGS`` unless it names a level,
    so that every program this process (and its children) compiles gets tram's level, also
    the ones jitted outside :func:`compiler_options` (the test suite calls it). Takes effect
    only before JAX initialises its backend."""
    if not level_in_xla_flags():
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{_LEVEL_FLAG}={BACKEND_OPT_LEVEL}".strip()


def compiler_options(backend: str | None = None) -> dict[str, int]:
    """The ``compiler_options`` for ``jax.jit`` of a training program on ``backend`` (default:
    JAX's default backend): ``{"xla_backend_optimization_level": 1}`` on the CPU, or ``{}``
    when ``XLA_FLAGS`` already sets that level (the user's choice applies) or the backend is
    not the CPU (XLA's own default applies)."""
    if level_in_xla_flags():
        return {}
    if (backend or jax.default_backend()) != "cpu":
        return {}
    return {_LEVEL_FLAG: BACKEND_OPT_LEVEL}
