"""DOP (stochastic, "offpg"): Wang et al., ICLR 2021, as implemented in the reference code
TonghanWang/DOP (``learners/offpg_learner.py``, ``modules/critics/offpg.py``,
``modules/mixers/qmix.py``, ``run.py``, ``config/algs/offpg_smac.yaml``), the learner the
TRAM paper attacks (App. A gives its hyper-parameters).

Follows the reference in:

* actor: the shared GRU actor of :mod:`tram.learners.actor`, epsilon-floored policy
  (the floor is also inside the actor loss, ``test_mode=False`` in the reference);
* critic: shared ``Q_i(s, o_i, .)`` from ``[state, obs_i, agent id]``, MLP 256-256 with a
  value head and an advantage head, ``Q = A + V`` (no mean subtraction);
* mixer: the linear, normalised mixer with NO bias:
  ``k_i(s) = sum_e |W1(s)|[i, e] |Wf(s)|[e]``, normalised over agents, and
  ``Q_tot = sum_i k_i(s) Q_i`` (the reference builds ``hyper_b_1`` and ``V(s)`` but never
  uses them in the forward pass; tram does not create them);
* critic batch: 16 episodes sampled uniformly from the on-policy buffer (32) with
  TD(lambda) targets (lambda 0.8) and 32 from the off-policy buffer (5000) with
  tree-backup targets (lambda 0.93, n = 5, trace = product over agents of the current
  floored policy's probabilities, no importance ratio), all on the TARGET critic and
  mixer, computed once before any update;
* one critic optimiser step per timestep, forward in time, skipping timesteps with no
  valid entry, loss ``sum(mask (Q_tot - y)^2) / sum(mask)``, gradient norm clipped at 20
  over critic and mixer together; the target is hard-copied once 600 or more such steps
  have passed since the last copy (checked once per critic training call);
* critic before actor; the actor trains on the on-policy buffer's ``sample_latest(16)``
  (``learner.actor_batch = "reference"``, the default: the 16 newest episodes when the
  write position ``p >= 16``, else a uniform sample of 16 of the 32 stored, i.e. in 4
  iterations out of 8; :func:`tram.learners.episodes.latest_indices`) with the current
  critic (not the target), ``A_i = Q_i(a_i) - sum_a pi_i(a) Q_i(a)`` (detached) weighted by
  ``k_i(s)``, ``loss = -sum(mask k A log pi(a_i)) / sum(mask)`` with the mask repeated per
  agent, gradient norm clipped at 20;
* time-limit ends are terminal for both targets (``learner.bootstrap_timeouts = False``,
  the default on SMAX; on the grid tasks the default is True, see
  :func:`tram.config.default_bootstrap_timeouts`): the reference's SMAC config has ``continuing_episode: False``, so its
  runners store ``terminated = True`` at a timeout
  (:func:`tram.learners.episodes.target_terminated`);
* RMSprop(alpha 0.99, eps 1e-5 outside the square root as in PyTorch), actor lr 5e-4,
  critic lr 1e-4, 4 parallel environments, one training iteration per 4 new episodes once
  the buffers hold 16 and 32 episodes; the critic and the mixer share one RMSprop (the
  reference has two with equal settings and a joint clip: the same update, since RMSprop
  is per parameter);
* epsilon evaluated at the env steps counted before the batch, for acting and for the
  losses alike; test episodes greedy;
* every loop over time (per-timestep critic steps, target forward passes, the actor's
  recurrent forward pass and back-propagation) stops at the batch's longest episode, as
  the reference's truncation to ``max_t_filled`` does (:mod:`tram.learners.timechunks`);
  the actor's passes apply every layer step by step (the reference's form); the time loops
  can instead run the input layers (fc1, the GRU's input matmul) and the output layer
  outside the recurrence, one matmul per block of ``time_chunk`` steps (``blocks=True`` of
  :mod:`tram.learners.policy_gradient`, :func:`tram.learners.actor.unroll_block`): the
  same function in another float order (tests/test_dop.py: rtol 1e-6 for the policy, 1e-4
  for the gradient), measured slower on this project's 2-core CPU, so not the default.

Departs from the reference, or chooses where it is silent (default, then the option):

* epsilon schedule 1.0 -> 0.05 over 500k steps (the TRAM paper's App. A; the reference's
  ``offpg_smac.yaml`` starts at 0.5): ``learner.epsilon_start=0.5`` gives the reference's;
* observations and states are stored as float16 in both buffers, to fit the 5000-episode
  off-policy buffer in memory on large maps (cast back to float32 when sampled; SMAX and
  grid features lie in about [-1, 1], where float16 keeps 3 significant digits):
  ``learner.storage_dtype=float32`` stores them as the reference does;
* random numbers come from the run's JAX keys (the uniform samples, including the actor
  batch's fallback, have the reference's distribution, not its draws) and a uniform
  sample's order differs (no loss depends on it);
* options that are not the reference: ``learner.actor_batch=latest`` (always the 16 newest
  episodes) and ``learner.bootstrap_timeouts=true`` (targets bootstrap from the
  post-episode slot at a timeout: the textbook treatment);
* the actor gradient of the last update (before clipping, ascent direction) is kept in
  the state for the J-based attack (no effect on training). Under a training-time attack
  the learner trains on the executed (perturbed) actions with its own clean policy; the
  attack perturbs the softmax part of the poisoned agent's policy and the epsilon floor
  is applied after it (``docs/attack-math.md``);
* run level, not in this module: SMAX instead of StarCraft II, with SMAX's episode limits
  (100 steps, 2s_vs_1sc 200; SMAC's 3m has 60) and the grid tasks' 25 (``docs/envs.md``);
  evaluation with 32 greedy test episodes every 10k steps (``run.test_episodes``,
  ``run.eval_interval``; the DOP repository's SMAC config uses 24 every 20k).

The targets, losses and reference facts are written out in ``docs/learners.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tram.learners.actor import RNNActor
from tram.learners.common import check_actor_critic_config, positive_int, rmsprop, unit_interval
from tram.learners.nets import TorchDense
from tram.learners.episodes import (
    LATEST_RULES, EpisodeBuffer, Episodes, buffer_add, buffer_init, buffer_sample_uniform, buffer_take,
    empty_episodes, episodes_nbytes, latest_indices, loss_mask, target_terminated, truncate_length,
)
from tram.learners.targets import td_lambda_targets, tree_backup_targets
from tram.learners.policy_gradient import pg_loss, pg_loss_and_grad, policy_over_episodes, take
from tram.learners.timechunks import map_time
from tram.types import Learner


@dataclass(frozen=True)
class DOPConfig:
    """DOP hyper-parameters (defaults: TRAM App. A, then the reference's offpg_smac.yaml)."""

    name: str = "dop"
    num_envs: int = 4
    """Parallel environments per seed (batch_size_run)."""
    buffer_size: int = 32
    """On-policy buffer capacity (episodes)."""
    batch_size: int = 16
    """On-policy episodes per critic batch, and episodes per actor batch (``actor_batch``)."""
    off_buffer_size: int = 5000
    """Off-policy buffer capacity (episodes)."""
    off_batch_size: int = 32
    """Off-policy episodes per critic batch."""
    gamma: float = 0.99
    td_lambda: float = 0.8
    tb_lambda: float = 0.93
    tb_steps: int = 5
    """Tree-backup horizon n."""
    actor_lr: float = 5e-4
    critic_lr: float = 1e-4
    rms_alpha: float = 0.99
    rms_eps: float = 1e-5
    grad_clip: float = 20.0
    target_update_interval: int = 600
    """Critic steps (one per timestep) between hard target copies."""
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.05
    epsilon_anneal_steps: int = 500_000
    rnn_hidden: int = 64
    critic_hidden: int = 256
    mixing_embed: int = 32
    storage_dtype: str = "float16"
    """dtype of stored observations and states: float16 or float32."""
    time_chunk: int = 8
    """Steps per chunk of the time loops that stop at a batch's longest episode."""
    actor_batch: str = "reference"
    """The actor's on-policy batch: ``reference`` (the reference's ``sample_latest``: the
    ``batch_size`` newest episodes, or a uniform sample of the on-policy buffer when the
    write position is below ``batch_size``) or ``latest`` (always the newest)."""
    bootstrap_timeouts: bool | None = None
    """Bootstrap targets at time-limit ends. ``None``: the environment's default, resolved by
    :class:`tram.config.TrainConfig` (False on SMAX, as the reference; True on the grid tasks,
    whose unobserved time limit makes a terminal end unlearnable for the critic; see
    :func:`tram.learners.episodes.target_terminated`)."""
    """False (the reference): a time-limit end is terminal for the critic targets; True:
    targets bootstrap from the post-episode slot there."""

    def __post_init__(self):
        check_actor_critic_config(self)
        if self.actor_batch not in LATEST_RULES:
            raise ValueError(
                f"learner.actor_batch must be one of {', '.join(LATEST_RULES)}; got {self.actor_batch!r}")
        for f in ("off_buffer_size", "off_batch_size", "tb_steps", "critic_hidden", "mixing_embed"):
            positive_int(self, f)
        if self.off_batch_size > self.off_buffer_size:
            raise ValueError(
                f"learner.off_batch_size ({self.off_batch_size}) must be <= learner.off_buffer_size "
                f"({self.off_buffer_size})")
        unit_interval(self, "tb_lambda")


# ----------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------
class DOPCritic(nn.Module):
    """``[..., S + D + N] -> Q [..., A]``: MLP 256-256, ``Q = A + V`` (reference offpg.py)."""

    num_actions: int
    hidden: int = 256

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(TorchDense(self.hidden, name="fc1")(x))
        x = nn.relu(TorchDense(self.hidden, name="fc2")(x))
        v = TorchDense(1, name="fc_v")(x)
        adv = TorchDense(self.num_actions, name="fc3")(x)
        return adv + v


class DOPMixer(nn.Module):
    """The normalised linear mixer of the reference (``qmix.py``'s ``k`` and ``forward``).

    ``__call__(state [..., S]) -> k [..., N]``, ``k >= 0`` summing to 1 over agents.
    """

    num_agents: int
    embed: int = 32

    @nn.compact
    def __call__(self, state: jax.Array) -> jax.Array:
        w1 = jnp.abs(TorchDense(self.embed * self.num_agents, name="hyper_w_1")(state))
        wf = jnp.abs(TorchDense(self.embed, name="hyper_w_final")(state))
        w1 = w1.reshape(state.shape[:-1] + (self.num_agents, self.embed))
        k = jnp.einsum("...ne,...e->...n", w1, wf)
        return k / jnp.sum(k, axis=-1, keepdims=True)


def critic_inputs(state: jax.Array, obs: jax.Array) -> jax.Array:
    """``[state, obs_i, onehot(i)]`` per agent. ``state [..., S]``, ``obs [..., N, D]`` ->
    ``[..., N, S + D + N]`` float32."""
    n = obs.shape[-2]
    st = jnp.broadcast_to(state[..., None, :], obs.shape[:-1] + state.shape[-1:]).astype(jnp.float32)
    ids = jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), obs.shape[:-2] + (n, n))
    return jnp.concatenate([st, obs.astype(jnp.float32), ids], axis=-1)


