"""tram: training-time attacks on cooperative multi-agent reinforcement learning.

Implements TRAM (Wu, Wang et al., "Model and Method: Training-Time Attack for Cooperative
Multi-Agent Reinforcement Learning") on JAX: grid tasks and SMAX maps, DOP and COMA
learners, and the variance-based, J-based and random action-sampling attacks.

``tram.build_config(env, learner, attack, steps=..., seeds=..., sets=[...])`` builds a
validated :class:`tram.config.TrainConfig`; ``tram.train(config, out)`` trains and writes a
run directory; ``tram.report(runs, out)`` draws figures and tables from a run store.
"""

__version__ = "0.1.0"


def __getattr__(name):
    """``tram.build_config`` is :func:`tram.config.build_train_config`, imported on first use
    (``import tram`` stays light)."""
    if name == "build_config":
        from tram.config import build_train_config

        return build_train_config
    raise AttributeError(f"module 'tram' has no attribute {name!r}")


def train(config, out="runs", **kwargs):
    """Trains ``config`` (a :class:`tram.config.TrainConfig`) on all its seeds at once and
    returns the run directory (see :func:`tram.experiments.runner.train`)."""
    from tram.experiments.runner import train as _train

    return _train(config, out, **kwargs)


def report(runs="runs", out="report"):
    """Writes figures and tables for the run store ``runs`` into ``out``; returns the paths."""
    from tram.report import make_report

    return make_report(runs, out)
