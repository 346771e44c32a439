"""Detection of a poisoned agent by a monitor that knows every agent's policy.

* :mod:`tram.detect.score`: the per-step monitor increments, computed inside the compiled
  training program (no random draws) and the per-window ring that keeps a sample of them;
* :mod:`tram.detect.record`: ``detection_samples.npz`` in the run store (atomic writes,
  exact resume);
* :mod:`tram.detect.stats`: AUROC with tie handling, seed-level bootstrap, detection rate at
  a false-alarm rate, CUSUM and its calibration;
* :mod:`tram.detect.report`: ``tram detect`` (table and damage-detectability figure).

The derivation and the meaning of the numbers are in ``docs/detection.md``.
"""
