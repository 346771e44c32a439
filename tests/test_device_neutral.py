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


def test_memory_check_falls_back_to_host_memory_without_device_stats(monkeypatch):
    with open("/proc/meminfo") as f:
        host_kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    monkeypatch.setattr(runner.jax, "devices", lambda: [_FakeGPU(None)])
    # MemAvailable moves while the test runs: within 256 MiB of the value read above
    assert abs(runner.available_memory_bytes() - host_kib * 1024) < 256 * 2**20


def test_memory_check_on_the_cpu_is_host_memory():
    with open("/proc/meminfo") as f:
        host_kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    assert abs(runner.available_memory_bytes() - host_kib * 1024) < 256 * 2**20
