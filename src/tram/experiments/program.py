"""``make_train(config)``: one compiled training program for any learner, attack and env.

The program is built from three pure, jittable pieces (all ``lax`` loops, no Python loop per
environment step or per episode):

* ``init(key) -> TrainState`` for one seed;
* ``run_window(state, until_env_steps) -> (state, WindowMetrics)``: training iterations
  (collect ``num_envs`` episodes, store them, one learner update once the buffers are
  ready) until the seed has taken ``until_env_steps`` environment steps, then a greedy
  evaluation; the metrics are the means over the window;
* ``train(key) -> (state, WindowMetrics[W])``: ``init`` then a ``lax.scan`` over the ``W``
  evaluation windows: the whole run in one program; ``jax.vmap(train)`` runs seeds together.

The Python driver (:mod:`tram.experiments.runner`) calls the seed-batched ``run_window`` of
:func:`over_seeds` once per evaluation window instead, to show progress and checkpoint
between windows; both paths compute the same numbers.

Seeds (``run.seed_mode``, :data:`SEED_MODES`): ``vmap`` batches the seeds' work in every
operation, so every loop whose trip count depends on the data (the windows' training
iterations, the per-timestep critic steps, the time loops that stop at a batch's longest
episode, the rollouts) runs to the slowest seed, the others computing masked work; ``map``
runs the seeds one after the other inside one program (``lax.map``), each loop to its own
seed's length, giving up the batching of the seeds' matmuls. The numbers per seed are the
same in both modes up to float rounding (a batched matmul may sum in another order;
tests/test_seed_modes.py).

The learner is a :class:`tram.types.Learner` record (``LEARNER`` of ``tram.learners.dop``,
``coma``, ``qmix``; registered in :data:`tram.learners.LEARNERS`): its config class, nets,
state, buffer and update functions, its acting rule (default the floored softmax), its
policy-gradient access (``None`` for QMIX) and where the ``worst_q`` attack reads Q-values.
``make_train`` reads only the record; the named pieces it composes (:func:`learner_update`,
:func:`make_attack_hook`, :func:`accumulate_window`, :func:`window_metrics`,
:func:`window_targets`) are module-level functions with their own tests.

Black-box TRAM (``attack.critic = "surrogate"``, :mod:`tram.attacks.surrogate`): the
attacker's own critic lives in ``TrainState.attacker``, outside the learner's state; each
iteration updates it on the episodes just collected (and, for the directions that read the
last policy gradient, its own estimate of it), and the attack hook reads it instead of the
learner's ``attack_q_fn`` (:func:`surrogate_attack_hook`).

Detection monitor (``make_train(record_detection=True)``, the default): every agent's executed
actions are scored under its clean acting policy (the learner's ``acting_policy``) and the
window's last rollouts are kept in ``WindowMetrics.detection`` (:mod:`tram.detect.score`); it
draws no random number, so every other output is the same without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from tram.attacks.budget import stealth_averages
from tram.config import SEED_MODES
from tram.envs import make_env
from tram.envs.base import TramEnv
from tram.detect.score import DetectionRing
from tram.experiments.xla_options import compiler_options
from tram.learners import learner_record
from tram.learners.actor import epsilon_at, floored_policy
from tram.learners.episodes import EpisodeBuffer
from tram.learners.rollout import (
    AttackHook, AttackSample, EvalStats, RolloutStats, collect_episodes, empty_sample, evaluate_greedy,
)
from tram.types import AttackStepStats, Learner

ATTACK_FIELDS = ("stealth_loglik", "stealth_loglik_alive", "kl_mean", "kl_max", "beta_mean", "saturated_frac",
                 "fallback_frac", "attacked_frac", "pmax_before", "pmax_after")


class WindowAcc(NamedTuple):
    """Sums over one evaluation window (one seed)."""

    episodes: jax.Array
    train_return: jax.Array
    attack: AttackStepStats
    attack_steps: jax.Array
    single_steps: jax.Array
    kl_max: jax.Array
    updates: jax.Array
    info: dict  # sums of the learner's train_step info over the window's updates
    samples: AttackSample  # [M, ...] the window's last M valid Fig. 4 samples (ring)
    sample_pos: jax.Array
    detection: Any = None  # DetectionRing of the window's last rollouts (tram.detect.score), or None


class TrainState(NamedTuple):
    """The carried state of one seed: the learner's state, the run's key, the env steps taken
    (``[]`` int32) and the current window's sums."""

    learner: Any
    key: jax.Array
    env_steps: jax.Array
    window: WindowAcc
    attacker: Any = None
    """The attacker's own state, outside the learner's (which never sees it): the surrogate
    critic (:class:`tram.attacks.surrogate.SurrogateState`) when ``attack.critic`` is
    ``surrogate``, else None (no leaves: checkpoints of other runs are unchanged)."""


