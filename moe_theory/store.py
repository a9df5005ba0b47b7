"""The results store of a sweep: one file per shard, verified whenever it is read
(docs/design.md#results-store).

Layout of a results folder ``OUT``::

    manifest.json                              the config (and its hash) the shards belong to,
                                               the G_bar references they use, the design
                                               size each was fitted on, rival minimisers
                                               their certificates refit from
    shards/<setting>/<shard>.parquet           one shard's rows
    shards/<setting>/<shard>.parquet.sha256    its sha256 and row count, written before it
    claims/<setting>/<shard>.claim             the writer computing that shard now
    damaged/<setting>/<shard>.parquet          shards that failed verification, moved aside
    results.parquet, results.csv               the merged table; the parquet file records the
                                               checksums of the shards it was built from

What it guarantees:

- *Whole files.* Every file is written under a temporary name and renamed: a reader sees the old
  file or the whole new one, never a partial one, whenever the writer dies.
- *Updates of the manifest one at a time* (:func:`manifest_update`): no writer drops another's
  update made between its read and its write.
- *Verified reads.* A shard counts as finished only when its sha256 and row count match the
  record made when it was written, its parquet footer reads and its rows are its own (setting,
  ``n``, replications of its block); a damaged shard is reported by
  name, moved to ``damaged/`` and recomputed by the next sweep. Nothing else is touched.
- *Known completeness.* The manifest holds the config, so the expected shards are known:
  :func:`completeness` says how many are finished and which settings and sample sizes miss, and
  :func:`load_results` and :func:`merge` warn when the table is incomplete. The merged table is
  read only while the checksums it records are those of the shards on disk.
- *One writer per shard.* A writer holds a claim file (created with ``O_CREAT | O_EXCL``, naming
  host, pid and time, touched while it works); concurrent sweeps skip claimed shards. A claim is
  stale when its process is gone (same host) or untouched for :data:`STALE_AFTER_S`, and is then
  taken over; the writer that held it touches only its own claim and, once it finds it lost
  (:class:`ClaimLost`), stores nothing of the shard. Temporary files carry host and pid, and
  only one's own or stale ones are removed.
- *Clear failures.* A path that cannot be written raises :class:`moe_theory.errors.StorageError`
  naming it (exit code 3): finished shards stay, no partial file is left under a final name.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: there only the threads of one process are kept apart
    fcntl = None

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from moe_theory.config import SweepConfig, parse_config, presented
from moe_theory.console import log_stderr
from moe_theory.errors import StorageError
from moe_theory.layout import (
    CHECK_FILE,
    CHECK_TABLE,
    DAMAGED_DIR,
    FITS_FILE,
    MANIFEST_FILE,
    MANIFEST_LOCK,
    PREFLIGHT_TABLE,
    RATES_TABLE,
    REFERENCE_DIR,
    REFIT_DIR,
    REPORT_HTML,
    REPORT_MD,
    RESULTS_CSV,
    RESULTS_CSV_GZ,
    RESULTS_PARQUET,
    RUN_FILE,
    SHARDS_DIR,
    table_files,
)
from moe_theory.measure import MixingMeasure

#: The merged table's order (and each shard file's): independent of finishing order and block size.
SORT_KEYS = ["setting", "fit_gate", "loss_name", "n", "rep"]
#: Below this many rows the merged table also gets a CSV copy, easy to open anywhere.
CSV_MAX_ROWS = 200_000
#: The column holding each fit's estimate (the measure's JSON, the same on every loss row of a
#: fit). The merged CSV leaves it out, to stay one line of numbers per row; the estimates go to
#: :data:`FITS_FILE`, one row per fit, which a figure folder keeps beside its ``results.csv``.
FIT_MEASURE = "fit_measure"
#: What names one fit of a sweep.
FIT_KEYS = ["setting", "fit_gate", "n", "rep"]
#: A claim or temporary file untouched this long belongs to a writer that is gone (one on another
#: host, whose process cannot be looked up, or a reused pid). A live claim is touched every
#: :data:`HEARTBEAT_S`; a temporary file lives for the seconds a parquet write takes.
STALE_AFTER_S = 300.0
HEARTBEAT_S = 30.0
#: A claim file found missing just before a shard is stored is looked for again for this long,
#: every CLAIM_GONE_POLL_S: a writer breaking a stale claim renames the file away and links a
#: live one back within a few system calls.
CLAIM_GONE_WAIT_S = 1.0
CLAIM_GONE_POLL_S = 0.05
#: A claim file is created empty and filled at once; one still empty after this long was left by
#: a writer killed in between.
EMPTY_CLAIM_GRACE_S = 10.0
#: Key of the merged parquet file's metadata that lists the shards (key -> sha256) it holds.
SHARDS_METADATA_KEY = b"moe_theory.shards"
HOST = socket.gethostname()


class StoreWarning(UserWarning):
    """A results folder that is incomplete, or held a damaged shard."""


# ---- shards and their paths -------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """(setting, n, block of replications ``rep_start <= rep < rep_stop``): one batched fit per
    fitted gate, one file of rows."""

    setting: str
    n: int
    rep_start: int
    rep_stop: int

    @property
    def key(self) -> str:
        return f"{self.setting}/n{self.n:09d}_reps{self.rep_start:05d}-{self.rep_stop:05d}"


def plan(config: SweepConfig) -> list[Shard]:
    """Every shard of a sweep, in plan order: settings x n x blocks of ``rep_block`` replications."""
    return plan_grid(config.settings, config.n, config.reps, config.rep_block)


def plan_grid(settings: Sequence[str], ns: Sequence[int], reps: int, rep_block: int
              ) -> list[Shard]:
    return [Shard(setting, n, start, min(start + rep_block, reps))
            for setting in settings for n in ns for start in range(0, reps, rep_block)]


def shard_path(out: Path, shard: Shard) -> Path:
    return Path(out) / SHARDS_DIR / f"{shard.key}.parquet"


def shard_code_versions(out: Path, shards: Iterable[Shard]) -> dict[str | None, int]:
    """How many of ``shards`` (finished ones) each version of the code computed (their rows'
    ``code``, :func:`moe_theory.provenance.code_version`; None for shards written before it was
    kept): read from the files' ``code`` column alone."""
    counts: dict[str | None, int] = {}
    for shard in shards:
        path = shard_path(out, shard)
        try:
            if "code" in pq.read_schema(path).names:
                codes = set(pq.read_table(path, columns=["code"]).column("code").to_pylist())
            else:
                codes = {None}
        except FileNotFoundError:
            continue  # removed since it was verified (another sweep's --force): not counted
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
    return counts


