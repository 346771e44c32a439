"""Learners: DOP (the paper's main target), COMA (its App. D) and QMIX (its Fig. 1).

Each learner module exports ``LEARNER``, a :class:`tram.types.Learner` record (its config
class and the functions the training program calls); :data:`LEARNERS` registers them by
``learner.name``. The training program (:mod:`tram.experiments.program`) is the same for
all of them. Adding a learner: one module exporting its record, plus one line here (README,
"Extending tram").
"""

from tram.learners import coma, dop, qmix
from tram.learners.coma import COMAConfig
from tram.learners.dop import DOPConfig
from tram.learners.qmix import QMIXConfig
from tram.types import Learner

LEARNERS: dict[str, Learner] = {rec.name: rec for rec in (dop.LEARNER, coma.LEARNER, qmix.LEARNER)}
"""``learner.name -> Learner`` record, in the order the CLI and errors list them."""

LEARNER_CONFIGS: dict[str, type] = {name: rec.config for name, rec in LEARNERS.items()}
"""``learner.name -> config class`` (derived from :data:`LEARNERS`)."""

__all__ = ["LEARNERS", "LEARNER_CONFIGS", "learner_record", "DOPConfig", "COMAConfig", "QMIXConfig"]


def learner_record(name: str) -> Learner:
    """The registered :class:`tram.types.Learner` of ``learner.name`` ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the accepted names).
    """
    try:
        return LEARNERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"learner.name: {name!r} is not accepted; accepted: {', '.join(LEARNERS)}") from None
