"""Nothing in the run path assumes the CPU: the memory check reads the accelerator's free
memory when the default device is not the CPU (no GPU here: a fake device stands in)."""

from __future__ import annotations

from tram.experiments import runner


class _FakeGPU:
    platform = "gpu"

    def __init__(self, stats):
        self._stats = stats

    def memory_stats(self):
        return self._stats


def test_memory_check_reads_the_accelerator(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(runner.jax, "devices", lambda: [_FakeGPU({"bytes_limit": 16 * gib, "bytes_in_use": 3 * gib})])
    assert runner.available_memory_bytes() == 13 * gib


def _host_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))


def _assert_host_memory() -> None:
    """``available_memory_bytes()`` is the host's MemAvailable. Other processes move it
    while the test runs (by GiBs on a busy machine), so the value must lie between readings
    taken just before and just after the call (within 64 MiB)."""
    before = _host_available_bytes()
    got = runner.available_memory_bytes()
    after = _host_available_bytes()
    slack = 64 * 2**20
    assert min(before, after) - slack <= got <= max(before, after) + slack, (before, got, after)


def test_memory_check_falls_back_to_host_memory_without_device_stats(monkeypatch):
    monkeypatch.setattr(runner.jax, "devices", lambda: [_FakeGPU(None)])
    _assert_host_memory()


def test_memory_check_on_the_cpu_is_host_memory():
    _assert_host_memory()