def checksum_path(path: Path) -> Path:
    """The record of a shard file's sha256 and row count."""
    return path.with_name(path.name + ".sha256")


def claim_path(out: Path, shard: Shard) -> Path:
    return Path(out) / "claims" / f"{shard.key}.claim"


# ---- writing ------------------------------------------------------------------------------------

def _os_error(path: Path, err: OSError) -> StorageError:
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        reason += " (the disk is full)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (the folder is read-only or not ours)"
    return StorageError(path, f"cannot write: {reason}")


def _temp_path(path: Path) -> Path:
    """A temporary name beside ``path`` that names its writer: only that writer, or anyone once
    the writer is gone, may remove it (:func:`remove_stale_temp_files`)."""
    return path.with_name(f".{path.name}~{HOST}~{os.getpid()}~{secrets.token_hex(4)}.tmp")


def _temp_owner(tmp: Path) -> tuple[str, int] | None:
    parts = tmp.name[1:-len(".tmp")].rsplit("~", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def make_folder(path: Path) -> None:
    """``path`` and its parents as folders; :class:`StorageError` when a file is in the way or the
    file system refuses."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise StorageError(part, "is a file, not a folder")
        if part.is_dir():
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _os_error(path, err) from None


def _replace(tmp: Path, path: Path) -> None:
    """Publish a finished temporary file under its final name, readable by everyone who may read
    the folder (temporary files are created owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _sync(path: Path, flags: int = os.O_RDWR) -> None:
    # a file read-write: Windows flushes only a descriptor open for writing
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to the disk; where the system cannot sync a
    folder (some file systems, Windows), the rename is as durable as the system makes it."""
    with contextlib.suppress(OSError):
        _sync(folder, os.O_RDONLY)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers see either the
    old file or the whole new one, never a partial file, whenever the process dies; and, the
    file's bytes and then the rename flushed to the disk, whenever the machine stops.

    Raises :class:`StorageError` naming ``path`` when the file system refuses (read-only, full,
    no permission); the temporary file is removed.
    """
    path = Path(path)
    make_folder(path.parent)
    tmp = _temp_path(path)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        write(str(tmp))
        # the rename may reach the disk before the data it names: after a power cut the new
        # name would hold an empty or partial file, which a resumed sweep reads as damaged at
        # best, while the old file it replaced is gone
        _sync(tmp)
        _replace(tmp, path)
        _sync_folder(path.parent)
    except OSError as err:
        raise _os_error(path, err) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(out: Path, shard: Shard, rows: pd.DataFrame) -> str:
    """Store a shard's rows: its checksum record first, then the file itself (both atomically),
    so that a shard file always has the record it is verified against. Returns the sha256."""
    path = shard_path(out, shard)
    digest = ""

    def write(tmp: str) -> None:
        nonlocal digest
        rows.to_parquet(tmp, index=False)
        digest = _sha256(Path(tmp))
        record = json.dumps({"sha256": digest, "rows": len(rows)})
        atomic_write(checksum_path(path), lambda t: Path(t).write_text(record))

    atomic_write(path, write)
    return digest


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, killed but not yet reaped by its
    parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _writer_gone(host: str, pid: int, mtime: float) -> bool:
    if time.time() - mtime > STALE_AFTER_S:
        return True
    return host == HOST and not _process_alive(pid)


def remove_stale_temp_files(out: Path) -> list[Path]:
    """Remove the temporary files of writers that are gone (killed before their rename); never
    another live writer's. Returns the removed paths."""
    removed = []
    for tmp in Path(out).rglob(".*.tmp"):
        try:
            mtime = tmp.stat().st_mtime
        except FileNotFoundError:
            continue
        owner = _temp_owner(tmp)
        gone = (time.time() - mtime > STALE_AFTER_S if owner is None
                else _writer_gone(owner[0], owner[1], mtime))
        if gone:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            removed.append(tmp)
    return removed


# ---- claims: one writer per shard -------------------------------------------------------------

@dataclass(frozen=True)
class ClaimInfo:
    """Who claimed a shard: ``host:pid`` since ``time``; ``raw`` is the claim file's content."""

    host: str
    pid: int
    time: float
    mtime: float
    raw: bytes

    @property
    def stale(self) -> bool:
        if not self.raw:
            return time.time() - self.mtime > EMPTY_CLAIM_GRACE_S
        return _writer_gone(self.host, self.pid, self.mtime)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def read_claim(path: Path) -> ClaimInfo | None:
    """The claim at ``path``, or None when there is none."""
    try:
        mtime = path.stat().st_mtime
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return ClaimInfo(str(data["host"]), int(data["pid"]), float(data["time"]), mtime, raw)
    except (ValueError, KeyError, TypeError):
        # empty (its writer died between creating and filling it) or garbled: nobody's
        return ClaimInfo("", -1, 0.0, mtime, raw)


def claim_holder(out: Path, shard: Shard) -> ClaimInfo | None:
    """The live writer that holds ``shard``, or None when it is free (no claim, or a stale one)."""
    info = read_claim(claim_path(out, shard))
    return None if info is None or info.stale else info


class ClaimLost(Exception):
    """This process's claim is no longer its own: another writer took it over (it looked stale:
    untouched for :data:`STALE_AFTER_S`, this process stopped meanwhile) or it was removed. The
    shard is the new writer's: this one must store nothing of it."""

    def __init__(self, path: Path, holder: ClaimInfo | None, *, missing: bool = False) -> None:
        #: ``missing``: no claim file at all, which a writer breaking a claim it read as stale
        #: also leaves for a moment (it renames the file away, then links a live one back)
        self.path, self.holder, self.missing = path, holder, missing
        whose = f"taken over by {holder}" if holder is not None else "removed"
        super().__init__(f"{path}: this process's claim was {whose}; the shard is left to "
                         "its new writer")


@dataclass
class Claim:
    """A claim this process holds; :meth:`release` it when the shard is stored (or failed)."""

    path: Path
    raw: bytes

    def touch(self) -> None:
        """Refresh the claim's time, if the claim file is still this claim; :class:`ClaimLost`
        if not, so that a writer never keeps another's claim alive and learns that the shard is
        no longer its to store. Another error of the file system is let pass (the claim is then
        neither refreshed nor known lost: the next touch looks again)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise ClaimLost(self.path, None, missing=True) from None
        except OSError:
            return
        try:
            # read and refreshed through one descriptor: the file checked is the file touched
            with open(fd, "rb", closefd=False) as f:
                raw = f.read()
            if raw == self.raw:
                os.utime(fd if os.utime in os.supports_fd else self.path)
        except OSError:
            return
        finally:
            os.close(fd)
        if raw != self.raw:
            raise ClaimLost(self.path, read_claim(self.path))

    def confirm(self, wait_s: float = CLAIM_GONE_WAIT_S) -> None:
        """:meth:`touch` before storing: a claim file missing only while another writer puts
        it back (:func:`_break_stale`'s rename and link, a few system calls) is looked for again
        for up to ``wait_s`` rather than read as lost, which would throw the finished shard
        away; another writer's claim is lost at once."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.touch()
            except ClaimLost as lost:
                if not lost.missing or time.monotonic() >= deadline:
                    raise
            time.sleep(CLAIM_GONE_POLL_S)

    def release(self) -> None:
        """Remove the claim file if it is still this claim (never a successor's)."""
        with contextlib.suppress(OSError):
            if self.path.read_bytes() == self.raw:
                self.path.unlink()


def _break_stale(path: Path, seen: ClaimInfo) -> None:
    """Remove a stale claim, unless a new claim replaced it since it was read: it is renamed to a
    name of our own first (one rename wins), and put back if it turns out to be a live one."""
    grave = path.with_name(f"{path.name}~{HOST}~{os.getpid()}~{secrets.token_hex(4)}.stale")
    try:
        os.replace(path, grave)
    except FileNotFoundError:
        return
    try:
        if grave.read_bytes() != seen.raw:
            with contextlib.suppress(FileExistsError):
                os.link(grave, path)
    finally:
        grave.unlink(missing_ok=True)


def try_claim(out: Path, shard: Shard) -> Claim | ClaimInfo:
    """Claim ``shard`` for this process: the :class:`Claim`, or the live holder's
    :class:`ClaimInfo` when another writer has it. A stale claim is taken over."""
    path = claim_path(out, shard)
    make_folder(path.parent)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_claim(path)
            if holder is None:
                continue  # released meanwhile: try again
            if not holder.stale:
                return holder
            _break_stale(path, holder)
            continue
        except OSError as err:
            raise _os_error(path, err) from None
        raw = json.dumps({"host": HOST, "pid": os.getpid(), "time": time.time(),
                          "token": secrets.token_hex(8)}).encode()
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
        except OSError as err:
            with contextlib.suppress(OSError):
                path.unlink()
            raise _os_error(path, err) from None
        return Claim(path, raw)


@contextlib.contextmanager
def heartbeat(claim: Claim) -> Iterator[None]:
    """Touch ``claim`` every :data:`HEARTBEAT_S` while the block runs, so that a long shard's
    claim never looks stale to a writer on another host; once the claim is lost
    (:class:`ClaimLost`) it beats no more. The block itself touches the claim before it stores
    anything (``moe_theory.sweep.compute_shard``): a lost claim then stops it."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                claim.touch()
            except ClaimLost as lost:
                # a missing file may be a stale-breaker's moment between its rename and its
                # link back of this live claim: beat on, or the claim would never be refreshed
                # again and go stale under this writer (the store's touch decides)
                if not lost.missing:
                    return

    thread = threading.Thread(target=beat, name="claim-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# ---- verification -----------------------------------------------------------------------------

class DamagedShard(Exception):
    """A shard file that is not what was written (``str()`` says how)."""


def check_shard(path: Path, config_hash: str | None = None, shard: Shard | None = None) -> str:
    """The sha256 of a whole shard file; raises :class:`DamagedShard` saying what is wrong.

    The file's sha256 and row count must match the record written with it, and its parquet
    footer must read. A file from before records were kept is decoded in full instead. With
    ``config_hash``, every row's ``config_hash`` must be it: a whole, well-recorded shard of
    another config (a worker its killed sweep left running, finishing after a ``--force`` gave
    the folder to another config; a shard copied from another run) is not this folder's. With
    ``shard``, its rows must be that shard's (its setting, its ``n``, replications in its block).
    """
    record_path = checksum_path(path)
    try:
        record = json.loads(record_path.read_text())
        want_sha, want_rows = str(record["sha256"]), int(record["rows"])
    except FileNotFoundError:
        record = None
    except (ValueError, KeyError, TypeError):
        raise DamagedShard(f"its checksum record {record_path.name} is unreadable") from None
    try:
        digest = _sha256(path)
    except OSError as err:
        raise StorageError(path, f"cannot read: {err.strerror or err}") from None
    if record is not None and digest != want_sha:
        raise DamagedShard(f"sha256 {digest[:12]}... differs from the {want_sha[:12]}... recorded "
                           "when it was written")
    try:
        meta = pq.read_metadata(path)
        rows = meta.num_rows
        if record is None:
            pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DamagedShard(f"not a whole parquet file ({err})") from None
    if record is not None and rows != want_rows:
        raise DamagedShard(f"{rows} rows, {want_rows} written")
    if config_hash is not None:
        other = sorted(str(h) for h in _config_hashes(path, meta) if h != config_hash)
        if other:
            raise DamagedShard(f"its rows were written by another config (hash "
                               f"{', '.join(other)}), not this folder's {config_hash}")
    if shard is not None:
        # another shard's file and record copied under this name verify by checksum alone: the
        # merged table then held that shard's rows twice and this one's not at all, and no
        # sweep recomputed it
        wrong = _not_its_rows(path, meta, shard)
        if wrong:
            raise DamagedShard(f"its rows are not this shard's ({wrong})")
    return digest


def _not_its_rows(path: Path, meta: pq.FileMetaData, shard: Shard) -> str:
    """How the rows of the shard file ``path`` fall outside ``shard`` (its setting, its ``n``,
    replications ``rep_start <= rep < rep_stop``), from :func:`_column_bounds`; empty where they
    are the shard's."""
    ranges = {}
    for name in ("setting", "n", "rep"):
        values = _column_bounds(path, meta, name)
        if values is None:
            return f"no {name} column"
        if values:
            ranges[name] = (min(values), max(values))
    said = []
    for name, want in (("setting", shard.setting), ("n", shard.n)):
        if ranges.get(name, (want, want)) != (want, want):
            said.append(f"{name} {ranges[name][0]}..{ranges[name][1]}")
    low, high = ranges.get("rep", (shard.rep_start, shard.rep_start))
    if low < shard.rep_start or high >= shard.rep_stop:
        said.append(f"replications {low}..{high}, not {shard.rep_start}..{shard.rep_stop - 1}")
    return ", ".join(said)


def _column_bounds(path: Path, meta: pq.FileMetaData, name: str) -> list | None:
    """Values of a shard's column ``name`` that hold its least and greatest: each row group's
    min and max from the footer's statistics (every shard is read on every load, and decoding a
    column cost 4x the checksum's time on small shards), else the column itself; None where the
    file has no such column."""
    values: list = []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        column = next((group.column(j) for j in range(group.num_columns)
                       if group.column(j).path_in_schema == name), None)
        if column is None:
            return None
        stats = column.statistics
        if stats is None or not stats.has_min_max:
            try:
                return pq.read_table(path, columns=[name]).column(0).unique().to_pylist()
            except (pa.ArrowException, KeyError, OSError, ValueError):
                return None
        # a string column's statistics read as str; as bytes where a reader gives the raw value
        values += [v.decode() if isinstance(v, bytes) else v for v in (stats.min, stats.max)]
    return values


def _config_hashes(path: Path, meta: pq.FileMetaData) -> set:
    """The ``config_hash`` values of a shard's rows (:func:`_column_bounds`); empty for a shard
    without the column (none is written so)."""
    return set(_column_bounds(path, meta, "config_hash") or ())


def _unused(path: Path) -> Path:
    """``path``, with an "x" appended while a file of that name exists: two copies set aside
    within the second their names are stamped with (a third in one second had replaced the
    second's damaged shard)."""
    while path.exists():
        path = path.with_name(path.name + "x")
    return path


def move_aside(out: Path, path: Path) -> Path:
    """Move a damaged shard file (and its record) to ``OUT/damaged/``; returns where it went."""
    out = Path(out)
    dest = out / DAMAGED_DIR / path.relative_to(out / SHARDS_DIR)
    if dest.exists():
        dest = _unused(dest.with_name(f"{dest.name}.{time.strftime('%Y%m%dT%H%M%S')}"))
    make_folder(dest.parent)
    try:
        os.replace(path, dest)
        record = checksum_path(path)
        if record.exists():
            os.replace(record, checksum_path(dest))
    except FileNotFoundError:
        pass  # moved by another reader meanwhile
    except OSError as err:
        raise _os_error(dest, err) from None
    return dest


def _warn(message: str) -> None:
    warnings.warn(message, StoreWarning, stacklevel=3)


def verified_shards(out: Path, shards: Iterable[Shard], *, report: Callable[[str], None] = _warn,
                    config_hash: str | None = None) -> dict[Shard, str]:
    """The finished shards among ``shards`` that verify (:func:`check_shard`, with the config
    hash a sweep folder's manifest records): shard -> sha256. Each damaged one is reported by
    name and moved aside (where the folder can be written; else only reported)."""
    out = Path(out)
    finished = {}
    for shard in shards:
        path = shard_path(out, shard)
        if not path.exists():
            continue
        try:
            finished[shard] = check_shard(path, config_hash, shard)
        except DamagedShard as err:
            try:
                where = f"moved to {move_aside(out, path)}"
            except StorageError as moving:
                where = f"left in place ({moving})"
            report(f"damaged shard {shard.key}: {err}; {where}; a sweep recomputes it")
    return finished


# ---- manifest and completeness ----------------------------------------------------------------

#: What a manifest's config must hold for its shards to be planned (:func:`manifest_shards`).
MANIFEST_PLAN_KEYS = {"settings": list, "n": list, "reps": int, "rep_block": int}
#: Files a run that is not a sweep (a study, ``moe-theory reproduce`` of one) writes into its
#: folder without a manifest: a sweep must not write its own beside or over them.
OTHER_RUN_FILES = (RESULTS_CSV, RESULTS_CSV_GZ, RUN_FILE, f"{RATES_TABLE}.json")


def read_manifest(out: Path) -> dict | None:
    """A sweep folder's ``manifest.json``; None where there is none. One that is not a sweep's
    manifest (another JSON document) is refused, naming it, before anything reads or replaces
    it."""
    path = Path(out) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise ValueError(f"DIR: {path} is not valid JSON ({err})") from None
    config = manifest.get("config") if isinstance(manifest, dict) else None
    if not isinstance(config, dict):
        raise ValueError(f"DIR: {path} is not a sweep manifest (no 'config' object)")
    wrong = [key for key, kind in MANIFEST_PLAN_KEYS.items()
             if isinstance(config.get(key), bool) or not isinstance(config.get(key), kind)]
    # what planning its shards reads, element by element: n = ["abc"] was a format error,
    # rep_block = 0 range()'s, neither naming the manifest
    if not wrong:
        wrong = [key for key, ok in (
            ("settings", all(isinstance(s, str) and s for s in config["settings"])),
            ("n", all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                      for v in config["n"])),
            ("reps", config["reps"] > 0), ("rep_block", config["rep_block"] > 0)) if not ok]
    if wrong:
        raise ValueError(f"DIR: {path} is not a sweep manifest (its config lacks a valid "
                         f"{', '.join(wrong)})")
    return manifest


def read_manifest_config(folder: Path) -> SweepConfig:
    """The config a sweep folder was run with (its ``manifest.json``), presented as its named
    config is now (:func:`moe_theory.config.presented`): every command that draws or tables a
    folder (reproduce, check, plot, rates, report) marks the same curves as plotted."""
    if Path(folder).exists() and not Path(folder).is_dir():
        raise ValueError(f"DIR: {folder} is a file, not a sweep folder")  # not "Not a directory"
    manifest = read_manifest(folder)
    if manifest is None:
        raise ValueError(f"DIR: {folder} has no manifest.json (not a sweep folder)")
    return presented(parse_config(manifest["config"], source=str(folder / MANIFEST_FILE),
                                  written=True))


def refuse_sweep_folder(folder: Path, field: str = "out") -> None:
    """A run that is not a sweep writes its own results table and ``run.json``: into a sweep's
    folder (it has a manifest) they would replace the sweep's."""
    if (Path(folder) / MANIFEST_FILE).exists():
        raise ValueError(f"{field}: {folder} is a sweep's folder (it holds manifest.json); this "
                         "run writes its own results there: use another --out")


#: What a run writes into its folder (beside its figure, named after its config): what a
#: ``--force`` over another run's folder sets aside (:func:`set_aside`).
RUN_OUTPUTS = (SHARDS_DIR, RESULTS_PARQUET, RESULTS_CSV, RESULTS_CSV_GZ, FITS_FILE, RUN_FILE,
               *table_files(RATES_TABLE), CHECK_FILE, CHECK_TABLE, REFIT_DIR, REFERENCE_DIR,
               REPORT_MD, REPORT_HTML, *table_files(PREFLIGHT_TABLE), MANIFEST_FILE)


def set_aside(out: Path, figure_name: str | None = None,
              names: Sequence[str] = RUN_OUTPUTS) -> Path | None:
    """Move outputs that no longer describe ``out``'s run (``names``, by default another run's
    :data:`RUN_OUTPUTS`, and its figure ``<figure_name>.png``/``.pdf``) into
    ``out/replaced-<time>/``, whence nothing reads them: a ``--force`` that starts over keeps
    them (the user may have wanted them after all) rather than deleting them, and leaves no
    table or figure of the old run beside the new one's (an interrupted new run would otherwise
    show the old run's figure as its own). Returns the folder, or None where there was nothing
    to move. Other files (a study's sub-folders) stay."""
    out = Path(out)
    names = list(names)
    if figure_name:
        names += [f"{figure_name}.png", f"{figure_name}.pdf"]
    present = [name for name in names if (out / name).exists()]
    if not present:
        return None
    dest = _unused(out / f"replaced-{time.strftime('%Y%m%dT%H%M%S')}")
    make_folder(dest)
    for name in present:
        try:
            os.replace(out / name, dest / name)
        except OSError as err:
            raise _os_error(dest / name, err) from None
    return dest


def write_manifest(out: Path, config: SweepConfig, *, force: bool = False,
                   log: Callable[[str], None] | None = None) -> Path | None:
    """Record the config; refuse to mix shards of a different config unless ``force``, which
    sets the other run's outputs aside (:func:`set_aside`; returns where they went and says so
    to ``log``, default standard error)."""
    out = Path(out)
    make_folder(out)
    with manifest_update(out):
        replaced = _write_manifest(out, config, force)
    if replaced is not None:
        (log or log_stderr)(f"--force: {out} held another run's outputs; moved to "
                               f"{replaced.name}/ (nothing reads them there)")
    return replaced


def _write_manifest(out: Path, config: SweepConfig, force: bool) -> Path | None:
    """:func:`write_manifest`'s update, under the manifest's lock: where the other run's outputs
    went, or None."""
    old = read_manifest(out)
    others = [name for name in OTHER_RUN_FILES if (out / name).exists()]
    replaced = None
    if old is None and others and not force:
        raise ValueError(f"out: {out} holds another run's results ({', '.join(others)}) and no "
                         "sweep manifest; use another --out or --force to write over them")
    if old is None and others:
        replaced = set_aside(out)
    if old is not None and old.get("config_hash") != config.hash:
        if not force:
            raise ValueError(
                f"out: {out} holds results of another config (hash {old.get('config_hash')}, "
                f"this one {config.hash}); use another --out or --force to start over")
        name = (old.get("config") or {}).get("name")
        # a figure named by a plain file name only: a manifest's name is not trusted with a path
        plain = isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name
        replaced = set_aside(out, name if plain else None)
    # the thread count changes a CPU's rounding: a resumed sweep compares it (moe_theory.sweep)
    manifest = {"config_hash": config.hash, "config": config.to_dict(), "torch": torch.__version__,
                "cpu_threads": torch.get_num_threads()}
    if old is not None and old.get("config_hash") == config.hash:
        # the references the shards were measured against (and their designs), and the rivals
        # their certificates start from, and the folder they were adopted from, outlive a
        # resumption
        for key in ("references", "reference_design_sizes", "rival_references",
                    "references_from"):
            if key in old:
                manifest[key] = old[key]
        if any((out / SHARDS_DIR).rglob("*.parquet")):
            # the shards on disk were computed under the first record: a resumption that
            # rewrote it made the next one compare its threads with its own (no warning), and
            # the record no longer described the shards
            for key in ("torch", "cpu_threads"):
                if key in old:
                    manifest[key] = old[key]
    _write_manifest_dict(out, manifest)
    return replaced


_held: dict[Path, threading.Lock] = {}  # a lock file's lock among this process's threads
_held_lock = threading.Lock()


#: errno values of a file system that takes no flock (some network and FUSE file systems)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF}


@contextlib.contextmanager
def exclusive(lock: Path, target: Path) -> Iterator[None]:
    """Held while one writer at a time works on ``target`` (a folder's manifest, a G_bar cache
    entry): a lock among this process's threads, then an exclusive ``flock`` on the file
    ``lock`` among processes (released by the kernel if its holder dies, so a killed worker
    blocks no one). The holder removes the file as it leaves, so a finished folder keeps none;
    a waiter that then holds a file no longer under that name takes the one there now. On a file
    system that takes no locks the threads of this process still take turns, with a
    :class:`StoreWarning`. A lock file that cannot be opened raises :class:`StorageError`
    naming ``target``."""
    with _held_lock:
        threads = _held.setdefault(lock.resolve(), threading.Lock())
    with threads:
        fd = None if fcntl is None else _hold(lock, target)
        try:
            yield
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):
                    lock.unlink()  # still holding it: whoever waits on this file looks again
                os.close(fd)


@contextlib.contextmanager
def manifest_update(out: Path) -> Iterator[None]:
    """Held around a read-modify-write of ``out``'s manifest (:func:`exclusive` on
    :data:`~moe_theory.layout.MANIFEST_LOCK`): the writers that update it at the same time
    (sweeps sharing a folder, a certify beside a sweep) take turns, so that none writes a
    manifest read before another's update and drops that update (a reference, a rival).
    Readers need no lock: the manifest is replaced whole (:func:`atomic_write`)."""
    out = Path(out)
    with exclusive(out / MANIFEST_LOCK, out / MANIFEST_FILE):
        yield


@contextlib.contextmanager
def _manifest_to_update(out: Path, what: str) -> Iterator[dict]:
    """``out``'s manifest, to change in place and written back whole, under
    :func:`manifest_update`; ValueError where the folder has none to record ``what`` in."""
    out = Path(out)
    with manifest_update(out):
        manifest = read_manifest(out)
        if manifest is None:
            raise ValueError(f"out: {out} has no manifest.json to record {what} in")
        yield manifest
        _write_manifest_dict(out, manifest)


def _hold(lock: Path, target: Path) -> int | None:
    """The descriptor of the file ``lock``, exclusively locked and still under that name; None
    on a file system that takes no locks (with a :class:`StoreWarning`)."""
    while True:
        fd = _open_lock(lock, target)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            os.close(fd)
            if err.errno not in _NO_LOCKS:
                raise _os_error(lock, err) from None
            with contextlib.suppress(OSError):
                lock.unlink()
            warnings.warn(f"{lock}: this file system takes no locks ({os.strerror(err.errno)}): "
                          f"processes writing {target.name} at once may drop one another's "
                          "part", StoreWarning, stacklevel=5)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            held = os.fstat(fd)
            try:
                named = os.stat(lock)
            except FileNotFoundError:
                named = None
        except BaseException:
            os.close(fd)
            raise
        if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # its holder removed it while this process waited: the next one


def _open_lock(lock: Path, target: Path) -> int:
    # read-write: on NFS, Linux emulates flock by a whole-file POSIX lock, which an exclusive
    # lock takes only on a descriptor open for writing (EBADF otherwise). Writable by the
    # folder's other users as the umask allows, and where the file is another user's (left by
    # a killed process, or held now) read-only, which a local flock takes
    try:
        return os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _os_error(target, err) from None
    try:
        return os.open(lock, os.O_RDONLY)
    except OSError as err:
        raise _os_error(target, err) from None


def _write_manifest_dict(out: Path, manifest: dict) -> None:
    atomic_write(out / MANIFEST_FILE, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))


