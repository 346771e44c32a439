"""The numbers behind results/beyond/README.md, read from the committed runs only (no training).

    python results/beyond/summary.py [RUNS]      # default: results/beyond/runs

Per environment (COMA, f_A = 1, KL_U = 6, 3 seeds, 200k steps; presets ``detect_short`` and
``surrogate_short``): the final test metric (return on Gather, win rate on 3m) and its mean
over the last 50k steps (5 evaluations) per method, with 95% percentile-bootstrap CIs over
seeds; the damage against the clean run; and for black-box TRAM the share of the white-box
damage it keeps, ``(clean - surrogate) / (clean - learner's critic)``, on both measures.
Detection (AUROC etc.) is `tram detect results/beyond/runs --out results/beyond/detect`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tram.report.collect import collect_runs, final_values, finite_seed_means
from tram.report.stats import mean_ci_text


def main(root: str = "results/beyond/runs") -> None:
    store = collect_runs(Path(root))
    for note in store.notes:
        print(f"note: {note}")
    for env in sorted({k.env for k in store.keys()}):
        metric = "test_win_rate" if env != "gather" else "test_return"
        keys = [k for k in store.keys() if k.env == env]
        print(f"{env} ({metric}; final | mean over the last 50k steps)")
        finals, lasts = {}, {}
        for k in keys:
            run = store.runs[k]
            finals[k.method], lasts[k.method] = final_values(run, metric), finite_seed_means(run, metric, span=50_000)
            final, last = (mean_ci_text(v[k.method], width=8) for v in (finals, lasts))
            print(f"  {k.method:<18} {final} | {last}   ({len(run.seeds)} seeds)")
        if "none" not in finals:
            continue
        for name, vals in (("final", finals), ("last 50k", lasts)):
            clean = vals["none"].mean()
            for m in sorted(vals):
                if m == "none":
                    continue
                print(f"  damage {name:<9} {m:<18} {clean - vals[m].mean():8.3f}")
            for m in ("var", "jbased", "combined"):
                if m in vals and f"{m}_surrogate" in vals:
                    white, black = clean - vals[m].mean(), clean - vals[f"{m}_surrogate"].mean()
                    share = black / white if white != 0 else float("nan")
                    print(f"  share of white-box damage kept, {m}, {name}: {share:.2f} "
                          f"(surrogate {black:.3f} / learner's critic {white:.3f})")


if __name__ == "__main__":
    main(*sys.argv[1:])
