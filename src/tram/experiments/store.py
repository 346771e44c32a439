"""The run store: one directory per run, written atomically, resumable, corruption-detecting.

A run directory holds every seed of one (environment, learner, attack config, steps) run::

    <name>/                       # name = run_name(config), e.g. 3m-dop-var-fa1-kl6-2e6steps-1a2b3c4d
      config.json                 # the resolved config (+ "versions")
      metrics.csv                 # one row per seed per evaluation, columns METRIC_COLUMNS
      summary.json                # {"status": "done", "final": {seed: {metric: value}}, ...}
      attack_samples.npz          # optional: pi, delta_hat, avail [K, A]; env_steps, seed [K]
      detection_samples.npz       # the monitor's per-window sample (tram.detect.record)
      checkpoint/                 # save_checkpoint / load_checkpoint
        meta.json                 # {"step", "file", "sha256", "meta", ...}
        state-<step>.npz          # the arrays meta.json points at
      branch-point/               # optional, kept: the state other runs branch from (same layout)
      .lock                       # RunLock: flock'ed by the process training the run; holds its PID

Every file is written to a temporary file in the same directory, fsynced, then moved into
place with ``os.replace`` (atomic on POSIX), so a killed process leaves either the old or the
new content, never half a file. A file that is nevertheless damaged (truncated by hand, disk
trouble, a checkpoint whose checksum does not match) raises :class:`CorruptRunError` naming
the file, instead of being used.

``summary.json`` with ``"status": "done"`` is written last and marks a finished run; a sweep
must never redo or overwrite such a run (:func:`run_status`). ``--restart`` removes it first
(:func:`clear_run`), so a restarted run that is killed is never taken for finished.

``config.json`` carries ``config_hash`` (:func:`config_hash` of the rest), which is also the
suffix of the directory name; :func:`verify_config` (called by :func:`load_run` and before a
run is resumed) refuses a config edited by hand. A write that fails (full disk, file-size
limit) raises :class:`RunWriteError` naming the file and leaves the previous content.
JSON files hold ``null`` where a value is NaN (``NaN`` is not JSON); readers accept both.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
SAMPLES_FILE = "attack_samples.npz"
DETECTION_FILE = "detection_samples.npz"
"""The detection monitor's scores (:mod:`tram.detect.record`)."""
CHECKPOINT_DIR = "checkpoint"
BRANCH_POINT_DIR = "branch-point"
"""A kept checkpoint (same layout as ``checkpoint/``) that runs whose attack starts later
branch from (:func:`tram.experiments.runner.train`, ``keep_branch_point``)."""
CHECKPOINT_META = "meta.json"

METRIC_COLUMNS: tuple[str, ...] = (
    "seed",
    "env_steps",
    "test_return",
    "test_win_rate",
    "test_success",
    "train_return",
    "stealth_loglik",
    "stealth_loglik_alive",
    "kl_mean",
    "kl_max",
    "beta_mean",
    "saturated_frac",
    "fallback_frac",
    "attacked_frac",
    "pmax_before",
    "pmax_after",
)
"""Columns of ``metrics.csv``, in file order. ``seed`` and ``env_steps`` are integers, the
rest floats (NaN where a column does not apply)."""

INT_COLUMNS: frozenset[str] = frozenset({"seed", "env_steps"})

SAMPLE_ARRAYS: tuple[str, ...] = ("pi", "delta_hat", "avail", "env_steps", "seed")
"""Arrays of ``attack_samples.npz``: ``pi``, ``delta_hat``, ``avail`` ``[K, A]``;
``env_steps``, ``seed`` ``[K]``."""

_TMP_PREFIX = ".tmp-"

RunStatus = Literal["missing", "partial", "done"]


LOCK_FILE = ".lock"
"""The per-run lock file (:class:`RunLock`)."""
HASH_KEY = "config_hash"
"""Key of ``config.json`` holding :func:`config_hash` of the rest of the config."""


class CorruptRunError(RuntimeError):
    """A run file exists but cannot be trusted (truncated, unparsable, checksum mismatch,
    a ``config.json`` edited after the run was written)."""