class DOPNets(NamedTuple):
    """DOP's networks: the shared recurrent ``actor``, the per-agent ``critic`` and the ``mixer``."""

    actor: RNNActor
    critic: DOPCritic
    mixer: DOPMixer


def make_nets(cfg: DOPConfig, num_agents: int, num_actions: int) -> DOPNets:
    """DOP's (unparameterised) networks for ``num_agents`` agents and ``num_actions`` actions."""
    return DOPNets(
        actor=RNNActor(num_actions=num_actions, hidden=cfg.rnn_hidden),
        critic=DOPCritic(num_actions=num_actions, hidden=cfg.critic_hidden),
        mixer=DOPMixer(num_agents=num_agents, embed=cfg.mixing_embed),
    )


def q_values(nets: DOPNets, critic_params, state: jax.Array, obs: jax.Array) -> jax.Array:
    """``Q_i(s, o_i, .)``: ``state [..., S]``, ``obs [..., N, D]`` -> ``[..., N, A]``."""
    return nets.critic.apply(critic_params["critic"], critic_inputs(state, obs))


def mix(nets: DOPNets, critic_params, agent_q: jax.Array, state: jax.Array) -> jax.Array:
    """``Q_tot = sum_i k_i(s) Q_i``: ``agent_q [..., N]``, ``state [..., S]`` -> ``[...]``."""
    k = nets.mixer.apply(critic_params["mixer"], state)
    return jnp.sum(k * agent_q, axis=-1)


