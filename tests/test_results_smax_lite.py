"""The committed smax-lite results are reproducible from the committed runs: `tram report`
on `results/smax-lite/runs` regenerates the committed tables byte for byte (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "results" / "smax-lite"


@pytest.mark.skipif(not (ROOT / "runs").is_dir(), reason="no committed smax-lite runs")
def test_report_regenerates_the_committed_tables(tmp_path):
    from tram.report import make_report

    make_report(ROOT / "runs", tmp_path)
    committed = sorted(p.relative_to(ROOT / "report") for p in (ROOT / "report" / "tables").iterdir())
    assert committed, "results/smax-lite/report/tables is empty"
    for rel in committed:
        fresh = tmp_path / rel
        assert fresh.exists(), f"tram report no longer writes {rel}"
        assert fresh.read_bytes() == (ROOT / "report" / rel).read_bytes(), f"{rel} differs from the committed one"
    # the index names the runs directory as given on the command line; the rest is equal
    drop_path = lambda text: [line for line in text.splitlines() if not line.startswith("Runs: ")]
    assert drop_path((tmp_path / "index.md").read_text()) == drop_path((ROOT / "report" / "index.md").read_text())
