"""The numbers behind RESULTS.md, read from the committed runs only (no training).

    python results/smax-lite/claims.py [RUNS]      # default: results/smax-lite/runs

For every finished run (env, learner, method, f_A, KL_U) it prints, over seeds, with 95%
percentile-bootstrap CIs (2000 resamples, tram.report.stats.bootstrap_ci):

* final test win rate (the last evaluation, at the run's --steps; as `tram report`'s
  final-performance table) and its mean over the last 100k steps (10 evaluations);
* the stealth log likelihood of Eq. 3, both averages (``stealth_loglik`` over every step of
  the poisoned agent, ``stealth_loglik_alive`` over its steps with >= 2 actions), per seed
  the mean over evaluation windows, as Tables 1-3;
* the most likely action's probability before and after the perturbation (Fig. 4's
  question: does the attack raise or lower it), and the share of saturated searches.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tram.report.collect import collect_runs, final_values, finite_seed_means
from tram.report.stats import mean_ci_text


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
        if key.method != "none":
            for metric in ("stealth_loglik", "stealth_loglik_alive", "pmax_before", "pmax_after",
                           "saturated_frac", "kl_mean"):
                print(f"  {metric:<29} {mean_ci_text(finite_seed_means(run, metric))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