class WindowMetrics(NamedTuple):
    """One evaluation (one seed): scalars. Attack columns are NaN without an attack or
    when the window had no attack step. ``stealth_loglik`` is Eq. 3 averaged over EVERY
    step of the poisoned agent (a step with one available action, e.g. a dead SMAX unit,
    contributes its exact value 0); ``stealth_loglik_alive`` is Eq. 3 averaged over its steps
    with at least two available actions (:func:`tram.attacks.budget.stealth_averages`). The
    other attack statistics are means over the steps with at least two available actions
    (a step with one available action admits no perturbation and counts in
    ``fallback_frac``);
    ``beta_mean`` averages the steps whose KL reached the budget (a saturated search
    returns 2^BSN1; see ``saturated_frac``); ``pmax_*`` is the Fig. 4 statistic."""

    env_steps: jax.Array
    test_return: jax.Array
    test_won: jax.Array
    train_return: jax.Array
    critic_loss: jax.Array
    actor_loss: jax.Array
    stealth_loglik: jax.Array
    stealth_loglik_alive: jax.Array
    kl_mean: jax.Array
    kl_max: jax.Array
    beta_mean: jax.Array
    saturated_frac: jax.Array
    fallback_frac: jax.Array
    attacked_frac: jax.Array
    pmax_before: jax.Array
    pmax_after: jax.Array
    updates: jax.Array
    work: dict  # the learner's work counters summed over the window (for benchmarks)
    samples: AttackSample  # [M, ...] Fig. 4 samples of the window (``valid`` marks real ones)
    detection: Any = None  # DetectionRing: the monitor's scores of the window's last rollouts, or None


WORK_KEYS = ("critic_timesteps", "target_slots", "actor_slots", "critic_entries", "actor_entries")
SAMPLES_PER_WINDOW = 4

# WindowMetrics fields that are NaN in a window with no attack step (the attack ran, but the
# poisoned agent never had two available actions); ``stealth_loglik`` and ``fallback_frac``
# have their own rules (see :func:`window_metrics`).
NAN_WITHOUT_ATTACK_STEPS = ("kl_mean", "kl_max", "beta_mean", "saturated_frac", "attacked_frac", "pmax_before",
                            "pmax_after")


def _zero_window(info_keys, num_actions: int) -> WindowAcc:
    """An empty :class:`WindowAcc`: every sum 0, no Fig. 4 sample (``[M, A]`` zeros, invalid)."""
    z = jnp.float32(0.0)
    samples = jax.tree.map(lambda x: jnp.stack([x] * SAMPLES_PER_WINDOW), empty_sample(num_actions))
    return WindowAcc(episodes=z, train_return=z, attack=AttackStepStats.zeros(),
                     attack_steps=z, single_steps=z, kl_max=z, updates=z, info={k: z for k in info_keys},
                     samples=samples, sample_pos=jnp.int32(0))


