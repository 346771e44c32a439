"""The shared recurrent actor of DOP and COMA, and the policy the learners act with.

Follows the reference code (TonghanWang/DOP ``modules/agents/rnn_agent.py``,
``controllers/basic_controller.py``; oxwhirl/pymarl is identical):

* one network shared by all agents: ``Linear(I, 64) -> ReLU -> GRUCell(64) -> Linear(64, A)``;
* input ``[obs_i, one-hot last action (zeros at t=0), one-hot agent id]`` (id last);
* initial hidden state zeros;
* PyTorch's default initialisation (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for Linear
  weights and biases, ``U(-1/sqrt(H), 1/sqrt(H))`` for every GRU weight and bias). This also
  keeps QR (orthogonal init) out of seed-vmapped programs, which deadlocks batched LAPACK
  on this CPU with jaxlib 0.10 (``docs/jax-cpu.md``).

The GRU is written out with PyTorch's gate equations (two fused matmuls, both with
biases) rather than ``flax.linen.GRUCell``, whose bias layout differs from PyTorch's.

Shape letters: ``N`` agents, ``A`` actions, ``D`` observation features, ``I`` actor input
features, ``H`` hidden units.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tram.learners.nets import TorchDense, torch_linear_init


def gru_update(gi: jax.Array, gh: jax.Array, h: jax.Array) -> jax.Array:
    """PyTorch's GRU update from the input gates ``gi [..., 3H]`` (``W_i x + b_i``), the
    hidden gates ``gh [..., 3H]`` (``W_h h + b_h``) and ``h [..., H]``, in PyTorch's gate order
    (r, z, n). Returns ``h' [..., H]``."""
    i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(i_r + h_r)
    z = jax.nn.sigmoid(i_z + h_z)
    n = jnp.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


class TorchGRUCell(nn.Module):
    """PyTorch ``nn.GRUCell`` equations and initialisation.

    ``r = s(W_ir x + b_ir + W_hr h + b_hr)``, ``z = s(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    """

    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:
        init = torch_linear_init(self.hidden)
        gi = nn.Dense(3 * self.hidden, kernel_init=init, bias_init=init, name="input")(x)
        gh = nn.Dense(3 * self.hidden, kernel_init=init, bias_init=init, name="hidden")(h)
        return gru_update(gi, gh, h)


class RNNActor(nn.Module):
    """``(h [..., H], x [..., I]) -> (logits [..., A], h' [..., H])``."""

    num_actions: int
    hidden: int = 64

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        y = nn.relu(TorchDense(self.hidden, name="fc1")(x))
        h_new = TorchGRUCell(self.hidden, name="rnn")(y, h)
        logits = TorchDense(self.num_actions, name="fc2")(h_new)
        return logits, h_new


def input_gates(params, x: jax.Array) -> jax.Array:
    """The non-recurrent part of :class:`RNNActor`: ``fc1 -> ReLU -> GRU input matmul``.

    ``x [..., I]`` -> ``gi [..., 3H]`` (``W_i{r,z,n} y + b_i{r,z,n}`` with ``y = relu(fc1 x)``).
    Applied to a whole block of time steps at once (one matmul per layer) by the learners'
    time loops; per row it computes what ``RNNActor.__call__`` computes (the float order of
    a matmul may differ with the number of rows, so results agree to float rounding).
    """
    p = params["params"]
    y = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
    return y @ p["rnn"]["input"]["kernel"] + p["rnn"]["input"]["bias"]


def gru_from_gates(params, h: jax.Array, gi: jax.Array) -> jax.Array:
    """The recurrent part of :class:`RNNActor`: PyTorch's GRU update from the input gates
    ``gi [..., 3H]`` (:func:`input_gates`) and the hidden state ``h [..., H]`` -> ``h' [..., H]``."""
    p = params["params"]["rnn"]["hidden"]
    return gru_update(gi, h @ p["kernel"] + p["bias"], h)


