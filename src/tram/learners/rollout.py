"""Collecting episodes with the shared recurrent actor, with an optional policy perturbation
of one agent (the hook TRAM's attacks plug into), and greedy evaluation.

Like PyMARL's parallel runner, ``B`` environments start together and run until every one
of them has ended; the loop is a ``lax.while_loop`` that stops at the longest episode, so
no step is computed past it. Finished environments are masked, not reset.

The acting step, per environment and step ``t``:

1. actor forward for all agents: ``logits [B, N, A]``;
2. ``clean = sample(key_act, floored_policy(logits))`` (or the learner's own acting rule,
   ``select_actions(key_act, logits, avail, epsilon)``, e.g. QMIX's epsilon-greedy);
3. with an attack: the poisoned agent's logits are replaced by
   ``perturb(key_attack, ctx)``, where ``ctx`` (``tram.types.ActingContext``) holds its
   logits, available actions, the critic's per-action values (from the hook's ``q_fn``:
   the learner's critic, which may read the teammates' clean actions, or the attacker's
   recurrent surrogate critic, whose hidden state the rollout carries), the actor parameters and
   inputs and the previous actor gradient; then ``actions = sample(key_act, ...)`` with
   the SAME key, so the teammates' actions are the clean ones and an identity
   perturbation reproduces the clean run exactly;
   for the exact recurrent gradient the rollout also carries, per environment, the
   poisoned agent's hidden-state tangent along the previous actor gradient (exact J-based
   direction: zeros at the episode start, one JVP of the actor step per acting step) or
   its inputs so far (exact variance-based Gram); see ``AttackHook``;
4. the learner's epsilon floor is applied after the perturbation (the attack replaces the
   softmax part only), and the learner later trains on the executed actions with its own
   policy, unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from tram.attacks.directions import advance_hidden_tangent
from tram.detect.score import ActingPolicy, MonitorAcc, step_increments
from tram.envs.base import TramEnv
from tram.learners.actor import RNNActor, RNNActorLogits, actor_inputs, floored_policy, greedy_actions, sample_actions
from tram.learners.episodes import Episodes, empty_episodes
from tram.types import ActingContext, AttackStepStats, PolicyPerturbation, SelectActions


def _sample_floored(key: jax.Array, logits: jax.Array, avail: jax.Array, epsilon: jax.Array) -> jax.Array:
    """The default acting rule: sample from the epsilon-floored softmax (DOP, COMA)."""
    return sample_actions(key, floored_policy(logits, avail, epsilon))


# q_fn(state [S], obs [N, D], clean_actions [N], last_actions [N]) -> (q [A], mix_weight [])
AttackQFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


class AttackHook(NamedTuple):
    """What the rollout needs to perturb one agent's sampling (built inside the learner).

    ``carry_hidden_tangent`` (static bool; ``AttackConfig.carries_hidden_tangent``): carry
    ``d h / d theta . prev_actor_grad`` of the poisoned agent through each episode (zeros at
    its start) and pass it as ``ActingContext.hidden_tangent`` (the exact J-based
    direction). ``carry_history`` (static bool; ``AttackConfig.carries_history``): keep the
    poisoned agent's actor inputs of the episode (``[episode_limit + 1, I]`` per
    environment) and pass them as ``ActingContext.history_inputs`` / ``history_step`` (the
    exact variance-based Gram). Both default to False (nothing extra is computed).

    ``q_carry``: None (default) for a stateless ``q_fn`` (the learner's critic,
    :data:`AttackQFn`), or the initial carry of ONE environment (a pytree, e.g. a zero
    ``[H]`` hidden state) of a recurrent ``q_fn(state, obs, clean_actions, last_actions,
    carry) -> (q [A], mix_weight [], carry')`` (the attacker's surrogate critic,
    :func:`tram.attacks.surrogate.surrogate_q_fn`); the rollout starts every episode from
    it and advances it once per acting step."""

    perturb: PolicyPerturbation
    agent: int
    q_fn: AttackQFn
    prev_actor_grad: Any
    has_prev_grad: jax.Array
    carry_hidden_tangent: bool = False
    carry_history: bool = False
    q_carry: Any = None


def _q_carry0(attack: "AttackHook | None", batch: int):
    """The recurrent ``q_fn``'s carry for ``batch`` environments (leaves ``[B, ...]``), or None."""
    if attack is None or attack.q_carry is None:
        return None
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + jnp.shape(x)), attack.q_carry)


