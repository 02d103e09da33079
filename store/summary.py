"""What ``strata inspect`` reports about a store, read with plain zarr."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import zarr

from store import manifest, schema
from store.errors import StrataError, first_line
from store.writer import open_group_read, quiet_codec_warnings


def looks_like_strata_store(path: Path) -> bool:
    """Whether ``path`` is a strata store, damaged or not: it has strata's manifest folder
    (a store whose root zarr.json was damaged is still one), or strata's root attributes."""
    path = Path(path)
    if path.joinpath(schema.MANIFEST).is_dir():
        return True
    try:
        document = json.loads((path / schema.METADATA_FILE).read_text())
        return isinstance(document.get("attributes", {}).get(schema.ROOT_ATTR), dict)
    except (OSError, ValueError, AttributeError):
        return False


def open_store(path: Path) -> zarr.Group:
    """Open a strata store read-only, or raise a one-line error."""
    path = Path(path)
    if not path.exists():
        raise StrataError(f"{path}: no such store")
    root = path / schema.METADATA_FILE
    strata_layout = path.joinpath(schema.MANIFEST).is_dir()
    if strata_layout and not root.is_file():
        raise StrataError(f"{path}: damaged store: its root {schema.METADATA_FILE} is missing")
    try:
        with quiet_codec_warnings():
            group = open_group_read(path)
        attrs = group.attrs.asdict()
    except Exception:
        if strata_layout:
            raise StrataError(f"{path}: damaged store: its root {schema.METADATA_FILE} cannot be read") from None
        raise StrataError(f"{path}: not a strata store") from None
    attrs = attrs.get(schema.ROOT_ATTR)
    if not isinstance(attrs, dict):
        if strata_layout:
            raise StrataError(f"{path}: damaged store: its root {schema.METADATA_FILE} has no '{schema.ROOT_ATTR}' "
                              "attributes (rewritten by another tool?)")
        raise StrataError(f"{path}: not a strata store")
    version = attrs.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise StrataError(f"{path}: store schema version {version} is not supported "
                          f"(this strata reads version {schema.SCHEMA_VERSION})")
    return group


def _bytes_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _label_sets(group: zarr.Group, skipped: np.ndarray) -> dict:
    """Classes and their counts per label set; sentence labels of skipped sentences are not
    counted (their pooled vectors are NaN and no probe sees them), as token labels are not."""
    sets = {}
    for name in sorted(group.array_keys()):
        for prefix in (schema.TOKEN_LABEL_PREFIX, schema.SENTENCE_LABEL_PREFIX):
            if name.startswith(prefix):
                arr = group[name]
                classes = list(arr.attrs["classes"])
                codes = arr[...][~skipped] if prefix == schema.SENTENCE_LABEL_PREFIX else arr[...]
                counts = np.bincount(codes, minlength=len(classes))
                sets[name[len(prefix):]] = {
                    "level": arr.attrs["level"], "array": name,
                    "classes": {c: int(n) for c, n in zip(classes, counts)},
                }
    return sets


def summarize(path: Path) -> dict:
    """Everything inspect shows, as plain JSON-able values.

    Stores that were never finished being created, or whose arrays were
    damaged afterwards, give a one-line error rather than a traceback.
    """
    path = Path(path)
    with quiet_codec_warnings(), warnings.catch_warnings():
        # zarr warns of a stray folder (an empty staging/, a .DS_Store); verify names it
        warnings.filterwarnings("ignore", message="Object at .* is not recognized as a component")
        group = open_store(path)
        # Creation writes the plan record last: without it arrays may be missing.
        if manifest.read_record(group, schema.PLAN_RECORD) is None:
            if group.attrs[schema.ROOT_ATTR].get("complete"):
                raise StrataError(f"{path}: damaged store: marked complete, but its {schema.PLAN_RECORD} record is "
                                  "missing; run strata verify")
            raise StrataError(f"{path}: incomplete: creation did not finish; rerun the same extract command")
        try:
            return _summarize(path, group)
        except StrataError:
            raise
        except Exception as e:  # any damaged array or attribute: say what, point to verify
            raise StrataError(f"{path}: damaged store, cannot read it ({type(e).__name__}: {first_line(e)}); "
                              "run strata verify") from None


def _check_metadata(path: Path, attrs: dict, metadata: dict) -> None:
    """The metadata files (shapes, dtypes, codecs, label classes) and root attributes of a
    finished store against ``manifest/metadata``, as verify checks them; the shards are
    left to verify (reading them all is what inspect must not cost)."""
    if (problem := manifest.first_problem(path, metadata.get("checksums") or {})) is not None:
        raise StrataError(f"{path}: damaged store: {problem}; run strata verify")
    if manifest.attributes_sha256(attrs) != metadata.get("root_attributes_sha256"):
        raise StrataError(f"{path}: damaged store: checksum mismatch in the root attributes "
                          f"({schema.METADATA_FILE}); run strata verify")


