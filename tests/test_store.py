"""Run store: atomic writes, names, status, metrics validation, checkpoints."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakeruns import fake_config, make_fake_run, write_metric_rows
from tram.experiments import store
from tram.experiments.store import (
    METRIC_COLUMNS,
    CorruptRunError,
    find_runs,
    load_checkpoint,
    load_run,
    read_metrics,
    run_name,
    run_status,
    save_checkpoint,
    stale_temp_files,
    write_csv_atomic,
    write_json_atomic,
    write_npz_atomic,
    write_text_atomic,
)


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    else:
        yield path, obj


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


# ---------------------------------------------------------------------------- atomic writes


def test_atomic_writers_write_and_leave_no_temp_files(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": [1, 2.5], "y": float("nan")})
    write_text_atomic(tmp_path / "b.txt", "hello\n")
    write_csv_atomic(tmp_path / "c.csv", ["a", "b"], [[1, 0.1], [2, float("nan")]])
    write_npz_atomic(tmp_path / "d.npz", z=np.arange(3))
    assert json.loads((tmp_path / "a.json").read_text())["x"] == [1, 2.5]
    assert (tmp_path / "b.txt").read_text() == "hello\n"
    assert (tmp_path / "c.csv").read_text() == "a,b\n1,0.1\n2,nan\n"
    with np.load(tmp_path / "d.npz") as d:
        np.testing.assert_array_equal(d["z"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.txt", "c.csv", "d.npz"]


def test_exception_mid_write_keeps_old_content(tmp_path):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"status": "done"})
    # json.dump writes part of the object before hitting the unserialisable value.
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": 1, "z": object()})
    assert json.loads(path.read_text()) == {"status": "done"}
    assert stale_temp_files(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_crash_before_rename_keeps_old_content(tmp_path, monkeypatch):
    path = tmp_path / "metrics.csv"
    write_csv_atomic(path, ["a"], [[1]])

    def boom(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(store.os, "replace", boom)
    with pytest.raises(OSError, match="disk gone"):
        write_csv_atomic(path, ["a"], [[1], [2]])
    monkeypatch.undo()
    assert path.read_text() == "a\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_npz_crash_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "x.npz"
    write_npz_atomic(path, a=np.ones(4))

    def half_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(store.np, "savez", half_savez)
    with pytest.raises(KeyboardInterrupt):
        write_npz_atomic(path, a=np.zeros(4))
    monkeypatch.undo()
    with np.load(path) as d:
        np.testing.assert_array_equal(d["a"], np.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]


# ---------------------------------------------------------------------------- names


def test_run_name_readable_and_deterministic():
    cfg = fake_config("3m", "var", steps=2_000_000)
    name = run_name(cfg)
    assert name.startswith("3m-dop-var-fa1-kl6-2e6steps-")
    assert len(name.rsplit("-", 1)[1]) == 8
    assert run_name(copy.deepcopy(cfg)) == name
    # key order, int/float spelling and versions do not matter
    reordered = {k: cfg[k] for k in reversed(list(cfg))}
    assert run_name(reordered) == name
    floaty = copy.deepcopy(cfg)
    floaty["attack"]["kl_u"] = 6
    floaty["versions"]["jax"] = "9.9.9"
    assert run_name(floaty) == name
    assert run_name(fake_config("2s_vs_1sc", "none", steps=2_500_000)).startswith("2s_vs_1sc-dop-none-2.5e6steps-")


def test_run_name_differs_when_any_value_differs():
    cfg = fake_config("3m", "var")
    base = run_name(cfg)
    names = {base}
    leaves = [(p, v) for p, v in _leaves(cfg) if p[0] != "versions"]
    assert len(leaves) > 10
    for path, value in leaves:
        changed = copy.deepcopy(cfg)
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, (int, float)):
            new = value + 1
        else:
            new = value + "x"
        _set(changed, path, new)
        name = run_name(changed)
        assert name != base, path
        names.add(name)
    assert len(names) == len(leaves) + 1


@pytest.mark.parametrize("steps,text", [(2_000_000, "2e6"), (2_500_000, "2.5e6"), (50_000, "5e4"),
                                        (123_456, "123456"), (500, "500"), (1_230_000, "1.23e6")])
def test_short_steps(steps, text):
    assert store._short_steps(steps) == text


# ---------------------------------------------------------------------------- status and loading


def test_run_status_transitions(tmp_path):
    cfg = fake_config()
    run_dir = tmp_path / run_name(cfg)
    assert run_status(run_dir) == "missing"
    write_json_atomic(run_dir / "config.json", cfg)
    assert run_status(run_dir) == "partial"
    write_metric_rows(run_dir / "metrics.csv", [{"seed": 0, "env_steps": 0, "test_return": 1.0}])
    assert run_status(run_dir) == "partial"
    write_json_atomic(run_dir / "summary.json", {"status": "running"})
    assert run_status(run_dir) == "partial"
    write_json_atomic(run_dir / "summary.json", {"status": "done", "final": {}})
    assert run_status(run_dir) == "done"
    (run_dir / "summary.json").write_text('{"status": "do')
    with pytest.raises(CorruptRunError, match="summary.json"):
        run_status(run_dir)


def test_load_run_and_find_runs(tmp_path):
    a = make_fake_run(tmp_path / "grid1", "3m", "var")
    b = make_fake_run(tmp_path / "grid2" / "deeper", "spread", "none")
    assert find_runs(tmp_path) == sorted([a, b])
    assert find_runs(a) == [a]
    assert find_runs(tmp_path / "nope") == []
    run = load_run(a)
    assert run.status == "done" and run.method == "var" and run.f_a == 1.0 and run.kl_u == 6.0
    assert run.seeds == [0, 1, 2]
    assert list(run.metrics) == list(METRIC_COLUMNS)
    assert run.metrics["seed"].dtype == np.int64 and len(run.metrics["seed"]) == 3 * 6
    assert run.attack_samples["pi"].shape == (12, 6)
    assert run.final(1, "test_win_rate") == pytest.approx(0.15)
    clean = load_run(b)
    assert clean.f_a is None and clean.attack_samples is None


def test_load_run_rejects_bad_samples_and_config(tmp_path):
    run_dir = make_fake_run(tmp_path, "3m", "var")
    write_npz_atomic(run_dir / "attack_samples.npz", pi=np.ones((3, 4)), delta_hat=np.ones((3, 5)),
                     avail=np.ones((3, 4)), env_steps=np.zeros(3), seed=np.zeros(3))
    with pytest.raises(CorruptRunError, match="attack_samples.npz.*delta_hat"):
        load_run(run_dir)
    (run_dir / "attack_samples.npz").unlink()
    cfg = json.loads((run_dir / "config.json").read_text())
    del cfg["attack"]["method"]
    write_json_atomic(run_dir / "config.json", cfg)
    with pytest.raises(CorruptRunError, match=r"config.json: missing key attack.method"):
        load_run(run_dir)


# ---------------------------------------------------------------------------- metrics


def _rows(n_seeds=2, n_evals=3):
    return [{"seed": s, "env_steps": 10 * i, "test_return": s + 0.1 * i, "stealth_loglik": -1.0 / 3}
            for s in range(n_seeds) for i in range(n_evals)]


def test_metrics_roundtrip_is_exact_and_sorted(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = _rows()
    write_metric_rows(path, rows[3:] + rows[:3])  # seed 1 first: read back sorted by (seed, env_steps)
    cols = read_metrics(path)
    assert cols["seed"].tolist() == [0, 0, 0, 1, 1, 1]
    assert cols["env_steps"].tolist() == [0, 10, 20, 0, 10, 20]
    assert cols["stealth_loglik"][0] == -1.0 / 3  # bit-exact round trip
    assert math.isnan(cols["kl_max"][0])
    assert stale_temp_files(tmp_path) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=8))
def test_metrics_float_roundtrip_is_exact(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("m") / "metrics.csv"
    write_metric_rows(path, [{"seed": 0, "env_steps": i, "kl_mean": v} for i, v in enumerate(values)])
    back = read_metrics(path)["kl_mean"]
    np.testing.assert_array_equal(back, np.asarray(values))


def _write_good_metrics(tmp_path):
    path = tmp_path / "metrics.csv"
    write_metric_rows(path, _rows())
    return path


def test_truncated_metrics_last_line_is_reported(tmp_path):
    path = _write_good_metrics(tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) - 7])  # a kill mid-line (not possible with our writer)
    with pytest.raises(CorruptRunError, match=r"metrics\.csv, line 7: truncated last line"):
        read_metrics(path)
    # a last line cut at a field boundary, newline added by hand: too few fields
    lines = text.splitlines()
    path.write_text("\n".join(lines[:-1] + [",".join(lines[-1].split(",")[:5])]) + "\n")
    with pytest.raises(CorruptRunError, match=rf"metrics\.csv, line 7: 5 fields, expected {len(METRIC_COLUMNS)}"):
        read_metrics(path)


@pytest.mark.parametrize(
    "edit,pattern",
    [
        (lambda h, b: (h.replace(",pmax_after", ""), b), r"line 1: bad header; missing columns \['pmax_after'\]"),
        (lambda h, b: (h + ",extra", b), r"unexpected columns \['extra'\]"),
        (lambda h, b: (h, [b[0].replace(",0,", ",zero,", 1)] + b[1:]), r"line 2: column 'env_steps' value 'zero'"),
        (lambda h, b: (h, b[:1] + [b[1].replace("nan", "n/a", 1)] + b[2:]), r"line 3: column '.*' value 'n/a' is not a number"),
        (lambda h, b: (h, b + [b[0]]), r"line 8: seed 0 at env_steps 0 repeats line 2"),
    ],
)
def test_bad_metrics_named_with_line(tmp_path, edit, pattern):
    path = _write_good_metrics(tmp_path)
    header, *body = path.read_text().splitlines()
    header, body = edit(header, body)
    path.write_text("\n".join([header, *body]) + "\n")
    with pytest.raises(CorruptRunError, match=pattern) as info:
        read_metrics(path)
    assert str(path) in str(info.value)


def test_load_run_reports_corrupt_metrics(tmp_path):
    run_dir = make_fake_run(tmp_path, "3m", "jbased")
    path = run_dir / "metrics.csv"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CorruptRunError, match="metrics.csv"):
        load_run(run_dir)


# ---------------------------------------------------------------------------- checkpoints


def _state(scale=1.0):
    return {"params": {"w": np.full((2, 3), scale, np.float32), "b": np.zeros(3)},
            "key": np.array([0, 42], np.uint32), "step": np.int64(7)}


def test_checkpoint_roundtrip_and_replacement(tmp_path):
    assert load_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path, 1000, _state(1.0), {"note": "first"})
    save_checkpoint(tmp_path, 2000, _state(2.0), {"note": "second"})
    step, arrays, meta = load_checkpoint(tmp_path)
    assert step == 2000 and meta == {"note": "second"}
    np.testing.assert_array_equal(arrays["params"]["w"], np.full((2, 3), 2.0, np.float32))
    assert arrays["params"]["w"].dtype == np.float32 and arrays["key"].dtype == np.uint32
    assert int(arrays["step"]) == 7
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["meta.json", "state-000000002000.npz"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_checkpoint_is_reported(tmp_path, damage):
    save_checkpoint(tmp_path, 500, _state())
    npz = tmp_path / "checkpoint" / "state-000000000500.npz"
    data = npz.read_bytes()
    if damage == "truncate":
        npz.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        npz.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:
        npz.unlink()
    with pytest.raises(CorruptRunError, match=r"state-000000000500\.npz.*--restart") as info:
        load_checkpoint(tmp_path)
    assert "Delete" in str(info.value)


def test_corrupt_checkpoint_meta_is_reported(tmp_path):
    save_checkpoint(tmp_path, 500, _state())
    (tmp_path / "checkpoint" / "meta.json").write_text('{"step": 5')
    with pytest.raises(CorruptRunError, match=r"meta\.json.*--restart"):
        load_checkpoint(tmp_path)


def test_kill_during_checkpoint_save_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1000, _state(1.0))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_json_atomic", killed)  # dies after the new npz is written
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2000, _state(2.0))
    monkeypatch.undo()
    step, arrays, _ = load_checkpoint(tmp_path)
    assert step == 1000 and arrays["params"]["w"][0, 0] == 1.0
    # the next save cleans up the orphan
    save_checkpoint(tmp_path, 3000, _state(3.0))
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["meta.json", "state-000000003000.npz"]


def test_checkpoint_rejects_object_arrays_and_slash_keys(tmp_path):
    with pytest.raises(ValueError, match="dtype object"):
        save_checkpoint(tmp_path, 1, {"x": np.array([{}, 1], dtype=object)})
    with pytest.raises(ValueError, match="must not contain"):
        save_checkpoint(tmp_path, 1, {"a/b": np.ones(1)})
    assert load_checkpoint(tmp_path) is None
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoint").iterdir())


def test_remove_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": np.ones(2)})
    store.remove_checkpoint(tmp_path)
    assert not (tmp_path / "checkpoint").exists()
    assert load_checkpoint(tmp_path) is None
    assert os.listdir(tmp_path) == []


def test_load_run_checks_seeds_share_evaluation_steps(tmp_path):
    cfg = fake_config(seeds=(0, 1))
    run_dir = tmp_path / run_name(cfg)
    write_json_atomic(run_dir / "config.json", cfg)
    rows = [{"seed": 0, "env_steps": t} for t in (0, 10, 20)] + [{"seed": 1, "env_steps": 0}]
    write_metric_rows(run_dir / "metrics.csv", rows)
    assert load_run(run_dir).seeds == [0, 1]  # ragged but aligned: a partial run
    write_metric_rows(run_dir / "metrics.csv", rows + [{"seed": 1, "env_steps": 15}])
    with pytest.raises(CorruptRunError, match="seed 1 is evaluated at env_steps"):
        load_run(run_dir)


# ---------------------------------------------------------------------------- integrity


def _no_nan(name):
    raise ValueError(f"non-JSON constant {name}")


def test_json_files_write_null_for_nan_and_readers_accept_both(tmp_path):
    path = write_json_atomic(tmp_path / "summary.json", {"status": "done", "final": {
        "0": {"test_return": 1.5, "test_win_rate": float("nan"), "kl": np.float32("nan"), "x": float("inf")}}})
    data = json.loads(path.read_text(), parse_constant=_no_nan)  # strict JSON: jq and browsers accept it
    assert data["final"]["0"] == {"test_return": 1.5, "test_win_rate": None, "kl": None, "x": None}
    # Run.final reads null (and the NaN older tram wrote) as "missing": the last metrics row
    run_dir = make_fake_run(tmp_path, "3m", "var", seeds=(0,))
    last = load_run(run_dir).seed_rows(0)["test_win_rate"][-1]
    for text in ('{"status": "done", "final": {"0": {"test_win_rate": null}}}',
                 '{"status": "done", "final": {"0": {"test_win_rate": NaN}}}'):
        (run_dir / "summary.json").write_text(text)
        assert run_status(run_dir) == "done"
        assert load_run(run_dir).final(0, "test_win_rate") == last


def test_edited_config_is_refused_naming_the_file(tmp_path):
    run_dir = make_fake_run(tmp_path, "3m", "var")
    path = run_dir / "config.json"
    cfg = json.loads(path.read_text())
    store.verify_config(run_dir, cfg)  # unedited: fine, and the versions do not count
    store.verify_config(run_dir, {**cfg, "versions": {"tram": "9"}})
    edited = copy.deepcopy(cfg)
    edited["attack"]["method"] = "none"
    write_json_atomic(path, edited)
    for check in (lambda: load_run(run_dir), lambda: store.verify_config(run_dir)):
        with pytest.raises(CorruptRunError, match=r"config.json: edited after the run was written.*directory name"):
            check()
    # the stored hash catches an edit even when the directory was renamed
    cfg[store.HASH_KEY] = store.config_hash(cfg)
    renamed = tmp_path / "my-run"
    run_dir.rename(renamed)
    write_json_atomic(renamed / "config.json", cfg)
    assert load_run(renamed).method == "var"
    write_json_atomic(renamed / "config.json", {**edited, store.HASH_KEY: cfg[store.HASH_KEY]})
    with pytest.raises(CorruptRunError, match=r"my-run/config.json: edited .*stored in it"):
        load_run(renamed)
    # resuming with another config than the file's is refused too
    write_json_atomic(renamed / "config.json", cfg)
    with pytest.raises(CorruptRunError, match="holds another config"):
        store.verify_config(renamed, edited)


def test_clear_run_removes_the_finished_marker_first(tmp_path, monkeypatch):
    run_dir = make_fake_run(tmp_path, "3m", "var")
    save_checkpoint(run_dir, 2, {"x": np.ones(2)})
    removed = []
    real_unlink = type(run_dir).unlink

    def unlink(self, *a, **k):
        removed.append(self.name)
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(type(run_dir), "unlink", unlink)
    store.clear_run(run_dir)
    assert removed[0] == "summary.json"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]
    assert run_status(run_dir) == "partial"


HOLD = """
import sys
from tram.experiments.store import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_run_lock_names_the_holder_and_waits(tmp_path):
    import subprocess
    import sys
    import threading

    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(store.RunLockedError, match=rf"process {holder.pid} .*--wait"):
            with store.RunLock(run_dir):
                pass
        messages = []
        threading.Timer(0.5, holder.stdin.close).start()  # the holder finishes in 0.5 s
        with store.RunLock(run_dir, wait=True, log=messages.append):
            assert (run_dir / store.LOCK_FILE).read_text().strip() == str(os.getpid())
        assert messages and f"waiting for process {holder.pid}" in messages[0]
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
    with store.RunLock(run_dir):  # released on exit, and a stale lock file blocks no one
        pass


