"""``strata verify``: is the store complete, and is every file what was written?"""

from __future__ import annotations

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
    group = open_store(path)
    attrs = group.attrs[schema.ROOT_ATTR]
    plan = manifest.read_record(group, schema.PLAN_RECORD)
    if plan is None:
        raise StrataError(f"{path}: incomplete: creation did not finish")
    n_units = plan.get("n_units")
    if not isinstance(n_units, int):
        raise StrataError(f"{path}: corrupt manifest record {schema.PLAN_RECORD}")
    missing = sorted(set(range(n_units)) - manifest.finished_units(path))
    if missing:
        raise StrataError(f"{path}: incomplete: {len(missing)} of {n_units} units not written "
                          f"(first missing: unit {missing[0]}); rerun the same extract command to resume")
    final = manifest.read_record(group, schema.FINAL_RECORD)
    if final is None or not attrs.get("complete"):
        raise StrataError(f"{path}: incomplete: all units written but the store was not finalized; "
                          "rerun the same extract command")
    names = [schema.PLAN_RECORD, schema.FINAL_RECORD, *map(schema.unit_record, range(n_units))]
    metadata = manifest.read_record(group, schema.METADATA_RECORD)
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
    for rel, expected in recorded.items():
        file = path / rel
        if not file.is_file():
            raise StrataError(f"{path}: missing file {rel}")
        if manifest.sha256_file(file) != expected:
            raise StrataError(f"{path}: checksum mismatch in {rel}")
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
    return len(recorded), metadata is not None