def accumulate_window(w: WindowAcc, rs: RolloutStats, num_envs: int, ready: jax.Array, info: dict,
                      env_steps: jax.Array | None = None) -> WindowAcc:
    """``w`` plus one training iteration: its rollout's :class:`RolloutStats` ``rs`` (of
    ``num_envs`` episodes), whether the learner updated (``ready``, ``[]`` bool) and the
    update's ``info`` (``[]`` float32 per key of ``w.info``; zeros when it did not update).

    Sums add, ``kl_max`` is the running maximum, and a valid Fig. 4 sample of the rollout is
    written into the ring ``w.samples`` at ``w.sample_pos``, which then advances (mod
    :data:`SAMPLES_PER_WINDOW`), so the ring holds the window's last valid samples. With a
    detection ring (``w.detection``), the rollout's monitor scores are pushed into it, stamped
    with ``env_steps`` (the steps before this iteration).
    Returns the new :class:`WindowAcc` (every leaf as in ``w``)."""
    return WindowAcc(
        episodes=w.episodes + num_envs,
        train_return=w.train_return + jnp.sum(rs.episode_return),
        attack=jax.tree.map(jnp.add, w.attack, rs.attack),
        attack_steps=w.attack_steps + rs.attack_steps,
        single_steps=w.single_steps + rs.attack_single_action_steps,
        kl_max=jnp.maximum(w.kl_max, rs.attack_kl_max),
        updates=w.updates + ready.astype(jnp.float32),
        info={k: w.info[k] + info[k] for k in w.info},
        samples=jax.tree.map(
            lambda ring, new: jnp.where(rs.sample.valid, ring.at[w.sample_pos].set(new), ring),
            w.samples, rs.sample),
        sample_pos=jnp.where(rs.sample.valid, (w.sample_pos + 1) % SAMPLES_PER_WINDOW, w.sample_pos),
        detection=None if w.detection is None else w.detection.push(rs.monitor, rs.length, env_steps),
    )


def window_metrics(w: WindowAcc, env_steps: jax.Array, ev: EvalStats, train_attack: bool) -> WindowMetrics:
    """The :class:`WindowMetrics` of one evaluation window (one seed, ``[]`` scalars) from its
    sums ``w``, the env steps taken so far and the greedy evaluation ``ev`` (``[E]`` arrays).

    The rules (``train_attack``: the run attacks during training):

    * ``train_return``: mean return of the window's training episodes; NaN without episodes.
      ``critic_loss`` / ``actor_loss``: means over the window's updates; NaN without updates.
    * without ``train_attack`` every attack column is NaN;
    * ``stealth_loglik``: Eq. 3 averaged over every step of the poisoned agent (single-action
      steps count with their exact value 0), ``stealth_loglik_alive`` over its steps with at
      least two available actions (:func:`tram.attacks.budget.stealth_averages`; each NaN
      when its denominator is 0);
    * ``kl_mean``, ``saturated_frac``, ``attacked_frac``, ``pmax_*``: means over the steps
      with at least two available actions (``w.attack_steps``); ``kl_max`` their maximum;
      these and ``beta_mean`` are NaN when the window had no such step
      (:data:`NAN_WITHOUT_ATTACK_STEPS`);
    * ``beta_mean``: mean beta over the NON-saturated steps only (``w.attack.beta`` sums beta
      over those; a saturated search returns ``2^BSN1``); NaN when every step saturated;
    * ``fallback_frac``: (fallback steps + single-action steps) / (all of the agent's
      steps): a step with one available action admits no perturbation; NaN without steps.
    * ``updates``: the window's learner updates; ``work``: the ``info`` sums of
      :data:`WORK_KEYS`; ``samples``: the window's Fig. 4 ring; ``detection``: its monitor ring
      (or None).
    """
    nan = jnp.float32(jnp.nan)
    steps = jnp.maximum(w.attack_steps, 1.0)
    all_steps = jnp.maximum(w.attack_steps + w.single_steps, 1.0)

    def att(v):
        return v if train_attack else nan

    a = w.attack
    stealth_every, stealth_alive = stealth_averages(a.stealth_loglik, w.attack_steps, w.single_steps)
    metrics = WindowMetrics(
        env_steps=env_steps,
        test_return=jnp.mean(ev.episode_return),
        test_won=jnp.mean(ev.won),
        train_return=jnp.where(w.episodes > 0, w.train_return / jnp.maximum(w.episodes, 1.0), nan),
        critic_loss=jnp.where(w.updates > 0, w.info["critic_loss"] / jnp.maximum(w.updates, 1.0), nan),
        actor_loss=jnp.where(w.updates > 0, w.info["actor_loss"] / jnp.maximum(w.updates, 1.0), nan),
        stealth_loglik=att(stealth_every),
        stealth_loglik_alive=att(stealth_alive),
        kl_mean=att(a.kl / steps),
        kl_max=att(w.kl_max),
        beta_mean=att(jnp.where(w.attack_steps > a.saturated,
                                a.beta / jnp.maximum(w.attack_steps - a.saturated, 1.0), nan)),
        saturated_frac=att(a.saturated / steps),
        fallback_frac=att((a.fallback + w.single_steps) / all_steps),
        attacked_frac=att(a.attacked / steps),
        pmax_before=att(a.pmax_before / steps),
        pmax_after=att(a.pmax_after / steps),
        updates=w.updates,
        work={k: w.info[k] for k in sorted(w.info) if k in WORK_KEYS},
        samples=w.samples,
        detection=w.detection,
    )
    if not train_attack:
        return metrics
    has_steps = w.attack_steps > 0
    metrics = metrics._replace(**{f: jnp.where(has_steps, getattr(metrics, f), nan)
                                  for f in NAN_WITHOUT_ATTACK_STEPS})
    return metrics._replace(fallback_frac=jnp.where(w.attack_steps + w.single_steps > 0, metrics.fallback_frac,
                                                    nan))