def folder_references(folder: Path, config: SweepConfig) -> dict[tuple[str, str], MixingMeasure]:
    """The measure each (setting, fit gate) of the folder is measured against: G*, or the G_bar
    its manifest records."""
    recorded = (read_manifest(folder) or {}).get("references", {})
    refs = {}
    for setting in config.setting_objects():
        for gate in config.gates_for(setting):
            key = f"{setting.name}/{gate}"
            if setting.reference_kind(gate) == "G*":
                refs[setting.name, gate] = setting.truth()
            elif key in recorded:
                refs[setting.name, gate] = MixingMeasure.from_json(recorded[key])
            else:
                raise ValueError(f"DIR: {folder / 'manifest.json'} records no G_bar for {key}, "
                                 "the reference its fits were measured against")
    return refs


def record_references(out: Path, references: dict[str, str],
                      design_sizes: dict[str, int] | None = None, *,
                      adopted_from: str | Path | None = None,
                      seen: dict[str, str] | None = None,
                      clear: Callable[[], None] | None = None,
                      refused: Callable[[list[str]], str] | None = None) -> None:
    """Record in the manifest the references (``"<setting>/<gate>"`` -> the measure's JSON) that
    the folder's shards are measured against (checked by ``moe_theory.sweep`` on resumption),
    and the design size each G_bar was fitted on (``reference_design_sizes``: its certificate
    needs it, moe_theory.certificates.certify_references). ``adopted_from``: the folder they were
    adopted from (``references_from``; moe_theory.sweep.adopt_references), so that a sweep reads
    them instead of fitting them, now and when it resumes. ``seen``: the records the caller
    checked its references against (``moe_theory.sweep.check_references``); another writer's
    record of one of these keys made since (a sweep started beside this one, on another device
    type, say) is not overwritten: :class:`ValueError` names it (``refused(keys)``: the
    caller's message, else a check's: a run again checks against that record). ``clear``:
    called under the manifest's lock once the record is sure to be made, before it is written
    (what ``--force`` removes with the records replaced), so that a refused record removes
    nothing."""
    with _manifest_to_update(out, "references") as manifest:
        if seen is not None:
            now = manifest.get("references", {})
            # a record made meanwhile of the very reference this caller checked is no clash
            # (two sweeps of one config on one device type compute the same G_bar)
            moved = sorted(key for key in references
                           if now.get(key) not in (seen.get(key), references[key]))
            if moved:
                raise ValueError(refused(moved) if refused is not None else
                    f"reference: another sweep recorded the G_bar of {', '.join(moved)} in {out} "
                    "while this one checked its own: run it again to check against that record")
        if clear is not None:
            clear()
        manifest["references"] = {**manifest.get("references", {}), **references}
        if design_sizes:
            manifest["reference_design_sizes"] = {**manifest.get("reference_design_sizes", {}),
                                                  **design_sizes}
        if adopted_from is not None:
            manifest["references_from"] = str(adopted_from)


