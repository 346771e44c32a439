"""Black-box TRAM: the attacker's own critic (``attack.critic = "surrogate"``).

The paper's directions read the learner's critic (``ActingContext.q_values`` and
``mix_weight``, from the learner's ``attack_q_fn``). An attacker inside the team need not
have that critic. What it does have: its own observations and actions, the team reward
(every agent receives it), the shared actor (it acts with it; with parameter sharing the
actor's parameters are every agent's) and the episodes' ends. From these it trains its own
critic, and the direction (var or J-based) reads that critic instead of the learner's.

Design (``docs/surrogate.md`` says the same in prose):

* network: an individual, recurrent Q-network ``Q_att(tau_k, .)`` over the poisoned agent
  ``k``'s action-observation history, with the layers of the team's actor and its own
  parameters: ``Linear(I, H) -> ReLU -> GRUCell(H) -> Linear(H, A)``
  (:class:`tram.learners.actor.RNNActor`, PyTorch's default initialisation), whose input at
  step ``t`` is the poisoned agent's actor input ``[o^k_t, onehot(a^k_{t-1}) (zeros at
  t = 0), onehot(k)]`` and whose hidden state starts at zeros with each episode. Its output
  is read as Q-values, not logits;
* target: SARSA-style TD(lambda) on the EXECUTED actions of agent ``k`` (PyMARL's
  ``build_td_lambda_targets``, :func:`tram.learners.targets.td_lambda_targets`) on a target
  copy of the network, with the team reward and the episode's end: the network estimates
  the value of the team's current (possibly perturbed) behaviour as seen from agent ``k``'s
  history, ``Q^pi(tau_k, a)``, the individual analogue of COMA's ``Q(s, u_-k, a)`` with the
  state and teammates' actions marginalised out; the post-episode slot is bootstrapped or
  not as the learner's ``bootstrap_timeouts`` says (a property of the task's time limit,
  :func:`tram.learners.episodes.target_terminated`), the loss mask is PyMARL's
  (:func:`tram.learners.episodes.loss_mask`);
* loss: ``sum_{e,t} mask (Q_att(tau_t, a_t) - y_t)^2 / sum mask`` over the episodes of one
  training iteration;
* update: once per training iteration, one step of its own RMSprop (PyTorch's form, after
  global-norm clipping; :class:`SurrogateConfig`) on the ``num_envs`` episodes just
  collected (all of which the poisoned agent took part in), before the learner's update;
  the target copy is refreshed every ``target_update_interval`` updates (hard copy);
* randomness: only the initialisation draws, from ``fold_in(run key, SURROGATE_STREAM)``;
  the update is deterministic (the whole fresh batch, no sampling). The run's own key
  stream is not touched, so ``attack.critic = "surrogate"`` with ``f_A = 0`` equals the
  clean run bit for bit;
* where it lives: the training state's ``attacker`` slot
  (:class:`tram.experiments.program.TrainState`), never the learner's state: the learner
  neither reads nor trains it;
* acting: the rollout carries the surrogate's hidden state per environment (the
  ``q_carry`` of :class:`tram.learners.rollout.AttackHook`) and the direction reads
  ``q_values = Q_att(tau_t, .)`` with ``mix_weight = 1``.

What the attacker does not see: the global state, the teammates' observations, the
learner's critic and mixer (DOP's ``k_k(s)`` and ``Q_k(s, o_k, .)``, COMA's ``Q(s, u_-k,
.)``) and the learner's policy gradient. ``critic = "surrogate"`` is accepted with the
methods of :data:`SURROGATE_METHODS`: var needs Q-values and the actor, both of which the
attacker has; J-based also needs the last actor update's gradient, for which the black-box
attacker uses its own estimate from its episodes and its surrogate
(:func:`policy_gradient_estimate`, kept in :attr:`SurrogateState.policy_grad`, computed
after each surrogate update at the actor that collected the episodes; before the first one
the direction falls back to random, as the white-box one does before the learner's first
actor update).

Departures from the paper: the paper has no black-box attacker (App. E names it as future
work); every choice here is ours. The hyper-parameters are COMA's critic defaults in
PyMARL (RMSprop 5e-4, alpha 0.99, eps 1e-5, clip 10, gamma 0.99, lambda 0.8) with a
shorter target period (one update per iteration instead of one per timestep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tram.attacks.methods import CRITICS, SURROGATE_METHODS  # re-exported: the config's accepted values
from tram.learners.actor import RNNActor, actor_inputs
from tram.learners.episodes import Episodes, loss_mask, target_terminated
from tram.learners.targets import td_lambda_targets

__all__ = ["CRITICS", "SURROGATE_METHODS", "SURROGATE_STREAM", "SurrogateConfig", "SurrogateState",
           "surrogate_net", "init_surrogate", "surrogate_inputs", "q_over_inputs", "td_targets", "td_loss",
           "surrogate_loss", "update_surrogate", "policy_gradient_estimate", "surrogate_q_fn"]

SURROGATE_STREAM = 0x5A77
"""Folded into the run key for the surrogate's own random stream (its initialisation)."""