def _summarize(path: Path, group: zarr.Group) -> dict:
    attrs = dict(group.attrs[schema.ROOT_ATTR])
    params = attrs["parameters"]
    n_units = manifest.read_record(group, schema.PLAN_RECORD).get("n_units")
    finished = manifest.finished_units(path)
    done = len(finished)
    # Every record read, not only listed (a few small files): a damaged one is named here.
    records = {name: manifest.read_record(group, name) for name in
               [*map(schema.unit_record, sorted(finished)), schema.FINAL_RECORD, schema.METADATA_RECORD]}
    if attrs.get("complete") and done != n_units:  # records deleted after the finish: do not say complete
        raise StrataError(f"{path}: damaged store: marked complete, but {n_units - done} of {n_units} unit "
                          "records are missing; run strata verify")
    required = [schema.FINAL_RECORD] + ([schema.METADATA_RECORD] if manifest.metadata_required(attrs) else [])
    lost = [name for name in required if records[name] is None]
    if attrs.get("complete") and lost:
        raise StrataError(f"{path}: damaged store: marked complete, but its {lost[0]} record is missing; "
                          "run strata verify")
    metadata = records[schema.METADATA_RECORD]
    if attrs.get("complete") and metadata is not None:  # a few small files: what inspect shows comes from them
        _check_metadata(path, attrs, metadata)
    skipped = group[schema.SENTENCE_SKIPPED][...]
    acts = group[schema.ACTIVATIONS]
    arrays = {name: {"shape": list(arr.shape), "dtype": str(arr.dtype),
                     "dims": list(arr.metadata.dimension_names or ())}
              for name, arr in sorted(group.arrays())}
    return {
        "path": str(path),
        "schema_version": attrs["schema_version"],
        "complete": bool(attrs.get("complete")),
        "units_done": done,
        "units_total": n_units,
        "sentences": int(skipped.shape[0]),
        "sentences_skipped": int(np.count_nonzero(skipped)),
        "tokens": int(acts.shape[1]),
        "layers": [int(x) for x in group[schema.LAYER][...]],
        "hidden_size": int(acts.shape[2]),
        "dtype": str(acts.dtype),
        "codec": params.get("codec"),
        "word_vector": params.get("word_vector"),
        "pool": params.get("pool"),
        "model": params.get("model"),
        "linear_kernel": params.get("linear_kernel", "torch"),
        "label_sets": _label_sets(group, skipped),
        "bytes_on_disk": _bytes_on_disk(path),
        "arrays": arrays,
        "summary": attrs.get("summary", {}),
        "provenance": attrs.get("provenance", {}),
    }


def format_summary(info: dict) -> str:
    """Human-readable inspect output."""
    status = "complete" if info["complete"] else f"INCOMPLETE ({info['units_done']}/{info['units_total']} units done)"
    lines = [
        f"store       {info['path']}  ({status}, schema v{info['schema_version']})",
        f"model       {info['model']}  (linear layers: {info['linear_kernel']} kernel)",
        f"sentences   {info['sentences']:,} ({info['sentences_skipped']:,} skipped: longer than the model's positions)",
        f"tokens      {info['tokens']:,} ({info['word_vector']} vectors"
        + (f"; {n:,} word{'s' * (n != 1)} with no subword read as the unknown token"
           if (n := info["summary"].get("words_replaced_by_unk")) else "") + ")",
        f"layers      {', '.join(map(str, info['layers']))}  (0 = embedding output)",
        f"hidden      {info['hidden_size']}",
        f"dtype       {info['dtype']}   codec {info['codec']}   pool {','.join(info['pool']) or 'none'}",
        f"on disk     {info['bytes_on_disk']:,} bytes"
        + (f" ({info['bytes_on_disk'] / info['tokens']:.0f} bytes/token)" if info["tokens"] else ""),
    ]
    for name, ls in info["label_sets"].items():
        classes = ", ".join(f"{c}:{n}" for c, n in sorted(ls["classes"].items(), key=lambda kv: -kv[1]))
        lines.append(f"labels      {name} ({ls['level']}, {len(ls['classes'])} classes): {classes}")
    lines.append("arrays")
    for name, a in info["arrays"].items():
        dims = ",".join(a["dims"])
        lines.append(f"  {name:<24} {a['dtype']:<10} {tuple(a['shape'])}  ({dims})")
    return "\n".join(lines)