class RunLockedError(RuntimeError):
    """Another process holds the run's lock (it is training that run now)."""


class RunWriteError(OSError):
    """Writing a run file failed (``ENOSPC``, ``EFBIG``, ...): ``path`` is the file that was
    being replaced; its previous content, and every other file, are untouched."""

    def __init__(self, path: str | os.PathLike, err: OSError):
        super().__init__(err.errno, err.strerror or str(err))
        self.path = Path(path)
        self.filename = str(path)

    def __str__(self) -> str:
        code = errno.errorcode.get(self.errno or 0, "")
        return (f"cannot write {self.path}: {self.strerror}{f' ({code})' if code else ''}; the files "
                f"written before are intact (the last good checkpoint is kept): fix that and rerun "
                f"the same command to resume")


# ----------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------


def _canonical(obj: Any) -> Any:
    """JSON-ready copy of ``obj`` with a single spelling per value.

    Integral floats become ints (``1.0`` and ``1`` hash alike), tuples become lists, numpy
    scalars and arrays become Python values, dict keys become strings.
    """
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _canonical(obj.tolist())
    if isinstance(obj, np.generic):
        return _canonical(obj.item())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj) and obj == int(obj):
            return int(obj)
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(dataclasses.asdict(obj))
    raise TypeError(f"config value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of ``obj``: sorted keys, no spaces, integral floats as ints."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def config_hash(config: Mapping[str, Any]) -> str:
    """First 8 hex digits of the sha256 of the canonical JSON of ``config`` minus ``versions``
    (and minus :data:`HASH_KEY`, the stored hash itself)."""
    body = {k: v for k, v in config.items() if k not in ("versions", HASH_KEY)}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:8]


def _short_number(x: float) -> str:
    """``1.0 -> "1"``, ``0.4 -> "0.4"``, ``6 -> "6"``."""
    return f"{float(x):g}"


def _short_steps(steps: int) -> str:
    """``2_000_000 -> "2e6"``, ``2_500_000 -> "2.5e6"``, ``123_456 -> "123456"``."""
    text = str(int(steps))
    digits = text.rstrip("0")
    exponent = len(text) - 1
    if exponent < 3 or len(digits) > 3:
        return text
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{mantissa}e{exponent}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(text)).strip("_") or "x"


def run_name(config: Mapping[str, Any]) -> str:
    """Directory name of a run: readable fields plus a hash of the whole resolved config.

    ``{env}-{learner}-{method}[-fa{f_a}[-kl{kl_u}][-{attack_at}][-{critic}]]-{steps}steps-{hash8}``, e.g.
    ``3m-dop-var-fa1-kl6-2e6steps-1a2b3c4d``: the budget is left out of the readable part for
    method ``none``, ``kl{kl_u}`` for a method without a KL budget, and ``attack_at`` is
    there for a method the report tells apart by it (``worst_q``); both read from the
    method's entry of :data:`tram.attacks.methods.ATTACK_METHODS`; ``attack.critic`` is there
    when it is not the default ``learner`` (``3m-dop-var-fa1-kl6-surrogate-2e6steps-...``). The hash
    (:func:`config_hash`) covers every value except ``versions``,
    so two configs differing in any value (seeds, a learner hyper-parameter, ...) get
    different names, and the same config always gets the same name.

    Args:
        config: the resolved config dict (``TrainConfig.to_dict()`` plus ``versions``), with
            at least ``env.name``, ``learner.name``, ``attack.method`` and ``run.steps``.
            A method that is not in the table (a config never validated) is named as one
            with a KL budget.

    Raises:
        ValueError: a key is missing.
    """
    from tram.attacks.methods import ATTACK_METHODS, CLEAN

    try:
        env = config["env"]["name"]
        learner = config["learner"]["name"]
        attack = config["attack"]
        method = attack["method"]
        steps = config["run"]["steps"]
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"run_name needs env.name, learner.name, attack.method and run.steps; missing {e}"
        ) from None
    entry = ATTACK_METHODS.get(method)
    parts = [_slug(env), _slug(learner), _slug(method)]
    if method != CLEAN:
        parts.append(f"fa{_short_number(attack['f_a'])}")
        if entry is None or entry.has_kl_budget:
            parts.append(f"kl{_short_number(attack['kl_u'])}")
        if entry is not None and entry.variants:  # e.g. the worst-Q attack: name where it acts
            parts.append(_slug(attack.get("attack_at", "train")))
        if attack.get("critic", "learner") != "learner":  # black-box TRAM (attack.critic), e.g. "surrogate"
            parts.append(_slug(attack["critic"]))
    parts += [f"{_short_steps(steps)}steps", config_hash(config)]
    return "-".join(parts)