def _attack_q(attack: "AttackHook", q_carry, state, obs, clean_actions, last):
    """``(q [B, A], mix [B], q_carry')`` of the hook's ``q_fn`` over environments."""
    if attack.q_carry is None:
        q, mix = jax.vmap(attack.q_fn)(state, obs, clean_actions, last)
        return q, mix, q_carry
    return jax.vmap(attack.q_fn)(state, obs, clean_actions, last, q_carry)


def _recurrent_carry0(attack: "AttackHook | None", batch: int, hidden: int, limit: int, input_dim: int):
    """Initial ``(hidden_tangent [B, H] | None, history [B, limit + 1, I] | None)``."""
    if attack is None:
        return None, None
    h_dot = jnp.zeros((batch, hidden), jnp.float32) if attack.carry_hidden_tangent else None
    hist = jnp.zeros((batch, limit + 1, input_dim), jnp.float32) if attack.carry_history else None
    return h_dot, hist


def _recurrent_extras(attack: "AttackHook", actor: RNNActor, actor_params: Any, h_dot, hist, t: jax.Array,
                      h_k: jax.Array, x_k: jax.Array, limit: int):
    """The per-env ``ActingContext`` extras of this step and the carries of the next.

    Args:
        h_dot: ``[B, H]`` tangent of the poisoned agent's hidden state before this step, or None.
        hist: ``[B, limit + 1, I]`` its inputs of the earlier steps, or None.
        t: ``[]`` int32 step index; h_k ``[B, H]`` hidden state before the step; x_k ``[B, I]`` input.

    Returns:
        ``(extras, h_dot_next, hist_next)``: ``extras`` a dict of ``ActingContext`` fields
        with a leading ``[B]`` axis (None where not carried).
    """
    extras = {"hidden_tangent": h_dot, "history_inputs": None, "history_step": None}
    h_dot_next, hist_next = None, None
    if hist is not None:
        slot = jnp.minimum(t, limit)
        hist_next = hist.at[:, slot].set(x_k)
        extras["history_inputs"] = hist_next
        extras["history_step"] = jnp.full((x_k.shape[0],), slot, jnp.int32)
    if h_dot is not None:
        step_fn = RNNActorLogits(actor).step
        h_dot_next = jax.vmap(lambda h, x, hd: advance_hidden_tangent(
            step_fn, actor_params, h, x, attack.prev_actor_grad, hd))(h_k, x_k, h_dot)
    return extras, h_dot_next, hist_next


class AttackSample(NamedTuple):
    """One state of the poisoned agent, for the paper's Fig. 4: ``pi [A]`` (softmax over
    available actions, before the attack), ``delta_hat [A]``, ``avail [A]``, ``valid []``."""

    pi: jax.Array
    delta_hat: jax.Array
    avail: jax.Array
    valid: jax.Array


def empty_sample(num_actions: int) -> AttackSample:
    """An invalid :class:`AttackSample` (zeros, ``[A]`` each; ``valid`` False)."""
    z = jnp.zeros((num_actions,), jnp.float32)
    return AttackSample(pi=z, delta_hat=z, avail=jnp.zeros((num_actions,), bool), valid=jnp.bool_(False))