def record_rivals(out: Path, rivals: dict[str, dict[str, str]]) -> None:
    """Record in the manifest rival population minimisers of the folder's G_bar references
    (``"<setting>/<gate>"`` -> {where found: the measure's JSON}), kept for every later
    certificate of the folder (moe_theory.certificates.certify_references)."""
    with _manifest_to_update(out, "rivals") as manifest:
        merged = {key: dict(value) for key, value in manifest.get("rival_references", {}).items()}
        for key, found in rivals.items():
            merged.setdefault(key, {}).update(found)
        manifest["rival_references"] = merged


def setting_shards(out: Path, setting: str) -> list[Path]:
    """The stored shard files of one setting (finished or not yet verified)."""
    return sorted((Path(out) / SHARDS_DIR / setting).glob("*.parquet"))


def discard_setting(out: Path, setting: str) -> int:
    """Delete one setting's shards and their checksum records (``--force`` after its reference
    changed); returns how many shards went."""
    shards = setting_shards(out, setting)
    for path in shards:
        checksum_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    return len(shards)


def manifest_shards(manifest: dict) -> list[Shard]:
    """The shards the manifest's config plans (read from its raw keys: no setting lookup, so a
    folder of settings registered at run time still reads)."""
    config = manifest["config"]
    return plan_grid(config["settings"], config["n"], config["reps"], config["rep_block"])