# ----------------------------------------------------------------------------------------
# Atomic writers
# ----------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` via ``write(binary_file)`` on a same-directory temp file + fsync + rename.

    If ``write`` (or anything before the rename) raises, the temp file is removed and the
    previous content of ``path``, if any, is untouched. An ``OSError`` of the file system
    (full disk, file-size limit, permissions) is raised as :class:`RunWriteError` naming
    ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_PREFIX}{path.name}.")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if isinstance(e, OSError) and not isinstance(e, RunWriteError):
            raise RunWriteError(path, e) from e
        raise
    _fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    data = text.encode("utf-8")
    return _write_atomic(path, lambda f: f.write(data))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return _write_atomic(path, lambda f: f.write(data))


def _json_ready(obj: Any) -> Any:
    """``obj`` with non-finite floats (NaN, inf) replaced by ``None`` and numpy values as
    Python values, so that it is strict JSON."""
    if isinstance(obj, Mapping):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_ready(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented strict JSON (sorted keys; NaN and infinities are
    written as ``null``, since ``NaN`` is not JSON)."""
    obj = _json_ready(obj)

    def write(f: IO[bytes]) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="\n", write_through=True)
        json.dump(obj, text, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
        text.write("\n")
        text.detach()

    return _write_atomic(path, write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def format_value(value: Any) -> str:
    """CSV spelling of one value: ints as ints, floats by ``repr`` (exact round trip)."""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return str(value)


def write_csv_atomic(
    path: str | os.PathLike, header: Iterable[str], rows: Iterable[Iterable[Any]]
) -> Path:
    """Atomically write a CSV file: ``header`` then ``rows``, ``\\n`` line ends.

    Floats are written with ``repr`` so they read back bit-identical; NaN as ``nan``.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow([format_value(v) for v in row])
    return write_text_atomic(path, buf.getvalue())


def write_npz_atomic(path: str | os.PathLike, **arrays: Any) -> Path:
    """Atomically write an uncompressed ``.npz`` of ``arrays`` (no object arrays)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype == object:
            raise ValueError(f"array {k!r} has dtype object; only numeric arrays can be saved")
    return _write_atomic(path, lambda f: np.savez(f, **arrays))


def stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Temporary files left in ``directory`` (and its ``checkpoint/`` and ``branch-point/``)
    by a killed writer. Only the holder of the run's :class:`RunLock` may delete them."""
    directory = Path(directory)
    found = list(directory.glob(f"{_TMP_PREFIX}*"))
    for sub in (CHECKPOINT_DIR, BRANCH_POINT_DIR):
        found += list((directory / sub).glob(f"{_TMP_PREFIX}*"))
    return sorted(found)


# ----------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        key = str(key)
        if "/" in key:
            raise ValueError(f"checkpoint key {key!r} must not contain '/'")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _corrupt_checkpoint(path: Path, why: str) -> CorruptRunError:
    return CorruptRunError(
        f"corrupt checkpoint {path}: {why}. Delete {path.parent} to resume from scratch, "
        f"or pass --restart to retrain this run."
    )


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    arrays: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    *,
    name: str = CHECKPOINT_DIR,
) -> Path:
    """Save the training state of ``run_dir`` at progress ``step``.

    Writes ``checkpoint/state-<step>.npz`` atomically, then ``checkpoint/meta.json`` (atomic)
    holding the step, the npz file name, its sha256 and ``meta``; older npz files are deleted
    last. A kill at any point leaves the previous checkpoint loadable.

    Args:
        run_dir: the run directory.
        step: how far training got (env steps per seed, or an evaluation-window index;
            returned as is by :func:`load_checkpoint`).
        arrays: name -> array, or nested dicts of those (keys without ``/``), e.g. the
            leaves of ``jax.tree_util.tree_flatten_with_path(state)`` keyed by path. Jax
            arrays are converted with ``np.asarray``; typed PRNG keys must go through
            ``jax.random.key_data`` first.
        meta: JSON-serialisable extras (e.g. optimiser step, rng layout, tram version).
        name: the sub-directory (``checkpoint``; :data:`BRANCH_POINT_DIR` for a kept one).

    Returns:
        The path of ``meta.json``.
    """
    ckpt_dir = Path(run_dir) / name
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    flat = _flatten(arrays)
    npz_name = f"state-{int(step):012d}.npz"
    npz_path = write_npz_atomic(ckpt_dir / npz_name, **flat)
    record = {
        "format": 1,
        "step": int(step),
        "file": npz_name,
        "sha256": _sha256_file(npz_path),
        "keys": sorted(flat),
        "meta": dict(meta or {}),
    }
    meta_path = write_json_atomic(ckpt_dir / CHECKPOINT_META, record)
    for old in ckpt_dir.glob("state-*.npz"):
        if old.name != npz_name:
            old.unlink(missing_ok=True)
    return meta_path