def learner_update(learner: Learner, cfg, nets, ls, key: jax.Array, epsilon: jax.Array, info_keys: tuple[str, ...]):
    """One learner update of state ``ls`` if ``learner.ready_to_train``, else ``ls`` unchanged.

    The state's :class:`EpisodeBuffer` fields stay out of the conditional: under vmap a
    ``cond`` becomes a select over its operands, which would copy the (read-only) buffers
    every iteration.

    Returns:
        ``(ls, info, ready)``: the new state, ``info`` (``[]`` float32 per key of
        ``info_keys``; zeros without an update) and ``ready`` (``[]`` bool).
    """
    zero_info = {k: jnp.float32(0.0) for k in info_keys}
    ready = learner.ready_to_train(cfg, ls)
    buffers = {f: getattr(ls, f) for f in ls._fields if isinstance(getattr(ls, f), EpisodeBuffer)}
    no_buffers = {f: None for f in buffers}

    def train(small):
        new, info = learner.train_step(cfg, nets, small._replace(**buffers), key, epsilon)
        return new._replace(**no_buffers), info

    small, info = jax.lax.cond(ready, train, lambda s: (s, zero_info), ls._replace(**no_buffers))
    return small._replace(**buffers), info, ready


def make_attack_hook(learner: Learner, nets, attack_cfg, perturb, agent: int, ls, env_steps) -> AttackHook:
    """The rollout's :class:`AttackHook` on the poisoned agent ``agent`` for learner state ``ls``
    after ``env_steps`` env steps: ``perturb`` gated to the identity before
    ``attack_cfg.attack_start``, the learner's ``attack_q_fn`` on its current critic, and its
    policy gradient (``learner.policy_gradient``; ``None`` / False for a learner without one,
    whose accepted methods do not read it)."""
    p = gated_perturbation(perturb, attack_cfg, env_steps)
    grad, has_grad = (None, jnp.bool_(False)) if learner.policy_gradient is None else learner.policy_gradient(ls)
    return AttackHook(perturb=p, agent=agent, q_fn=learner.attack_q_fn(nets, ls.critic_params, agent),
                      prev_actor_grad=grad, has_prev_grad=has_grad,
                      carry_hidden_tangent=attack_cfg.carries_hidden_tangent,
                      carry_history=attack_cfg.carries_history)


def gated_perturbation(perturb, attack_cfg, env_steps):
    """``perturb``, or the identity while ``env_steps < attack_cfg.attack_start``
    (:func:`tram.attacks.deploy.gate_perturbation`)."""
    from tram.attacks.deploy import gate_perturbation

    return perturb if attack_cfg.attack_start == 0 else gate_perturbation(perturb, env_steps >= attack_cfg.attack_start)


