"""COMA building blocks (tram.learners.coma_parts, tram.learners.nets) against hand-built
arrays, direct numpy computations and a plain-Python loop of the reference's critic loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tram.learners.coma_parts import (
    ComaCritic,
    coma_actor_loss,
    coma_critic_inputs,
    coma_critic_step_sequence,
    last_actions_onehot,
)
from tram.learners.nets import TorchDense, torch_linear_init


# ---------------------------------------------------------------------------------------
# Critic inputs
# ---------------------------------------------------------------------------------------
def test_last_actions_onehot_shifts_with_zeros_at_t0():
    a = jnp.array([[[0, 1]], [[1, 0]], [[0, 1]]], jnp.float32)  # [T=3, N=1, A=2]
    np.testing.assert_array_equal(np.asarray(last_actions_onehot(a))[:, 0], [[0, 0], [0, 1], [1, 0]])


def test_critic_inputs_two_agents_by_hand():
    # T=1, S=1, D=1, N=2, A=2. u = (1, 0); last u = (0, 1).
    state = jnp.array([[7.0]])
    obs = jnp.array([[[1.0], [2.0]]])
    u = jnp.array([[[0, 1], [1, 0]]], jnp.float32)
    last = jnp.array([[[1, 0], [0, 1]]], jnp.float32)
    x = coma_critic_inputs(state, obs, u, last)
    #            s   o   u_0 (masked for 0)  u_1 (masked for 1)  last_0  last_1  id
    expected = [[7., 1., 0., 0., 1., 0., 1., 0., 0., 1., 1., 0.],
                [7., 2., 0., 1., 0., 0., 1., 0., 0., 1., 0., 1.]]
    assert x.shape == (1, 2, 1 + 1 + 4 + 4 + 2)
    np.testing.assert_array_equal(np.asarray(x[0]), expected)


def test_critic_inputs_three_agents_two_steps_by_hand():
    # T=2, S=2, D=1, N=3, A=2. Actions: t=0 (0, 1, 1), t=1 (1, 1, 0); last actions built by the helper.
    state = jnp.array([[0.5, -1.0], [1.5, 2.0]])
    obs = jnp.array([[[10.0], [11.0], [12.0]], [[20.0], [21.0], [22.0]]])
    acts = jnp.array([[0, 1, 1], [1, 1, 0]])
    u = jax.nn.one_hot(acts, 2)
    x = np.asarray(coma_critic_inputs(state, obs, u, last_actions_onehot(u)))
    assert x.shape == (2, 3, 2 + 1 + 6 + 6 + 3)
    o0, o1, o2 = [1, 0], [0, 1], [0, 0]  # one-hots of actions 0 and 1, and a zeroed block
    z = [0, 0, 0, 0, 0, 0]
    # t = 0: joint u = [1,0 | 0,1 | 0,1], last = zeros.
    np.testing.assert_array_equal(x[0, 0], [0.5, -1.0, 10.0, *o2, *o1, *o1, *z, 1, 0, 0])
    np.testing.assert_array_equal(x[0, 1], [0.5, -1.0, 11.0, *o0, *o2, *o1, *z, 0, 1, 0])
    np.testing.assert_array_equal(x[0, 2], [0.5, -1.0, 12.0, *o0, *o1, *o2, *z, 0, 0, 1])
    # t = 1: joint u = [0,1 | 0,1 | 1,0], last = t=0's joint u (agent's own block kept).
    last = [*o0, *o1, *o1]
    np.testing.assert_array_equal(x[1, 0], [1.5, 2.0, 20.0, *o2, *o1, *o0, *last, 1, 0, 0])
    np.testing.assert_array_equal(x[1, 1], [1.5, 2.0, 21.0, *o1, *o2, *o0, *last, 0, 1, 0])
    np.testing.assert_array_equal(x[1, 2], [1.5, 2.0, 22.0, *o1, *o1, *o2, *last, 0, 0, 1])
    # Leading batch dims are carried through.
    xb = coma_critic_inputs(*(jnp.stack([v, v]) for v in (state, obs, u, last_actions_onehot(u))))
    np.testing.assert_array_equal(np.asarray(xb[1]), x)


def test_critic_inputs_shape_errors():
    with pytest.raises(ValueError, match="obs"):
        coma_critic_inputs(jnp.zeros((2, 1)), jnp.zeros((2, 3, 1)), jnp.zeros((2, 2, 2)), jnp.zeros((2, 2, 2)))


# ---------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------
def test_torch_dense_init_bounds_and_distribution():
    fan_in = 400
    params = TorchDense(300).init(jax.random.PRNGKey(0), jnp.zeros((1, fan_in)))["params"]
    w, b = np.asarray(params["kernel"]), np.asarray(params["bias"])
    bound = 1 / math.sqrt(fan_in)
    assert w.shape == (fan_in, 300) and b.shape == (300,)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    # U(-b, b): std b / sqrt(3), filling the interval.
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.02)
    assert np.abs(w).max() > 0.99 * bound
    assert torch_linear_init(4)(jax.random.PRNGKey(1), (1000,)).max() <= 0.5
    x = jnp.ones((2, fan_in))
    np.testing.assert_allclose(np.asarray(TorchDense(300).apply({"params": params}, x)),
                               np.ones((2, fan_in)) @ w + b, rtol=1e-5, atol=1e-5)


def test_coma_critic_shapes_and_vmapped_init():
    f, a = 12, 5
    critic = ComaCritic(num_actions=a)
    params = critic.init(jax.random.PRNGKey(0), jnp.zeros((f,)))
    shapes = jax.tree.map(lambda p: p.shape, params["params"])
    assert shapes == {"fc1": {"kernel": (f, 128), "bias": (128,)},
                      "fc2": {"kernel": (128, 128), "bias": (128,)},
                      "fc3": {"kernel": (128, a), "bias": (a,)}}
    assert np.abs(np.asarray(params["params"]["fc2"]["bias"])).max() <= 1 / math.sqrt(128)
    assert critic.apply(params, jnp.ones((3, 4, 2, f))).shape == (3, 4, 2, a)
    # Init vmapped over seeds (no QR inside) equals per-seed init.
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    batched = jax.jit(jax.vmap(lambda k: critic.init(k, jnp.zeros((f,)))))(keys)
    one = critic.init(keys[1], jnp.zeros((f,)))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x[1]), np.asarray(y), rtol=1e-6), batched, one)


# ---------------------------------------------------------------------------------------
# Actor loss
# ---------------------------------------------------------------------------------------
def _numpy_actor_loss(log_pi_taken, pi, q, actions, mask):
    lp, pi, q, actions, mask = (np.asarray(v, np.float64) for v in (log_pi_taken, pi, q, actions, mask))
    actions = actions.astype(int)
    total, count = 0.0, 0.0
    for idx in np.ndindex(*lp.shape):
        m = mask[idx[:-1]]
        if m == 0:
            continue
        baseline = float(np.dot(pi[idx], q[idx]))
        adv = q[idx][actions[idx]] - baseline
        total += m * adv * lp[idx]
        count += m
    return -total / count


def test_actor_loss_by_hand():
    # T=2, N=1, A=2. t=0: pi=(0.25, 0.75), q=(4, 8), action 0 -> baseline 7, A = -3.
    # t=1 masked. loss = -(-3 * log 0.25) / 1 = 3 log 0.25.
    pi = jnp.array([[[0.25, 0.75]], [[0.5, 0.5]]])
    q = jnp.array([[[4.0, 8.0]], [[1.0, 2.0]]])
    actions = jnp.array([[0], [1]])
    log_pi = jnp.log(jnp.array([[0.25], [1.0]]))
    loss = coma_actor_loss(log_pi, pi, q, actions, jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(float(loss), 3 * math.log(0.25), rtol=1e-6)


@pytest.mark.parametrize("lead", [(6,), (3, 6)], ids=["T", "BT"])
def test_actor_loss_against_numpy_and_gradient(lead):
    rng = np.random.default_rng(0)
    n, a = 3, 4
    logits = rng.normal(size=(*lead, n, a))
    pi = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    q = rng.normal(size=(*lead, n, a))
    actions = rng.integers(0, a, size=(*lead, n))
    mask = (rng.uniform(size=lead) < 0.7).astype(np.float64)
    mask.flat[0] = 1.0
    pi_taken = np.take_along_axis(pi, actions[..., None], -1)[..., 0]
    log_pi = np.log(np.where(mask[..., None] > 0, pi_taken, 1.0))
    args = [jnp.asarray(v, jnp.float32) for v in (log_pi, pi, q)] + [jnp.asarray(actions), jnp.asarray(mask, jnp.float32)]
    loss = jax.jit(coma_actor_loss)(*args)
    np.testing.assert_allclose(float(loss), _numpy_actor_loss(log_pi, pi, q, actions, mask), rtol=1e-5)
    # Gradient flows only through log_pi_taken: d loss / d log_pi = -mask A / (N sum mask).
    g_lp, g_pi, g_q = jax.grad(coma_actor_loss, argnums=(0, 1, 2))(*args)
    adv = np.take_along_axis(q, actions[..., None], -1)[..., 0] - (pi * q).sum(-1)
    np.testing.assert_allclose(np.asarray(g_lp), -mask[..., None] * adv / (n * mask.sum()), rtol=1e-4, atol=1e-7)
    assert not np.any(np.asarray(g_pi)) and not np.any(np.asarray(g_q))


def test_actor_loss_empty_mask_and_inf_at_masked_steps():
    args = (jnp.array([[-jnp.inf]]), jnp.array([[[0.0, 1.0]]]), jnp.array([[[1.0, 2.0]]]), jnp.array([[0]]))
    assert float(coma_actor_loss(*args, jnp.array([0.0]))) == 0.0


# ---------------------------------------------------------------------------------------
# Critic: per-timestep steps in reversed order
# ---------------------------------------------------------------------------------------
def linear_apply(params, x):
    return x @ params["w"]


def _problem(rng, b=3, t=5, n=2, f=4, a=3):
    inputs = jnp.asarray(rng.normal(size=(b, t, n, f)), jnp.float32)
    actions = jnp.asarray(rng.integers(0, a, size=(b, t, n)))
    targets = jnp.asarray(rng.normal(size=(b, t, n)), jnp.float32)
    params = {"w": jnp.asarray(rng.normal(size=(f, a)), jnp.float32)}
    return params, inputs, actions, targets


def _plain_loop(params, optimiser, inputs, actions, targets, mask):
    """The reference's `_train_critic` loop written out in Python."""
    opt_state = optimiser.init(params)
    b, t_len, n, _ = inputs.shape
    q_rec = np.zeros((b, t_len, n, params["w"].shape[1]), np.float32)
    steps = 0
    for t in reversed(range(t_len)):
        m = np.repeat(np.asarray(mask[:, t])[:, None], n, axis=1)
        if m.sum() == 0:
            continue
        q_rec[:, t] = np.asarray(linear_apply(params, inputs[:, t]))

        def loss(p):
            q_taken = jnp.take_along_axis(linear_apply(p, inputs[:, t]), actions[:, t, :, None], -1)[..., 0]
            return jnp.sum(((q_taken - targets[:, t]) * m) ** 2) / m.sum()

        updates, opt_state = optimiser.update(jax.grad(loss)(params), opt_state, params)
        params = optax.apply_updates(params, updates)
        steps += 1
    return params, opt_state, steps, q_rec


