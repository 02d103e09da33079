"""``strata inspect`` and ``strata verify``."""

from __future__ import annotations

import json


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="describe a store",
                              description="Completeness, sizes, layers, label sets and arrays of a store.")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=inspect)
    p = subparsers.add_parser("verify", help="check a store is complete and every shard matches its checksum",
                              description="Exit 0 only when the store is complete and every file matches "
                                          "the sha256 recorded when it was written.")
    p.add_argument("store")
    p.set_defaults(run=verify)


def inspect(args) -> int:
    from store.summary import format_summary, summarize

    info = summarize(args.store)
    print(json.dumps(info, indent=2) if args.json else format_summary(info))
    return 0


def verify(args) -> int:
    from store.verify import verify_store

    checked, metadata_recorded = verify_store(args.store)
    note = "" if metadata_recorded else " (metadata not recorded: the store predates metadata checksums)"
    print(f"{args.store}: ok, complete, {checked} files match their checksums{note}")
    return 0
