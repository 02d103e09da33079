"""``strata verify``: is the store complete, and is every file what was written?"""

from __future__ import annotations

from pathlib import Path

from store import manifest, schema
from store.errors import StrataError
from store.summary import open_store


def verify_store(path: Path) -> int:
    """Check completeness and every recorded sha256; return the files checked.

    Raises ``StrataError`` naming the first problem found.
    """
    path = Path(path)
    group = open_store(path)
    attrs = group.attrs[schema.ROOT_ATTR]
    plan = manifest.read_record(group, schema.PLAN_RECORD)
    if plan is None:
        raise StrataError(f"{path}: incomplete: creation did not finish")
    n_units = plan["n_units"]
    missing = sorted(set(range(n_units)) - manifest.finished_units(path))
    if missing:
        raise StrataError(f"{path}: incomplete: {len(missing)} of {n_units} units not written "
                          f"(first missing: unit {missing[0]}); rerun the same extract command to resume")
    final = manifest.read_record(group, schema.FINAL_RECORD)
    if final is None or not attrs.get("complete"):
        raise StrataError(f"{path}: incomplete: all units written but the store was not finalized; "
                          "rerun the same extract command")
    records = [plan, final] + [manifest.read_record(group, schema.unit_record(u)) for u in range(n_units)]
    checked = 0
    for record in records:
        for rel, expected in record["checksums"].items():
            file = path / rel
            if not file.is_file():
                raise StrataError(f"{path}: missing file {rel}")
            if manifest.sha256_file(file) != expected:
                raise StrataError(f"{path}: checksum mismatch in {rel}")
            checked += 1
    return checked