def load_checkpoint(
    run_dir: str | os.PathLike,
    *,
    name: str = CHECKPOINT_DIR,
) -> tuple[int, dict[str, Any], dict[str, Any]] | None:
    """Load the latest checkpoint of ``run_dir`` (from its sub-directory ``name``).

    Returns:
        ``(step, arrays, meta)`` with ``arrays`` shaped like what :func:`save_checkpoint`
        got (nested dicts restored), or ``None`` when there is no checkpoint (an npz without
        ``meta.json`` is an interrupted first save and counts as none).

    Raises:
        CorruptRunError: ``meta.json`` unreadable, npz missing, checksum mismatch or npz
            unreadable. The message names the file and says to delete it or pass --restart.
    """
    ckpt_dir = Path(run_dir) / name
    meta_path = ckpt_dir / CHECKPOINT_META
    if not meta_path.exists():
        return None
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
        step = int(record["step"])
        npz_name = str(record["file"])
        sha = str(record["sha256"])
        keys = list(record["keys"])
        meta = dict(record.get("meta", {}))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise _corrupt_checkpoint(meta_path, f"unreadable ({type(e).__name__}: {e})") from None
    npz_path = ckpt_dir / npz_name
    if Path(npz_name).name != npz_name or not npz_path.exists():
        raise _corrupt_checkpoint(npz_path, f"missing (named by {meta_path.name})")
    actual = _sha256_file(npz_path)
    if actual != sha:
        raise _corrupt_checkpoint(
            npz_path, f"sha256 {actual[:12]}... does not match {sha[:12]}... in {meta_path.name}"
        )
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            flat = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise _corrupt_checkpoint(npz_path, f"unreadable ({type(e).__name__}: {e})") from None
    if sorted(flat) != sorted(keys):
        raise _corrupt_checkpoint(npz_path, f"holds keys {sorted(flat)}, expected {sorted(keys)}")
    return step, _unflatten(flat), meta


def remove_checkpoint(run_dir: str | os.PathLike, *, name: str = CHECKPOINT_DIR) -> None:
    """Remove ``checkpoint/`` (or ``name``) of ``run_dir`` (after the run is done, or on --restart)."""
    ckpt_dir = Path(run_dir) / name
    if not ckpt_dir.exists():
        return
    (ckpt_dir / CHECKPOINT_META).unlink(missing_ok=True)  # first, so a kill leaves "none"
    for p in sorted(ckpt_dir.iterdir()):
        p.unlink(missing_ok=True)
    ckpt_dir.rmdir()


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------


