"""The numbers behind RESULTS.md, read from the committed runs only (no training).

    python results/smax-lite/claims.py [RUNS]      # default: results/smax-lite/runs

For every finished run (env, learner, method, f_A, KL_U) it prints, over seeds, with 95%
percentile-bootstrap CIs (2000 resamples, tram.report.stats.bootstrap_ci):

* final test win rate (the last evaluation, at the run's --steps; as `tram report`'s
  final-performance table) and its mean over the last 100k steps (10 evaluations), and the
  same two for the test return (SMAX's: the enemy health removed, normalised to 1, plus 1
  for a won battle; it grades runs that never win);
* the stealth log likelihood of Eq. 3, both averages (``stealth_loglik`` over every step of
  the poisoned agent, ``stealth_loglik_alive`` over its steps with >= 2 actions), per seed
  the mean over evaluation windows, as Tables 1-3;
* the most likely action's probability before and after the perturbation (Fig. 4's
  question: does the attack raise or lower it), and the share of saturated searches;
* from the Fig. 4 samples (attack_samples.npz), the share of sampled states whose direction
  raises the most likely available action's logit (the figure's panel label) and its
  probability (``delta_hat[a*] > <pi, delta_hat>``: the derivative of ``pi'(a*)`` in beta at 0),
  and where the perturbation leads as beta grows: ``pi' -> one-hot(argmax delta_hat)`` over the
  available actions, so the share of states whose ``argmax delta_hat`` is ``a*`` and the median
  probability ``pi(argmax delta_hat)`` under the clean policy (a likely action: the attack
  makes the agent exploit; an unlikely one: it makes it explore). States with one available
  action are left out of these two.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tram.report.collect import collect_runs, final_values, finite_seed_means
from tram.report.plots import argmax_push_fraction, greedy_actions
from tram.report.stats import mean_ci_text


def probability_push_fraction(samples: dict[str, np.ndarray]) -> float:
    """Share of sampled states where ``delta_hat`` raises the probability of the most likely
    available action ``a*`` at beta -> 0: ``delta_hat[a*] > sum_a pi[a] delta_hat[a]``."""
    top = greedy_actions(samples)
    dh = samples["delta_hat"]
    mean = np.sum(np.where(samples["avail"] > 0, samples["pi"] * dh, 0.0), axis=1)
    return float(np.mean(dh[np.arange(len(top)), top] > mean))


def target_action_stats(samples: dict[str, np.ndarray]) -> tuple[float, float, int]:
    """``(share of states with argmax delta_hat == argmax pi, median pi(argmax delta_hat), n)``
    over the sampled states with at least two available actions (argmaxes over available
    actions)."""
    avail = samples["avail"] > 0
    multi = avail.sum(axis=1) > 1
    greedy = greedy_actions(samples)[multi]
    target = np.argmax(np.where(avail, samples["delta_hat"], -np.inf), axis=1)[multi]
    p_target = samples["pi"][multi][np.arange(len(target)), target]
    return float(np.mean(greedy == target)), float(np.median(p_target)), int(multi.sum())


def main(root: str = "results/smax-lite/runs") -> None:
    store = collect_runs(Path(root))
    for note in store.notes:
        print(f"note: {note}")
    for key in store.keys():
        run = store.runs[key]
        label = f"{key.env} {key.learner} {key.method} fA={key.f_a} KL={key.kl_u} ({len(run.seeds)} seeds)"
        print(label)
        print(f"  final test win rate           {mean_ci_text(final_values(run, 'test_win_rate'))}")
        print(f"  win rate, last 100k steps     {mean_ci_text(finite_seed_means(run, 'test_win_rate', span=100_000))}")
        print(f"  final test return             {mean_ci_text(final_values(run, 'test_return'))}")
        print(f"  test return, last 100k steps  {mean_ci_text(finite_seed_means(run, 'test_return', span=100_000))}")
        if key.method != "none":
            for metric in ("stealth_loglik", "stealth_loglik_alive", "pmax_before", "pmax_after",
                           "saturated_frac", "kl_mean"):
                print(f"  {metric:<29} {mean_ci_text(finite_seed_means(run, metric))}")
        if run.attack_samples is not None:
            n = len(run.attack_samples["pi"])
            print(f"  Fig. 4: raises argmax logit   {100 * argmax_push_fraction(run.attack_samples):.0f}% of {n} states")
            print(f"  Fig. 4: raises argmax prob.   {100 * probability_push_fraction(run.attack_samples):.0f}% of {n} states")
            same, p_target, n_multi = target_action_stats(run.attack_samples)
            print(f"  Fig. 4: argmax delta = argmax pi {100 * same:.0f}%, median pi(argmax delta) {p_target:.3f} "
                  f"({n_multi} states with >= 2 actions)")


if __name__ == "__main__":
    main(*sys.argv[1:])