def q_over_episodes(nets: "DOPNets", critic_params, ep: Episodes, length: jax.Array | None = None,
                    chunk: int = 8) -> jax.Array:
    """``Q_i(s_t, o_i,t, .)`` at every slot; with ``length`` only the first ``length`` slots.
    ``-> [E, T+1, N, A]``."""
    if length is None:
        return q_values(nets, critic_params, ep.state, ep.obs)
    return map_time(lambda sl: q_values(nets, critic_params, sl[0], sl[1]), (ep.state, ep.obs), length, chunk)


# ----------------------------------------------------------------------------------------
# Critic
# ----------------------------------------------------------------------------------------
def on_policy_targets(nets: DOPNets, target_params, ep: Episodes, cfg: DOPConfig,
                      length: jax.Array | None = None) -> jax.Array:
    """TD(lambda) targets on the target ``Q_tot`` at the taken actions. ``-> [E, T]``.

    ``length`` (slots to compute, the longest episode + 1) skips the padding."""
    q = q_over_episodes(nets, target_params, ep, length, cfg.time_chunk)
    qt = mix(nets, target_params, take(q, ep.actions), ep.state)
    mask = loss_mask(ep.filled, ep.terminated)
    term = target_terminated(ep, cfg.bootstrap_timeouts)
    return jax.vmap(td_lambda_targets, in_axes=(0, 0, 0, 0, None, None))(
        ep.reward[:, :-1], term, mask, qt, cfg.gamma, cfg.td_lambda)


