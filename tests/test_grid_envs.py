"""Tests of the grid tasks (``tram.envs.grid``): rewards and success flags against
hand-computed numbers on states built directly, moves, time limit, observations, and
jit / vmap / determinism."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tram.envs import make_env
from tram.envs.grid import GRID_TASKS, GridState

SQRT2 = math.sqrt(2.0)
STAY, UP, DOWN, LEFT, RIGHT = 0, 1, 2, 3, 4


def _state(agents, landmarks, step=0) -> GridState:
    return GridState(
        agent_pos=jnp.asarray(agents, jnp.int32),
        landmark_pos=jnp.asarray(landmarks, jnp.int32),
        step=jnp.int32(step),
    )


def _step(env, state, actions=None, use_jit=False):
    """One step (all agents stay unless ``actions`` given) -> (new_state, TimeStep)."""
    if actions is None:
        actions = [STAY] * env.spec.num_agents
    fn = jax.jit(env.step_arrays) if use_jit else env.step_arrays
    return fn(jax.random.PRNGKey(0), state, jnp.asarray(actions, jnp.int32))


# ---- rewards and success, hand-computed ------------------------------------------------


@pytest.mark.parametrize("use_jit", [False, True])
def test_spread_collision_reward(use_jit):
    env = make_env("spread")
    # Landmarks (0,0), (4,4), (2,2); agents 0 and 1 share (1,1), agent 2 on (4,4).
    # Nearest distances: sqrt2, 0, sqrt2; one colliding pair.
    _, ts = _step(env, _state([[1, 1], [1, 1], [4, 4]], [[0, 0], [4, 4], [2, 2]]), use_jit=use_jit)
    assert float(ts.reward) == pytest.approx(-(SQRT2 + 0.0 + SQRT2) - 1.0, abs=1e-5)
    assert not bool(ts.won)


def test_spread_three_agents_in_one_cell_count_three_pairs():
    env = make_env("spread")
    # All agents on (2,2); landmarks (2,2), (0,2), (2,4): distances 0, 2, 2; 3 pairs.
    _, ts = _step(env, _state([[2, 2]] * 3, [[2, 2], [0, 2], [2, 4]]))
    assert float(ts.reward) == pytest.approx(-4.0 - 3.0, abs=1e-5)


def test_spread_success_flag():
    env = make_env("spread")
    lms = [[0, 0], [4, 4], [2, 2]]
    # Every landmark covered (agents listed in another order than the landmarks).
    _, ts = _step(env, _state([[2, 2], [0, 0], [4, 4]], lms), [STAY, STAY, STAY])
    assert bool(ts.won) and float(ts.reward) == pytest.approx(0.0, abs=1e-6)
    # Agent 2 one cell below landmark (4,4): d = 0, 1, 0.
    state = _state([[2, 2], [0, 0], [4, 3]], lms)
    _, ts = _step(env, state, [STAY, STAY, STAY])
    assert not bool(ts.won) and float(ts.reward) == pytest.approx(-1.0, abs=1e-6)
    # Moving up covers the last landmark: the reward is scored after the move.
    _, ts = _step(env, state, [STAY, STAY, UP])
    assert bool(ts.won) and float(ts.reward) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    "offsets",
    [
        [(1, 0), (0, 1), (-1, 0), (0, -1)],  # axis-aligned
        [(0, -1), (-1, 0), (1, 0), (0, 1)],  # same square, agents listed in another order
        [(1, 1), (-1, 1), (-1, -1), (1, -1)],  # diagonal
        [(2, 1), (-1, 2), (-2, -1), (1, -2)],  # tilted
    ],
)
def test_formation_perfect_square(offsets):
    env = make_env("formation")
    agents = [[2 + dx, 2 + dy] for dx, dy in offsets]
    _, ts = _step(env, _state(agents, [[2, 2]]))
    assert float(ts.reward) == pytest.approx(0.0, abs=1e-5)
    assert bool(ts.won)


@pytest.mark.parametrize(
    "offsets, expected",
    [
        # Angles 0, pi/2, pi, 3pi/2: beta all 0. d = 1, 1, 1, 2, mean 1.25: 3*0.25 + 0.75.
        ([(1, 0), (0, 1), (-1, 0), (0, -2)], 1.5),
        # Angles 0, pi/2, pi, 7pi/4: beta = 0, 0, 0, pi/4, mean pi/16 -> 3*pi/16 + 3*pi/16.
        # d = 1, 1, 1, sqrt2, mean (3 + sqrt2)/4 -> 3(sqrt2 - 1)/4 + 3(sqrt2 - 1)/4.
        ([(1, 0), (0, 1), (-1, 0), (1, -1)], 3 * math.pi / 8 + 1.5 * (SQRT2 - 1)),
        # An agent on the landmark takes angle 0: beta all 0; d = 0, 1, 1, 1, mean 0.75.
        ([(0, 0), (0, 1), (-1, 0), (0, -1)], 1.5),
    ],
)
def test_formation_not_square(offsets, expected):
    env = make_env("formation")
    agents = [[2 + dx, 2 + dy] for dx, dy in offsets]
    _, ts = _step(env, _state(agents, [[2, 2]]))
    assert float(ts.reward) == pytest.approx(-expected, abs=1e-5)
    assert not bool(ts.won)


def test_formation_threshold_option():
    # The 1.5-error configuration passes once the threshold is above it.
    env = make_env("formation", success_threshold=2.0)
    _, ts = _step(env, _state([[3, 2], [2, 3], [1, 2], [2, 0]], [[2, 2]]))
    assert bool(ts.won)


def test_gather_reward_and_success():
    env = make_env("gather")
    _, ts = _step(env, _state([[2, 2]] * 3, [[2, 2]]))
    assert float(ts.reward) == pytest.approx(0.0, abs=1e-6) and bool(ts.won)
    state = _state([[2, 2], [2, 2], [2, 3]], [[2, 2]])
    _, ts = _step(env, state)
    assert float(ts.reward) == pytest.approx(-1.0, abs=1e-6) and not bool(ts.won)
    _, ts = _step(env, state, [STAY, STAY, DOWN])
    assert float(ts.reward) == pytest.approx(0.0, abs=1e-6) and bool(ts.won)
    # Distances 1, sqrt2, 2 -> -(3 + sqrt2); agents sharing a cell cost nothing in Gather.
    _, ts = _step(env, _state([[1, 2], [3, 3], [2, 0]], [[2, 2]]))
    assert float(ts.reward) == pytest.approx(-(3 + SQRT2), abs=1e-5)


# ---- moves, time limit, observations ----------------------------------------------------


def test_moves_and_boundaries():
    env = make_env("gather")
    lm = [[2, 2]]
    # From the centre each action moves one cell: up y+1, down y-1, left x-1, right x+1.
    new, _ = _step(env, _state([[2, 2]] * 3, lm), [UP, DOWN, LEFT])
    np.testing.assert_array_equal(new.agent_pos, [[2, 3], [2, 1], [1, 2]])
    new, _ = _step(env, _state([[2, 2]] * 3, lm), [RIGHT, STAY, STAY])
    np.testing.assert_array_equal(new.agent_pos, [[3, 2], [2, 2], [2, 2]])
    # Off-grid moves at the corners are no-ops.
    new, _ = _step(env, _state([[0, 0], [0, 0], [4, 4]], lm), [LEFT, DOWN, UP])
    np.testing.assert_array_equal(new.agent_pos, [[0, 0], [0, 0], [4, 4]])
    new, _ = _step(env, _state([[4, 4], [0, 4], [4, 0]], lm), [RIGHT, UP, DOWN])
    np.testing.assert_array_equal(new.agent_pos, [[4, 4], [0, 4], [4, 0]])
    # All actions always available.
    assert env.avail_arrays(new).shape == (3, 5) and bool(jnp.all(env.avail_arrays(new)))


@pytest.mark.parametrize("name", GRID_TASKS)
def test_time_limit(name):
    env = make_env(name, episode_limit=3)
    state, ts = env.reset_arrays(jax.random.PRNGKey(1))
    assert not bool(ts.done) and not bool(ts.terminated) and not bool(ts.won)
    assert float(ts.reward) == 0.0
    step = jax.jit(env.step_arrays)
    actions = jnp.zeros(env.spec.num_agents, jnp.int32)
    dones = []
    for t in range(3):
        state, ts = step(jax.random.PRNGKey(t), state, actions)
        dones.append(bool(ts.done))
        assert not bool(ts.terminated)
    assert dones == [False, False, True]
    assert int(state.step) == 3


@pytest.mark.parametrize(
    "name, n, obs_dim, state_dim",
    [("spread", 3, 12, 12), ("gather", 3, 8, 8), ("formation", 4, 10, 10)],
)
def test_spec_shapes_and_range(name, n, obs_dim, state_dim):
    env = make_env(name)
    spec = env.spec
    assert (spec.name, spec.family, spec.num_agents, spec.num_actions) == (name, "grid", n, 5)
    assert (spec.obs_dim, spec.state_dim, spec.episode_limit) == (obs_dim, state_dim, 25)
    assert spec.agent_unit_types == ("agent",) * n and spec.description
    assert env.observation_space(env.agents[0]).shape == (obs_dim,)
    assert env.action_space(env.agents[-1]).n == 5

    def rollout(key):
        key_reset, key_act = jax.random.split(key)
        state, ts0 = env.reset_arrays(key_reset)

        def body(state, k):
            acts = jax.random.randint(k, (n,), 0, 5)
            state, ts = env.step_arrays(k, state, acts)
            return state, ts

        _, tss = jax.lax.scan(body, state, jax.random.split(key_act, 25))
        return ts0, tss

    ts0, tss = jax.jit(jax.vmap(rollout))(jax.random.split(jax.random.PRNGKey(3), 8))
    assert ts0.obs.shape == (8, n, obs_dim) and ts0.state.shape == (8, state_dim)
    assert tss.obs.shape == (8, 25, n, obs_dim) and tss.obs.dtype == jnp.float32
    assert tss.state.dtype == jnp.float32 and tss.avail.shape == (8, 25, n, 5)
    for x in (ts0.obs, ts0.state, tss.obs, tss.state):
        assert float(jnp.min(x)) >= -1.0 and float(jnp.max(x)) <= 1.0
    np.testing.assert_array_equal(tss.done[:, -1], True)
    np.testing.assert_array_equal(tss.done[:, :-1], False)
    np.testing.assert_array_equal(tss.terminated, False)


def test_obs_and_state_values():
    env = make_env("spread")
    state = _state([[0, 0], [4, 4], [2, 2]], [[4, 0], [0, 4], [2, 2]])
    obs = env.obs_arrays(state)
    # Agent 0: own (-1,-1); others (4,4)/4 and (2,2)/4; landmarks (4,0)/4, (0,4)/4, (2,2)/4.
    np.testing.assert_allclose(obs[0], [-1, -1, 1, 1, 0.5, 0.5, 1, 0, 0, 1, 0.5, 0.5])
    # Agent 2 (centre): own (0,0); others agent 0 then agent 1.
    np.testing.assert_allclose(obs[2], [0, 0, -0.5, -0.5, 0.5, 0.5, 0.5, -0.5, -0.5, 0.5, 0, 0])
    np.testing.assert_allclose(
        env.state_array(state), [-1, -1, 1, 1, 0, 0, 1, -1, -1, 1, 0, 0]
    )


# ---- placement, determinism, jit / vmap ---------------------------------------------------


@pytest.mark.parametrize("name", GRID_TASKS)
def test_reset_placement_and_determinism(name):
    env = make_env(name)
    s1, t1 = env.reset_arrays(jax.random.PRNGKey(7))
    s2, t2 = env.reset_arrays(jax.random.PRNGKey(7))
    jax.tree.map(np.testing.assert_array_equal, (s1, t1), (s2, t2))
    states, _ = jax.vmap(env.reset_arrays)(jax.random.split(jax.random.PRNGKey(0), 64))
    for pos in (states.agent_pos, states.landmark_pos):
        assert pos.dtype == jnp.int32
        assert int(pos.min()) >= 0 and int(pos.max()) <= 4
        # pairwise distinct within agents and within landmarks
        cells = np.asarray(pos[..., 0] + 5 * pos[..., 1])
        assert all(len(set(row)) == len(row) for row in cells)
    # landmarks vary between episodes
    assert len({tuple(np.asarray(p).ravel()) for p in states.landmark_pos}) > 1


@pytest.mark.parametrize("name", GRID_TASKS)
def test_vmap_matches_per_env(name):
    env = make_env(name)
    n = env.spec.num_agents
    keys = jax.random.split(jax.random.PRNGKey(11), 8)
    actions = jax.random.randint(jax.random.PRNGKey(12), (8, n), 0, 5)

    def reset_step(key, acts):
        state, _ = env.reset_arrays(key)
        return env.step_arrays(key, state, acts)

    batched = jax.jit(jax.vmap(reset_step))(keys, actions)
    for b in range(8):
        single = reset_step(keys[b], actions[b])  # no jit, no vmap
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x[b], y, atol=1e-6), batched, single
        )


def test_dict_api():
    env = make_env("formation")
    obs, state = env.reset(jax.random.PRNGKey(5))
    assert set(obs) == set(env.agents) | {"world_state"}
    assert obs["agent_0"].shape == (10,) and obs["world_state"].shape == (10,)
    actions = {a: jnp.int32(RIGHT) for a in env.agents}
    obs2, state2, rewards, dones, infos = env.step(jax.random.PRNGKey(6), state, actions)
    new, ts = env.step_arrays(jax.random.PRNGKey(0), state, jnp.full(4, RIGHT, jnp.int32))
    np.testing.assert_array_equal(state2.agent_pos, new.agent_pos)
    np.testing.assert_allclose(obs2["agent_3"], ts.obs[3])
    assert float(rewards["agent_1"]) == pytest.approx(float(ts.reward))
    assert not bool(dones["__all__"]) and not bool(infos["terminated"])
    avail = env.get_avail_actions(state2)
    assert set(avail) == set(env.agents) and bool(jnp.all(avail["agent_2"]))
    np.testing.assert_allclose(env.get_obs(state2)["world_state"], obs2["world_state"])


# ---- option validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, options, needle",
    [
        ("spread", {"foo": 1}, "foo"),
        ("spread", {"success_threshold": 0.1}, "success_threshold"),
        ("gather", {"grid_size": 1}, "grid_size"),
        ("gather", {"grid_size": 5.0}, "5.0"),
        ("gather", {"grid_size": True}, "grid_size"),
        ("spread", {"episode_limit": 0}, "episode_limit"),
        ("formation", {"success_threshold": 0.0}, "success_threshold"),
        ("formation", {"success_threshold": -1.0}, "-1.0"),
        ("formation", {"success_threshold": float("nan")}, "success_threshold"),
        ("formation", {"success_threshold": "0.1"}, "success_threshold"),
    ],
)
def test_bad_options_raise(name, options, needle):
    with pytest.raises(ValueError, match="accepted|must be") as info:
        make_env(name, **options)
    assert needle in str(info.value)


def test_unknown_option_lists_accepted():
    with pytest.raises(ValueError) as info:
        make_env("formation", gridsize=5)
    msg = str(info.value)
    assert "gridsize" in msg
    assert all(o in msg for o in ("grid_size", "episode_limit", "success_threshold"))


def test_small_grid_options():
    # grid_size 2 is valid for every task: distinct placements still fit (4 cells).
    for name in GRID_TASKS:
        env = make_env(name, grid_size=2, episode_limit=1)
        state, _ = env.reset_arrays(jax.random.PRNGKey(0))
        stay = jnp.zeros(env.spec.num_agents, jnp.int32)
        _, ts = env.step_arrays(jax.random.PRNGKey(0), state, stay)
        assert bool(ts.done)
        assert float(jnp.max(jnp.abs(ts.obs))) <= 1.0