class RolloutStats(NamedTuple):
    """Sums over the collected episodes (divide by the counts outside).

    Attributes:
        episode_return: ``[B]`` undiscounted return per episode.
        won: ``[B]`` float, 1.0 if the episode was won (SMAX) / succeeded at any step (grid).
        length: ``[B]`` int32 episode lengths.
        attack: ``AttackStepStats`` of ``[]`` sums (``beta`` over unsaturated steps only)
            over the poisoned agent's steps that had
            at least two available actions (steps with a single available action admit no
            perturbation; they are counted in ``attack_single_action_steps``).
        attack_steps: ``[]`` number of steps summed in ``attack``.
        attack_single_action_steps: ``[]`` steps of the poisoned agent with one action.
        attack_kl_max: ``[]`` the largest ``KL(pi' || pi)`` of those steps.
        sample: an :class:`AttackSample` of environment 0 at a random step (``valid`` False
            when that step was not an attackable step of the poisoned agent).
        monitor: the detection monitor's sums (:class:`tram.detect.score.MonitorAcc`), or
            None when ``collect_episodes`` was not given a ``monitor_policy``.
    """

    episode_return: jax.Array
    won: jax.Array
    length: jax.Array
    attack: AttackStepStats
    attack_steps: jax.Array
    attack_single_action_steps: jax.Array
    attack_kl_max: jax.Array
    sample: AttackSample
    monitor: Any = None


class AttackSums(NamedTuple):
    """The running sums of the poisoned agent's statistics over a rollout (``[]`` each):
    ``stats`` (:class:`AttackStepStats` sums over its steps with at least two available
    actions; ``beta`` over the unsaturated ones only), ``steps`` (the number of those steps),
    ``single_steps`` (its steps with one available action) and ``kl_max`` (the largest KL of
    those steps)."""

    stats: AttackStepStats
    steps: jax.Array
    single_steps: jax.Array
    kl_max: jax.Array

    @classmethod
    def zeros(cls) -> "AttackSums":
        """No step yet: every sum 0."""
        z = jnp.float32(0.0)
        return cls(stats=AttackStepStats.zeros(), steps=z, single_steps=z, kl_max=z)


def add_attack_step(sums: AttackSums, stats: AttackStepStats, avail_k: jax.Array, active: jax.Array
                    ) -> tuple[AttackSums, jax.Array]:
    """Adds one acting step of the poisoned agent in ``B`` environments to ``sums``.

    Args:
        stats: the perturbation's :class:`AttackStepStats`, each ``[B]``.
        avail_k: ``[B, A]`` bool, the poisoned agent's available actions.
        active: ``[B]`` bool, environments still running.

    Returns:
        ``(sums, multi)``: the new sums and ``multi [B]`` bool, the environments where this was
        a step with at least two available actions (the only steps summed in ``stats``;
        the others count in ``single_steps``). ``beta`` is summed over unsaturated steps
        only: a saturated search returns ``2^BSN1``, which would swamp the mean
        (saturation has its own statistic). ``kl_max`` reads ``stats.kl`` of those steps.
    """
    multi = (jnp.sum(avail_k, axis=-1) >= 2) & active
    w = multi.astype(jnp.float32)
    stats_sum = stats.scalars()._replace(beta=stats.beta * (1.0 - stats.saturated))
    return AttackSums(
        stats=jax.tree.map(lambda s, v: s + jnp.sum(w * v), sums.stats, stats_sum),
        steps=sums.steps + jnp.sum(w),
        single_steps=sums.single_steps + jnp.sum((~multi & active).astype(jnp.float32)),
        kl_max=jnp.maximum(sums.kl_max, jnp.max(jnp.where(multi, stats.kl, 0.0))),
    ), multi


def take_sample(sample: AttackSample, take_it: jax.Array, logits_k: jax.Array, avail_k: jax.Array,
                delta_hat: jax.Array) -> AttackSample:
    """The Fig. 4 sample after one step of environment 0: ``sample`` replaced, if
    ``take_it`` (``[]`` bool), by the poisoned agent's clean softmax over its available actions
    (from ``logits_k [A]``, ``avail_k [A]``) and this step's direction ``delta_hat [A]``."""
    pi = jax.nn.softmax(jnp.where(avail_k, logits_k, -jnp.inf))
    new = AttackSample(pi=pi, delta_hat=delta_hat, avail=avail_k, valid=jnp.bool_(True))
    return jax.tree.map(lambda a, b: jnp.where(take_it, a, b), new, sample)