def off_policy_targets(nets: DOPNets, target_params, actor_params, ep: Episodes, epsilon,
                       cfg: DOPConfig, length: jax.Array | None = None) -> jax.Array:
    """Tree-backup targets (reference ``train_critic_best``). ``-> [E, T]``."""
    pi = policy_over_episodes(nets.actor, actor_params, ep, epsilon, length, cfg.time_chunk)  # [E, T+1, N, A]
    c = jnp.prod(take(pi, ep.actions), axis=-1)  # [E, T+1]
    q = q_over_episodes(nets, target_params, ep, length, cfg.time_chunk)  # [E, T+1, N, A]
    qt = mix(nets, target_params, take(q, ep.actions), ep.state)
    expected = mix(nets, target_params, jnp.sum(pi * q, axis=-1), ep.state)
    mask = loss_mask(ep.filled, ep.terminated)
    term = target_terminated(ep, cfg.bootstrap_timeouts)
    return jax.vmap(tree_backup_targets, in_axes=(0, 0, 0, 0, 0, 0, None, None, None))(
        ep.reward[:, :-1], term, mask, qt, expected, c,
        cfg.gamma, cfg.tb_lambda, cfg.tb_steps)


def critic_loss_at(nets: DOPNets, critic_params, state_t, obs_t, actions_t, y_t, mask_t):
    """``sum(mask (Q_tot - y)^2) / sum(mask)`` at one timestep of ``E`` episodes.

    ``state_t [E, S]``, ``obs_t [E, N, D]``, ``actions_t [E, N]``, ``y_t, mask_t [E]``.
    """
    return _critic_loss(nets, critic_params, critic_inputs(state_t, obs_t), state_t, actions_t, y_t, mask_t)


