"""What do scripted policies score on tram's 2s_vs_1sc? The yardstick for P3's DOP runs.

    python results/smax-lite/scripted_2s_vs_1sc.py [EPISODES]     # default 64, key 0

No training. It plays ``EPISODES`` episodes (SMAX, HeuristicEnemySMAX, tram's Spine Crawler,
200-step limit) with each scripted policy of ``tests/test_smax_envs.py`` and prints the mean
episode return (SMAX's team reward summed up to the episode's end: the crawler's health lost,
normalised to 1, plus 1 for a win), the win rate and the mean episode length:

* ``random_policy``: uniform over the available actions;
* ``charge_policy``: walk to the crawler and focus fire, never retreat;
* ``kite_policy``: hit-and-run on the own weapon cooldown (shoot when ready, back off beyond
  the crawler's range while reloading).

The test return of a run is this same quantity for the greedy policy, so a learner whose
test return equals ``charge_policy``'s return has learned to charge.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import test_smax_envs as scripted  # noqa: E402  (the policies and the episode runner the tests use)


def main(episodes: str = "64") -> None:
    n = int(episodes)
    for policy in (scripted.random_policy, scripted.charge_policy, scripted.kite_policy):
        _, _, traj = scripted._run("2s_vs_1sc", policy, n)
        first = scripted._first_done(traj["done"])
        reward = np.asarray(traj["reward"])
        reward = reward[..., 0] if reward.ndim == 3 else reward  # every agent gets the team reward
        ret = np.where(np.arange(reward.shape[1])[None, :] <= first[:, None], reward, 0.0).sum(axis=1)
        print(f"{policy.__name__:<14} return {ret.mean():.3f} (sd {ret.std():.3f}), "
              f"win rate {scripted._win_rate(traj):.3f}, episode length {np.mean(first + 1):.1f} ({n} episodes)")


if __name__ == "__main__":
    main(*sys.argv[1:])