def test_one_step_by_hand():
    # F=1, A=2, B=N=T=1: w = [[1, 2]], x = 3 -> q = (3, 6); action 1, target 10:
    # loss = (6 - 10)^2 = 16, dL/dw[0, 1] = 2 (6 - 10) 3 = -24; SGD lr 0.01 -> w = [[1, 2.24]].
    opt = optax.sgd(0.01)
    params = {"w": jnp.array([[1.0, 2.0]])}
    out = coma_critic_step_sequence(linear_apply, opt, params, opt.init(params), jnp.full((1, 1, 1, 1), 3.0),
                                    jnp.array([[[1]]]), jnp.array([[[10.0]]]), jnp.ones((1, 1)))
    np.testing.assert_allclose(np.asarray(out.params["w"]), [[1.0, 2.24]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.q), [[[[3.0, 6.0]]]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.losses), [16.0], rtol=1e-6)
    assert int(out.num_steps) == 1


@pytest.mark.parametrize("opt_name", ["sgd", "rmsprop_clip"])
def test_matches_plain_reversed_loop(opt_name):
    rng = np.random.default_rng(1)
    params, inputs, actions, targets = _problem(rng)
    # Timestep 2 all masked (skipped); timestep 4 partly masked; timestep 0 full.
    mask = jnp.array([[1, 1, 0, 1, 1], [1, 0, 0, 1, 0], [1, 1, 0, 0, 0]], jnp.float32)
    opt = optax.sgd(0.05) if opt_name == "sgd" else optax.chain(
        optax.clip_by_global_norm(1.0), optax.rmsprop(0.01, decay=0.99, eps=1e-5, eps_in_sqrt=False))
    out = jax.jit(coma_critic_step_sequence, static_argnums=(0, 1))(
        linear_apply, opt, params, opt.init(params), inputs, actions, targets, mask)
    ref_params, ref_opt, ref_steps, ref_q = _plain_loop(params, opt, inputs, actions, targets, mask)
    assert int(out.num_steps) == ref_steps == 4
    np.testing.assert_allclose(np.asarray(out.params["w"]), np.asarray(ref_params["w"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.q), ref_q, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7),
                 out.opt_state, ref_opt)
    # Reversed order: the last valid timestep (4) is recorded from the INITIAL critic, and the
    # first (0) from a critic that has already changed.
    np.testing.assert_allclose(np.asarray(out.q[:, 4]), np.asarray(linear_apply(params, inputs[:, 4])), rtol=1e-6)
    assert not np.allclose(np.asarray(out.q[:, 0]), np.asarray(linear_apply(params, inputs[:, 0])))
    # The skipped timestep records zeros and a zero loss.
    assert not np.any(np.asarray(out.q[:, 2])) and float(out.losses[2]) == 0.0


