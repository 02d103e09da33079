"""Writing result files so that a reader never sees half of one.

Every file is written to ``NAME.RANDOM.partial`` and renamed into place (atomic on one
file system), after an fsync.  Arrays go to ``.npz`` (NumPy's zip of ``.npy``
files: ``np.load(path)`` reads it with no pickle), everything else to JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np


def atomic_write(path: Path, write) -> None:
    # a name of its own per write: two runs writing one file (two compares into one
    # --out) would otherwise share NAME.partial, one truncating what the other renames
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if e.filename is None:  # a full disk's error names no file: the command's message should
            e.filename = str(path)
        raise


def remove_partial_files(out: Path, folders: tuple[str, ...]) -> None:
    """Temporary files a killed run left (a kill between open and rename) in ``out`` and
    the sub-folders the command writes, not below: an --out may hold other things (a
    store being extracted keeps its own ``.partial`` files).  Called by a run that holds
    ``out``'s lock, so no other run of the command is writing them."""
    for folder in (out, *(out / name for name in folders)):
        for partial in folder.glob("*.partial"):
            partial.unlink(missing_ok=True)


def write_json(path: Path, document) -> None:
    """``document`` as strict JSON: a non-finite float (CKA of a constant layer, 0/0) is
    written as null, since NaN and Infinity are not JSON and strict parsers reject them."""
    text = json.dumps(strict(document), indent=1, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


#: The key of a sealed document's own digest (:func:`sealed`).
SEAL = "sha256"


def _digest(document: dict) -> str:
    body = {k: v for k, v in document.items() if k != SEAL}
    return hashlib.sha256(json.dumps(strict(body), sort_keys=True, allow_nan=False).encode()).hexdigest()


def sealed(document: dict) -> dict:
    """``document`` with the sha256 of its canonical JSON: a resume file (a probe group, a
    neurons step) that was changed but still parses, one digit edited, is then told from
    the one its run wrote and is redone instead of trusted."""
    return {**document, SEAL: _digest(document)}


def unsealed(document) -> dict | None:
    """The document without its seal when the seal matches, else None (changed, or
    written before 2026-12-04 without one)."""
    if not isinstance(document, dict) or document.get(SEAL) != _digest(document):
        return None
    return {k: v for k, v in document.items() if k != SEAL}


def strict(value):
    """``value`` with every non-finite float replaced by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def write_npz(path: Path, arrays: dict) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def read_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def output_dir(text: str) -> Path:
    """``--out`` as a directory to write into, checked before anything is written (probe,
    neurons and compare): refused when it is empty, a file, a dangling symbolic link, under
    a file, or a Zarr store or inside one.  Nothing is created here: see make_output_dir."""
    from store.errors import StrataError

    if not text:  # Path("") is ".": the results would silently go into the current directory
        raise StrataError("--out: empty path")
    out = Path(text)
    # out itself, else its nearest parent that is there, decides (mkdir would make the rest)
    for path in (out, *out.absolute().parents):
        if path.is_symlink() and not path.exists():  # mkdir would say "File exists"
            raise StrataError(f"--out: {path} is a symbolic link to {os.readlink(path)}, which does not exist")
        if path.exists():
            if not path.is_dir():
                raise StrataError(f"--out: {path} exists and is not a directory" if path == out
                                  else f"--out: {path} is a file, not a directory")
            break
    if (store := zarr_store_of(out)) is not None:
        folder, kind = store
        where = f"is {kind}" if folder == out.resolve() else f"is inside {kind}, {folder}"
        raise StrataError(f"--out: {out} {where}; give --out a directory of its own")
    return out


def zarr_store_of(path: Path) -> tuple[Path, str] | None:
    """``(store, "a strata store" or "a Zarr store")`` when ``path`` is a Zarr store or lies
    inside one, else None.  Result files written there would be files of the store that
    no record lists, and ``strata verify`` fails on those."""
    from store import schema
    from store.summary import looks_like_strata_store

    path = path.resolve()  # through symbolic links and "..": where the files would land
    for folder in (path, *path.parents):
        if any(os.path.exists(folder / name) for name in (schema.METADATA_FILE, ".zgroup", ".zarray")):
            return folder, "a strata store" if looks_like_strata_store(folder) else "a Zarr store"
    return None


def make_output_dir(out: Path) -> None:
    """Create ``--out`` (and its parents) once the inputs are known to be good, before its
    lock is taken: a path the system will not create (``/proc/x``, a read-only disk) is
    one line, the path and the system's reason, not a warning about the lock and then a
    traceback."""
    from store.errors import StrataError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StrataError(f"--out: cannot create {out}: {e.strerror or e}") from None
