"""Can two marines win tram's 3m when the third does not help? The yardstick for P4 (Fig. 1).

    python results/smax-lite/scripted_3m_one_down.py [EPISODES]     # default 64, key 0

No training. Under Fig. 1's worst-Q attack at f_A = 1 the poisoned agent (agent 0) always
takes the action its own Q-values rank lowest, so the other two fight alone or nearly so.
This plays ``EPISODES`` episodes of 3m (SMAX, heuristic enemy, 100-step limit) with the
charge-and-focus-fire script of ``tests/test_smax_envs.py`` (attack the lowest-index enemy
in range, else walk toward the closest visible enemy) for agents 1 and 2, and for agent 0:

* ``charge``: the same script (three marines fight);
* ``stop``: always stop (agent 0 stays at the spawn and never shoots);
* ``flee``: always walk left, away from the enemy (SMAX's walls kill; agent 0 dies there);
* ``random``: uniform over its available actions.

It prints the win rate, the mean episode return (SMAX's team reward: enemy health removed,
normalised to 1, plus 1 for a win) and the mean episode length of each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import test_smax_envs as scripted  # noqa: E402  (the policies and the episode runner the tests use)

LEFT = 3  # actions 0-3: up, right, down, left


def _with_agent0(name: str, act0):
    def policy(env, key, ts):
        acts = scripted.charge_policy(env, key, ts)
        a0 = act0(env, key, ts)
        a0 = jnp.where(ts.avail[0, a0], a0, scripted.STOP)
        return acts.at[0].set(a0).astype(jnp.int32)

    policy.__name__ = name
    return policy


POLICIES = (
    scripted.charge_policy,
    _with_agent0("stop", lambda env, key, ts: jnp.int32(scripted.STOP)),
    _with_agent0("flee", lambda env, key, ts: jnp.int32(LEFT)),
    _with_agent0("random", lambda env, key, ts: scripted.random_policy(env, key, ts)[0]),
)


def main(episodes: str = "64") -> None:
    n = int(episodes)
    for policy in POLICIES:
        _, _, traj = scripted._run("3m", policy, n)
        first = scripted._first_done(traj["done"])
        reward = np.asarray(traj["reward"])
        ret = np.where(np.arange(reward.shape[1])[None, :] <= first[:, None], reward, 0.0).sum(axis=1)
        name = "charge" if policy is scripted.charge_policy else policy.__name__
        print(f"agent 0 {name:<7} win rate {scripted._win_rate(traj):.3f}, return {ret.mean():.3f} "
              f"(sd {ret.std():.3f}), episode length {np.mean(first + 1):.1f} ({n} episodes)")


if __name__ == "__main__":
    main(*sys.argv[1:])
