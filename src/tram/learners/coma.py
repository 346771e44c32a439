"""COMA (Foerster et al., AAAI 2018) as implemented in oxwhirl/pymarl
(``learners/coma_learner.py``, ``modules/critics/coma.py``, ``config/algs/coma.yaml``,
``config/default.yaml``): the second learner the TRAM paper attacks (App. D, Fig. 9).

Follows the reference in:

* actor: the shared GRU actor and epsilon-floored controller of :mod:`tram.learners.actor`
  (identical to DOP's);
* critic: ``Q_i(s, u^-i, .)`` from ``[state, obs_i, joint actions with agent i's block
  zeroed, joint last actions, agent id]`` (:func:`tram.learners.coma_parts.coma_critic_inputs`),
  MLP 128-128;
* targets: per-agent TD(lambda) (lambda 0.8, gamma 0.99) on the TARGET critic at the taken
  actions, computed once before the critic updates;
* critic: one RMSprop step per timestep in REVERSED time order on
  ``sum(mask (Q_i(a_i) - y)^2) / sum(mask)``, skipping timesteps with no valid entry; the
  Q values the actor uses are recorded from the critic just before its step-t update;
* actor: counterfactual baseline ``b = sum_a pi(a) Q(a)``, ``A = Q(a_i) - b`` (detached),
  ``loss = -sum(mask A log pi(a_i)) / sum(mask)`` with the epsilon-floored policy;
* target: hard copy after the actor step once 200 or more critic steps have passed since
  the last copy;
* time-limit ends are terminal for the targets (``learner.bootstrap_timeouts = False``,
  the default on SMAX; on the grid tasks the default is True, see
  :func:`tram.config.default_bootstrap_timeouts`): pymarl's SMAC config has ``continuing_episode: False``, so its runners
  store ``terminated = True`` at a timeout (:func:`tram.learners.episodes.target_terminated`);
* hyper-parameters: 8 parallel environments, buffer 8, batch 8 (purely on-policy: each
  iteration trains on the 8 episodes just collected), RMSprop lr 5e-4 for both, alpha 0.99,
  eps 1e-5, gradient clip 10, epsilon 0.5 -> 0.01 over 100k steps (pymarl's ``coma.yaml``);
* observations and states stored as float32 (``learner.storage_dtype``, default float32:
  the buffer holds only 8 episodes);
* acting with the epsilon-floored policy (``mask_before_softmax: False``), epsilon at the
  env steps counted before the batch for acting and the loss alike, greedy test episodes;
* every time loop stops at the batch's longest episode (:mod:`tram.learners.timechunks`),
  the same numbers as the reference's truncation to ``max_t_filled`` (the actor's layers
  step by step; the ``blocks`` form of :mod:`tram.learners.policy_gradient` is an option,
  see :mod:`tram.learners.dop`).

Departs from the reference, or chooses where it is silent (default, then the option):

* the TRAM paper's hyper-parameters (App. A) describe its DOP setup (critic lr 1e-4,
  DOP's networks, a 32-episode on-policy buffer) and say nothing specific about COMA, so
  COMA keeps pymarl's, including the epsilon schedule above; App. A's schedule is
  ``learner.epsilon_start=1.0``, ``epsilon_finish=0.05``, ``epsilon_anneal_steps=500000``;
* random numbers come from the run's JAX keys; with batch = buffer = 8 the sample is the
  whole buffer either way (its order differs, which no loss depends on);
* option that is not the reference: ``learner.bootstrap_timeouts=true`` (targets
  bootstrap from the post-episode slot at a timeout: the textbook treatment);
* the last actor gradient is kept in the state for the J-based attack (no effect on
  training). Under a training-time attack the learner trains on the executed (perturbed)
  actions with its own clean policy; the attack perturbs the softmax part of the poisoned
  agent's policy and the epsilon floor is applied after it (``docs/attack-math.md``);
* run level, not in this module: SMAX instead of StarCraft II, with SMAX's episode limits
  (100 steps, 2s_vs_1sc 200; SMAC's 3m has 60) and the grid tasks' 25 (``docs/envs.md``);
  evaluation with 32 greedy test episodes every 10k steps, as pymarl's SMAC config.

The targets, losses and reference facts are written out in ``docs/learners.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from tram.learners.actor import RNNActor
from tram.learners.coma_parts import ComaCritic, coma_critic_inputs, coma_critic_step_sequence, last_actions_onehot
from tram.learners.common import check_actor_critic_config, positive_int, rmsprop
from tram.learners.episodes import (
    EpisodeBuffer, Episodes, buffer_add, buffer_init, buffer_sample_uniform, empty_episodes, episodes_nbytes,
    loss_mask, target_terminated, truncate_length,
)
from tram.learners.policy_gradient import pg_loss_and_grad, take
from tram.learners.targets import td_lambda_targets
from tram.learners.timechunks import map_time
from tram.types import Learner


@dataclass(frozen=True)
class COMAConfig:
    """COMA hyper-parameters (defaults: oxwhirl/pymarl coma.yaml and default.yaml)."""

    name: str = "coma"
    num_envs: int = 8
    """Parallel environments per seed (batch_size_run)."""
    buffer_size: int = 8
    batch_size: int = 8
    gamma: float = 0.99
    td_lambda: float = 0.8
    actor_lr: float = 5e-4
    critic_lr: float = 5e-4
    rms_alpha: float = 0.99
    rms_eps: float = 1e-5
    grad_clip: float = 10.0
    target_update_interval: int = 200
    """Critic steps (one per timestep) between hard target copies."""
    epsilon_start: float = 0.5
    epsilon_finish: float = 0.01
    epsilon_anneal_steps: int = 100_000
    rnn_hidden: int = 64
    critic_hidden: int = 128
    storage_dtype: str = "float32"
    """dtype of stored observations and states (the buffer holds only 8 episodes)."""
    time_chunk: int = 8
    """Steps per chunk of the time loops that stop at a batch's longest episode."""
    bootstrap_timeouts: bool | None = None
    """Bootstrap targets at time-limit ends. ``None``: the environment's default, resolved by
    :class:`tram.config.TrainConfig` (False on SMAX, as the reference; True on the grid tasks,
    whose unobserved time limit makes a terminal end unlearnable for the critic; see
    :func:`tram.learners.episodes.target_terminated`)."""
    """False (the reference): a time-limit end is terminal for the TD(lambda) targets; True:
    they bootstrap from the post-episode slot there."""

    def __post_init__(self):
        check_actor_critic_config(self)
        positive_int(self, "critic_hidden")