def test_write_error_names_the_file_and_keeps_the_old_content(tmp_path):
    """A write that fails (here EFBIG under RLIMIT_FSIZE, as a full disk gives ENOSPC) raises
    RunWriteError naming the file; the old file and no temporary file remain."""
    import subprocess
    import sys

    write_npz_atomic(tmp_path / "state.npz", x=np.zeros(10))
    before = (tmp_path / "state.npz").read_bytes()
    code = (
        "import resource, sys, numpy as np\n"
        "from tram.experiments import store\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    store.write_npz_atomic(sys.argv[1], x=np.zeros(100_000))\n"
        "except store.RunWriteError as e:\n"
        "    print(e.errno, e.path, '|', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state.npz")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import errno

    assert out.stdout.startswith(f"{errno.EFBIG} {tmp_path / 'state.npz'} | cannot write "), out.stdout
    assert "(EFBIG)" in out.stdout and "last good checkpoint is kept" in out.stdout
    assert (tmp_path / "state.npz").read_bytes() == before
    assert stale_temp_files(tmp_path) == []


def test_a_field_added_later_is_left_out_of_the_identity_at_its_default(monkeypatch):
    """Fields listed in OMITTED_AT_DEFAULT keep stored runs' names while at their default, and
    name a new run when set (bsn1 stands in for a field added after runs were stored)."""
    from tram import config as config_mod
    from tram.config import AttackConfig, EnvConfig, TrainConfig

    attack = AttackConfig(method="random", f_a=1.0, kl_u=6.0)
    cfg = TrainConfig(env=EnvConfig("spread"), attack=attack)
    before = store.run_name(cfg.to_dict())
    assert "bsn1" in cfg.to_dict()["attack"]
    monkeypatch.setattr(config_mod, "OMITTED_AT_DEFAULT", frozenset({("attack", "bsn1")}))
    d = cfg.to_dict()
    assert "bsn1" not in d["attack"]
    assert TrainConfig.from_dict(d) == cfg  # a stored config without the field reads as the default
    assert store.run_name(d) != before  # (here the field existed before, so the name changes)
    changed = TrainConfig(env=EnvConfig("spread"), attack=AttackConfig(method="random", f_a=1.0, kl_u=6.0, bsn1=40))
    assert changed.to_dict()["attack"]["bsn1"] == 40
    assert store.run_name(changed.to_dict()) != store.run_name(d)
    assert "bsn1" in cfg.to_dict(execution=True)["attack"]  # handing over to a worker keeps every field
