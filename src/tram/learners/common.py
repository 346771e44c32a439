"""Pieces shared by the actor-critic learners (DOP, COMA): config checks and the optimiser."""

from __future__ import annotations

import optax


def positive_int(cfg, field: str):
    """Checks that ``cfg.field`` is an integer >= 1; raises ``ValueError`` naming ``learner.field`` otherwise."""
    v = getattr(cfg, field)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"learner.{field} must be an integer >= 1, got {v!r}")


def unit_interval(cfg, field: str):
    """Checks that ``cfg.field`` is a number in [0, 1]; raises ``ValueError`` naming ``learner.field`` otherwise."""
    v = getattr(cfg, field)
    if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f"learner.{field} must be in [0, 1], got {v!r}")


def boolean(cfg, field: str, allow_none: bool = False):
    """Checks that ``cfg.field`` is a bool (or None with ``allow_none``); the strings ``true`` /
    ``false`` (any case, as ``--set learner.field=true`` gives them) are converted in place."""
    v = getattr(cfg, field)
    if allow_none and v is None:
        return
    if isinstance(v, str) and v.lower() in ("true", "false"):
        object.__setattr__(cfg, field, v.lower() == "true")
    elif not isinstance(v, bool):
        raise ValueError(f"learner.{field} must be true or false{' (or unset: the default)' if allow_none else ''}, "
                         f"got {v!r}")


def check_actor_critic_config(cfg):
    """Checks shared by the actor-critic learners' configs (DOP, COMA)."""
    for f in ("num_envs", "buffer_size", "batch_size", "target_update_interval", "rnn_hidden",
              "epsilon_anneal_steps", "time_chunk"):
        positive_int(cfg, f)
    for f in ("gamma", "td_lambda", "rms_alpha", "epsilon_start", "epsilon_finish"):
        unit_interval(cfg, f)
    for f in ("actor_lr", "critic_lr", "rms_eps", "grad_clip"):
        v = getattr(cfg, f)
        if not isinstance(v, (int, float)) or v <= 0:
            raise ValueError(f"learner.{f} must be a number > 0, got {v!r}")
    if cfg.batch_size > cfg.buffer_size:
        raise ValueError(
            f"learner.batch_size ({cfg.batch_size}) must be <= learner.buffer_size ({cfg.buffer_size})")
    if cfg.storage_dtype not in ("float16", "float32"):
        raise ValueError(f"learner.storage_dtype must be one of float16, float32; got {cfg.storage_dtype!r}")
    boolean(cfg, "bootstrap_timeouts", allow_none=True)


def rmsprop(lr: float, cfg) -> optax.GradientTransformation:
    """PyTorch's RMSprop (eps outside the sqrt, no momentum) after global-norm clipping."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.rmsprop(lr, decay=cfg.rms_alpha, eps=cfg.rms_eps, eps_in_sqrt=False),
    )
