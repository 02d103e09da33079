"""``strata verify``: is the store complete, and is every file what was written?"""

from __future__ import annotations

import json
from pathlib import Path

from store import manifest, schema
from store.errors import StrataError
from store.summary import open_store


def verify_store(path: Path) -> tuple[int, bool]:
    """Check completeness, every recorded sha256, and that no file is unrecorded.

    Returns ``(files checked, metadata recorded)``; stores finished before
    strata recorded metadata checksums (no ``manifest/metadata``) have their
    data files checked as before and report ``False``.  Raises
    ``StrataError`` naming the first problem found.
    """
    path = Path(path)
    try:
        return _verify(path)
    except OSError as e:  # an unreadable file or folder: name it, no traceback
        where = Path(e.filename).relative_to(path) if e.filename and Path(e.filename).is_relative_to(path) else e.filename
        raise StrataError(f"{path}: cannot read {where or 'the store'} ({e.strerror or e})") from None


def _verify(path: Path) -> tuple[int, bool]:
    group = open_store(path)
    attrs = group.attrs[schema.ROOT_ATTR]
    plan = manifest.read_record(group, schema.PLAN_RECORD)
    # A store marked complete that lacks a record was damaged after its finish: rerunning
    # extract would not repair it (it says "already complete"), so say damaged.
    damaged = f"{path}: damaged store: marked complete, but" if attrs.get("complete") else None
    if plan is None:
        if damaged:
            raise StrataError(f"{damaged} its {schema.PLAN_RECORD} record is missing")
        raise StrataError(f"{path}: incomplete: creation did not finish")
    n_units = plan.get("n_units")
    if not isinstance(n_units, int):
        raise StrataError(f"{path}: corrupt manifest record {schema.PLAN_RECORD}")
    missing = sorted(set(range(n_units)) - manifest.finished_units(path))
    if missing and damaged:
        raise StrataError(f"{damaged} {len(missing)} of {n_units} unit records are missing "
                          f"(first: unit {missing[0]})")
    if missing:
        raise StrataError(f"{path}: incomplete: {len(missing)} of {n_units} units not written "
                          f"(first missing: unit {missing[0]}); rerun the same extract command to resume")
    final = manifest.read_record(group, schema.FINAL_RECORD)
    if final is None and damaged:
        raise StrataError(f"{damaged} its {schema.FINAL_RECORD} record is missing")
    if final is None or not attrs.get("complete"):
        raise StrataError(f"{path}: incomplete: all units written but the store was not finalized; "
                          "rerun the same extract command")
    names = [schema.PLAN_RECORD, schema.FINAL_RECORD, *map(schema.unit_record, range(n_units))]
    metadata = manifest.read_record(group, schema.METADATA_RECORD)
    if metadata is None and manifest.metadata_required(attrs):
        raise StrataError(f"{damaged} its {schema.METADATA_RECORD} record is missing")
    if metadata is not None:
        names.append(schema.METADATA_RECORD)
        if manifest.attributes_sha256(dict(attrs)) != metadata.get("root_attributes_sha256"):
            raise StrataError(f"{path}: checksum mismatch in the root attributes ({schema.METADATA_FILE})")
    recorded = {}
    for name in names:
        record = manifest.read_record(group, name)
        if not isinstance(record.get("checksums"), dict):
            raise StrataError(f"{path}: corrupt manifest record {name}")
        recorded.update(record["checksums"])
    if (problem := manifest.first_problem(path, recorded, desc="verify")) is not None:
        raise StrataError(f"{path}: {problem}")
    # A file no record vouches for (a chunk written after the store was
    # finished, e.g. over a fill-value chunk that was never stored) changes
    # what readers see just as a corrupted one does.  Without a metadata
    # record, zarr.json files are not vouched for and not counted here.
    own = f"{schema.MANIFEST}/{schema.METADATA_RECORD}/{schema.METADATA_FILE}"
    for rel in manifest.store_files(path):
        is_metadata = rel.rsplit("/", 1)[-1] == schema.METADATA_FILE
        if rel in recorded or rel == own or (is_metadata and metadata is None):
            continue
        raise StrataError(f"{path}: unrecorded file {rel} (not part of the finished store)")
    _check_consolidated(path)
    return len(recorded), metadata is not None


def _check_consolidated(path: Path) -> None:
    """Consolidated metadata (``zarr.consolidate_metadata``: a copy of every node's
    metadata inside the root ``zarr.json``, which xarray and zarr read instead of the
    nodes' own files when present) must equal the checksummed files it copies."""
    consolidated = json.loads((path / schema.METADATA_FILE).read_text()).get("consolidated_metadata")
    if not consolidated:
        return
    copies = consolidated.get("metadata") or {}
    nodes = {rel.rsplit("/", 1)[0] for rel in manifest.metadata_files(path)}
    nodes.add(f"{schema.MANIFEST}/{schema.METADATA_RECORD}")
    for name in sorted(nodes | set(copies)):
        file = path / name / schema.METADATA_FILE
        own = json.loads(file.read_text()) if file.is_file() else None
        copy = copies.get(name)
        if isinstance(copy, dict):
            copy = {k: v for k, v in copy.items() if k != "consolidated_metadata"}
        if own is None or copy != own:
            raise StrataError(f"{path}: the consolidated metadata in the root {schema.METADATA_FILE} differs "
                              f"from {name}/{schema.METADATA_FILE} (rerun zarr.consolidate_metadata, or remove it)")
