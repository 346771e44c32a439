"""Learners: DOP (the paper's main target) and COMA (its App. D)."""

from tram.learners.dop import DOPConfig

LEARNER_CONFIGS = {"dop": DOPConfig}

try:  # COMA is added by tram.learners.coma
    from tram.learners.coma import COMAConfig

    LEARNER_CONFIGS["coma"] = COMAConfig
except ImportError:  # pragma: no cover - during bootstrap only
    pass