def _empty_columns(columns: Iterable[str] = METRIC_COLUMNS) -> dict[str, np.ndarray]:
    return {c: np.zeros(0, np.int64 if c in INT_COLUMNS else np.float64) for c in columns}


def read_metrics(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read and validate ``metrics.csv``.

    Returns:
        Column name -> array ``[R]`` in :data:`METRIC_COLUMNS` order (int64 for ``seed`` and
        ``env_steps``, float64 otherwise), rows sorted by ``(seed, env_steps)``. A missing
        file gives empty columns. A file without ``stealth_loglik_alive`` (written before
        tram reported both stealth averages) has its ``stealth_loglik`` column read as
        ``stealth_loglik_alive`` and ``stealth_loglik`` all NaN.

    Raises:
        CorruptRunError: missing or extra columns, a line with the wrong number of fields, a
            last line without its newline (a truncated write), an unparsable number, or a
            repeated ``(seed, env_steps)``; the message names the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return _empty_columns()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorruptRunError(f"{path}: not UTF-8 text ({e})") from None
    if not text:
        raise CorruptRunError(f"{path}: empty file (expected a header line)")
    lines = text.split("\n")
    if lines[-1] != "":
        raise CorruptRunError(
            f"{path}, line {len(lines)}: truncated last line {lines[-1]!r} (no final newline); "
            f"delete the run directory or pass --restart"
        )
    lines = lines[:-1]
    header = next(csv.reader([lines[0]]))
    # Written before the two stealth averages existed: its ``stealth_loglik`` is today's
    # ``stealth_loglik_alive``; the every-step average cannot be recovered (NaN).
    legacy = "stealth_loglik" in header and "stealth_loglik_alive" not in header
    if legacy:
        header = ["stealth_loglik_alive" if c == "stealth_loglik" else c for c in header]
    missing = [c for c in METRIC_COLUMNS if c not in header and not (legacy and c == "stealth_loglik")]
    extra = [c for c in header if c not in METRIC_COLUMNS]
    if missing or extra or len(set(header)) != len(header):
        raise CorruptRunError(
            f"{path}, line 1: bad header; missing columns {missing}, unexpected columns {extra}"
            f" (expected {', '.join(METRIC_COLUMNS)})"
        )
    values: dict[str, list] = {c: [] for c in header}
    seen: dict[tuple[int, int], int] = {}
    for lineno, fields in enumerate(csv.reader(lines[1:]), start=2):
        if len(fields) != len(header):
            raise CorruptRunError(
                f"{path}, line {lineno}: {len(fields)} fields, expected {len(header)}"
                f" (truncated or damaged); delete the run directory or pass --restart"
            )
        for col, field in zip(header, fields):
            try:
                values[col].append(int(field) if col in INT_COLUMNS else float(field))
            except ValueError:
                raise CorruptRunError(
                    f"{path}, line {lineno}: column {col!r} value {field!r} is not "
                    f"{'an integer' if col in INT_COLUMNS else 'a number'}"
                ) from None
        key = (values["seed"][-1], values["env_steps"][-1])
        if key in seen:
            raise CorruptRunError(
                f"{path}, line {lineno}: seed {key[0]} at env_steps {key[1]} repeats line {seen[key]}"
            )
        seen[key] = lineno
    cols = {
        c: np.asarray(values.get(c, [math.nan] * len(values["seed"])), np.int64 if c in INT_COLUMNS else np.float64)
        for c in METRIC_COLUMNS
    }
    order = np.lexsort((cols["env_steps"], cols["seed"]))
    return {c: v[order] for c, v in cols.items()}


# ----------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptRunError(
            f"{path}: not valid JSON ({e}); delete the run directory or pass --restart"
        ) from None


_NAME_HASH = re.compile(r"-([0-9a-f]{8})$")


