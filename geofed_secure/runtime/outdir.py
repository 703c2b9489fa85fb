"""Output folders a run owns: created with typed errors, locked while a run writes them, never overwritten unasked.

:func:`output_folder` creates the folder (a path that is a file, or that cannot be created or written, is an
:class:`~geofed_secure.errors.OutputFolderError`) and holds an exclusive lock on ``<folder>/.lock`` until the block
ends; a second process asking for the same folder gets :class:`~geofed_secure.errors.OutputFolderLocked`, which names
the holder (pid, host, command, start time, written into the lock file).

Why ``flock`` on a lock file: the kernel drops the lock when its holder's file descriptor closes, so a process that
dies in any way (``kill -9``, power loss of a process on this host, a crash) leaves no lock behind: the ``.lock`` file
stays, but the next run locks it at once. There is nothing to judge stale (no pid that may have been reused, no
timeout to guess), and two processes can never both believe they hold the lock. The file itself is never deleted
(deleting it would let a third process lock a new file while the second still holds the old one). Limits: advisory
(only geofed honours it), POSIX only (elsewhere a warning says the folder is not locked), and on network file systems it is as good as their lock support (Linux NFS maps
it to NFS locks). Within one process the lock nests: the CLI takes it before loading data, the simulator again.

:func:`claim_for_new_run` is the other half: a new run refuses a folder that already holds a run's files unless
``overwrite`` is given, which removes those files (and only those; anything else in the folder stays).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from geofed_secure.errors import CheckpointError, OutputFolderError, OutputFolderLocked

try:
    import fcntl
except ImportError:  # not POSIX (Windows): folders are not locked, and the run says so
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# What ``geofed run`` writes into its folder (the simulator's outputs); a folder holding any of them holds a run.
RUN_ENTRIES = ("config.json", "summary.json", "alignment.png", "accuracy.png", "transcript", "checkpoints", "final", "nodes")

_held: dict[str, int] = {}  # real path -> the lock file's descriptor, for the folders this process holds


def _create(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"output folder {folder} is not a folder (a file of that name exists)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None


def _holder(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown process"


@contextmanager
def output_folder(folder: str | os.PathLike, *, owner: str) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock for the block (see the module docstring); ``owner`` names the
    command in the lock file, for the message another process gets."""
    folder = Path(folder)
    _create(folder)
    key = os.path.realpath(folder)
    if key in _held:  # nested: the outermost block holds the lock and releases it
        yield folder
        return
    lock_path = folder / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputFolderError(f"cannot write in output folder {folder}: {exc.strerror or exc}") from None
    try:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                log.warning("output folder %s is not locked: this system has no fcntl.flock", folder)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputFolderLocked(f"output folder {folder} is being written by another process ({_holder(lock_path)}); "
                                         "wait for it to finish, or choose another --out") from None
            raise OutputFolderError(f"cannot lock output folder {folder}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, {owner}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        _held[key] = fd
        try:
            yield folder
        finally:
            del _held[key]
            os.ftruncate(fd, 0)  # released: the file no longer names a holder
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def run_entries(folder: str | os.PathLike, entries: Sequence[str] = RUN_ENTRIES) -> list[str]:
    """The entries of ``entries`` present in ``folder``."""
    folder = Path(folder)
    return [name for name in entries if (folder / name).exists() or (folder / name).is_symlink()]


def claim_for_new_run(folder: str | os.PathLike, *, overwrite: bool, entries: Sequence[str] = RUN_ENTRIES,
                      resume_hint: bool = True) -> None:
    """Make ``folder`` ready for a NEW run: refuse it when it holds any of ``entries`` (a run, finished or not),
    unless ``overwrite``, which removes exactly those entries."""
    folder = Path(folder)
    present = run_entries(folder, entries)
    if not present:
        return
    if not overwrite:
        hint = f"continue it with --resume {folder}, replace it with --overwrite" if resume_hint else "replace it with --overwrite"
        raise OutputFolderError(f"{folder} already holds a run ({', '.join(present)}); {hint}, or choose another --out")
    log.warning("replacing the run in %s (--overwrite): removing %s", folder, ", ".join(present))
    for name in present:
        path = folder / name
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            raise OutputFolderError(f"cannot remove {path} (--overwrite): {exc.strerror or exc}") from None


def resume_comparable(config: Any) -> Any:
    """A configuration (``RunConfig.to_dict()``) without what may change on resume: the number of rounds, and where
    the feature cache lives (features are keyed by encoder and data digest, so the cache's location changes no result)."""
    plain = json.loads(json.dumps(config))
    for section, key in (("federation", "rounds"), ("data", "cache_dir")):
        if isinstance(plain, dict) and isinstance(plain.get(section), dict):
            plain[section].pop(key, None)
    return plain


def check_resumable(folder: Path, config: dict[str, Any]) -> None:
    """Refuse to resume the run in ``folder`` with another configuration (CheckpointError naming what is wrong)."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; cannot check that the resumed run has the same configuration")
    try:
        saved = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}); cannot check that the resumed run "
                              "has the same configuration") from None
    if resume_comparable(saved) != resume_comparable(config):
        raise CheckpointError(f"{folder} was started with a different configuration (only federation.rounds and "
                              "data.cache_dir may change on resume)")
