"""Learners: DOP (the paper's main target), COMA (its App. D) and QMIX (its Fig. 1).

Each learner module provides ``make_nets``, ``init_state``, ``store_episodes``,
``ready_to_train``, ``train_step``, ``attack_q_fn`` and ``buffer_bytes``; the training
program (:mod:`tram.experiments.program`) is the same for all of them.
"""

from tram.learners.coma import COMAConfig
from tram.learners.dop import DOPConfig
from tram.learners.qmix import QMIXConfig

LEARNER_CONFIGS = {"dop": DOPConfig, "coma": COMAConfig, "qmix": QMIXConfig}