@dataclass(frozen=True)
class Completeness:
    """Which of a sweep's planned shards are finished (and verified)."""

    expected: tuple[Shard, ...]
    finished: tuple[Shard, ...]

    @property
    def missing(self) -> tuple[Shard, ...]:
        done = set(self.finished)
        return tuple(s for s in self.expected if s not in done)

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        """``"k of K shards"``, and when some miss, which settings and sample sizes."""
        text = f"{len(self.finished)} of {len(self.expected)} shards"
        missing = self.missing
        if missing:
            settings = list(dict.fromkeys(s.setting for s in missing))
            ns = sorted({s.n for s in missing})
            text += (f"; missing: settings {', '.join(settings)}, n {', '.join(map(str, ns))} "
                     f"({len(missing)} shards)")
        return text


def completeness(out: str | Path, *, report: Callable[[str], None] = _warn) -> Completeness:
    """How complete the sweep in ``out`` is: planned from its manifest, finished shards verified
    (a damaged one is reported and moved aside: it counts as missing)."""
    out = Path(out)
    manifest = read_manifest(out)
    if manifest is None:
        raise ValueError(f"DIR: {out} has no manifest.json (not a sweep folder)")
    expected = manifest_shards(manifest)
    finished = verified_shards(out, expected, report=report,
                               config_hash=manifest.get("config_hash"))
    return Completeness(tuple(expected), tuple(s for s in expected if s in finished))