class COMANets(NamedTuple):
    """COMA's networks: the shared recurrent ``actor`` and the centralised ``critic``."""

    actor: RNNActor
    critic: ComaCritic


def make_nets(cfg: COMAConfig, num_agents: int, num_actions: int) -> COMANets:
    """COMA's (unparameterised) networks for ``num_agents`` agents and ``num_actions`` actions."""
    return COMANets(actor=RNNActor(num_actions=num_actions, hidden=cfg.rnn_hidden),
                    critic=ComaCritic(num_actions=num_actions, hidden=cfg.critic_hidden))


class COMAState(NamedTuple):
    """Everything a COMA run carries between iterations (one seed)."""

    actor_params: Any
    critic_params: Any
    target_params: Any
    actor_opt: Any
    critic_opt: Any
    on_buffer: EpisodeBuffer
    critic_steps: jax.Array
    last_target_update: jax.Array
    prev_actor_grad: Any
    has_prev_grad: jax.Array


def _critic_in_dim(spec) -> int:
    n, a = spec.num_agents, spec.num_actions
    return spec.state_dim + spec.obs_dim + 2 * n * a + n


def buffer_bytes(cfg: COMAConfig, spec) -> int:
    """Bytes the on-policy episode buffer of one seed takes."""
    dt = jnp.float16 if cfg.storage_dtype == "float16" else jnp.float32
    return episodes_nbytes(cfg.buffer_size, spec.episode_limit, spec.num_agents, spec.obs_dim, spec.state_dim,
                           spec.num_actions, dt)