def surrogate_attack_hook(attack_cfg, perturb, agent: int, attacker, num_actions: int, sur_cfg,
                          env_steps) -> AttackHook:
    """The :class:`AttackHook` of black-box TRAM (``attack.critic = "surrogate"``): the
    direction reads the attacker's own surrogate critic (``attacker``, a
    :class:`tram.attacks.surrogate.SurrogateState`; its recurrent state starts at zeros
    each episode) and, for the directions that read the last policy gradient, the attacker's
    own estimate of it (``attacker.policy_grad``); nothing of the learner's."""
    from tram.attacks.surrogate import surrogate_q_fn

    g_prev, has_g = attacker.policy_grad, attacker.has_grad
    if g_prev is None:  # var reads no gradient
        has_g = jnp.bool_(False)
    return AttackHook(perturb=gated_perturbation(perturb, attack_cfg, env_steps), agent=agent,
                      q_fn=surrogate_q_fn(attacker.params, agent, num_actions, sur_cfg),
                      prev_actor_grad=g_prev, has_prev_grad=has_g,
                      carry_hidden_tangent=attack_cfg.carries_hidden_tangent,
                      carry_history=attack_cfg.carries_history,
                      q_carry=jnp.zeros((sur_cfg.hidden,), jnp.float32))


def window_targets(run_cfg) -> tuple[int, ...]:
    """The env steps of the evaluations of ``run_cfg`` (a :class:`tram.config.RunConfig`):
    ``0, eval_interval, 2 eval_interval, ...`` and last exactly ``steps`` (a shorter last
    window when ``eval_interval`` does not divide it): never train past what was asked.
    ``num_windows`` values."""
    return tuple(min(i * run_cfg.eval_interval, run_cfg.steps) for i in range(run_cfg.num_windows))


def resolve_attacked_agent(agent, env: TramEnv) -> int:
    """Resolves ``attack.agent`` (an index, or a unit type such as ``"zealot"``) to an index.

    Raises:
        ValueError: the index is out of range or no agent has that unit type (the message
            lists the accepted values).
    """
    types = env.spec.agent_unit_types
    if isinstance(agent, str) and not agent.isdigit():
        name = agent.lower()
        if name not in types:
            raise ValueError(
                f"attack.agent {agent!r}: no agent of that unit type on {env.spec.name}; accepted: an index "
                f"0..{len(types) - 1} or one of {', '.join(sorted(set(types)))}")
        return types.index(name)
    idx = int(agent)
    if not 0 <= idx < len(types):
        raise ValueError(f"attack.agent must be in 0..{len(types) - 1} on {env.spec.name}, got {agent!r}")
    return idx


def check_learner_state(learner: Learner, state_shape) -> None:
    """Checks that ``init_state``'s state (``state_shape``, e.g. from ``jax.eval_shape``) is a
    NamedTuple with the fields the program reads (``actor_params``, ``critic_params``).

    Raises:
        TypeError: one line naming the learner and the missing field.
    """
    fields = getattr(state_shape, "_fields", None)
    if fields is None:
        raise TypeError(f"Learner {learner.name!r}: init_state must return (nets, state) with state a NamedTuple, "
                        f"got {type(state_shape).__name__}")
    for f in ("actor_params", "critic_params"):
        if f not in fields:
            raise TypeError(f"Learner {learner.name!r}: its state has no field {f!r} (the training program reads "
                            f"actor_params and critic_params; fields: {', '.join(fields)})")


@dataclass(frozen=True)
class TrainProgram:
    """The pure pieces of one run configuration (see the module docstring)."""

    env: TramEnv
    attacked_agent: int | None
    init: Callable
    """``key [2] -> TrainState``: the fresh state of one seed."""
    iteration: Callable
    """``TrainState -> TrainState``: one training iteration of one seed (for profiling)."""
    run_window: Callable
    """``(TrainState, until_env_steps []) -> (TrainState, WindowMetrics)``: one evaluation window of one seed."""
    train: Callable
    """``key [2] -> (TrainState, WindowMetrics [W])``: the whole run of one seed."""
    window_targets: tuple[int, ...]
    buffer_bytes_per_seed: int


