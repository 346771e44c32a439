"""The one error type for bad input, and the number parsers every surface shares.

The configuration dataclasses (:mod:`tram.config`, :class:`tram.attacks.perturb.AttackConfig`)
validate their fields with these helpers and raise :class:`ConfigError`, so the CLI, YAML
sweeps and the Python API give the same message: the key, the value, and what is accepted.
The CLI catches :class:`ConfigError` and prints ``error: <message>`` (exit code 2).
This module imports nothing from tram, so every config module can use it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class ConfigError(ValueError):
    """A bad input. ``str(e)`` is one line naming the option or key, the value given and
    what is accepted; ``key`` is the config key (e.g. ``"run.steps"``) when there is one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


WHOLE_EXAMPLES = "e.g. 2e6, 500000 or 2_000_000"


def _as_float(value: Any) -> float | None:
    """``value`` as a float (numbers, or text such as ``"2e6"`` / ``"2_000_000"``), or ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            return None
    return None


def whole_number(value: Any, key: str, lo: int = 1) -> int:
    """``value`` (an int, a whole float, or text such as ``"2e6"``, ``"1e3"``,
    ``"2_000_000"``) as an ``int >= lo``.

    Raises:
        ConfigError: not a number, not whole, NaN or infinite, or below ``lo``; the message
            names ``key``, the value and what is accepted.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        v: float | int = int(value)
    else:
        v = _as_float(value)
    if v is None or not math.isfinite(v) or v != int(v) or int(v) < lo:
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: a whole number >= {lo} ({WHOLE_EXAMPLES})",
                          key)
    return int(v)


def real_number(value: Any, key: str, lo: float = -math.inf, hi: float = math.inf,
                lo_open: bool = False) -> float:
    """``value`` (a number or numeric text) as a finite float in ``[lo, hi]`` (``(lo, hi]``
    when ``lo_open``).

    Raises:
        ConfigError: not a number, NaN, infinite or out of range (message: key, value,
            accepted range).
    """
    v = _as_float(value)
    ok = v is not None and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
    if not ok:
        if math.isinf(hi):
            rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
            accepted = f"a finite number {rng}" if math.isfinite(lo) else "a finite number"
        else:
            accepted = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ConfigError(f"{key}: {value!r} is not accepted; accepted: {accepted}", key)
    return float(v)