def _critic_loss(nets: DOPNets, critic_params, x_t, state_t, actions_t, y_t, mask_t):
    """:func:`critic_loss_at` from the critic's inputs ``x_t [E, N, S + D + N]``."""
    q = nets.critic.apply(critic_params["critic"], x_t)
    q_tot = mix(nets, critic_params, take(q, actions_t), state_t)
    err = (q_tot - y_t) * mask_t
    return jnp.sum(err ** 2) / jnp.maximum(jnp.sum(mask_t), 1.0)


def train_critic_per_timestep(nets: DOPNets, critic_params, opt_state, ep: Episodes, targets, mask,
                              num_steps, optimiser):
    """One optimiser step per timestep ``t < num_steps`` in increasing order, skipping
    timesteps whose mask is all zero (reference ``train_critic``).

    The critic's inputs are built once for every slot and laid out time-major before the
    loop, so that each step reads one contiguous slice (the same numbers as building them
    step by step).

    Returns ``(critic_params, opt_state, steps_taken, mean_loss)``.
    """
    grad_fn = jax.value_and_grad(_critic_loss, argnums=1)
    t_slots = targets.shape[1]
    tm = lambda x: jnp.swapaxes(x[:, :t_slots], 0, 1)  # [E, T, ...] -> [T, E, ...]
    xs = (tm(critic_inputs(ep.state, ep.obs)), tm(ep.state.astype(jnp.float32)), tm(ep.actions), tm(targets),
          tm(mask))

    def body(t, carry):
        params, opt, steps, loss_sum = carry
        x_t, state_t, actions_t, y_t, mask_t = (jax.lax.dynamic_index_in_dim(x, t, axis=0, keepdims=False)
                                                 for x in xs)
        valid = jnp.sum(mask_t) >= 0.5
        loss, grads = grad_fn(nets, params, x_t, state_t, actions_t, y_t, mask_t)
        updates, new_opt = optimiser.update(grads, opt, params)
        new_params = optax.apply_updates(params, updates)
        params = jax.tree.map(lambda a, b: jnp.where(valid, a, b), new_params, params)
        opt = jax.tree.map(lambda a, b: jnp.where(valid, a, b), new_opt, opt)
        return params, opt, steps + valid.astype(jnp.int32), loss_sum + jnp.where(valid, loss, 0.0)

    params, opt, steps, loss_sum = jax.lax.fori_loop(
        0, num_steps, body, (critic_params, opt_state, jnp.int32(0), jnp.float32(0.0)))
    return params, opt, steps, loss_sum / jnp.maximum(steps, 1)


# ----------------------------------------------------------------------------------------
# Actor
# ----------------------------------------------------------------------------------------
def actor_loss(actor_params, nets: DOPNets, critic_params, ep: Episodes, epsilon) -> jax.Array:
    """DOP's policy-gradient loss on ``E`` episodes (reference ``OffPGLearner.train``),
    unrolled over every slot: ``-sum mask k_i(s) A_i log pi_i(a_i) / sum mask`` with ``A_i``
    from the current critic (see :mod:`tram.learners.policy_gradient`)."""
    q = q_values(nets, critic_params, ep.state, ep.obs)
    k = nets.mixer.apply(critic_params["mixer"], ep.state)
    return pg_loss(nets.actor, actor_params, ep, epsilon, q, k)


def actor_loss_and_grad(actor_params, nets: DOPNets, critic_params, ep: Episodes, epsilon, length, chunk: int = 8):
    """:func:`actor_loss` and its gradient computed over the first ``length`` slots only.
    Returns ``(loss, grads)``."""
    q = map_time(lambda sl: q_values(nets, critic_params, sl[0], sl[1]), (ep.state, ep.obs), length, chunk)
    k = map_time(lambda st: nets.mixer.apply(critic_params["mixer"], st), ep.state, length, chunk)
    return pg_loss_and_grad(nets.actor, actor_params, ep, epsilon, q, k, length, chunk)