@dataclass(frozen=True)
class SurrogateConfig:
    """Hyper-parameters of the attacker's critic (fixed defaults; not part of the run config)."""

    hidden: int = 64
    """GRU hidden units ``H`` (the team's actor has 64 in the reference)."""
    lr: float = 5e-4
    """RMSprop learning rate."""
    rms_alpha: float = 0.99
    """RMSprop decay."""
    rms_eps: float = 1e-5
    """RMSprop epsilon (outside the square root, PyTorch's form)."""
    grad_clip: float = 10.0
    """Global gradient-norm clip."""
    gamma: float = 0.99
    """Discount."""
    td_lambda: float = 0.8
    """Lambda of the TD(lambda) targets (0: one-step TD; 1: Monte-Carlo)."""
    target_update_interval: int = 50
    """Updates between hard copies of the network into its target copy."""


class SurrogateState(NamedTuple):
    """The attacker's critic: ``params`` and ``target_params`` (pytrees of
    :func:`surrogate_net`), the RMSprop state ``opt_state``, ``updates [] int32`` taken so
    far and ``loss []`` float32 of the last update (NaN before the first). For the J-based
    direction also ``policy_grad`` (a pytree like the actor's parameters: the attacker's own
    estimate of the policy gradient, :func:`policy_gradient_estimate`) and ``has_grad [] bool``;
    None otherwise."""

    params: Any
    target_params: Any
    opt_state: Any
    updates: jax.Array
    loss: jax.Array
    policy_grad: Any = None
    has_grad: Any = None


def surrogate_net(num_actions: int, cfg: SurrogateConfig = SurrogateConfig()) -> RNNActor:
    """The network ``(h [..., H], x [..., I]) -> (q [..., A], h' [..., H])``."""
    return RNNActor(num_actions=num_actions, hidden=cfg.hidden)


def _optimiser(cfg: SurrogateConfig) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.rmsprop(cfg.lr, decay=cfg.rms_alpha, eps=cfg.rms_eps, eps_in_sqrt=False))


def init_surrogate(key: jax.Array, input_dim: int, num_actions: int,
                   cfg: SurrogateConfig = SurrogateConfig()) -> SurrogateState:
    """A fresh surrogate (target copy equal to the network; ``updates`` 0, ``loss`` NaN).

    ``key``: the surrogate's own key (the caller folds :data:`SURROGATE_STREAM` into the
    run key); ``input_dim`` is the actor input size ``I = D + A + N``."""
    net = surrogate_net(num_actions, cfg)
    params = net.init(key, jnp.zeros((cfg.hidden,), jnp.float32), jnp.zeros((input_dim,), jnp.float32))
    return SurrogateState(params=params, target_params=params, opt_state=_optimiser(cfg).init(params),
                          updates=jnp.int32(0), loss=jnp.float32(jnp.nan))


