"""One run at a time per store or output directory: an exclusive lock held from the
first look at ``--out`` to the final record.

Two independent ``strata extract`` runs on one new ``--out`` would otherwise both find
it absent and both create it; the later creation clears the earlier one's arrays while
it writes, and with other parameters (say ``--word-vector first`` against ``last``,
same shapes) the earlier run goes on writing its units into the later run's store,
which then verifies.  The processes of one ``accelerate launch`` are one run: only
its main process takes the lock.  ``strata probe`` and ``strata neurons`` lock their
``--out`` directory the same way (two runs there remove and write the same weights
files and results.json, so the last file written may be the other run's).

The lock is ``flock`` on a file beside the store, ``.NAME.lock``: not inside it, because
creating a store replaces its directory (zarr's ``mode="w"``), which would drop a lock
held on anything in it, and because plain zarr readers and ``strata verify`` should
see only the store's own files.  Written by hand rather than with ``filelock``, which
leaves its lock file behind: this one removes the file on release, and a run that
locked a file removed under it (the inode check) takes the new one instead; a run
removes the file only while it is still the one it locked.  Another user's lock file
is locked through a read-only descriptor (``flock`` needs no write access).  Where no
lock can be had (a parent directory this user cannot write, a file system without
``flock``) the run goes on unlocked and says so on stderr; on a system without
``fcntl`` (not POSIX) runs are never locked.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import sys
import time
from pathlib import Path

from store.errors import StrataError

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock
    fcntl = None

NAME_MAX = 255


def lock_path(store: Path) -> Path:
    store = store.resolve()  # every spelling of one path (relative, through a symlink) takes one lock
    name = f".{store.name}.lock"
    if len(os.fsencode(name)) > NAME_MAX:  # a store name near the limit still gets a lock of its own
        digest = hashlib.sha256(os.fsencode(store.name)).hexdigest()[:16]
        name = f".{store.name[:200]}-{digest}.lock"
    return store.parent / name


@contextlib.contextmanager
def exclusive_writer(store: Path, command: str, option: str = "--out"):
    """Hold ``store``'s lock for the ``with`` block (``command`` names this run in the
    lock file, for the message another run gets); another holder is a one-line error."""
    path = lock_path(store)
    made = _missing_parents(path)
    fd = _acquire(path, store, command, option) if fcntl is not None else None
    try:
        yield
    finally:
        try:
            if fd is not None:
                with contextlib.suppress(OSError):
                    if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                        path.unlink()  # ours and still held: a run that opened it meanwhile sees it gone
        finally:
            if fd is not None:
                os.close(fd)
            for folder in made:  # directories made for the lock alone, left empty by a failed run
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _missing_parents(path: Path) -> list[Path]:
    """The lock's parent directories that do not exist yet, deepest first."""
    missing = []
    for folder in path.parents:
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _unlocked(command: str, path: Path, why: str) -> None:
    print(f"{command}: warning: going on without a lock ({path}: {why})", file=sys.stderr)
    return None


def _acquire(path: Path, store: Path, command: str, option: str) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # the command's own check of --out says why, in its words
    while True:
        writable = True
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except PermissionError:  # another user's lock file: flock works on a read-only descriptor
            try:
                fd, writable = os.open(path, os.O_RDONLY | os.O_NOFOLLOW), False
            except OSError as e:
                return _unlocked(command, path, e.strerror)
        except OSError as e:
            if e.errno == errno.ELOOP:  # never write through a link someone left at the lock's path
                raise StrataError(f"{option}: {path} is a symbolic link, not strata's lock file; remove it") from None
            return _unlocked(command, path, e.strerror)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StrataError(f"{option}: {store} is being written by another run ({holder}, which holds {path}); "
                              "wait for it to finish, then rerun") from None
        except OSError as e:  # a file system without flock (ENOLCK, EOPNOTSUPP)
            os.close(fd)
            return _unlocked(command, path, e.strerror)
        try:
            if os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino:
                if writable:
                    with contextlib.suppress(OSError):  # the holder's name only informs; a full disk keeps the lock
                        os.ftruncate(fd, 0)
                        os.write(fd, f"{command}, pid {os.getpid()} on {socket.gethostname()}".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed this file as it let go: lock the new one


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it; a holder that has just locked may not
    have written yet, so a few short waits before giving up."""
    for _ in range(5):
        text = os.pread(fd, 300, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.02)
    return "another strata command"
