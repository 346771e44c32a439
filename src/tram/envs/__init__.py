"""Environments: the grid tasks of the paper's App. C and StarCraft-style maps on SMAX.

``make_env(name, **options)`` is the one entry point; ``env_names()`` lists every name.
"""

import os
import sys


def _import_jaxmarl_quietly() -> None:
    """Imports ``jaxmarl.environments`` without its "Importing submoduled environments..."
    lines. jaxmarl prints them on stdout at import, after its mabrax module has reset
    ``sys.stdout``/``sys.stderr`` to the interpreter's originals, so a Python-level redirect
    does not reach them: file descriptor 1 is pointed at /dev/null around the import, and
    ``sys.stdout``/``sys.stderr`` are put back afterwards. stderr is untouched and import
    errors propagate."""
    out, err = sys.stdout, sys.stderr
    try:
        out.flush()
        saved = os.dup(1)
    except (AttributeError, OSError, ValueError):  # no real fd 1 (embedded interpreter)
        saved = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        if saved is not None:
            os.dup2(devnull, 1)
        import jaxmarl.environments  # noqa: F401
    finally:
        if saved is not None:
            try:
                sys.__stdout__.flush()
            except (AttributeError, OSError, ValueError):  # pragma: no cover
                pass
            os.dup2(saved, 1)
            os.close(saved)
        os.close(devnull)
        sys.stdout, sys.stderr = out, err


_import_jaxmarl_quietly()

from tram.envs.base import EnvSpec, TimeStep, TramEnv  # noqa: E402
from tram.envs.registry import env_names, make_env  # noqa: E402

__all__ = ["EnvSpec", "TimeStep", "TramEnv", "env_names", "make_env"]
