"""Start-up hook of the ``tram`` subprocesses that tests/test_reliability_faults.py must stop
right after a given evaluation (this folder is first on their ``PYTHONPATH``, so Python
imports this module before ``tram`` runs).

With ``TRAM_TEST_WINDOW_DELAY_S`` set, the child sleeps that many seconds after each write of
a run's metrics.csv. A window of the tests' tiny runs takes milliseconds once its program is
loaded from the compilation cache, so without the pause a test polling for "the first
evaluation's rows" could see the run finish first. Nothing else changes: the same numbers and
files, written at the same points; only the time between two windows grows.
"""

import os

_DELAY_S = float(os.environ.get("TRAM_TEST_WINDOW_DELAY_S") or 0)

if _DELAY_S > 0:
    import time

    from tram.experiments import store

    _write_csv_atomic = store.write_csv_atomic

    def _write_then_pause(path, *args, **kwargs):
        out = _write_csv_atomic(path, *args, **kwargs)
        if os.path.basename(str(path)) == store.METRICS_FILE:
            time.sleep(_DELAY_S)
        return out

    store.write_csv_atomic = _write_then_pause
