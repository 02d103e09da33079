"""One run at a time per store or output directory: an exclusive lock held from the
first look at ``--out`` to the final record.

Two independent ``strata extract`` runs on one new ``--out`` would otherwise both find
it absent and both create it; the later creation clears the earlier one's arrays while
it writes, and with other parameters (say ``--word-vector first`` against ``last``,
same shapes) the earlier run goes on writing its units into the later run's store,
which then verifies.  The processes of one ``accelerate launch`` are one run: only
its main process takes the lock.  ``strata probe`` and ``strata neurons`` lock their
``--out`` directory the same way (a second run there would remove the first's weights
under its results).

The lock is ``flock`` on a file beside the store, ``.NAME.lock``: not inside it, because
creating a store replaces its directory (zarr's ``mode="w"``), which would drop a lock
held on anything in it, and because plain zarr readers and ``strata verify`` should
see only the store's own files.  Written by hand rather than with ``filelock``, which
leaves its lock file behind: this one removes the file on release, and a run that
locked a file removed under it (the inode check) takes the new one instead.  Where
``fcntl`` or the lock file is unavailable (another OS, a read-only parent directory)
the run goes on unlocked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from store.errors import StrataError

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock
    fcntl = None


def lock_path(store: Path) -> Path:
    store = store.resolve()  # every spelling of one path (relative, through a symlink) takes one lock
    return store.parent / f".{store.name}.lock"


@contextlib.contextmanager
def exclusive_writer(store: Path, command: str, option: str = "--out"):
    """Hold ``store``'s lock for the ``with`` block (``command`` names this run in the
    lock file, for the message another run gets); another holder is a one-line error."""
    path = lock_path(store)
    fd = _acquire(path, store, command, option) if fcntl is not None else None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # while still held: a run that opened it meanwhile sees it gone
            os.close(fd)


def _acquire(path: Path, store: Path, command: str, option: str) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only or foreign parent directory: go on unlocked
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another strata command"
            os.close(fd)
            raise StrataError(f"{option}: {store} is being written by another run ({holder}, which holds {path}); "
                              "wait for it to finish, then rerun") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{command}, pid {os.getpid()}".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed this file as it let go: lock the new one