def verify_config(run_dir: str | os.PathLike, config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Checks that ``run_dir/config.json`` is the config the run was written with.

    The config's :func:`config_hash` must equal the stored :data:`HASH_KEY` (when present)
    and the hash that ends the directory name (when the name ends in ``-<8 hex digits>``, as
    :func:`run_name` makes it); a config edited by hand fails either check. When ``config``
    is given (the config a process is about to resume with), the file must also equal it
    (``versions`` and the stored hash aside).

    Returns:
        The config as read.

    Raises:
        CorruptRunError: a missing or invalid file, or a mismatch; the message names the file.
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise CorruptRunError(f"{path}: missing; {run_dir} is not a run directory")
    saved = _read_json(path)
    if not isinstance(saved, dict):
        raise CorruptRunError(f"{path}: expected a JSON object")
    _check_hash(run_dir, saved)
    if config is not None and config_hash(config) != config_hash(saved):
        raise CorruptRunError(
            f"{path}: holds another config (hash {config_hash(saved)}) than this run's "
            f"({config_hash(config)}); the run is not used: delete {run_dir} to retrain")
    return saved


def _check_hash(run_dir: Path, saved: Mapping[str, Any]) -> None:
    """Raises :class:`CorruptRunError` when ``saved`` (``run_dir/config.json``) does not hash
    to its stored hash or to the directory name's (see :func:`verify_config`)."""
    path = run_dir / CONFIG_FILE
    actual = config_hash(saved)
    stored = saved.get(HASH_KEY)
    named = _NAME_HASH.search(run_dir.name)
    where = None
    if stored is not None and stored != actual:
        where = f"the hash {stored} stored in it"
    elif named is not None and named.group(1) != actual:
        where = f"the hash {named.group(1)} in the directory name"
    if where is not None:
        raise CorruptRunError(
            f"{path}: edited after the run was written (its content hashes to {actual}, not "
            f"{where}); the run is not used: restore the file, or delete {run_dir} to retrain")


def clear_run(run_dir: str | os.PathLike) -> None:
    """Removes what a previous training of ``run_dir`` wrote (for ``--restart``): first the
    finished marker ``summary.json`` (one atomic unlink, then the directory is fsynced), so
    that an interrupted restart is never taken for finished; then the checkpoint, the
    branch point, ``attack_samples.npz``, ``detection_samples.npz`` and ``metrics.csv``.
    ``config.json`` is kept."""
    run_dir = Path(run_dir)
    summary = run_dir / SUMMARY_FILE
    if summary.exists():
        summary.unlink()
        _fsync_dir(run_dir)
    remove_checkpoint(run_dir)
    remove_checkpoint(run_dir, name=BRANCH_POINT_DIR)
    for name in (SAMPLES_FILE, DETECTION_FILE, METRICS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    _fsync_dir(run_dir)


class RunLock:
    """An exclusive lock on one run directory, held while a process trains it.

    ``fcntl.flock`` on ``run_dir/.lock`` (created if needed); the holder writes its PID into
    the file and empties it on release. The kernel releases the lock when the holder exits or
    is killed, so a stale lock file never blocks anyone (a killed holder's PID stays in the
    file until the next process takes the lock; ``holder()`` is informative only). (``flock`` is local to one machine: two hosts sharing the
    store over NFS are not protected from each other.)

    Use as a context manager::

        with RunLock(run_dir, wait=False):
            ...  # train

    Args:
        run_dir: the run directory (created if missing).
        wait: block until the holder is done instead of raising.
        log: called once with a message when waiting.

    Raises:
        RunLockedError: (``wait=False``) another process holds the lock; the message names
            its PID.
    """

    def __init__(self, run_dir: str | os.PathLike, *, wait: bool = False,
                 log: Callable[[str], None] | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.wait = wait
        self.log = log
        self._fd: int | None = None

    def holder(self) -> str:
        """The PID written by the process holding the lock (``"unknown"`` if unreadable)."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return text if text.isdigit() else "unknown"

    def __enter__(self) -> "RunLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunWriteError(self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = self.holder()
            if not self.wait:
                os.close(fd)
                raise RunLockedError(
                    f"{self.run_dir} is being trained by process {pid} (it holds {self.path}); "
                    f"wait for it to finish, or pass --wait") from None
            if self.log is not None:
                self.log(f"{self.run_dir}: waiting for process {pid}, which is training this run")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is only informative
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)  # no stale PID in the file once the run is released
            except OSError:
                pass
            os.close(self._fd)  # releases the flock
            self._fd = None


def run_status(run_dir: str | os.PathLike) -> RunStatus:
    """``"missing"`` (no ``config.json``), ``"done"`` (``summary.json`` with status done) or
    ``"partial"`` (started, not finished).

    Raises:
        CorruptRunError: ``summary.json`` exists but is not valid JSON.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        return "missing"
    summary_path = run_dir / SUMMARY_FILE
    if summary_path.exists():
        summary = _read_json(summary_path)
        if isinstance(summary, dict) and summary.get("status") == "done":
            return "done"
    return "partial"


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Run directories (those holding ``config.json``) under ``root``, recursively, sorted;
    ``root`` itself counts if it is a run directory."""
    root = Path(root)
    if not root.exists():
        return []
    found = {p.parent for p in root.rglob(CONFIG_FILE) if p.is_file()}
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run directory, loaded and validated (see :func:`load_run`)."""

    path: Path
    config: dict[str, Any]
    """The resolved config, as saved."""
    metrics: dict[str, np.ndarray]
    """Column -> ``[R]`` array, rows sorted by (seed, env_steps); see :data:`METRIC_COLUMNS`."""
    summary: dict[str, Any] | None
    """``summary.json`` or ``None`` if not written yet."""
    attack_samples: dict[str, np.ndarray] | None
    """``attack_samples.npz`` arrays or ``None``."""

    @property
    def name(self) -> str:
        """The run directory's name (:func:`run_name`)."""
        return self.path.name

    @property
    def status(self) -> RunStatus:
        """``"done"`` if ``summary.json`` says so, else ``"partial"``."""
        done = isinstance(self.summary, dict) and self.summary.get("status") == "done"
        return "done" if done else "partial"

    @property
    def env(self) -> str:
        """``env.name`` of the run's config."""
        return str(self.config["env"]["name"])

    @property
    def learner(self) -> str:
        """``learner.name`` of the run's config."""
        return str(self.config["learner"]["name"])

    @property
    def method(self) -> str:
        """The attack method as the report keys it (:meth:`AttackMethod.series`): the method's
        name, or ``{name}_{attack_at}`` for a method with ``variants`` (``worst_q_test``,
        ``worst_q_train``, ``worst_q_both``, as Fig. 1 compares them), with ``_surrogate``
        appended for ``attack.critic = "surrogate"`` (``var_surrogate``). A method that is not
        in the table is returned as stored (the report then refuses it, naming it)."""
        from tram.attacks.methods import series_key

        attack = self.config["attack"]
        return series_key(str(attack["method"]), attack.get("attack_at", "train"), attack.get("critic", "learner"))

    @property
    def f_a(self) -> float | None:
        """Attack frequency, ``None`` for method ``none``."""
        return None if self.method == "none" else float(self.config["attack"]["f_a"])

    @property
    def kl_u(self) -> float | None:
        """KL upper bound, ``None`` for method ``none`` and for a method without a KL budget
        (the worst-Q attack)."""
        from tram.attacks.methods import ATTACK_METHODS

        entry = ATTACK_METHODS.get(self.config["attack"]["method"])
        if self.method == "none" or (entry is not None and not entry.has_kl_budget):
            return None
        return float(self.config["attack"]["kl_u"])

    @property
    def seeds(self) -> list[int]:
        """Seeds present in ``metrics.csv``, sorted."""
        return sorted(int(s) for s in np.unique(self.metrics["seed"]))

    def seed_rows(self, seed: int) -> dict[str, np.ndarray]:
        """The metric columns of one seed, sorted by env_steps."""
        mask = self.metrics["seed"] == seed
        return {c: v[mask] for c, v in self.metrics.items()}

    def final(self, seed: int, metric: str) -> float:
        """Final value of ``metric`` for ``seed``: ``summary["final"][seed][metric]`` when
        present and finite, else the last evaluation row in ``metrics.csv`` (NaN if none)."""
        final = (self.summary or {}).get("final") or {}
        entry = final.get(str(seed), final.get(seed)) if isinstance(final, dict) else None
        if isinstance(entry, dict) and metric in entry:
            value = entry[metric]
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
        rows = self.seed_rows(seed)[metric]
        return float(rows[-1]) if len(rows) else math.nan


def _load_samples(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CorruptRunError(f"{path}: unreadable npz ({type(e).__name__}: {e})") from None
    missing = [k for k in SAMPLE_ARRAYS if k not in arrays]
    if missing:
        raise CorruptRunError(f"{path}: missing arrays {missing} (expected {', '.join(SAMPLE_ARRAYS)})")
    pi = arrays["pi"]
    if pi.ndim != 2:
        raise CorruptRunError(f"{path}: pi must be [K, A], got shape {pi.shape}")
    k = pi.shape[0]
    for name in ("delta_hat", "avail"):
        if arrays[name].shape != pi.shape:
            raise CorruptRunError(f"{path}: {name} has shape {arrays[name].shape}, pi has {pi.shape}")
    for name in ("env_steps", "seed"):
        if arrays[name].shape != (k,):
            raise CorruptRunError(f"{path}: {name} has shape {arrays[name].shape}, expected ({k},)")
    return arrays


def _check_aligned(metrics: dict[str, np.ndarray], path: Path) -> None:
    """Seeds run in one vmapped program, so each seed's env_steps must be a prefix of the
    longest seed's (a partial run may stop mid-evaluation, nothing else)."""
    steps = [metrics["env_steps"][metrics["seed"] == s] for s in np.unique(metrics["seed"])]
    if not steps:
        return
    longest = max(steps, key=len)
    for s, seed_steps in zip(np.unique(metrics["seed"]), steps):
        if not np.array_equal(seed_steps, longest[: len(seed_steps)]):
            raise CorruptRunError(
                f"{path}: seed {int(s)} is evaluated at env_steps {seed_steps.tolist()[:6]}..., "
                f"other seeds at {longest.tolist()[:6]}...; all seeds must share evaluation steps"
            )


_REQUIRED_CONFIG = (("env", "name"), ("learner", "name"), ("attack", "method"), ("run", "steps"))


def load_run(run_dir: str | os.PathLike) -> Run:
    """Load and validate a run directory (finished or partial).

    Raises:
        CorruptRunError: no or invalid ``config.json`` (or one lacking env.name,
            learner.name, attack.method, run.steps, or one edited by hand: see
            :func:`verify_config`), a damaged ``metrics.csv`` (see :func:`read_metrics`),
            invalid ``summary.json`` or ``attack_samples.npz``.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise CorruptRunError(f"{config_path}: missing; {run_dir} is not a run directory")
    config = _read_json(config_path)
    for section, key in _REQUIRED_CONFIG:
        part = config.get(section) if isinstance(config, dict) else None
        if not isinstance(part, dict) or key not in part:
            raise CorruptRunError(f"{config_path}: missing key {section}.{key}")
    if config["attack"]["method"] != "none":
        for key in ("f_a", "kl_u"):
            if key not in config["attack"]:
                raise CorruptRunError(f"{config_path}: missing key attack.{key}")
    _check_hash(run_dir, config)
    metrics = read_metrics(run_dir / METRICS_FILE)
    seeds = config["run"].get("seeds")
    if seeds is not None:
        unexpected = sorted(set(metrics["seed"].tolist()) - {int(s) for s in seeds})
        if unexpected:
            raise CorruptRunError(
                f"{run_dir / METRICS_FILE}: seeds {unexpected} are not in run.seeds {list(seeds)}"
            )
    _check_aligned(metrics, run_dir / METRICS_FILE)
    summary_path = run_dir / SUMMARY_FILE
    summary = _read_json(summary_path) if summary_path.exists() else None
    if summary is not None and not isinstance(summary, dict):
        raise CorruptRunError(f"{summary_path}: expected a JSON object")
    samples_path = run_dir / SAMPLES_FILE
    samples = _load_samples(samples_path) if samples_path.exists() else None
    return Run(path=run_dir, config=config, metrics=metrics, summary=summary, attack_samples=samples)