def init_state(cfg: COMAConfig, spec, key) -> tuple[COMANets, COMAState]:
    """Fresh networks (target critic = copy of the critic), optimisers and empty buffer for one seed."""
    nets = make_nets(cfg, spec.num_agents, spec.num_actions)
    k_a, k_c = jax.random.split(key)
    n, a = spec.num_agents, spec.num_actions
    actor_params = nets.actor.init(k_a, jnp.zeros((1, cfg.rnn_hidden)), jnp.zeros((1, spec.obs_dim + a + n)))
    critic_params = nets.critic.init(k_c, jnp.zeros((1, _critic_in_dim(spec))))
    dt = jnp.float16 if cfg.storage_dtype == "float16" else jnp.float32
    state = COMAState(
        actor_params=actor_params, critic_params=critic_params, target_params=critic_params,
        actor_opt=rmsprop(cfg.actor_lr, cfg).init(actor_params),
        critic_opt=rmsprop(cfg.critic_lr, cfg).init(critic_params),
        on_buffer=buffer_init(empty_episodes(cfg.buffer_size, spec.episode_limit, n, spec.obs_dim,
                                             spec.state_dim, a, dt)),
        critic_steps=jnp.int32(0), last_target_update=jnp.int32(0),
        prev_actor_grad=jax.tree.map(jnp.zeros_like, actor_params), has_prev_grad=jnp.bool_(False),
    )
    return nets, state


def episode_critic_inputs(ep: Episodes, num_actions: int) -> jax.Array:
    """COMA critic inputs at every slot. ``-> [E, T+1, N, F]``."""
    onehot = jax.nn.one_hot(ep.actions, num_actions, dtype=jnp.float32)
    last = jax.vmap(last_actions_onehot)(onehot)
    return coma_critic_inputs(ep.state.astype(jnp.float32), ep.obs.astype(jnp.float32), onehot, last)


def attack_q_fn(nets: COMANets, critic_params, agent: int):
    """The attacker's white-box view of COMA for agent ``k``: ``Q(s, u_-k, .)`` with the
    teammates' actions of the CURRENT step (their clean samples: teammates sample
    independently of agent k, so they are known before k's action is perturbed), and mixing
    weight 1."""

    def q_fn(state, obs, clean_actions, last_actions):
        a = nets.critic.num_actions
        onehot = jax.nn.one_hot(clean_actions, a, dtype=jnp.float32)
        last = jax.nn.one_hot(last_actions, a, dtype=jnp.float32)  # -1 (t = 0) -> zeros
        x = coma_critic_inputs(state.astype(jnp.float32), obs.astype(jnp.float32), onehot, last)
        return nets.critic.apply(critic_params, x[agent]), jnp.float32(1.0)

    return q_fn


def policy_gradient(state: COMAState):
    """``(grad, has_grad)``: the last actor update's policy gradient (pytree like
    ``actor_params``, ascent direction of J; zeros before the first update) and ``[]`` bool."""
    return state.prev_actor_grad, state.has_prev_grad


def store_episodes(state: COMAState, episodes: Episodes) -> COMAState:
    """Adds the collected episodes to the on-policy buffer."""
    return state._replace(on_buffer=buffer_add(state.on_buffer, episodes))


def ready_to_train(cfg: COMAConfig, state: COMAState) -> jax.Array:
    """``[]`` bool: the buffer holds at least ``batch_size`` episodes."""
    return state.on_buffer.count >= cfg.batch_size