# ---- the merged table -------------------------------------------------------------------------

def shards_on_disk(out: Path) -> list[Shard]:
    """Shards found under ``OUT/shards`` (for a folder without manifest)."""
    shards = []
    for path in sorted((out / SHARDS_DIR).rglob("*.parquet")):
        name = path.stem  # n000001000_reps00000-00004
        try:
            n_part, reps_part = name.split("_reps")
            start, stop = reps_part.split("-")
            shards.append(Shard(path.parent.name, int(n_part[1:]), int(start), int(stop)))
        except ValueError:
            continue
    return shards


def _table(out: Path, finished: dict[Shard, str]) -> pd.DataFrame:
    df = pd.concat([pd.read_parquet(shard_path(out, s)) for s in finished], ignore_index=True)
    return df.sort_values(SORT_KEYS, kind="stable").reset_index(drop=True)


def _recorded_shards(path: Path) -> dict | None:
    """The shard checksums a merged table records, or None (no table, or one without them)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (FileNotFoundError, pa.ArrowException, OSError):
        return None
    raw = meta.get(SHARDS_METADATA_KEY)
    return None if raw is None else json.loads(raw)


def _write_merged(out: Path, df: pd.DataFrame, finished: dict[Shard, str]) -> None:
    """The merged table and its copies. ``results.parquet`` is written last: the shard
    checksums it records are what makes a later read trust every merged file, so a process
    killed between the files leaves a record that no longer matches, and the next read merges
    and writes them all again (written first, it had left a stale CSV and fits file that every
    read then trusted)."""
    if len(df) <= CSV_MAX_ROWS:
        write_results_csv(out, df)
    else:
        # no CSV copy of a table this large: one left by an earlier, smaller merge is stale
        for path in (out / RESULTS_CSV, out / RESULTS_CSV_GZ):
            path.unlink(missing_ok=True)
    fits = fit_table(df)
    if len(fits):
        write_fits(out, fits)
    table = pa.Table.from_pandas(df, preserve_index=False)
    record = json.dumps({s.key: sha for s, sha in finished.items()}, sort_keys=True).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           SHARDS_METADATA_KEY: record})
    atomic_write(out / RESULTS_PARQUET, lambda tmp: pq.write_table(table, tmp))


def fit_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per fit of a tidy table (:data:`FIT_KEYS` and :data:`FIT_MEASURE`), sorted; empty
    for a table written before fits were stored."""
    if FIT_MEASURE not in df.columns:
        return pd.DataFrame(columns=[*FIT_KEYS, FIT_MEASURE])
    fits = df.loc[df[FIT_MEASURE].notna(), [*FIT_KEYS, FIT_MEASURE]]
    fits = fits.drop_duplicates(FIT_KEYS).sort_values(FIT_KEYS, kind="stable")
    return fits.reset_index(drop=True)