# ----------------------------------------------------------------------------------------
# State and one training iteration
# ----------------------------------------------------------------------------------------
class DOPState(NamedTuple):
    """Everything a DOP run carries between iterations (one seed)."""

    actor_params: Any
    critic_params: Any  # {"critic": ..., "mixer": ...}
    target_params: Any
    actor_opt: Any
    critic_opt: Any
    on_buffer: EpisodeBuffer
    off_buffer: EpisodeBuffer
    critic_steps: jax.Array
    last_target_update: jax.Array
    prev_actor_grad: Any
    has_prev_grad: jax.Array


def buffer_bytes(cfg: DOPConfig, spec) -> int:
    """Bytes the two episode buffers of one seed take."""
    dt = jnp.float16 if cfg.storage_dtype == "float16" else jnp.float32
    return episodes_nbytes(cfg.buffer_size + cfg.off_buffer_size, spec.episode_limit, spec.num_agents,
                           spec.obs_dim, spec.state_dim, spec.num_actions, dt)


def init_state(cfg: DOPConfig, spec, key) -> tuple[DOPNets, DOPState]:
    """Fresh networks, optimisers and empty buffers for one seed."""
    nets = make_nets(cfg, spec.num_agents, spec.num_actions)
    k_a, k_c, k_m = jax.random.split(key, 3)
    n, a = spec.num_agents, spec.num_actions
    actor_params = nets.actor.init(
        k_a, jnp.zeros((1, cfg.rnn_hidden)), jnp.zeros((1, spec.obs_dim + a + n)))
    critic_params = {
        "critic": nets.critic.init(k_c, jnp.zeros((1, spec.state_dim + spec.obs_dim + n))),
        "mixer": nets.mixer.init(k_m, jnp.zeros((1, spec.state_dim))),
    }
    dt = jnp.float16 if cfg.storage_dtype == "float16" else jnp.float32
    mk = lambda size: buffer_init(empty_episodes(
        size, spec.episode_limit, n, spec.obs_dim, spec.state_dim, a, dt))
    state = DOPState(
        actor_params=actor_params,
        critic_params=critic_params,
        target_params=critic_params,
        actor_opt=rmsprop(cfg.actor_lr, cfg).init(actor_params),
        critic_opt=rmsprop(cfg.critic_lr, cfg).init(critic_params),
        on_buffer=mk(cfg.buffer_size),
        off_buffer=mk(cfg.off_buffer_size),
        critic_steps=jnp.int32(0),
        last_target_update=jnp.int32(0),
        prev_actor_grad=jax.tree.map(jnp.zeros_like, actor_params),
        has_prev_grad=jnp.bool_(False),
    )
    return nets, state


def attack_q_fn(nets: DOPNets, critic_params, agent: int):
    """The attacker's white-box view of DOP for agent ``k``: ``Q_k(s, o_k, .)`` and ``k_k(s)``."""

    def q_fn(state, obs, clean_actions, last_actions):
        del clean_actions, last_actions  # DOP's critic does not condition on actions
        q = q_values(nets, critic_params, state, obs)[agent]
        k = nets.mixer.apply(critic_params["mixer"], state)[agent]
        return q, k

    return q_fn


def policy_gradient(state: DOPState):
    """``(grad, has_grad)``: the last actor update's policy gradient (pytree like
    ``actor_params``, ascent direction of J; zeros before the first update) and ``[]`` bool."""
    return state.prev_actor_grad, state.has_prev_grad


def store_episodes(state: DOPState, episodes: Episodes) -> DOPState:
    """Every episode goes into both buffers (reference ``run.py``)."""
    return state._replace(on_buffer=buffer_add(state.on_buffer, episodes),
                          off_buffer=buffer_add(state.off_buffer, episodes))