def perturb_agent(attack: AttackHook, actor: RNNActor, actor_params: Any, key: jax.Array, logits: jax.Array,
                  ts, clean_actions: jax.Array, last: jax.Array, h: jax.Array, x: jax.Array, epsilon: jax.Array,
                  extras: dict, q_carry=None) -> tuple[jax.Array, AttackStepStats, Any]:
    """The poisoned agent's perturbed logits in ``B`` environments, one ``attack.perturb`` per
    environment (``ActingContext`` built from this step).

    Args:
        key: split into one key per environment.
        logits: ``[B, N, A]`` the actor's logits of every agent.
        ts: the environments' time step (``state [B, S]``, ``obs [B, N, D]``, ``avail [B, N, A]``).
        clean_actions: ``[B, N]`` the actions the acting rule chose before the attack (the
            teammates' actions ``attack.q_fn`` reads).
        last: ``[B, N]`` the previous actions (-1 at the first step).
        h: ``[B, N, H]`` hidden states before the step; x: ``[B, N, I]`` actor inputs.
        extras: the recurrent-gradient fields of ``ActingContext`` with a leading ``[B]``
            (:func:`_recurrent_extras`).
        q_carry: the recurrent ``q_fn``'s carry (leaves ``[B, ...]``; ``AttackHook.q_carry``),
            None for a stateless one.

    Returns:
        ``(new_logits_k [B, A], stats, q_carry')``: the logits to act from, the
        :class:`AttackStepStats` (each ``[B]``; ``delta_hat [B, A]`` or None) and the advanced
        ``q_fn`` carry.
    """
    k = attack.agent
    num_envs = logits.shape[0]
    q, mix, q_carry = _attack_q(attack, q_carry, ts.state, ts.obs, clean_actions, last)

    def one_env(key_b, logits_b, avail_b, q_b, mix_b, h_b, x_b, extras_b):
        ctx = ActingContext(
            logits=logits_b, avail=avail_b, q_values=q_b, mix_weight=mix_b,
            actor_params=actor_params, actor_hidden=h_b, actor_input=x_b,
            prev_actor_grad=attack.prev_actor_grad, has_prev_grad=attack.has_prev_grad,
            epsilon=epsilon, **extras_b,
        )
        return attack.perturb(key_b, ctx, _one_step_logits(actor))

    new_logits_k, stats = jax.vmap(one_env)(jax.random.split(key, num_envs), logits[:, k], ts.avail[:, k], q, mix,
                                            h[:, k], x[:, k], extras)
    return new_logits_k, stats, q_carry


def record_step(store: Episodes, t: jax.Array, limit: int, active: jax.Array, recorded: jax.Array,
                actions: jax.Array, ts) -> Episodes:
    """``store`` with step ``t`` written for the environments that took it: ``actions`` at
    slot ``t`` where ``recorded [B]`` (running or just ended: the post-episode slot's action,
    which the targets bootstrap from), and where ``active [B]``: the reward, ``terminated``
    and ``filled`` at slot ``t`` and the next observation, state and available actions
    (from ``ts``, the step's result) at slot ``t + 1``. Slots are clipped to ``limit``."""

    def put(arr, val, slot, where=active):
        slot = jnp.minimum(slot, limit)
        old = arr[:, slot]
        m = where.reshape((-1,) + (1,) * (old.ndim - 1))
        return arr.at[:, slot].set(jnp.where(m, val.astype(arr.dtype), old))

    return store._replace(
        actions=put(store.actions, actions, t, recorded),
        reward=put(store.reward, ts.reward, t),
        terminated=put(store.terminated, ts.terminated, t),
        filled=put(store.filled, jnp.ones_like(active), t),
        obs=put(store.obs, ts.obs, t + 1),
        state=put(store.state, ts.state, t + 1),
        avail=put(store.avail, ts.avail, t + 1),
    )