def test_masked_timestep_changes_nothing():
    rng = np.random.default_rng(2)
    params, inputs, actions, targets = _problem(rng, t=3)
    opt = optax.chain(optax.clip_by_global_norm(10.0), optax.rmsprop(0.01, decay=0.99, eps=1e-5, eps_in_sqrt=False))
    state0 = opt.init(params)
    # All masked: nothing changes at all.
    out = coma_critic_step_sequence(linear_apply, opt, params, state0, inputs, actions, targets, jnp.zeros((3, 3)))
    assert int(out.num_steps) == 0
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), out.params, params)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), out.opt_state, state0)
    # A masked timestep in the middle is the same as removing it from the sequence.
    mask = jnp.array([[1, 0, 1]] * 3, jnp.float32)
    full = coma_critic_step_sequence(linear_apply, opt, params, state0, inputs, actions, targets, mask)
    keep = jnp.array([0, 2])
    cut = coma_critic_step_sequence(linear_apply, opt, params, state0, inputs[:, keep], actions[:, keep],
                                    targets[:, keep], mask[:, keep])
    assert int(full.num_steps) == int(cut.num_steps) == 2
    np.testing.assert_array_equal(np.asarray(full.params["w"]), np.asarray(cut.params["w"]))
    np.testing.assert_array_equal(np.asarray(full.q[:, keep]), np.asarray(cut.q))
    # A masked-out episode inside a valid timestep contributes nothing either.
    mask_b = jnp.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], jnp.float32)
    with_b = coma_critic_step_sequence(linear_apply, opt, params, state0, inputs, actions,
                                       targets.at[2].set(1e6), mask_b)
    without = coma_critic_step_sequence(linear_apply, opt, params, state0, inputs[:2], actions[:2], targets[:2],
                                        mask_b[:2])
    np.testing.assert_allclose(np.asarray(with_b.params["w"]), np.asarray(without.params["w"]), rtol=1e-6)


