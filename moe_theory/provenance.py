"""Where a result came from: code version, device and library versions (docs/design.md#provenance).

Every benchmark JSON and every ``reproduce`` run.json records :func:`provenance`, so that a
committed number can be traced to the commit and the machine kind that produced it. Nothing that
names the machine itself (host name, user, paths) is recorded.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

#: The checkout this package was imported from (when it is one): git runs there.
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    """Output of ``git args`` in the source root, or None where git or the checkout is missing."""
    try:
        done = subprocess.run(["git", "-C", str(_SOURCE_ROOT), *args], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_state() -> tuple[str | None, bool | None]:
    top = _git("rev-parse", "--show-toplevel")
    # an installed copy under some other repository's tree is not a checkout of this code
    if top is None or Path(top).resolve() != _SOURCE_ROOT:
        return None, None
    commit = _git("rev-parse", "HEAD")
    # tracked files only: untracked outputs (results folders, caches) do not change the code
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit, None if status is None else status != ""


#: The code a result depends on: the Python files of these packages, beside the source root.
SOURCE_PACKAGES = ("moe_theory", "kernels")


def _digest(files: list[tuple[str, bytes]]) -> str:
    """sha256 over (path, length, bytes) of each file, sorted by path: equal only for the same
    files with the same contents, wherever the tree lies."""
    h = hashlib.sha256()
    for path, data in sorted(files):
        name = path.encode()
        h.update(b"%d:%s:%d:" % (len(name), name, len(data)))
        h.update(data)
    return h.hexdigest()


@functools.cache
def source_hash(root: Path | None = None) -> str | None:
    """sha256 of the Python files of :data:`SOURCE_PACKAGES` under ``root`` (default: where this
    package was imported from), None where none is found. Unlike ``git_commit`` it describes the
    code that ran whatever git says: a copy of a working tree whose git metadata is older than
    its files, an installed wheel, uncommitted edits. Compare with :func:`source_hash_at`."""
    root = _SOURCE_ROOT if root is None else Path(root)
    files = [(p.relative_to(root).as_posix(), p.read_bytes())
             for package in SOURCE_PACKAGES for p in (root / package).rglob("*.py")
             if "__pycache__" not in p.parts]
    return _digest(files) if files else None


#: Hex digits of :func:`source_hash` a results row keeps (``code``): one in 16^12 that two
#: versions share them, and short enough to repeat on every row.
CODE_DIGITS = 12


def code_version() -> str | None:
    """The results rows' ``code``: the first :data:`CODE_DIGITS` hex digits of
    :func:`source_hash` of the code imported (hashed when this module is imported, below),
    None where it has none. A sweep resumed after the code changed holds rows of two versions;
    this is how they are told apart (docs/theory.md#results-table)."""
    digest = source_hash()
    return None if digest is None else digest[:CODE_DIGITS]


# Hashed now, as the package is imported (a few ms): hashed at a sweep's first shard, minutes
# later, it described files edited meanwhile, not the code that ran.
source_hash()


def source_hash_at(commit: str, root: Path | None = None) -> str | None:
    """:func:`source_hash` of the tree of ``commit`` in the git checkout at ``root`` (default:
    this package's), read from git's objects: does a result's ``source_sha256`` belong to that
    commit? None where git or the commit is missing."""
    root = _SOURCE_ROOT if root is None else Path(root)

    def git(*args: str, stdin: bytes | None = None) -> bytes | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], input=stdin,
                                  capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    # "<mode> blob <sha>\t<path>" per file, then every blob in one `cat-file --batch` call
    listing = git("ls-tree", "-r", "-z", commit, "--", *SOURCE_PACKAGES)
    if listing is None:
        return None
    entries = [(path.decode(), meta.split()[2].decode())
               for meta, path in (e.split(b"\t", 1) for e in listing.split(b"\0") if e)
               if path.endswith(b".py") and meta.split()[1] == b"blob"]
    if not entries:
        return None
    batch = git("cat-file", "--batch", stdin="".join(f"{sha}\n" for _, sha in entries).encode())
    if batch is None:
        return None
    files, at = [], 0
    for path, _ in entries:
        header_end = batch.index(b"\n", at)
        size = int(batch[at:header_end].split()[2])
        files.append((path, batch[header_end + 1:header_end + 1 + size]))
        at = header_end + 1 + size + 1  # the blob, then its newline
    return _digest(files)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {str(device)!r} but no CUDA device is visible")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _version(package: str) -> str | None:
    # metadata, not an import: importing triton is slow and fixes its interpreter mode
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(device: str | torch.device | None = None) -> dict:
    """The code version, device and library versions of a run, as JSON-ready values.

    Parameters
    ----------
    device : the device the run computed on: ``"cpu"``, ``"cuda"`` (the current CUDA device) or
        ``"cuda:N"``; default ``"cuda"`` where a GPU is visible, else ``"cpu"``.

    Returns
    -------
    dict
        ``git_commit`` (full sha, None outside a git checkout), ``git_dirty`` (tracked files
        modified; None outside a checkout), ``device`` (``"cuda:0"``, ``"cpu"``), ``device_name``
        (GPU name or CPU model), ``torch``, ``cuda`` (the CUDA version torch was built with, None
        for CPU builds), ``triton`` (None when not installed), ``python``, ``date`` (UTC, ISO 8601
        to the second), ``source_sha256`` (:func:`source_hash` of the code imported).
    """
    dev = _resolve_device(device)
    commit, dirty = _git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source_sha256": source_hash(),
    }