def initial_store(spec, ts, num_envs: int, storage_dtype) -> Episodes:
    """Empty :class:`Episodes` (``E = num_envs``, ``episode_limit + 1`` slots, observations and
    states in ``storage_dtype``) with slot 0 holding the reset time step ``ts``."""
    store = empty_episodes(num_envs, spec.episode_limit, spec.num_agents, spec.obs_dim, spec.state_dim,
                           spec.num_actions, storage_dtype)
    return store._replace(
        obs=store.obs.at[:, 0].set(ts.obs.astype(storage_dtype)),
        state=store.state.at[:, 0].set(ts.state.astype(storage_dtype)),
        avail=store.avail.at[:, 0].set(ts.avail),
    )


class RolloutCarry(NamedTuple):
    """The loop state of :func:`collect_episodes` (``B`` environments)."""

    t: jax.Array  # [] int32 step
    key: jax.Array
    env_state: Any
    ts: Any  # the current time step of every environment
    h: jax.Array  # [B, N, H] actor hidden states
    last: jax.Array  # [B, N] previous actions (-1 at the start)
    active: jax.Array  # [B] bool running
    pending: jax.Array  # [B] bool ended at the previous step (records its post-episode action)
    store: Episodes
    ret: jax.Array  # [B] returns so far
    won: jax.Array  # [B] float won / succeeded so far
    attack: AttackSums
    sample: AttackSample
    h_dot: Any  # [B, H] or None (AttackHook.carry_hidden_tangent)
    hist: Any  # [B, limit + 1, I] or None (AttackHook.carry_history)
    q_carry: Any = None  # leaves [B, ...] or None (AttackHook.q_carry)
    mon: Any = None  # MonitorAcc or None (collect_episodes' monitor_policy)


