"""tram compiles its training programs at LLVM level 1 unless ``XLA_FLAGS`` names a level."""

import os

from tram.experiments.xla_options import BACKEND_OPT_LEVEL, compiler_options, put_level_in_xla_flags


def test_level_one_unless_the_user_names_a_level(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert BACKEND_OPT_LEVEL == 1
    assert compiler_options() == {"xla_backend_optimization_level": 1}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert compiler_options() == {"xla_backend_optimization_level": 1}
    assert compiler_options("gpu") == {}  # measured on XLA:CPU only
    assert compiler_options("cpu") == {"xla_backend_optimization_level": 1}
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert compiler_options() == {}


def test_the_suite_compiles_at_tram_s_level():
    """tests/conftest.py puts the level into XLA_FLAGS, so programs a test jits itself are
    compiled like tram's (and ``compiler_options`` then defers to it)."""
    assert "xla_backend_optimization_level" in os.environ["XLA_FLAGS"]
    assert compiler_options() == {}


def test_put_level_in_xla_flags_keeps_the_user_s_flags_and_level(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    put_level_in_xla_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=1"
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    put_level_in_xla_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_backend_optimization_level=1"
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    put_level_in_xla_flags()
    assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=2"
