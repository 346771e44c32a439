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

Fig. 1 (QMIX, worst-Q attack from step S, runs of 2S steps, or any length T > S): per run
(clean, attacked at test time only, attacked at training and test time) the test win rate's
per-seed mean in the first fifth of the attack period ("early": S < step <= 1.2 S when
T = 2S) and in the last fifth ("late": 1.8 S < step <= 2 S), bootstrap CIs over seeds; the
recovery late - early per run as a paired t-interval over seeds (the same seed twice); and
between runs, Welch intervals of the early drop against clean and of the late gap between
the two attacked runs; one block per attack frequency f_A found (``tram reproduce fig1 --fa``). The three runs are found by
the names ``tram reproduce fig1`` gives them (the report keys the clean run together with
the longer clean run P4 measured S on).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tram.experiments.store import load_run, run_name
from tram.report.collect import collect_runs, final_values, finite_seed_means
from tram.report.compare import paired_interval, welch_interval
from tram.report.plots import argmax_push_fraction, greedy_actions
from tram.report.stats import ci_text, mean_ci_text


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
        if run.attack_samples is not None and len(run.attack_samples["pi"]) > 0:  # worst-Q records none
            n = len(run.attack_samples["pi"])
            print(f"  Fig. 4: raises argmax logit   {100 * argmax_push_fraction(run.attack_samples):.0f}% of {n} states")
            print(f"  Fig. 4: raises argmax prob.   {100 * probability_push_fraction(run.attack_samples):.0f}% of {n} states")
            same, p_target, n_multi = target_action_stats(run.attack_samples)
            print(f"  Fig. 4: argmax delta = argmax pi {100 * same:.0f}%, median pi(argmax delta) {p_target:.3f} "
                  f"({n_multi} states with >= 2 actions)")
    fig1(Path(root))


def fig1(root: Path) -> None:
    """Print the Fig. 1 numbers (module docstring) for every set of finished fig1 runs under ``root``."""
    from tram.cli import fig1_configs

    configs = [json.loads(p.read_text()) for p in sorted(root.rglob("config.json"))]
    starts = sorted({(c["env"]["name"], int(c["run"]["steps"]), int(c["attack"]["attack_start"]),
                      tuple(c["run"]["seeds"]), float(c["attack"]["f_a"])) for c in configs
                     if c["learner"]["name"] == "qmix" and c["attack"]["method"] == "worst_q"
                     and c["attack"]["attack_at"] == "both"}, key=lambda t: (t[:4], -t[4]))
    for env, steps, start, seeds, fa in starts:
        paths = [root / run_name(c.to_dict()) for c in fig1_configs(env, steps, seeds, start, fa)]
        if not all((p / "summary.json").exists() for p in paths):
            print(f"Fig. 1 on {env}, S = {start:,}: not every run is finished ({', '.join(p.name for p in paths)})")
            continue
        runs = dict(zip(("none", "worst_q_test", "worst_q_both"), (load_run(p) for p in paths)))
        fifth = (steps - start) // 5  # the attack period's first and last fifths (S / 5 when steps = 2S)
        early, late = (start, start + fifth), (steps - fifth, steps)
        print(f"Fig. 1 on {env}: QMIX, worst-Q at f_A = {fa:g} from S = {start:,} to {steps:,} steps "
              f"({len(seeds)} seeds); "
              f"early ({early[0]:,}, {early[1]:,}], late ({late[0]:,}, {late[1]:,}]")
        means = {}
        for name, run in runs.items():
            e = finite_seed_means(run, "test_win_rate", between=early)
            l_ = finite_seed_means(run, "test_win_rate", between=late)
            means[name] = (e, l_)
            print(f"  {name:<13} early {mean_ci_text(e)}   late {mean_ci_text(l_)}   "
                  f"late - early {ci_text(paired_interval(l_, e))} (paired)")
        for a, b, when in (("worst_q_test", "none", 0), ("worst_q_both", "none", 0),
                           ("worst_q_test", "none", 1), ("worst_q_both", "none", 1),
                           ("worst_q_both", "worst_q_test", 1)):
            d, lo, hi, _ = welch_interval(means[a][when], means[b][when])
            print(f"  {a} - {b}, {('early', 'late')[when]}: {ci_text((d, lo, hi))} (Welch)")


if __name__ == "__main__":
    main(*sys.argv[1:])