def collect_episodes(
    env: TramEnv,
    actor: RNNActor,
    actor_params: Any,
    key: jax.Array,
    epsilon: jax.Array,
    num_envs: int,
    attack: AttackHook | None = None,
    storage_dtype=jnp.float32,
    select_actions: SelectActions | None = None,
    monitor_policy: ActingPolicy | None = None,
) -> tuple[Episodes, RolloutStats]:
    """Runs ``num_envs`` episodes to their ends with the floored stochastic policy, or with
    the learner's acting rule ``select_actions`` (e.g. QMIX's epsilon-greedy) if given; the
    attack then perturbs that rule's input in place of the logits.

    The pieces of one acting step are :func:`perturb_agent`, :func:`add_attack_step`,
    :func:`take_sample` and :func:`record_step` (module docstring).

    With ``monitor_policy`` (the distribution ``select_actions`` samples from, as a function
    of the clean logits), every agent's executed actions are also scored under its clean
    policy (:mod:`tram.detect.score`; no random draw, nothing else changes).

    Returns:
        ``(episodes, stats)``: ``Episodes`` with ``E = num_envs`` and
        ``T + 1 = episode_limit + 1`` slots, and :class:`RolloutStats`.
    """
    spec = env.spec
    n, a, limit = spec.num_agents, spec.num_actions, spec.episode_limit
    select = select_actions or _sample_floored
    key, reset_key, sample_key = jax.random.split(key, 3)
    sample_t = jax.random.randint(sample_key, (), 0, limit)
    env_state, ts = jax.vmap(env.reset_arrays)(jax.random.split(reset_key, num_envs))
    h_dot0, hist0 = _recurrent_carry0(attack, num_envs, actor.hidden, limit, spec.obs_dim + a + n)

    def cond(c: RolloutCarry):
        return (c.t <= limit) & jnp.any(c.active | c.pending)

    def body(c: RolloutCarry) -> RolloutCarry:
        key, k_act, k_att, k_env = jax.random.split(c.key, 4)
        x = actor_inputs(c.ts.obs, c.last, a)  # [B, N, I]
        logits, h_new = actor.apply(actor_params, c.h, x)
        actions = select(k_act, logits, c.ts.avail, epsilon)
        sums, sample, h_dot, hist, q_carry = c.attack, c.sample, c.h_dot, c.hist, c.q_carry
        if attack is not None:
            k = attack.agent
            extras, h_dot, hist = _recurrent_extras(attack, actor, actor_params, c.h_dot, c.hist, c.t, c.h[:, k],
                                                    x[:, k], limit)
            new_logits_k, stats, q_carry = perturb_agent(attack, actor, actor_params, k_att, logits, c.ts, actions,
                                                         c.last, c.h, x, epsilon, extras, q_carry)
            actions = select(k_act, logits.at[:, k].set(new_logits_k), c.ts.avail, epsilon)
            sums, multi = add_attack_step(sums, stats, c.ts.avail[:, k], c.active)
            if stats.delta_hat is not None:
                sample = take_sample(sample, (c.t == sample_t) & multi[0], logits[0, k], c.ts.avail[0, k],
                                     stats.delta_hat[0])
        mon = c.mon
        if monitor_policy is not None:  # clean logits, executed actions
            u, v = step_increments(monitor_policy(logits, c.ts.avail, epsilon), actions)
            mon = mon.add(u, v, c.active, c.t)
        act, t = c.active, c.t
        # An env that ended at the previous step ("pending") records the action chosen in
        # its post-episode slot, which the critic targets bootstrap from (PyMARL selects
        # actions in the last stored state too); it is not stepped.
        recorded = act | c.pending
        actions = jnp.where(recorded[:, None], actions, 0)
        env_state, ts_next = jax.vmap(env.step_arrays)(jax.random.split(k_env, num_envs), c.env_state, actions)
        ts = jax.tree.map(
            lambda new, old: jnp.where(act.reshape((-1,) + (1,) * (new.ndim - 1)), new, old), ts_next, c.ts)
        store = record_step(c.store, t, limit, act, recorded, actions, ts)
        ret = c.ret + jnp.where(act, ts.reward, 0.0)
        won = jnp.where(act, jnp.maximum(c.won, ts.won.astype(jnp.float32)), c.won)
        return RolloutCarry(
            t=t + 1, key=key, env_state=env_state, ts=ts, h=h_new,
            last=jnp.where(act[:, None], actions, c.last), active=act & ~ts.done,
            pending=act & ts.done, store=store, ret=ret, won=won, attack=sums, sample=sample, h_dot=h_dot,
            hist=hist, q_carry=q_carry, mon=mon,
        )

    c0 = RolloutCarry(
        t=jnp.int32(0), key=key, env_state=env_state, ts=ts, h=jnp.zeros((num_envs, n, actor.hidden), jnp.float32),
        last=jnp.full((num_envs, n), -1, jnp.int32), active=jnp.ones((num_envs,), bool),
        pending=jnp.zeros((num_envs,), bool), store=initial_store(spec, ts, num_envs, storage_dtype),
        ret=jnp.zeros((num_envs,), jnp.float32), won=jnp.zeros((num_envs,), jnp.float32),
        attack=AttackSums.zeros(), sample=empty_sample(a), h_dot=h_dot0, hist=hist0,
        q_carry=_q_carry0(attack, num_envs),
        mon=None if monitor_policy is None else MonitorAcc.zeros(num_envs, n, limit),
    )
    c = jax.lax.while_loop(cond, body, c0)
    stats = RolloutStats(
        episode_return=c.ret, won=c.won, length=c.store.lengths, attack=c.attack.stats,
        attack_steps=c.attack.steps, attack_single_action_steps=c.attack.single_steps,
        attack_kl_max=c.attack.kl_max, sample=c.sample, monitor=c.mon,
    )
    return c.store, stats


def _one_step_logits(actor: RNNActor) -> RNNActorLogits:
    """``(params, hidden [H], input [I]) -> logits [A]`` for the attack's Jacobians (with the
    exact per-layer Gram fast path)."""
    return RNNActorLogits(actor)


class EvalStats(NamedTuple):
    """Greedy test episodes: ``[E]`` returns and won/success flags (float)."""

    episode_return: jax.Array
    won: jax.Array