def surrogate_inputs(episodes: Episodes, agent: int, num_actions: int) -> jax.Array:
    """The poisoned agent's actor inputs at every slot of every episode (last action -1,
    i.e. zeros, at t = 0): ``[E, T+1, I]``, the same rows the rollout builds when acting."""
    e, _, n = episodes.actions.shape
    last = jnp.concatenate([jnp.full((e, 1, n), -1, jnp.int32), episodes.actions[:, :-1]], axis=1)
    return actor_inputs(episodes.obs, last, num_actions)[:, :, agent]


def q_over_inputs(net: RNNActor, params, x: jax.Array) -> jax.Array:
    """``Q_att`` along each episode from a zero hidden state: ``x [E, T+1, I] -> [E, T+1, A]``."""
    h0 = jnp.zeros((x.shape[0], net.hidden), jnp.float32)

    def step(h, x_t):
        q, h = net.apply(params, h, x_t)
        return h, q

    _, q = jax.lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
    return jnp.swapaxes(q, 0, 1)


def _taken(q: jax.Array, actions: jax.Array) -> jax.Array:
    return jnp.take_along_axis(q, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]


def td_targets(q_target: jax.Array, actions: jax.Array, reward: jax.Array, terminated: jax.Array,
               mask: jax.Array, gamma: float, lam: float) -> jax.Array:
    """SARSA TD(lambda) targets of ONE episode on the executed actions.

    Args:
        q_target: ``[T+1, A]`` target-network values (slot ``T`` the post-episode slot).
        actions: ``[T+1]`` int executed actions of the poisoned agent (the post-episode slot
            holds the action chosen there, which the bootstrap reads).
        reward: ``[T]`` team rewards; terminated: ``[T]`` float target termination flags;
        mask: ``[T]`` float loss mask; gamma, lam: discount and lambda.

    Returns:
        ``[T]`` targets ``y_t`` (:func:`tram.learners.targets.td_lambda_targets` on
        ``q_target[t, a_t]``).
    """
    return td_lambda_targets(reward, terminated, mask, _taken(q_target, actions), gamma, lam)


def td_loss(q: jax.Array, q_target: jax.Array, actions: jax.Array, reward: jax.Array, terminated: jax.Array,
            mask: jax.Array, gamma: float, lam: float) -> jax.Array:
    """The surrogate's TD loss over a batch of episodes: ``sum mask (q[t, a_t] - y_t)^2 / sum mask``
    with ``y`` from :func:`td_targets` (held constant). Shapes: ``q, q_target [E, T+1, A]``,
    ``actions [E, T+1]``, ``reward, terminated, mask [E, T]``. Returns ``[]`` (0 when the
    mask is empty)."""
    y = jax.vmap(td_targets, in_axes=(0, 0, 0, 0, 0, None, None))(q_target, actions, reward, terminated, mask,
                                                                 gamma, lam)
    err = _taken(q[:, :-1], actions[:, :-1]) - jax.lax.stop_gradient(y)
    return jnp.sum(mask * err * err) / jnp.maximum(jnp.sum(mask), 1.0)


def surrogate_loss(params, target_params, episodes: Episodes, agent: int, num_actions: int,
                   bootstrap_timeouts: bool, cfg: SurrogateConfig = SurrogateConfig()) -> jax.Array:
    """:func:`td_loss` of the surrogate ``params`` on ``episodes`` (float32 obs) for agent
    ``agent``, with PyMARL's mask and the learner's time-limit treatment. Returns ``[]``."""
    net = surrogate_net(num_actions, cfg)
    x = surrogate_inputs(episodes, agent, num_actions)
    q = q_over_inputs(net, params, x)
    q_target = q_over_inputs(net, target_params, x)
    mask = loss_mask(episodes.filled, episodes.terminated)
    term = target_terminated(episodes, bootstrap_timeouts)
    return td_loss(q, q_target, episodes.actions[:, :, agent], episodes.reward[:, :-1], term, mask,
                   cfg.gamma, cfg.td_lambda)