#: pandas before 3.1 parses floats with a fast converter that is not correctly rounded (3.1
#: rounds correctly and deprecates the choice): there the round-trip one is asked for.
_EXACT_FLOATS = ({} if tuple(map(int, re.match(r"(\d+)\.(\d+)", pd.__version__).groups()))
                 >= (3, 1) else {"float_precision": "round_trip"})


#: Columns of text that can look like numbers: a config hash is 12 hex digits, and one such as
#: ``441737e34545`` reads as a float (infinite), or one of digits alone as an integer; read as
#: numbers, a certificate's hash no longer matched its table's and counted as not run, and a
#: table written back held ``inf`` for its hash.
TEXT_COLUMNS = ("config_hash", "code")


def read_csv(path: str | Path, **kwargs) -> pd.DataFrame:
    """A table the toolkit wrote as CSV (``.csv`` or ``.csv.gz``), every value the one it held:
    every float the number, whatever the pandas version (:data:`_EXACT_FLOATS`: with the
    default converter of pandas 3.0.6, ``moe-theory compare`` read a committed SSR
    0.020017540400954822 as 0.0200175404009548 on the GPU machine, 2026-12-06, and called the
    same fits different), and :data:`TEXT_COLUMNS` as text."""
    dtype = {column: str for column in TEXT_COLUMNS} | kwargs.pop("dtype", {})
    return pd.read_csv(path, **_EXACT_FLOATS, dtype=dtype, **kwargs)


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    """``table`` as CSV at ``path``; gzip where the name ends in ``.gz``, with neither time nor
    file name in its header, so that the same table gives the same bytes."""
    if path.name.endswith(".gz"):
        def write(tmp: str) -> None:
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                        mtime=0) as gz:
                gz.write(table.to_csv(index=False).encode())
    else:
        def write(tmp: str) -> None:
            table.to_csv(tmp, index=False)
    atomic_write(path, write)