def _perturbed_greedy_logits(attack: AttackHook, actor: RNNActor, actor_params: Any, key: jax.Array,
                             logits: jax.Array, ts, last: jax.Array, h: jax.Array, x: jax.Array,
                             extras: dict | None = None, q_carry=None) -> tuple[jax.Array, Any]:
    """``(logits [B, N, A], q_carry')``: the logits with the poisoned agent's row replaced by
    ``attack.perturb`` (epsilon 0; ``q_fn`` sees the teammates' clean greedy actions;
    ``extras`` the recurrent-gradient fields of :func:`_recurrent_extras`; ``q_carry`` the
    recurrent ``q_fn``'s carry, None for a stateless one); statistics dropped."""
    k = attack.agent
    q, mix, q_carry = _attack_q(attack, q_carry, ts.state, ts.obs, greedy_actions(logits, ts.avail), last)
    extras = extras or {}

    def one_env(key_b, logits_b, avail_b, q_b, mix_b, h_b, x_b, extras_b):
        ctx = ActingContext(
            logits=logits_b, avail=avail_b, q_values=q_b, mix_weight=mix_b, actor_params=actor_params,
            actor_hidden=h_b, actor_input=x_b, prev_actor_grad=attack.prev_actor_grad,
            has_prev_grad=attack.has_prev_grad, epsilon=jnp.float32(0.0), **extras_b,
        )
        return attack.perturb(key_b, ctx, _one_step_logits(actor))[0]

    new_k = jax.vmap(one_env)(jax.random.split(key, logits.shape[0]), logits[:, k], ts.avail[:, k], q, mix,
                              h[:, k], x[:, k], extras)
    return logits.at[:, k].set(new_k), q_carry


def evaluate_greedy(env: TramEnv, actor: RNNActor, actor_params: Any, key: jax.Array,
                    num_episodes: int, attack: AttackHook | None = None) -> EvalStats:
    """Runs ``num_episodes`` test episodes at once with the greedy policy (no epsilon; no
    attack unless ``attack`` is given: TRAM is silent at test time, the deploy-time attack
    is not). With ``attack`` the poisoned agent takes the argmax of its perturbed logits;
    the environments see the same keys as without it. Returns :class:`EvalStats` with
    ``E = num_episodes``."""
    spec = env.spec
    n, a, limit = spec.num_agents, spec.num_actions, spec.episode_limit
    key, reset_key = jax.random.split(key)
    env_state, ts = jax.vmap(env.reset_arrays)(jax.random.split(reset_key, num_episodes))

    def cond(c):
        return (c[0] < limit) & jnp.any(c[5])

    def body(c):
        t, key, env_state, ts, h, active, last, ret, won, h_dot, hist, q_carry = c
        key, k_env = jax.random.split(key)
        x = actor_inputs(ts.obs, last, a)
        logits, h_new = actor.apply(actor_params, h, x)
        if attack is not None:
            extras, h_dot, hist = _recurrent_extras(attack, actor, actor_params, h_dot, hist, t,
                                                    h[:, attack.agent], x[:, attack.agent], limit)
            logits, q_carry = _perturbed_greedy_logits(attack, actor, actor_params, jax.random.fold_in(k_env, 1),
                                                       logits, ts, last, h, x, extras, q_carry)
        h = h_new
        actions = jnp.where(active[:, None], greedy_actions(logits, ts.avail), 0)
        env_state, ts = jax.vmap(env.step_arrays)(jax.random.split(k_env, num_episodes), env_state, actions)
        ret = ret + jnp.where(active, ts.reward, 0.0)
        won = jnp.where(active, jnp.maximum(won, ts.won.astype(jnp.float32)), won)
        last = jnp.where(active[:, None], actions, last)
        return (t + 1, key, env_state, ts, h, active & ~ts.done, last, ret, won, h_dot, hist, q_carry)

    c0 = (jnp.int32(0), key, env_state, ts, jnp.zeros((num_episodes, n, actor.hidden)),
          jnp.ones((num_episodes,), bool), jnp.full((num_episodes, n), -1, jnp.int32),
          jnp.zeros((num_episodes,)), jnp.zeros((num_episodes,)),
          *_recurrent_carry0(attack, num_episodes, actor.hidden, limit, spec.obs_dim + a + n),
          _q_carry0(attack, num_episodes))
    c = jax.lax.while_loop(cond, body, c0)
    return EvalStats(episode_return=c[7], won=c[8])