def make_train(config, learner: Learner | None = None, record_detection: bool = True) -> TrainProgram:
    """Builds the training program of ``config`` (a :class:`tram.config.TrainConfig`).

    Args:
        learner: the :class:`tram.types.Learner` record to train; default the one registered
            under ``config.learner.name`` in :data:`tram.learners.LEARNERS`.
        record_detection: score every agent's executed actions under its clean acting policy
            and keep the window's last rollouts in ``WindowMetrics.detection`` (module
            docstring); no random number is drawn for it.

    Returns:
        The :class:`TrainProgram` (pure, uncompiled pieces for one seed).

    Raises:
        ValueError: the attack method needs a policy gradient and the learner has none, or
            ``attack.agent`` does not resolve (:func:`resolve_attacked_agent`).
        TypeError: the learner's state lacks a field the program reads (:func:`check_learner_state`).
    """
    from tram.attacks.methods import READS_PREVIOUS_GRADIENT
    from tram.attacks.perturb import make_perturbation
    from tram.attacks.surrogate import SURROGATE_STREAM, SurrogateConfig, init_surrogate, \
        policy_gradient_estimate, update_surrogate

    SURROGATE = SurrogateConfig()

    cfg = config.learner
    learner = learner_record(cfg.name) if learner is None else learner
    env = make_env(config.env.name, **config.env.options_dict)
    attack_cfg = config.attack
    attacking = attack_cfg.method != "none"
    if attacking and attack_cfg.method_spec.needs_policy_gradient and learner.policy_gradient is None:
        raise ValueError(f"attack.method: {attack_cfg.method!r} needs a policy gradient, which learner "
                         f"{learner.name!r} does not provide (its record's policy_gradient is None)")
    agent = resolve_attacked_agent(attack_cfg.agent, env) if attacking else None
    # which learners accept which method is checked by TrainConfig, from tram.attacks.methods
    perturb = make_perturbation(attack_cfg, learner.worst_q_source) if attacking else None
    train_attack = attacking and attack_cfg.attack_at in ("train", "both")
    test_attack = attacking and attack_cfg.attack_at in ("test", "both")
    storage = jnp.float16 if getattr(cfg, "storage_dtype", "float32") == "float16" else jnp.float32

    nets = learner.make_nets(cfg, env.spec.num_agents, env.spec.num_actions)
    ls_shape = jax.eval_shape(lambda k: learner.init_state(cfg, env.spec, k)[1], jax.random.PRNGKey(0))
    check_learner_state(learner, ls_shape)
    info_shape = jax.eval_shape(lambda s: learner.train_step(cfg, nets, s, jax.random.PRNGKey(0), 0.1)[1], ls_shape)
    info_keys = tuple(sorted(info_shape))
    monitor_policy = (learner.acting_policy or floored_policy) if record_detection else None
    ring0 = (DetectionRing.zeros(cfg.num_envs, env.spec.num_agents, env.spec.episode_limit)
             if record_detection else None)

    def zero_window() -> WindowAcc:
        return _zero_window(info_keys, env.spec.num_actions)._replace(detection=ring0)

    surrogate = attacking and attack_cfg.critic == "surrogate"
    attacker_grad = surrogate and attack_cfg.method in READS_PREVIOUS_GRADIENT  # directions that read g_prev
    input_dim = env.spec.obs_dim + env.spec.num_actions + env.spec.num_agents

    def hook(ls, env_steps, attacker) -> AttackHook:
        if surrogate:  # nothing of the learner's: its own critic and its own gradient estimate
            return surrogate_attack_hook(attack_cfg, perturb, agent, attacker, env.spec.num_actions, SURROGATE,
                                         env_steps)
        return make_attack_hook(learner, nets, attack_cfg, perturb, agent, ls, env_steps)

    def init(key: jax.Array) -> TrainState:
        k_init, k_run = jax.random.split(key)
        _, ls = learner.init_state(cfg, env.spec, k_init)
        attacker = None
        if surrogate:
            attacker = init_surrogate(jax.random.fold_in(key, SURROGATE_STREAM), input_dim, env.spec.num_actions,
                                      SURROGATE)
            if attacker_grad:
                attacker = attacker._replace(policy_grad=jax.tree.map(jnp.zeros_like, ls.actor_params),
                                             has_grad=jnp.bool_(False))
        return TrainState(learner=ls, key=k_run, env_steps=jnp.int32(0),
                          window=zero_window(), attacker=attacker)

    def iteration(state: TrainState) -> TrainState:
        key, k_roll, k_train = jax.random.split(state.key, 3)
        ls = state.learner
        eps = epsilon_at(state.env_steps, cfg.epsilon_start, cfg.epsilon_finish, cfg.epsilon_anneal_steps)
        episodes, rs = collect_episodes(env, nets.actor, ls.actor_params, k_roll, eps, cfg.num_envs,
                                        hook(ls, state.env_steps, state.attacker) if train_attack else None,
                                        storage, learner.select_actions, monitor_policy=monitor_policy)
        attacker = state.attacker
        if surrogate:  # the attacker learns from the episodes it just took part in (no draw from `key`)
            attacker = update_surrogate(attacker, episodes, agent, env.spec.num_actions,
                                        bool(getattr(cfg, "bootstrap_timeouts", False)), SURROGATE)
            if attacker_grad:  # its own policy-gradient estimate, at the actor that acted
                attacker = attacker._replace(
                    policy_grad=policy_gradient_estimate(nets.actor, ls.actor_params, attacker.params, episodes,
                                                         agent, eps, SURROGATE),
                    has_grad=jnp.bool_(True))
        ls = learner.store_episodes(ls, episodes)
        ls, info, ready = learner_update(learner, cfg, nets, ls, k_train, eps, info_keys)
        w = accumulate_window(state.window, rs, cfg.num_envs, ready, info, state.env_steps)
        return TrainState(learner=ls, key=key, env_steps=state.env_steps + jnp.sum(rs.length), window=w,
                          attacker=attacker)

    def run_window(state: TrainState, until_env_steps) -> tuple[TrainState, WindowMetrics]:
        state = jax.lax.while_loop(lambda s: s.env_steps < until_env_steps, iteration, state)
        key, k_eval = jax.random.split(state.key)
        ev = evaluate_greedy(env, nets.actor, state.learner.actor_params, k_eval, config.run.test_episodes,
                             hook(state.learner, state.env_steps, state.attacker) if test_attack else None)
        metrics = window_metrics(state.window, state.env_steps, ev, train_attack)
        return TrainState(learner=state.learner, key=key, env_steps=state.env_steps, window=zero_window(),
                          attacker=state.attacker), metrics

    targets = window_targets(config.run)

    def train(key: jax.Array) -> tuple[TrainState, WindowMetrics]:
        state = init(key)
        return jax.lax.scan(run_window, state, jnp.asarray(targets, jnp.int32))

    return TrainProgram(env=env, attacked_agent=agent, init=init, iteration=iteration, run_window=run_window,
                        train=train, window_targets=targets, buffer_bytes_per_seed=learner.buffer_bytes(cfg, env.spec))