def test_length_and_coma_critic_end_to_end():
    rng = np.random.default_rng(3)
    b, t, n, a = 2, 6, 2, 3
    state = jnp.asarray(rng.normal(size=(b, t, 4)), jnp.float32)
    obs = jnp.asarray(rng.normal(size=(b, t, n, 5)), jnp.float32)
    acts = jnp.asarray(rng.integers(0, a, size=(b, t, n)))
    u = jax.nn.one_hot(acts, a)
    last = jax.vmap(last_actions_onehot)(u)
    inputs = coma_critic_inputs(state, obs, u, last)
    critic = ComaCritic(num_actions=a)
    params = critic.init(jax.random.PRNGKey(0), inputs[0, 0, 0])
    opt = optax.chain(optax.clip_by_global_norm(10.0), optax.rmsprop(5e-4, decay=0.99, eps=1e-5, eps_in_sqrt=False))
    mask = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], jnp.float32)
    targets = jnp.asarray(rng.normal(size=(b, t, n)), jnp.float32)
    run = jax.jit(coma_critic_step_sequence, static_argnums=(0, 1))
    full = run(critic.apply, opt, params, opt.init(params), inputs, acts, targets, mask)
    short = run(critic.apply, opt, params, opt.init(params), inputs, acts, targets, mask, jnp.int32(4))
    assert int(full.num_steps) == int(short.num_steps) == 4
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), full.params, short.params)
    np.testing.assert_array_equal(np.asarray(full.q), np.asarray(short.q))
    np.testing.assert_allclose(np.asarray(full.q[:, 3]), np.asarray(critic.apply(params, inputs[:, 3])), rtol=1e-6)
    assert full.q.shape == (b, t, n, a) and full.losses.shape == (t,)
    # The recorded q feed the actor loss.
    pi = jnp.full((b, t, n, a), 1.0 / a)
    loss = coma_actor_loss(jnp.log(jnp.full((b, t, n), 1.0 / a)), pi, full.q, acts, mask)
    assert np.isfinite(float(loss))
