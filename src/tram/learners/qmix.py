"""QMIX (Rashid et al., ICML 2018) as implemented in oxwhirl/pymarl (``config/algs/qmix.yaml``,
``config/default.yaml``, ``learners/q_learner.py``, ``modules/mixers/qmix.py``,
``modules/agents/rnn_agent.py``, ``controllers/basic_controller.py``,
``components/action_selectors.py``, ``components/epsilon_schedules.py``, ``run.py``): the
learner of the TRAM paper's Fig. 1 and tram's third target learner.

Follows the reference in:

* agent network: the shared GRU network of :mod:`tram.learners.actor` (``RNNActor``, 64
  units, PyTorch init), input ``[obs_i, one-hot last action, one-hot agent id]``; its
  output (``logits`` there) is the vector of individual Q-values ``Q_i(tau_i, .)``;
* mixer (:class:`QMixer`): ``Q_tot = elu(q^T |W1(s)| + b1(s)) . |Wf(s)| + V(s)`` with
  embed 32; ``W1`` and ``Wf`` from hypernetworks with ``hypernet_layers: 2`` (Linear(S,
  64)-ReLU-Linear, ``hypernet_embed`` 64), ``b1`` from one Linear, ``V`` from
  Linear(S, 32)-ReLU-Linear(32, 1); the absolute value makes ``Q_tot`` monotonic in every
  ``Q_i``;
* loss: one-step Q-learning on whole episodes, ``y_t = r_t + gamma (1 - term_t)
  Q_tot^-(s_{t+1}, u*_{t+1})`` with double-Q (``double_q: True``): ``u*_{i,t+1}`` is the
  argmax over available actions of the LIVE agent network, evaluated by the TARGET agent
  network and mixed by the TARGET mixer (unavailable actions set to -9999999 before both
  the argmax and the gather, as the reference does); ``loss = sum((mask (Q_tot - y))^2) /
  sum(mask)`` with PyMARL's mask (:func:`tram.learners.episodes.loss_mask`), gamma 0.99;
* optimiser: one RMSprop step (lr 5e-4, alpha 0.99, eps 1e-5 outside the square root as
  in PyTorch) per training iteration on agent network and mixer together, after clipping
  their joint gradient norm at 10;
* replay: whole episodes, buffer 5000, batch 32 sampled uniformly without replacement;
  training starts once 32 episodes are stored and runs once per collected batch of
  episodes (``run.py``);
* target network (agent network and mixer): hard copy in the training call in which
  ``episode - last_copy_episode >= 200``, where ``episode`` counts the episodes collected
  BEFORE the current batch (the reference increments its counter after ``train``);
* acting: epsilon-greedy over available actions (:func:`select_actions`: with
  probability epsilon a uniformly random available action, else the argmax of the
  available Q-values), epsilon linear from 1.0 to 0.05 over 50k env steps, evaluated at
  the env steps counted before the episode (``t_env`` is updated at the end of an
  episode); test episodes are greedy (``tram.learners.rollout.evaluate_greedy``);
* the GRU runs from zeros at the start of every stored episode and over the post-episode
  slot as well (its live Q-values give the argmax of the last target);
* time-limit ends are terminal for the targets (``learner.bootstrap_timeouts = False``,
  the default on SMAX; on the grid tasks the default is True, see
  :func:`tram.config.default_bootstrap_timeouts`): pymarl's SMAC config has ``continuing_episode: False``, so its runners
  store ``terminated = True`` at a timeout and ``y_t = r_t`` at the last step
  (:func:`tram.learners.episodes.target_terminated`);
* ``num_envs`` parallel environments, default 1 (the reference's ``batch_size_run: 1``
  episode runner); with more, one training iteration per batch of episodes and the
  episode counter advances by ``num_envs``, as PyMARL's parallel runner does;
* time loops (the live and target agent networks in one pass, the loss and its
  back-propagation through time) stop at the longest episode of each group of the sampled
  batch sorted by length (``learner.length_groups``, default 4; 1 is the reference's
  truncation of the whole batch to ``max_t_filled``), chunk by chunk
  (:mod:`tram.learners.timechunks`): the same loss and gradient up to float rounding.

Departs from the reference, or chooses where it is silent (default, then the option):

* observations and states are stored as float16 in the replay buffer, as in DOP's
  5000-episode buffer, to fit 5000 episodes per seed with several seeds on large maps
  (cast back to float32 when sampled): ``learner.storage_dtype=float32`` stores them as
  the reference does;
* option that is not the reference: ``learner.bootstrap_timeouts=true`` (``y_t = r_t +
  gamma Q_tot^-`` also at a timeout's last step: the textbook treatment);
* random numbers come from the run's JAX keys (uniform samples with the reference's
  distribution, not its draws; their order differs, which the loss does not depend on);
* run level, not in this module: on SMAX, QMIX needs the state scaled as SMAC scales it
  (``env.normalise_state=True``; every Fig. 1 run sets it). With JaxMARL's raw world state
  (positions up to 32) its TD loss stays between 2.9 and 14.6 against returns of at most 2, and 3m is
  never won in 730k steps (``docs/learners.md``, "QMIX on SMAX");
* run level, not in this module: SMAX instead of StarCraft II, with SMAX's episode limits
  (100 steps, 2s_vs_1sc 200; SMAC's 3m has 60) and the grid tasks' 25 (``docs/envs.md``);
  the deploy-time ``worst_q`` attack of Fig. 1 is tram's reading of the paper (see
  :mod:`tram.attacks.deploy`);
* QMIX has no policy gradient (its record's ``policy_gradient`` is None), so the J-based
  and variance-based attacks are refused (their entries in
  :data:`tram.attacks.methods.ATTACK_METHODS` do not list QMIX);
* ``info["actor_loss"]`` is NaN (there is no actor loss); ``critic_loss`` is the TD loss.

The targets and reference facts are written out in ``docs/learners.md``.

Shape letters: ``E`` episodes, ``T + 1`` slots, ``N`` agents, ``A`` actions, ``S`` state
features, ``I`` agent-network inputs, ``H`` hidden units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from tram.detect.score import epsilon_greedy_policy
from tram.learners.actor import RNNActor, gru_update
from tram.learners.common import boolean, positive_int, rmsprop, unit_interval
from tram.learners.episodes import (
    EpisodeBuffer, Episodes, buffer_add, buffer_init, buffer_sample_uniform, empty_episodes, episodes_nbytes,
    loss_mask, target_terminated, truncate_length,
)
from tram.learners.nets import TorchDense
from tram.learners.policy_gradient import episode_actor_inputs, take
from tram.learners.timechunks import _pad_time, map_time, num_chunks, recurrent_value_and_grad, scan_time
from tram.types import Learner


WORST_Q_SOURCE = "actor"
"""Where the ``worst_q`` attack reads the poisoned agent's individual Q-values: the agent
network's output (the rollout's ``logits``), not :func:`attack_q_fn`."""

UNAVAILABLE_Q = -9999999.0
"""Value the reference gives unavailable actions before the double-Q argmax and gather."""


@dataclass(frozen=True)
class QMIXConfig:
    """QMIX hyper-parameters (defaults: oxwhirl/pymarl qmix.yaml, then default.yaml)."""

    name: str = "qmix"
    num_envs: int = 1
    """Parallel environments per seed (the reference's episode runner: batch_size_run 1)."""
    buffer_size: int = 5000
    """Replay buffer capacity (whole episodes)."""
    batch_size: int = 32
    """Episodes per training batch."""
    gamma: float = 0.99
    lr: float = 5e-4
    """RMSprop learning rate (agent network and mixer together)."""
    rms_alpha: float = 0.99
    rms_eps: float = 1e-5
    grad_clip: float = 10.0
    """Max global norm of the joint gradient."""
    target_update_interval: int = 200
    """Episodes between hard target copies (counted as the reference counts them)."""
    double_q: bool = True
    """Double-Q targets (argmax by the live network, value by the target)."""
    epsilon_start: float = 1.0
    epsilon_finish: float = 0.05
    epsilon_anneal_steps: int = 50_000
    """Env steps of the linear epsilon schedule (epsilon_anneal_time)."""
    rnn_hidden: int = 64
    mixing_embed: int = 32
    hypernet_layers: int = 2
    """1: the hypernetworks of W1 and Wf are single Linear layers; 2: Linear-ReLU-Linear."""
    hypernet_embed: int = 64
    """Hidden units of the 2-layer hypernetworks."""
    storage_dtype: str = "float16"
    """dtype of stored observations and states: float16 or float32."""
    time_chunk: int = 8
    """Steps per chunk of the time loops that stop at a batch's longest episode."""
    length_groups: int = 4
    """The sampled batch, sorted by episode length, is processed in this many equal groups
    (the largest divisor of batch_size not above it), each up to its own longest episode
    (same loss and gradient; less work on padding)."""
    bootstrap_timeouts: bool | None = None
    """Bootstrap targets at time-limit ends. ``None``: the environment's default, resolved by
    :class:`tram.config.TrainConfig` (False on SMAX, as the reference; True on the grid tasks,
    whose unobserved time limit makes a terminal end unlearnable for the critic; see
    :func:`tram.learners.episodes.target_terminated`)."""
    """False (the reference): a time-limit end is terminal for the Q-learning targets;
    True: they bootstrap from the post-episode slot there."""

    def __post_init__(self):
        if self.name != "qmix":
            raise ValueError(f"learner.name must be 'qmix' for QMIXConfig, got {self.name!r}")
        for f in ("num_envs", "buffer_size", "batch_size", "target_update_interval", "rnn_hidden",
                  "epsilon_anneal_steps", "mixing_embed", "hypernet_embed", "time_chunk", "length_groups"):
            positive_int(self, f)
        for f in ("gamma", "rms_alpha", "epsilon_start", "epsilon_finish"):
            unit_interval(self, f)
        for f in ("lr", "rms_eps", "grad_clip"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"learner.{f} must be a number > 0, got {v!r}")
        if self.batch_size > self.buffer_size:
            raise ValueError(
                f"learner.batch_size ({self.batch_size}) must be <= learner.buffer_size ({self.buffer_size})")
        boolean(self, "double_q")
        boolean(self, "bootstrap_timeouts", allow_none=True)
        if isinstance(self.hypernet_layers, bool) or self.hypernet_layers not in (1, 2):
            raise ValueError(f"learner.hypernet_layers must be one of 1, 2; got {self.hypernet_layers!r}")
        if self.storage_dtype not in ("float16", "float32"):
            raise ValueError(f"learner.storage_dtype must be one of float16, float32; got {self.storage_dtype!r}")


# ----------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------
class QMixer(nn.Module):
    """The monotonic mixing network of the reference (``modules/mixers/qmix.py``).

    ``Q_tot = elu(q^T W1 + b1) . wf + V``, with ``W1 = |hyper_w_1(s)| [N, E]``,
    ``b1 = hyper_b_1(s) [E]``, ``wf = |hyper_w_final(s)| [E]``, ``V = V(s) []``.
    ``__call__(agent_q [..., N], state [..., S]) -> [...]``.
    """

    num_agents: int
    embed: int = 32
    hypernet_layers: int = 2
    hypernet_embed: int = 64

    def setup(self):
        def hyper(out: int):
            if self.hypernet_layers == 1:
                return TorchDense(out)
            return nn.Sequential([TorchDense(self.hypernet_embed), nn.relu, TorchDense(out)])

        self.hyper_w_1 = hyper(self.embed * self.num_agents)
        self.hyper_w_final = hyper(self.embed)
        self.hyper_b_1 = TorchDense(self.embed)
        self.V = nn.Sequential([TorchDense(self.embed), nn.relu, TorchDense(1)])

    def weights(self, state: jax.Array):
        """The state-conditioned parameters: ``(W1 [..., N, E] >= 0, b1 [..., E],
        wf [..., E] >= 0, V [...])``."""
        w1 = jnp.abs(self.hyper_w_1(state)).reshape(state.shape[:-1] + (self.num_agents, self.embed))
        wf = jnp.abs(self.hyper_w_final(state))
        return w1, self.hyper_b_1(state), wf, self.V(state)[..., 0]

    def __call__(self, agent_q: jax.Array, state: jax.Array) -> jax.Array:
        w1, b1, wf, v = self.weights(state)
        hidden = nn.elu(jnp.einsum("...n,...ne->...e", agent_q.astype(jnp.float32), w1) + b1)
        return jnp.sum(hidden * wf, axis=-1) + v


class QMIXNets(NamedTuple):
    """QMIX's networks: the shared recurrent agent network (``actor``) and the ``mixer``."""

    actor: RNNActor  # the agent network; its "logits" are the individual Q-values
    mixer: QMixer


def make_nets(cfg: QMIXConfig, num_agents: int, num_actions: int) -> QMIXNets:
    """QMIX's (unparameterised) networks for ``num_agents`` agents and ``num_actions`` actions."""
    return QMIXNets(
        actor=RNNActor(num_actions=num_actions, hidden=cfg.rnn_hidden),
        mixer=QMixer(num_agents=num_agents, embed=cfg.mixing_embed, hypernet_layers=cfg.hypernet_layers,
                     hypernet_embed=cfg.hypernet_embed),
    )


# ----------------------------------------------------------------------------------------
# Acting
# ----------------------------------------------------------------------------------------
ACTING_POLICY = epsilon_greedy_policy
"""The distribution :func:`select_actions` samples from (the detection monitor scores the
executed actions under it; :mod:`tram.detect.score`)."""


def select_actions(key: jax.Array, q: jax.Array, avail: jax.Array, epsilon) -> jax.Array:
    """Epsilon-greedy over available actions (reference ``EpsilonGreedyActionSelector``).

    Each agent independently: with probability ``epsilon`` a uniformly random available
    action, otherwise ``argmax`` of ``q`` over available actions.

    Args:
        key: PRNG key.
        q: ``[B, N, A]`` individual Q-values (any leading shape).
        avail: ``[B, N, A]`` bool, at least one True per row for real steps.
        epsilon: ``[]`` exploration probability.

    Returns:
        ``[B, N]`` int32 actions.
    """
    k_pick, k_rand = jax.random.split(key)
    avail = avail.astype(bool)
    pick_random = jax.random.uniform(k_pick, q.shape[:-1]) < epsilon
    random_actions = jax.random.categorical(k_rand, jnp.where(avail, 0.0, -jnp.inf), axis=-1)
    greedy = jnp.argmax(jnp.where(avail, q, -jnp.inf), axis=-1)
    return jnp.where(pick_random, random_actions, greedy).astype(jnp.int32)


# ----------------------------------------------------------------------------------------
# Targets and loss
# ----------------------------------------------------------------------------------------
def agent_q_over_episodes(actor: RNNActor, agent_params, ep: Episodes, length: jax.Array | None = None,
                          chunk: int = 8) -> jax.Array:
    """Individual Q-values at every slot (GRU from zeros at t = 0); with ``length`` only the
    first ``length`` slots are computed (0 after). ``-> [E, T+1, N, A]``."""
    e, _, n = ep.actions.shape
    x = episode_actor_inputs(actor, ep)
    h0 = jnp.zeros((e, n, actor.hidden), jnp.float32)

    def step(h, x_t):
        q, h = actor.apply(agent_params, h, x_t)
        return h, q

    if length is None:
        _, q = jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(q, 0, 1)
    return scan_time(step, h0, x, length, chunk)


def double_q_values(q_live_next: jax.Array, q_target_next: jax.Array, avail_next: jax.Array) -> jax.Array:
    """Double-Q bootstrap values per agent (van Hasselt et al. 2016; reference ``double_q``).

    ``u* = argmax_{a available} Q_live(a)``, value ``Q_target(u*)``; unavailable actions
    are set to -9999999 in both (rows with no available action, i.e. padding, give action 0
    and -9999999; they carry no loss).

    Args:
        q_live_next, q_target_next: ``[..., A]`` Q-values of the next step.
        avail_next: ``[..., A]`` bool.

    Returns:
        ``[...]``.
    """
    avail_next = avail_next.astype(bool)
    best = jnp.argmax(jnp.where(avail_next, q_live_next, UNAVAILABLE_Q), axis=-1)
    return take(jnp.where(avail_next, q_target_next, UNAVAILABLE_Q), best)


def max_q_values(q_target_next: jax.Array, avail_next: jax.Array) -> jax.Array:
    """Plain Q-learning bootstrap values (``double_q: False``): ``max_{a available} Q_target(a)``.
    ``[..., A] -> [...]``."""
    return jnp.max(jnp.where(avail_next.astype(bool), q_target_next, UNAVAILABLE_Q), axis=-1)


def q_learning_targets(reward: jax.Array, terminated: jax.Array, q_tot_next: jax.Array, gamma) -> jax.Array:
    """``y_t = r_t + gamma (1 - terminated_t) Q_tot^-_{t+1}``; all ``[..., T]``."""
    return reward + gamma * (1.0 - terminated.astype(jnp.float32)) * q_tot_next


def episode_targets(nets: QMIXNets, params, target_params, ep: Episodes, cfg: QMIXConfig,
                    length: jax.Array | None = None) -> jax.Array:
    """The reference's targets for every transition slot of ``ep``. ``-> [E, T]``.

    ``params`` / ``target_params``: ``{"agent": ..., "mixer": ...}`` (live and target).
    ``length`` (the batch's longest episode) limits the computation to slots ``[0, length]``.
    """
    slots = None if length is None else length + 1
    q_target = agent_q_over_episodes(nets.actor, target_params["agent"], ep, slots, cfg.time_chunk)
    avail_next = ep.avail[:, 1:]
    if cfg.double_q:
        q_live = agent_q_over_episodes(nets.actor, params["agent"], ep, slots, cfg.time_chunk)
        q_next = double_q_values(q_live[:, 1:], q_target[:, 1:], avail_next)  # [E, T, N]
    else:
        q_next = max_q_values(q_target[:, 1:], avail_next)

    def mix_fn(xs):
        return nets.mixer.apply(target_params["mixer"], xs[0], xs[1])

    xs = (q_next, ep.state[:, 1:].astype(jnp.float32))
    q_tot_next = mix_fn(xs) if length is None else map_time(mix_fn, xs, length, cfg.time_chunk)
    return q_learning_targets(ep.reward[:, :-1], target_terminated(ep, cfg.bootstrap_timeouts), q_tot_next,
                              cfg.gamma)


def _chunk_td_loss(nets: QMIXNets, params, h, x, mask_sum):
    """Sum over the chunk's slots of ``(mask (Q_tot - y))^2 / mask_sum``; returns ``(loss, h)``."""
    inputs, actions, state, y, mask = x

    def step(h, x_t):
        q, h = nets.actor.apply(params["agent"], h, x_t)
        return h, q

    h, q = jax.lax.scan(step, h, jnp.swapaxes(inputs, 0, 1))
    q_taken = take(jnp.swapaxes(q, 0, 1), actions)  # [E, C, N]
    q_tot = nets.mixer.apply(params["mixer"], q_taken, state)
    err = (q_tot - y) * mask
    return jnp.sum(err ** 2) / mask_sum, h


def _loss_inputs(actor: RNNActor, ep: Episodes, targets: jax.Array):
    """Per-slot inputs of the loss over all ``T + 1`` slots (targets and mask padded with a
    zero post-episode slot) and the normaliser ``sum(mask)``."""
    e = ep.actions.shape[0]
    mask = loss_mask(ep.filled, ep.terminated)
    pad = lambda z: jnp.concatenate([z, jnp.zeros((e, 1), z.dtype)], axis=1)
    xs = (episode_actor_inputs(actor, ep), ep.actions, ep.state.astype(jnp.float32),
          pad(jax.lax.stop_gradient(targets)), pad(mask))
    return xs, jnp.maximum(jnp.sum(mask), 1.0)


def td_loss(params, nets: QMIXNets, ep: Episodes, targets: jax.Array) -> jax.Array:
    """The reference loss ``sum((mask (Q_tot - y))^2) / sum(mask)`` unrolled over every slot
    (``targets [E, T]`` treated as constants). Scalar."""
    xs, mask_sum = _loss_inputs(nets.actor, ep, targets)
    e, _, n = ep.actions.shape
    h0 = jnp.zeros((e, n, nets.actor.hidden), jnp.float32)
    return _chunk_td_loss(nets, params, h0, xs, mask_sum)[0]


def td_loss_and_grad(params, nets: QMIXNets, ep: Episodes, targets: jax.Array, length: jax.Array,
                     chunk: int = 8):
    """:func:`td_loss` and its gradient over the first ``length`` slots only, by chunked
    back-propagation through time (equal to ``jax.value_and_grad(td_loss)`` up to float
    rounding; tested). Returns ``(loss, grads)``."""
    xs, mask_sum = _loss_inputs(nets.actor, ep, targets)
    e, _, n = ep.actions.shape
    h0 = jnp.zeros((e, n, nets.actor.hidden), jnp.float32)

    def chunk_loss(p, h, x):
        return _chunk_td_loss(nets, p, h, x, mask_sum)

    return recurrent_value_and_grad(chunk_loss, params, h0, xs, length, chunk)


# ----------------------------------------------------------------------------------------
# The training pass: one fused forward pass, then the reverse pass of the loss
# ----------------------------------------------------------------------------------------
def _agent_layers(agent_params):
    p = agent_params["params"]
    return p["fc1"], p["rnn"]["input"], p["rnn"]["hidden"], p["fc2"]


def agent_input_layers(agent_params, x: jax.Array) -> jax.Array:
    """The agent network's non-recurrent input layers: ``relu(x W_fc1 + b_fc1) W_i + b_i``,
    the GRU's input gates (``[..., I] -> [..., 3H]``, order r, z, n as in PyTorch). Applied
    to a whole block of time steps in one matmul; :func:`agent_gru_step` and
    :func:`agent_head` complete :class:`tram.learners.actor.RNNActor` (same equations)."""
    fc1, gru_in, _, _ = _agent_layers(agent_params)
    y = nn.relu(jnp.matmul(x.astype(jnp.float32), fc1["kernel"]) + fc1["bias"])
    return jnp.matmul(y, gru_in["kernel"]) + gru_in["bias"]


def agent_gru_step(agent_params, h: jax.Array, gi: jax.Array) -> jax.Array:
    """One GRU step of the agent network from its precomputed input gates ``gi [..., 3H]``
    (:func:`agent_input_layers`): PyTorch's ``GRUCell`` equations. ``-> h' [..., H]``."""
    _, _, gru_h, _ = _agent_layers(agent_params)
    return gru_update(gi, jnp.matmul(h, gru_h["kernel"]) + gru_h["bias"], h)


def agent_head(agent_params, h: jax.Array) -> jax.Array:
    """The agent network's output layer: individual Q-values ``[..., H] -> [..., A]``."""
    fc2 = _agent_layers(agent_params)[3]
    return jnp.matmul(h, fc2["kernel"]) + fc2["bias"]


def _agent_chunk(agent_params, h: jax.Array, x: jax.Array):
    """The agent network over one chunk ``x [E, C, N, I]`` from ``h [E, N, H]``: the input
    layers in one matmul, the recurrence step by step (unrolled), the head in one matmul.
    Returns ``(q [E, C, N, A], h_end)``."""
    gi = agent_input_layers(agent_params, x)
    hs = []
    for c in range(x.shape[1]):
        h = agent_gru_step(agent_params, h, gi[:, c])
        hs.append(h)
    return agent_head(agent_params, jnp.stack(hs, axis=1)), h


def live_and_target_q(agent_params, target_agent_params, inputs: jax.Array, slots: jax.Array, chunk: int):
    """The live and the target agent networks over the first ``slots`` slots of ``inputs
    [E, T+1, N, I]`` in ONE time loop (both networks advance together, chunk by chunk;
    chunks wholly past ``slots`` are skipped). Returns ``(q_live, q_target, h_starts)``:
    ``q_* [E, T+1, N, A]`` (0 past the last computed chunk) and ``h_starts [K, E, N, H]``,
    the live network's hidden state entering each chunk ``k`` (``K = ceil((T+1) / chunk)``),
    from which :func:`_loss_and_grad_from` recomputes a chunk."""
    e, t1, n, _ = inputs.shape
    hidden = agent_params["params"]["rnn"]["hidden"]["kernel"].shape[0]
    padded = _pad_time(inputs, chunk)
    tp = padded.shape[1]
    h0 = jnp.zeros((2, e, n, hidden), jnp.float32)
    q_sd = jax.eval_shape(lambda: agent_head(agent_params, h0[0]))
    q = jnp.zeros((2, e, tp) + q_sd.shape[-2:], jnp.float32)
    h_starts = jnp.zeros((tp // chunk, e, n, hidden), jnp.float32)

    def body(j, carry):
        h, q, h_starts = carry
        h_starts = h_starts.at[j].set(h[0])
        x_j = jax.lax.dynamic_slice_in_dim(padded, j * chunk, chunk, axis=1)
        q_l, h_l = _agent_chunk(agent_params, h[0], x_j)
        q_t, h_t = _agent_chunk(target_agent_params, h[1], x_j)
        q_j, h = jnp.stack([q_l, q_t]), jnp.stack([h_l, h_t])
        return h, jax.lax.dynamic_update_slice_in_dim(q, q_j, j * chunk, axis=2), h_starts

    _, q, h_starts = jax.lax.fori_loop(0, num_chunks(slots, chunk), body, (h0, q, h_starts))
    return q[0, :, :t1], q[1, :, :t1], h_starts


def _fused_chunk_loss(nets: QMIXNets, params, h, x, mask_sum):
    """:func:`_chunk_td_loss` with the agent network's input layers and head applied to the
    whole chunk at once. Returns ``(loss_chunk, h_end)``."""
    inputs, actions, state, y, mask = x
    q, h = _agent_chunk(params["agent"], h, inputs)
    q_tot = nets.mixer.apply(params["mixer"], take(q, actions), state)
    err = (q_tot - y) * mask
    return jnp.sum(err ** 2) / mask_sum, h


def _loss_and_grad_from(nets: QMIXNets, params, h_starts: jax.Array, xs, mask_sum, length: jax.Array, chunk: int):
    """Back-propagation through time over the chunks holding the first ``length`` loss slots,
    last chunk first, each chunk's forward pass recomputed from its stored start state
    ``h_starts[k]`` (as :func:`tram.learners.timechunks.recurrent_value_and_grad` does, with
    the start states taken from :func:`live_and_target_q` instead of a second forward
    pass). Returns ``(loss, grads)``."""
    padded = jax.tree.map(lambda x: _pad_time(x, chunk), xs)
    n = num_chunks(length, chunk)

    def bwd(i, carry):
        loss, grads, dh = carry
        j = n - 1 - i
        x_j = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, j * chunk, chunk, axis=1), padded)
        (loss_j, _), vjp = jax.vjp(lambda p, h: _fused_chunk_loss(nets, p, h, x_j, mask_sum), params, h_starts[j])
        g_p, g_h = vjp((jnp.ones_like(loss_j), dh))
        return loss + loss_j, jax.tree.map(jnp.add, grads, g_p), g_h

    zeros = jax.tree.map(jnp.zeros_like, params)
    loss, grads, _ = jax.lax.fori_loop(0, n, bwd, (jnp.float32(0.0), zeros, jnp.zeros_like(h_starts[0])))
    return loss, grads


def targets_loss_and_grad(nets: QMIXNets, params, target_params, ep: Episodes, cfg: QMIXConfig, length: jax.Array,
                          mask_sum: jax.Array | None = None):
    """Everything one training iteration computes before the optimiser step, with no work
    past the batch's longest episode ``length`` (rounded up to ``cfg.time_chunk``).

    The same numbers as :func:`episode_targets` followed by :func:`td_loss_and_grad` (up to
    float rounding; tested against ``jax.value_and_grad`` of :func:`td_loss`), computed with
    fewer sequential steps: the live and target agent networks run in ONE time loop
    (:func:`live_and_target_q`), whose live Q-values serve both the double-Q argmax and, as
    chunk start states, the loss's back-propagation (the reference likewise takes the
    argmax from the ``mac_out`` of its loss pass); the input layers and the head run once
    per chunk of time steps, outside the recurrence. ``mask_sum`` is the loss's normaliser
    ``sum(mask)`` (default: over ``ep``; pass the whole batch's when ``ep`` is a part of it).
    Returns ``(loss, grads, targets [E, T])``.
    """
    inputs = episode_actor_inputs(nets.actor, ep)
    q_live, q_target, h_starts = live_and_target_q(params["agent"], target_params["agent"], inputs, length + 1,
                                                   cfg.time_chunk)
    q_live, q_target = jax.lax.stop_gradient((q_live, q_target))
    avail_next = ep.avail[:, 1:]
    if cfg.double_q:
        q_next = double_q_values(q_live[:, 1:], q_target[:, 1:], avail_next)
    else:
        q_next = max_q_values(q_target[:, 1:], avail_next)
    q_tot_next = map_time(lambda xs: nets.mixer.apply(target_params["mixer"], xs[0], xs[1]),
                          (q_next, ep.state[:, 1:].astype(jnp.float32)), length, cfg.time_chunk)
    targets = q_learning_targets(ep.reward[:, :-1], target_terminated(ep, cfg.bootstrap_timeouts), q_tot_next,
                                 cfg.gamma)
    e = ep.actions.shape[0]
    mask = loss_mask(ep.filled, ep.terminated)
    pad = lambda z: jnp.concatenate([z, jnp.zeros((e, 1), z.dtype)], axis=1)
    xs = (inputs, ep.actions, ep.state.astype(jnp.float32), pad(jax.lax.stop_gradient(targets)), pad(mask))
    if mask_sum is None:
        mask_sum = jnp.maximum(jnp.sum(mask), 1.0)
    loss, grads = _loss_and_grad_from(nets, params, h_starts, xs, mask_sum, length, cfg.time_chunk)
    return loss, grads, targets


def grouped_loss_and_grad(nets: QMIXNets, params, target_params, ep: Episodes, cfg: QMIXConfig):
    """The TD loss and its gradient over the batch ``ep`` with the episodes sorted by length
    (longest first) and split into ``G`` equal groups (``G`` the largest divisor of ``E`` not
    above ``cfg.length_groups``), each computed by
    :func:`targets_loss_and_grad` up to ITS longest episode, the loss normalised by the whole
    batch's ``sum(mask)``. The loss is a sum over episodes, so this is the same loss and
    gradient (float order aside; tested) with less work on padding: a short episode no
    longer runs to the batch's longest. Returns ``(loss, grads, loss_slots)``, ``loss_slots``
    the work done in batch-wide slots (``sum_g length_g * size_g / E``)."""
    e = ep.filled.shape[0]
    groups = max(g for g in range(1, min(cfg.length_groups, e) + 1) if e % g == 0)
    mask_sum = jnp.maximum(jnp.sum(loss_mask(ep.filled, ep.terminated)), 1.0)
    ep = jax.tree.map(lambda x: x[jnp.argsort(-ep.lengths)].reshape((groups, e // groups) + x.shape[1:]), ep)

    def one_group(carry, part):  # one compiled body for every group (a scan over groups)
        loss, grads, slots = carry
        length = truncate_length(part)
        loss_g, grads_g, _ = targets_loss_and_grad(nets, params, target_params, part, cfg, length, mask_sum)
        return (loss + loss_g, jax.tree.map(jnp.add, grads, grads_g),
                slots + length.astype(jnp.float32) / groups), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads, slots), _ = jax.lax.scan(one_group, (jnp.float32(0.0), zeros, jnp.float32(0.0)), ep)
    return loss, grads, slots


# ----------------------------------------------------------------------------------------
# State and one training iteration
# ----------------------------------------------------------------------------------------
class QMIXState(NamedTuple):
    """Everything a QMIX run carries between iterations (one seed)."""

    actor_params: Any  # the agent network (acts in the rollout)
    critic_params: Any  # the mixer
    target_params: Any  # {"agent": ..., "mixer": ...}
    opt_state: Any  # RMSprop over {"agent": actor_params, "mixer": critic_params}
    buffer: EpisodeBuffer
    episodes: jax.Array  # episodes collected so far
    last_target_update: jax.Array  # the episode counter at the last target copy


def _joint(state: QMIXState) -> dict:
    return {"agent": state.actor_params, "mixer": state.critic_params}


def _dtype(cfg: QMIXConfig):
    return jnp.float16 if cfg.storage_dtype == "float16" else jnp.float32


def buffer_bytes(cfg: QMIXConfig, spec) -> int:
    """Bytes the replay buffer of one seed takes."""
    return episodes_nbytes(cfg.buffer_size, spec.episode_limit, spec.num_agents, spec.obs_dim, spec.state_dim,
                           spec.num_actions, _dtype(cfg))


def init_state(cfg: QMIXConfig, spec, key) -> tuple[QMIXNets, QMIXState]:
    """Fresh networks (target = copy of the live ones), optimiser and empty buffer."""
    nets = make_nets(cfg, spec.num_agents, spec.num_actions)
    k_a, k_m = jax.random.split(key)
    n, a = spec.num_agents, spec.num_actions
    agent_params = nets.actor.init(k_a, jnp.zeros((1, cfg.rnn_hidden)), jnp.zeros((1, spec.obs_dim + a + n)))
    mixer_params = nets.mixer.init(k_m, jnp.zeros((1, n)), jnp.zeros((1, spec.state_dim)))
    joint = {"agent": agent_params, "mixer": mixer_params}
    state = QMIXState(
        actor_params=agent_params,
        critic_params=mixer_params,
        target_params=joint,
        opt_state=rmsprop(cfg.lr, cfg).init(joint),
        buffer=buffer_init(empty_episodes(cfg.buffer_size, spec.episode_limit, n, spec.obs_dim, spec.state_dim,
                                          a, _dtype(cfg))),
        episodes=jnp.int32(0),
        last_target_update=jnp.int32(0),
    )
    return nets, state


def attack_q_fn(nets: QMIXNets, critic_params, agent: int):
    """The attack hook's critic view. QMIX's individual Q-values are the agent network's
    output, which the rollout already passes to the perturbation as ``logits`` (see
    :data:`WORST_Q_SOURCE`); this returns zeros and mixing weight 1."""
    del critic_params, agent

    def q_fn(state, obs, clean_actions, last_actions):
        del state, obs, clean_actions, last_actions
        return jnp.zeros((nets.actor.num_actions,), jnp.float32), jnp.float32(1.0)

    return q_fn


def store_episodes(state: QMIXState, episodes: Episodes) -> QMIXState:
    """Adds the collected episodes to the replay buffer and counts them."""
    return state._replace(buffer=buffer_add(state.buffer, episodes),
                          episodes=state.episodes + episodes.filled.shape[0])


def ready_to_train(cfg: QMIXConfig, state: QMIXState) -> jax.Array:
    """``[]`` bool: the replay buffer holds at least ``batch_size`` episodes."""
    return state.buffer.count >= cfg.batch_size


def train_step(cfg: QMIXConfig, nets: QMIXNets, state: QMIXState, key, epsilon) -> tuple[QMIXState, dict]:
    """One QMIX iteration (reference ``QLearner.train``): sample ``batch_size`` episodes,
    double-Q targets from the target networks, one RMSprop step on the TD loss, then the
    target copy check. Returns the new state and ``info``: ``critic_loss`` (the TD loss),
    ``actor_loss`` (NaN) and the work done (``critic_timesteps``: loss slots,
    ``target_slots``: slots of the target and live passes, ``actor_slots``: slots of the
    loss's recurrent pass)."""
    del epsilon  # the loss does not depend on the behaviour policy
    ep = buffer_sample_uniform(key, state.buffer, cfg.batch_size).as_float32()
    params = _joint(state)
    loss, grads, slots = grouped_loss_and_grad(nets, params, state.target_params, ep, cfg)
    updates, opt_state = rmsprop(cfg.lr, cfg).update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)

    episode = state.episodes - cfg.num_envs  # the reference's counter: before this batch
    do_copy = (episode - state.last_target_update) >= cfg.target_update_interval
    target_params = jax.tree.map(lambda c, t: jnp.where(do_copy, c, t), params, state.target_params)
    new_state = state._replace(
        actor_params=params["agent"], critic_params=params["mixer"], target_params=target_params,
        opt_state=opt_state, last_target_update=jnp.where(do_copy, episode, state.last_target_update),
    )
    info = {"critic_loss": loss, "actor_loss": jnp.float32(jnp.nan), "critic_timesteps": slots,
            "target_slots": slots + 1.0, "actor_slots": slots}
    return new_state, info


LEARNER = Learner(
    name="qmix", config=QMIXConfig, make_nets=make_nets, init_state=init_state, store_episodes=store_episodes,
    ready_to_train=ready_to_train, train_step=train_step, attack_q_fn=attack_q_fn, buffer_bytes=buffer_bytes,
    policy_gradient=None, select_actions=select_actions, acting_policy=ACTING_POLICY, worst_q_source=WORST_Q_SOURCE,
)
"""QMIX's record for the training program (:class:`tram.types.Learner`): no policy gradient,
its own acting rule (epsilon-greedy on the agent network's Q-values) and the worst-Q attack
reading those Q-values."""