def critic_targets(nets: COMANets, target_params, ep: Episodes, inputs: jax.Array, cfg: COMAConfig,
                   length: jax.Array | None = None) -> jax.Array:
    """Per-agent TD(lambda) targets on the target critic at the taken actions (reference
    ``COMALearner._train_critic``), with the shared reward, mask and termination flags of
    :func:`tram.learners.episodes.target_terminated` (``cfg.bootstrap_timeouts``).

    ``inputs [E, T+1, N, F]`` from :func:`episode_critic_inputs`; ``length`` (the batch's
    longest episode) limits the target pass to slots ``[0, length]``. ``-> [E, T, N]``."""
    apply = lambda x: nets.critic.apply(target_params, x)
    target_q = apply(inputs) if length is None else map_time(apply, inputs, length + 1, cfg.time_chunk)
    taken = take(target_q, ep.actions)  # [E, T+1, N]
    mask = loss_mask(ep.filled, ep.terminated)  # [E, T]
    term = target_terminated(ep, cfg.bootstrap_timeouts)  # [E, T]
    per_agent = jax.vmap(jax.vmap(td_lambda_targets, in_axes=(None, None, None, 1, None, None), out_axes=1),
                         in_axes=(0, 0, 0, 0, None, None))
    return per_agent(ep.reward[:, :-1], term, mask, taken, cfg.gamma, cfg.td_lambda)


def train_step(cfg: COMAConfig, nets: COMANets, state: COMAState, key, epsilon) -> tuple[COMAState, dict]:
    """One COMA iteration on ``batch_size`` episodes sampled from the buffer: critic
    (reversed per-timestep steps), then actor with the recorded Q values, then the target
    copy check. Returns the new state and ``info`` (losses and work counters)."""
    ep = buffer_sample_uniform(key, state.on_buffer, cfg.batch_size).as_float32()
    length = truncate_length(ep)  # longest episode: loss slots [0, length)
    inputs = episode_critic_inputs(ep, nets.critic.num_actions)  # [E, T+1, N, F]
    mask = loss_mask(ep.filled, ep.terminated)  # [E, T]
    targets = critic_targets(nets, state.target_params, ep, inputs, cfg, length)  # [E, T, N]

    res = coma_critic_step_sequence(nets.critic.apply, rmsprop(cfg.critic_lr, cfg), state.critic_params,
                                    state.critic_opt, inputs[:, :-1], ep.actions[:, :-1], targets, mask, length)
    critic_steps = state.critic_steps + res.num_steps
    q = jnp.concatenate([res.q, jnp.zeros_like(res.q[:, :1])], axis=1)  # [E, T+1, N, A]
    coef = jnp.ones(ep.actions.shape, jnp.float32)
    a_loss, grads = pg_loss_and_grad(nets.actor, state.actor_params, ep, epsilon, q, coef, length, cfg.time_chunk)
    updates, actor_opt = rmsprop(cfg.actor_lr, cfg).update(grads, state.actor_opt, state.actor_params)
    actor_params = jax.tree.map(jnp.add, state.actor_params, updates)

    do_copy = (critic_steps - state.last_target_update) >= cfg.target_update_interval
    target_params = jax.tree.map(lambda c, t: jnp.where(do_copy, c, t), res.params, state.target_params)
    new_state = state._replace(
        actor_params=actor_params, critic_params=res.params, target_params=target_params, actor_opt=actor_opt,
        critic_opt=res.opt_state, critic_steps=critic_steps,
        last_target_update=jnp.where(do_copy, critic_steps, state.last_target_update),
        prev_actor_grad=jax.tree.map(jnp.negative, grads), has_prev_grad=jnp.bool_(True),
    )
    n_steps = res.num_steps.astype(jnp.float32)
    info = {"critic_loss": jnp.sum(res.losses) / jnp.maximum(n_steps, 1.0), "actor_loss": a_loss,
            "critic_timesteps": n_steps, "target_slots": (length + 1).astype(jnp.float32),
            "actor_slots": length.astype(jnp.float32), "critic_entries": jnp.sum(mask), "actor_entries": jnp.sum(mask)}
    return new_state, info


LEARNER = Learner(
    name="coma", config=COMAConfig, make_nets=make_nets, init_state=init_state, store_episodes=store_episodes,
    ready_to_train=ready_to_train, train_step=train_step, attack_q_fn=attack_q_fn, buffer_bytes=buffer_bytes,
    policy_gradient=policy_gradient,
)
"""COMA's record for the training program (:class:`tram.types.Learner`)."""