def ready_to_train(cfg: DOPConfig, state: DOPState) -> jax.Array:
    """``[]`` bool: both buffers hold a batch (``batch_size`` on-policy, ``off_batch_size`` off-policy)."""
    return (state.on_buffer.count >= cfg.batch_size) & (state.off_buffer.count >= cfg.off_batch_size)


def train_step(cfg: DOPConfig, nets: DOPNets, state: DOPState, key, epsilon) -> tuple[DOPState, dict]:
    """One DOP training iteration: critic (on 16 + 32 sampled episodes), then actor (on the
    batch of ``cfg.actor_batch``, :func:`tram.learners.episodes.latest_indices`). Returns the new state and ``info``: ``critic_loss``, ``actor_loss`` and the
    work done (``critic_timesteps`` steps taken, ``target_slots`` slots per episode of the
    target passes, ``actor_slots`` slots per episode of the actor pass; ``critic_entries`` and
    ``actor_entries``: the valid episode-steps among them, for the padding measurement of
    ``benchmarks/padding.py``)."""
    k_on, k_off = jax.random.split(key)
    k_actor = jax.random.fold_in(key, 1)  # leaves the critic's samples as they were before the option
    on = buffer_sample_uniform(k_on, state.on_buffer, cfg.batch_size).as_float32()
    off = buffer_sample_uniform(k_off, state.off_buffer, cfg.off_batch_size).as_float32()
    num_steps = jnp.maximum(truncate_length(on), truncate_length(off))

    y_on = on_policy_targets(nets, state.target_params, on, cfg, num_steps + 1)
    y_off = off_policy_targets(nets, state.target_params, state.actor_params, off, epsilon, cfg, num_steps + 1)
    batch = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), on, off)
    targets = jnp.concatenate([y_on, y_off], axis=0)
    mask = loss_mask(batch.filled, batch.terminated)
    critic_params, critic_opt, steps, critic_loss = train_critic_per_timestep(
        nets, state.critic_params, state.critic_opt, batch, targets, mask, num_steps,
        rmsprop(cfg.critic_lr, cfg))
    critic_steps = state.critic_steps + steps
    do_copy = (critic_steps - state.last_target_update) >= cfg.target_update_interval
    target_params = jax.tree.map(lambda c, t: jnp.where(do_copy, c, t), critic_params, state.target_params)
    last_update = jnp.where(do_copy, critic_steps, state.last_target_update)

    actor_idx, _ = latest_indices(k_actor, state.on_buffer, cfg.batch_size, cfg.actor_batch)
    latest = buffer_take(state.on_buffer, actor_idx).as_float32()
    a_loss, grads = actor_loss_and_grad(state.actor_params, nets, critic_params, latest, epsilon,
                                        truncate_length(latest), cfg.time_chunk)
    updates, actor_opt = rmsprop(cfg.actor_lr, cfg).update(grads, state.actor_opt, state.actor_params)
    actor_params = optax.apply_updates(state.actor_params, updates)

    new_state = state._replace(
        actor_params=actor_params, critic_params=critic_params, target_params=target_params,
        actor_opt=actor_opt, critic_opt=critic_opt, critic_steps=critic_steps,
        last_target_update=last_update,
        prev_actor_grad=jax.tree.map(jnp.negative, grads), has_prev_grad=jnp.bool_(True),
    )
    info = {"critic_loss": critic_loss, "actor_loss": a_loss, "critic_timesteps": steps.astype(jnp.float32),
            "target_slots": (num_steps + 1).astype(jnp.float32),
            "actor_slots": truncate_length(latest).astype(jnp.float32),
            "critic_entries": jnp.sum(mask), "actor_entries": jnp.sum(loss_mask(latest.filled, latest.terminated))}
    return new_state, info


LEARNER = Learner(
    name="dop", config=DOPConfig, make_nets=make_nets, init_state=init_state, store_episodes=store_episodes,
    ready_to_train=ready_to_train, train_step=train_step, attack_q_fn=attack_q_fn, buffer_bytes=buffer_bytes,
    policy_gradient=policy_gradient,
)
"""DOP's record for the training program (:class:`tram.types.Learner`)."""