def over_seeds(program: TrainProgram, mode: str = "vmap") -> tuple[Callable, Callable]:
    """The program's pieces over a stack of seeds, compiled, in seed mode ``mode``.

    Returns ``(init, run_window)``: ``init(keys [S, 2]) -> TrainState`` (every leaf with a
    leading seed axis ``S``) and ``run_window(states, until_env_steps) -> (states,
    WindowMetrics)`` (leaves ``[S, ...]``). ``vmap`` batches the seeds (every data-dependent
    loop runs to the slowest seed); ``map`` runs them one after the other in one program
    (each loop to its own seed's length). See the module docstring. Both are compiled with
    :func:`tram.experiments.xla_options.compiler_options` (LLVM level 1).

    Raises:
        ValueError: ``mode`` is not one of :data:`SEED_MODES`.
    """
    options = compiler_options()  # LLVM level 1: same run time, faster compilation (xla_options)
    if mode == "vmap":
        return (jax.jit(jax.vmap(program.init), compiler_options=options),
                jax.jit(jax.vmap(program.run_window, in_axes=(0, None)), compiler_options=options))
    if mode == "map":
        def run_window(states, until_env_steps):
            return jax.lax.map(lambda s: program.run_window(s, until_env_steps), states)

        return (jax.jit(lambda keys: jax.lax.map(program.init, keys), compiler_options=options),
                jax.jit(run_window, compiler_options=options))
    raise ValueError(f"run.seed_mode: {mode!r} is not accepted; accepted: {', '.join(SEED_MODES)}")