def logits_head(params, h: jax.Array) -> jax.Array:
    """The output layer of :class:`RNNActor`: ``h [..., H]`` -> ``logits [..., A]``."""
    p = params["params"]["fc2"]
    return h @ p["kernel"] + p["bias"]


def unroll_block(params, h: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:class:`RNNActor` over a block of ``C`` time steps with its non-recurrent layers
    outside the recurrence: the input layers (:func:`input_gates`) and the output layer
    (:func:`logits_head`) are one matmul each over the whole block; only the GRU's hidden
    matmul runs step by step.

    Args:
        params: the actor's parameters; h: ``[E, N, H]`` hidden state entering the block;
        x: ``[E, C, N, I]`` actor inputs (batch-major, time on axis 1).

    Returns:
        ``(h_end [E, N, H], logits [E, C, N, A])``. Equal, up to float rounding, to applying
        ``RNNActor`` step by step.
    """
    # time-major around the recurrence; the transposes move the narrow arrays (inputs and
    # logits), not the gates or the hidden states
    gi = input_gates(params, jnp.swapaxes(x, 0, 1))  # [C, E, N, 3H]

    def step(h, gi_t):
        h = gru_from_gates(params, h, gi_t)
        return h, h

    h, hs = jax.lax.scan(step, h, gi)
    return h, jnp.swapaxes(logits_head(params, hs), 0, 1)


def actor_inputs(obs: jax.Array, last_actions: jax.Array, num_actions: int) -> jax.Array:
    """Builds the actor input ``[obs_i, onehot(last action), onehot(i)]``.

    Args:
        obs: ``[..., N, D]`` observations.
        last_actions: ``[..., N]`` int previous actions; pass ``-1`` for "none" (t = 0),
            which gives an all-zero one-hot.
        num_actions: ``A``.

    Returns:
        ``[..., N, D + A + N]`` float32.
    """
    n = obs.shape[-2]
    last = jax.nn.one_hot(last_actions, num_actions, dtype=jnp.float32)  # -1 -> zeros
    ids = jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), obs.shape[:-2] + (n, n))
    return jnp.concatenate([obs.astype(jnp.float32), last, ids], axis=-1)


def floored_policy(logits: jax.Array, avail: jax.Array, epsilon: jax.Array) -> jax.Array:
    """The training-mode policy of the reference controller (``mask_before_softmax: False``).

    ``p = (1 - eps) * softmax(logits) + eps / A`` over ALL ``A`` actions, then unavailable
    actions are zeroed and the rest renormalised (as the action selector and the learner
    both do). With ``eps = 0`` this is the softmax restricted to available actions.

    Args:
        logits: ``[..., A]``; avail: ``[..., A]`` bool; epsilon: scalar or broadcastable.

    Returns:
        ``[..., A]`` probabilities, exactly 0 on unavailable actions (an all-unavailable
        row, which only padding has, gives all zeros rather than NaN).
    """
    num_actions = logits.shape[-1]
    p = (1.0 - epsilon) * jax.nn.softmax(logits, axis=-1) + epsilon / num_actions
    p = jnp.where(avail, p, 0.0)
    return p / jnp.maximum(jnp.sum(p, axis=-1, keepdims=True), 1e-30)


def greedy_actions(logits: jax.Array, avail: jax.Array) -> jax.Array:
    """Test-mode actions: argmax of the policy over available actions. ``[..., A] -> [...]``."""
    return jnp.argmax(jnp.where(avail, logits, -jnp.inf), axis=-1).astype(jnp.int32)


def sample_actions(key: jax.Array, probs: jax.Array) -> jax.Array:
    """Samples one action per row of ``probs [..., A]`` (zero rows never chosen). ``-> [...]``."""
    logp = jnp.where(probs > 0, jnp.log(jnp.maximum(probs, 1e-38)), -jnp.inf)
    return jax.random.categorical(key, logp, axis=-1).astype(jnp.int32)


def epsilon_at(t_env: jax.Array, start: float, finish: float, anneal_steps: int) -> jax.Array:
    """Linear schedule of the reference (``epsilon_schedules.py``): ``start -> finish`` over
    ``anneal_steps`` env steps, then constant. Returns a float32 scalar."""
    frac = jnp.clip(t_env.astype(jnp.float32) / max(anneal_steps, 1), 0.0, 1.0)
    return jnp.float32(start) + frac * (jnp.float32(finish) - jnp.float32(start))


class RNNActorLogits:
    """``(params, hidden [H], input [I]) -> logits [A]``: one step of :class:`RNNActor` (the
    :data:`tram.types.ActorLogitsFn` the attacks differentiate), with an exact fast path for
    the Gram matrix of its parameter Jacobian.

    For a dense layer ``u = z W + b`` the gradient of logit ``a`` w.r.t. ``(W, b)`` is
    ``(z delta_a^T, delta_a)`` with ``delta_a = d l_a / d u``, so
    ``<g_a, g_b>`` over that layer is ``(delta_a . delta_b)(|z|^2 + 1)``, and
    ``K = sum_layers Delta_l Delta_l^T (|z_l|^2 + 1)``. ``Delta_l`` (``[A, out_l]``) comes from
    ``A`` backward passes through the activations only (taps added to each layer's output),
    never materialising the ``[A, P]`` parameter Jacobian. Same one-step approximation (the
    hidden state before the step is held constant); equal to the generic Jacobian Gram up to
    float rounding (tests/test_attack_math.py). :meth:`step` exposes the hidden-state update
    too, for the exact (through-the-history) forms.
    """

    def __init__(self, actor: RNNActor):
        self.actor = actor

    def __call__(self, params, hidden: jax.Array, x: jax.Array) -> jax.Array:
        return self.actor.apply(params, hidden, x)[0]

    def step(self, params, hidden: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The full step ``(logits [A], hidden' [H])`` (for gradients through the history,
        :func:`tram.attacks.directions.history_gram` and ``advance_hidden_tangent``)."""
        return self.actor.apply(params, hidden, x)

    def gram(self, params, hidden: jax.Array, x: jax.Array) -> jax.Array:
        """``K = J J^T`` (``[A, A]``) of the logits' Jacobian w.r.t. all actor parameters."""
        p = params["params"]
        hdim = self.actor.hidden

        def forward(taps):
            t1, ti, th, t2 = taps
            u1 = x @ p["fc1"]["kernel"] + p["fc1"]["bias"] + t1
            y = jax.nn.relu(u1)
            gi = y @ p["rnn"]["input"]["kernel"] + p["rnn"]["input"]["bias"] + ti
            gh = hidden @ p["rnn"]["hidden"]["kernel"] + p["rnn"]["hidden"]["bias"] + th
            i_r, i_z, i_n = jnp.split(gi, 3)
            h_r, h_z, h_n = jnp.split(gh, 3)
            r = jax.nn.sigmoid(i_r + h_r)
            z = jax.nn.sigmoid(i_z + h_z)
            n = jnp.tanh(i_n + r * h_n)
            h_new = (1.0 - z) * n + z * hidden
            logits = h_new @ p["fc2"]["kernel"] + p["fc2"]["bias"] + t2
            return logits, (x, y, hidden, h_new)

        a = p["fc2"]["bias"].shape[0]
        taps = (jnp.zeros(hdim), jnp.zeros(3 * hdim), jnp.zeros(3 * hdim), jnp.zeros(a))
        logits, vjp, inputs = jax.vjp(forward, taps, has_aux=True)
        deltas = jax.vmap(vjp)(jnp.eye(a, dtype=logits.dtype))[0]  # per layer [A, out_l]
        hi = jax.lax.Precision.HIGHEST
        return sum(jnp.matmul(d, d.T, precision=hi) * (jnp.sum(z * z) + 1.0) for d, z in zip(deltas, inputs))