def results_csv(out: str | Path) -> Path:
    """The CSV file of the tidy table in folder ``out``: :data:`RESULTS_CSV_GZ` where the folder
    keeps that one, else :data:`RESULTS_CSV` (whether or not it exists yet)."""
    out = Path(out)
    return out / RESULTS_CSV_GZ if (out / RESULTS_CSV_GZ).exists() else out / RESULTS_CSV


def write_results_csv(out: str | Path, table: pd.DataFrame) -> None:
    """Write the tidy table's CSV copy into ``out``, in the form the folder keeps
    (:func:`results_csv`), without the estimates' column (they go to :data:`FITS_FILE`)."""
    _write_csv(results_csv(out), table.drop(columns=FIT_MEASURE, errors="ignore"))


def write_fits(out: Path, fits: pd.DataFrame) -> None:
    """:data:`FITS_FILE`, gzip with neither time nor file name in its header, so that the same
    fits give the same bytes."""
    _write_csv(Path(out) / FITS_FILE, fits)


def load_fits(out: str | Path, *, report: Callable[[str], None] = _warn) -> pd.DataFrame:
    """The estimates of a results folder, one row per fit (:data:`FIT_KEYS`, and
    :data:`FIT_MEASURE`: the measure's JSON, ``MixingMeasure.from_json`` reads it): from its
    shards or ``results.parquet`` where they hold them, else from :data:`FITS_FILE`."""
    out = Path(out)
    if (out / SHARDS_DIR).is_dir() or (out / RESULTS_PARQUET).exists():
        fits = fit_table(load_results(out, report=report))
        if len(fits):
            return fits
    if (out / FITS_FILE).exists():
        return read_csv(out / FITS_FILE)
    raise ValueError(f"DIR: {out} holds no fitted measures (its sweep ran before the estimates "
                     "were stored; re-running it stores them)")


def _finished(out: Path, report: Callable[[str], None]) -> tuple[dict[Shard, str], Completeness | None]:
    manifest = read_manifest(out)
    expected = manifest_shards(manifest) if manifest is not None else shards_on_disk(out)
    finished = verified_shards(out, expected, report=report,
                               config_hash=None if manifest is None else manifest.get("config_hash"))
    state = None if manifest is None else Completeness(
        tuple(expected), tuple(s for s in expected if s in finished))
    if not finished:
        raise ValueError(f"DIR: no finished shard under {out / 'shards'}")
    return finished, state


def merge(out: str | Path, *, report: Callable[[str], None] = _warn,
          keep: bool = True) -> pd.DataFrame:
    """Rebuild the tidy table from the verified shard files (sorted: independent of finishing
    order) and write ``results.parquet`` (recording the shards' checksums) and ``results.csv``.
    ``report`` receives a line when the sweep is incomplete or a shard was damaged. ``keep``:
    keep a merged table that holds planned shards no longer finished (:func:`_keeps_more`);
    False where the shards' rows were rewritten and the table must follow them (remeasure)."""
    out = Path(out)
    finished, state = _finished(out, report)
    df = _table(out, finished)
    if not (keep and _keeps_more(out, _recorded_shards(out / RESULTS_PARQUET), finished, state,
                                 report)):
        _write_merged(out, df, finished)
    if state is not None and not state.complete:
        report(f"incomplete sweep in {out}: {state.summary()}; rerun the sweep to finish it")
    return df


def load_results(out: str | Path, *, report: Callable[[str], None] = _warn,
                 complete: bool = False) -> pd.DataFrame:
    """The tidy table of a results folder (or of a ``results.csv`` or ``results.csv.gz`` file).

    With shards: from the shards, verified, through ``results.parquet`` only while the
    checksums it records are those of the shards on disk (else merged anew, and rewritten where
    the folder can be written). Warns (:class:`StoreWarning`, or through ``report``) when the
    sweep is incomplete or a shard was damaged; ``complete``: an incomplete sweep is a
    ValueError instead (a check of its first shards alone). Without shards, ``results.parquet`` as it is,
    else ``results.csv`` or ``results.csv.gz`` (a committed figure folder keeps only that:
    paper_figures/README.md).
    """
    out = Path(out)
    if out.is_file() and out.name.endswith((".csv", ".csv.gz")):
        return read_csv(out)
    if not (out / SHARDS_DIR).is_dir():
        if (out / RESULTS_PARQUET).exists():
            return pd.read_parquet(out / RESULTS_PARQUET)
        csv = results_csv(out)
        if csv.exists():
            return read_csv(csv)
        raise ValueError(f"DIR: {out} has no results (no results.parquet, shards/, "
                         "results.csv or results.csv.gz)")
    finished, state = _finished(out, report)
    if state is not None and not state.complete:
        if complete:
            raise ValueError(f"DIR: {out} is an unfinished sweep ({state.summary()}); finish it "
                             "(moe-theory sweep) first")
        report(f"incomplete sweep in {out}: {state.summary()}; rerun the sweep to finish it")
    recorded = _recorded_shards(out / RESULTS_PARQUET)
    if recorded == {s.key: sha for s, sha in finished.items()}:
        return pd.read_parquet(out / RESULTS_PARQUET)
    df = _table(out, finished)
    if not _keeps_more(out, recorded, finished, state, report):
        with contextlib.suppress(StorageError):  # reading needs no write access
            _write_merged(out, df, finished)
    return df


def _keeps_more(out: Path, recorded: dict | None, finished: dict[Shard, str],
                state: Completeness | None, report: Callable[[str], None]) -> bool:
    """Whether the merged table on disk (its ``recorded`` shard checksums) holds shards of the
    sweep's plan (``state``, from its manifest) that ``finished`` lacks (damaged and set aside,
    or removed): then it is kept, not replaced by a table of fewer rows (which lost the rows of a
    shard damaged after its merge, though the table held them whole); the merge after the sweep
    that recomputes them writes it anew. A shard outside the plan, or a folder without a plan,
    keeps nothing: no sweep would ever finish it. Said through ``report``."""
    if state is None or not recorded:
        return False
    planned = {s.key for s in state.expected}
    lost = sorted((set(recorded) & planned) - {s.key for s in finished})
    if lost:
        report(f"{out / RESULTS_PARQUET} kept as it is: it holds {len(lost)} shard(s) no longer "
               f"among the finished ones ({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''}); "
               "the table read here lacks them until a sweep recomputes them")
    return bool(lost)
