"""JAX's persistent compilation cache for tram runs, and why loading from it is quiet.

:func:`enable_compile_cache` points JAX's persistent compilation cache at
``$TRAM_COMPILE_CACHE`` (default ``~/.cache/tram/xla/<host>``), so that runs whose programs
are the same load the compiled program instead of compiling it again (DOP on Gather, 2,000
steps: 13 s compiled, 3 s loaded from the cache, on a 2-core AMD EPYC with AVX-512).

**The SIGILL lines.** With jaxlib 0.9.2, every program loaded from the cache on an AVX-512
host printed, once per feature::

    E... cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. Target machine feature
    +prefer-no-gather is not  supported on the host machine. [...] This could lead to
    execution errors such as SIGILL.

(and the same for ``+prefer-no-scatter``): about 7 KB per run, 96% of a run's log. What we
found:

- When XLA:CPU builds its LLVM target machine (``IrCompiler::build_target_machine``), it
  appends ``+prefer-no-scatter,+prefer-no-gather`` to the host's features whenever any
  ``+avx512*`` feature is on (gathers and scatters are slow there). The serialized program
  records that feature string.
- On load, ``cpu_aot_loader.cc`` requires every ``+feature`` recorded at compile time to be
  in the host's feature list, which comes from CPUID (``llvm::sys::getHostCPUFeatures``).
  ``prefer-no-gather`` and ``prefer-no-scatter`` are LLVM *tuning* flags (cost-model
  preferences), not instructions: CPUID never lists them, so the check fails on every
  AVX-512 machine, including the one that compiled the program. It is a ``LOG(ERROR)``, not
  a rejection: the program loads and runs (the speed-up above is measured with it).
- Newer XLA skips features starting with ``prefer-`` and ``fast-`` in that check (the fix
  upstream; reported as jax-ml/jax#38445 and openxla/xla#44565). jaxlib 0.10.x has the
  deadlock that makes tram pin 0.9.2 (README, "Design choices"), so the fix cannot be had by
  upgrading, and no XLA flag removes the two tuning flags short of
  ``--xla_cpu_max_isa=AVX2``, which would give up AVX-512 code generation (and change the
  numbers of every run on such hosts).

So tram applies the upstream rule on its side: while JAX deserializes a program from the
cache (:func:`jax._src.compilation_cache.get_executable_and_time`, milliseconds), file
descriptor 2 is captured, and afterwards every captured line is written back to stderr
except the loader lines whose feature is a tuning flag (``+prefer-*`` / ``+fast-*``) and
PjRt's ``Assume version compatibility`` warning (the cache key already holds the jax and
jaxlib versions). A loader line naming a real instruction set (``+avx512f`` compiled on
another machine, say) is still printed, as is anything else written during the load; if
the load raises, everything captured is written back before the error propagates.
``TRAM_COMPILE_CACHE=off`` turns the cache (and this filter) off.

A further guard: the default cache directory is per host (architecture and CPU flags), so
machines sharing a home directory do not load each other's programs.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import jax

COMPILE_CACHE_ENV = "TRAM_COMPILE_CACHE"
"""Environment variable: directory of JAX's persistent compilation cache (default
``~/.cache/tram/xla/<host>``), or ``off``."""

COMPILE_CACHE_MAX_BYTES = 2 << 30
"""Size cap of the compilation cache (JAX evicts the least recently used programs)."""

_TUNING_FEATURE_LINE = re.compile(
    r"cpu_aot_loader\.cc:\d+\] Loading XLA:CPU AOT result\. Target machine feature "
    r"\+(?:prefer|fast)-[a-z0-9.-]+ is not\s+supported on the host machine")
_VERSION_LINE = re.compile(r"pjrt_executable\.cc:\d+\] Assume version compatibility\. "
                           r"PjRt-IFRT does not track XLA executable versions\.")
_LOAD_LOCK = threading.Lock()


def _host_fingerprint() -> str:
    """A short hash (12 hex digits) of this machine's architecture and CPU flags."""
    import hashlib
    import platform

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:  # pragma: no cover - not Linux
        pass
    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:12]


def is_false_alarm(line: str) -> bool:
    """True if ``line`` is a known-harmless message of a cache load: the CPU AOT loader's
    complaint about an LLVM tuning flag (``+prefer-*`` / ``+fast-*``, never an instruction
    set) or PjRt's ``Assume version compatibility`` warning (see the module docstring)."""
    return bool(_TUNING_FEATURE_LINE.search(line) or _VERSION_LINE.search(line))


def filter_load_messages(text: str) -> str:
    """``text`` (captured stderr of a cache load) without the lines :func:`is_false_alarm`
    accepts; every other line is kept, in order."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_false_alarm(line))


def _quiet_load(load):
    """Wraps JAX's cache-load function: fd 2 is captured during the call and replayed
    through :func:`filter_load_messages` afterwards (also when the call raises)."""

    @functools.wraps(load)
    def wrapped(*args, **kwargs):
        with _LOAD_LOCK:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError):  # no usable fd 2: nothing to filter
                return load(*args, **kwargs)
            with tempfile.TemporaryFile() as buf:
                os.dup2(buf.fileno(), 2)
                try:
                    return load(*args, **kwargs)
                finally:
                    try:
                        sys.stderr.flush()
                    except (OSError, ValueError):  # pragma: no cover
                        pass
                    os.dup2(saved, 2)
                    os.close(saved)
                    buf.seek(0)
                    rest = filter_load_messages(buf.read().decode("utf-8", "replace"))
                    if rest:
                        os.write(2, rest.encode())

    wrapped._tram_quiet = True
    return wrapped


def _install_quiet_loads() -> None:
    """Wraps :func:`jax._src.compilation_cache.get_executable_and_time` once (no-op if
    this JAX has no such function)."""
    try:
        from jax._src import compilation_cache as cc
    except ImportError:  # pragma: no cover - a JAX without it: messages stay as they are
        return
    load = getattr(cc, "get_executable_and_time", None)
    if load is not None and not getattr(load, "_tram_quiet", False):
        cc.get_executable_and_time = _quiet_load(load)


def enable_compile_cache() -> str | None:
    """Points JAX's persistent compilation cache at ``$TRAM_COMPILE_CACHE`` (default
    ``~/.cache/tram/xla/<host>``: one directory per CPU model and instruction set, since a
    program compiled for one CPU may not run on another that shares the home directory)
    unless the user configured one or set the variable to ``off``; quiets the false alarms
    of cache loads (module docstring).

    Runs whose programs are the same (same environment, learner, attack and seed count:
    e.g. cells that differ only in ``steps`` or in the seed values, a resumed run, a Fig. 1
    branch and its rerun, a Ray worker repeating a cell) then load the compiled program
    instead of compiling it again, in this process or another. Returns the directory, or
    ``None`` when the cache is off."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        _install_quiet_loads()
        return current
    path = os.environ.get(COMPILE_CACHE_ENV, str(Path.home() / ".cache" / "tram" / "xla" / _host_fingerprint()))
    if path.lower() in ("off", "0", "none", ""):
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    if jax.config.jax_compilation_cache_max_size == -1:  # unlimited: cap it, least recently used go first
        jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)
    _install_quiet_loads()
    return path
