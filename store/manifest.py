"""The resume manifest: one small Zarr group per finished piece of work.

Each record is its own ``zarr.json`` (``manifest/unit_0000003`` and so on), so
processes finishing different units never write the same file, and zarr's
LocalStore writes it atomically (temp file + rename).  A record is written only
after the files it vouches for are on disk, and it carries their sha256, which
``strata verify`` checks.  Plain zarr sees ordinary, empty groups with
attributes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import zarr
from tqdm import tqdm

from store import schema
from store.errors import StrataError

_HASH_BLOCK = 8 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def array_files(root: Path, array: str) -> list[str]:
    """Relative paths of every chunk or shard file of an array (sorted)."""
    chunk_dir = root / array / "c"
    if not chunk_dir.exists():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in chunk_dir.rglob("*")
        if p.is_file() and not p.name.endswith(".partial")
    )


def checksums(root: Path, files: list[str]) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in files}


def sizes(root: Path, files: list[str]) -> dict[str, int]:
    """Bytes of each file: what a rerun on a finished store compares without hashing."""
    return {rel: (root / rel).stat().st_size for rel in files}


#: Recorded bytes past which checking them shows a progress bar (~1-2 s per GB on one core).
CHECK_PROGRESS_BYTES = 1 << 30


def file_problems(root: Path, recorded: dict[str, str], desc: str = "checking") -> dict[str, str]:
    """``{file: "missing" | "checksum mismatch"}`` for each file of ``recorded`` (relative
    path -> sha256) that is not what was written.  Hashed on every core (hashlib releases
    the GIL), with a progress bar past ``CHECK_PROGRESS_BYTES``."""
    problems = {rel: "missing" for rel in recorded if not (root / rel).is_file()}
    present = [rel for rel in recorded if rel not in problems]
    sizes = {rel: (root / rel).stat().st_size for rel in present}
    with tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc=desc,
              disable=sum(sizes.values()) < CHECK_PROGRESS_BYTES) as bar, \
            ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        def digest(rel):
            value = sha256_file(root / rel)
            bar.update(sizes[rel])
            return value

        actual = dict(zip(present, pool.map(digest, present)))
    problems.update({rel: "checksum mismatch" for rel in present if actual[rel] != recorded[rel]})
    return problems


def first_problem(root: Path, recorded: dict[str, str], desc: str = "checking") -> str | None:
    """What verify reports of :func:`file_problems`: the first missing file, else the first
    mismatch, in record order (``"missing file X"``, ``"checksum mismatch in X"``), or None."""
    problems = file_problems(root, recorded, desc)
    for kind, text in (("missing", "missing file"), ("checksum mismatch", "checksum mismatch in")):
        for rel in recorded:
            if problems.get(rel) == kind:
                return f"{text} {rel}"
    return None


def store_files(root: Path) -> list[str]:
    """Relative paths of every file in the store but the root ``zarr.json`` (sorted).

    The root's file is rewritten when the store is marked complete, after
    every record: its attributes are checksummed instead (``attributes_sha256``).
    Symlinked folders are followed (``Path.rglob`` does not enter them, so a chunk
    behind one went unlisted), each real folder once, so a link loop ends.
    """
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.stat(folder)
        if (real.st_dev, real.st_ino) in seen:
            subfolders[:] = []
            continue
        seen.add((real.st_dev, real.st_ino))
        for name in names:
            full = Path(folder) / name
            if full.is_file() and full != root / schema.METADATA_FILE:
                files.append(full.relative_to(root).as_posix())
    return sorted(files)


def metadata_files(root: Path) -> list[str]:
    """Every node's ``zarr.json`` except the root's and the metadata record's own."""
    own = f"{schema.MANIFEST}/{schema.METADATA_RECORD}/{schema.METADATA_FILE}"
    return [rel for rel in store_files(root)
            if rel.rsplit("/", 1)[-1] == schema.METADATA_FILE and rel != own]


def attributes_sha256(attrs: dict) -> str:
    """sha256 of the root attributes as canonical JSON (sorted keys), independent
    of how zarr lays the file out."""
    return hashlib.sha256(json.dumps(attrs, sort_keys=True).encode()).hexdigest()


def write_record(group: zarr.Group, name: str, record: dict) -> None:
    """Write (or overwrite) one manifest record atomically.

    By its full path, so that processes writing records at once never race: a
    missing ``manifest`` group is created only-if-absent (``require_group``
    looks, then creates, and can fail with ContainsGroupError under a race).
    """
    group.create_group(f"{schema.MANIFEST}/{name}", attributes=record, overwrite=True)


def read_record(group: zarr.Group, name: str) -> dict | None:
    """One manifest record, None when it was never written.

    A record that is there but unreadable (a damaged or hand-edited
    ``zarr.json``) is a one-line error, never a traceback: ``verify`` and
    ``inspect`` are the tools people run on damaged stores.
    """
    try:
        node = group[f"{schema.MANIFEST}/{name}"]
    except KeyError:
        return None
    except Exception:
        raise StrataError(f"{group.store.root}: corrupt manifest record {name}") from None
    record = dict(node.attrs)
    if "checksums" in record and not isinstance(record["checksums"], dict):
        raise StrataError(f"{group.store.root}: corrupt manifest record {name}")
    return record


def finished_units(root: Path) -> set[int]:
    """Units whose record is on disk (listed from the directory: cheap)."""
    manifest = root / schema.MANIFEST
    if not manifest.exists():
        return set()
    done = set()
    for entry in manifest.iterdir():
        if entry.name.startswith("unit_") and (entry / "zarr.json").exists():
            done.add(int(entry.name[len("unit_"):]))
    return done


#: parameters added to stores after the metadata record was: a store carrying one must hold it
_NEWER_THAN_METADATA_RECORD = ("tokens_sha256", "weights_sha256")


def metadata_required(attrs) -> bool:
    """Whether a store must hold the metadata record: its parameters are newer than the
    record, so without it the store is damaged, not old."""
    return any(k in attrs.get("parameters", {}) for k in _NEWER_THAN_METADATA_RECORD)