def update_surrogate(state: SurrogateState, episodes: Episodes, agent: int, num_actions: int,
                     bootstrap_timeouts: bool, cfg: SurrogateConfig = SurrogateConfig()) -> SurrogateState:
    """One RMSprop step of the surrogate on ``episodes`` (those just collected), then the
    target copy when ``updates`` reaches a multiple of ``cfg.target_update_interval``.
    Returns the new :class:`SurrogateState` (``loss`` the loss before the step)."""
    episodes = episodes.as_float32()
    loss, grads = jax.value_and_grad(surrogate_loss)(state.params, state.target_params, episodes, agent,
                                                     num_actions, bootstrap_timeouts, cfg)
    upd, opt_state = _optimiser(cfg).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, upd)
    updates = state.updates + 1
    copy = updates % cfg.target_update_interval == 0
    target = jax.tree.map(lambda p, t: jnp.where(copy, p, t), params, state.target_params)
    return state._replace(params=params, target_params=target, opt_state=opt_state, updates=updates, loss=loss)


def policy_gradient_estimate(actor: RNNActor, actor_params, surrogate_params, episodes: Episodes, agent: int,
                             epsilon, cfg: SurrogateConfig = SurrogateConfig()):
    """The black-box attacker's estimate of the team's policy gradient (ascent direction of J),
    in place of the learner's last actor gradient for the J-based direction.

    From the poisoned agent's share of the actor loss, with its surrogate's advantages:
    ``g = grad_theta (1 / sum mask) sum_{e,t} mask A_att(tau_t, a_t) log pi_eps(a_t | tau_t)``,
    ``A_att(tau, a) = Q_att(tau, a) - sum_b pi_eps(b | tau) Q_att(tau, b)`` held constant,
    ``pi_eps`` the learner's epsilon-floored policy (the attacker samples from it, so it
    knows it), the gradient through the whole history (the actor unrolled from a zero
    hidden state), on the agent's executed actions of ``episodes``. It is the learner's
    (COMA-form) gradient restricted to agent ``k``'s terms, with ``Q_att`` in place of the
    learner's critic: what the attacker can compute without the teammates' data.

    Args:
        actor: the shared actor; actor_params: its parameters (those that collected
            ``episodes``); surrogate_params: the surrogate's; epsilon: ``[]`` the floor.

    Returns:
        A pytree like ``actor_params``.
    """
    from tram.learners.actor import floored_policy

    ep = episodes.as_float32()
    a = actor.num_actions
    x = surrogate_inputs(ep, agent, a)  # [E, T+1, I]: the actor's inputs are the same rows
    avail = ep.avail[:, :, agent]
    actions = ep.actions[:, :, agent]
    mask = jnp.concatenate([loss_mask(ep.filled, ep.terminated), jnp.zeros((x.shape[0], 1))], axis=1)
    weight = mask / jnp.maximum(jnp.sum(mask), 1.0)
    q = jax.lax.stop_gradient(q_over_inputs(surrogate_net(a, cfg), surrogate_params, x))

    def objective(theta):
        pi = floored_policy(q_over_inputs(actor, theta, x), avail, epsilon)
        adv = jax.lax.stop_gradient(_taken(q, actions) - jnp.sum(pi * q, axis=-1))
        pi_taken = jnp.where(weight > 0, _taken(pi, actions), 1.0)
        return jnp.sum(weight * adv * jnp.log(pi_taken))

    return jax.grad(objective)(actor_params)


def surrogate_q_fn(params, agent: int, num_actions: int, cfg: SurrogateConfig = SurrogateConfig()):
    """The rollout's recurrent ``q_fn`` for the surrogate (``AttackHook.q_carry`` set to a
    zero ``[H]`` hidden state): ``q_fn(state [S], obs [N, D], clean_actions [N],
    last_actions [N], h [H]) -> (q [A], mix_weight [] = 1, h' [H])``. It reads only agent
    ``agent``'s observation and last action (``state`` and the teammates are ignored)."""
    net = surrogate_net(num_actions, cfg)

    def q_fn(state, obs, clean_actions, last_actions, h):
        del state, clean_actions
        x = actor_inputs(obs, last_actions, num_actions)[agent]
        q, h_new = net.apply(params, h, x)
        return q, jnp.float32(1.0), h_new

    return q_fn
