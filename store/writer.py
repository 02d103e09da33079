"""Creating, filling, resuming and finishing a store.

Life of a store:
1. ``create_store`` (one process): root attributes with the parameters first,
   then every array preallocated to its final shape (no writer ever resizes),
   corpus-derived arrays written, and last the ``manifest/plan`` record.  A
   store without that record is an interrupted creation and is created again.
2. ``StoreWriter.write_unit`` (any process, one per unit): the unit's whole
   activation shard, its sentence-pooled rows into ``staging``, then its
   manifest record with the shard's sha256.
3. ``StoreWriter.finalize`` (one process, once every unit is recorded): pooled
   arrays assembled from staging and checksummed (``manifest/final``), staging
   removed, every metadata file and the final root attributes checksummed
   (``manifest/metadata``), and only then ``complete: true`` in the root attributes.
Every step can be killed and repeated; repeating it writes the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import zarr

from store import manifest, schema
from store.codecs import parse_codec
from store.errors import StrataError
from store.layout import CHUNK_BYTES, Layout, default_geometry

_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Crash here if ``STRATA_FAULT=name:N`` and this is the N-th time (tests).

    Simulates a kill at the worst moments: after a shard is on disk but before
    its record, after pooled arrays are written but before they are recorded,
    and during creation (every array written but no plan; an interrupted
    creation's files deleted but its root).  ``os._exit`` skips every cleanup, like SIGKILL;
    ``STRATA_FAULT=name:N:TERM`` sends this process SIGTERM there instead.
    """
    spec = os.environ.get("STRATA_FAULT", "")
    if not spec.startswith(name + ":"):
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    _, count, *how = spec.split(":")
    if _fault_counts[name] == int(count):
        if how == ["TERM"]:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            os._exit(137)


@contextlib.contextmanager
def disk_errors(path: Path):
    """Turn OS write failures into one-line errors naming the store."""
    try:
        yield
    except OSError as e:
        reason = e.strerror or str(e)
        raise StrataError(f"disk error writing {path}: {reason}") from e


def open_group_read(path: Path) -> zarr.Group:
    """``zarr.open_group`` read-only, from each node's own ``zarr.json``: never from
    consolidated metadata (a copy in the root file that a user may add with
    ``zarr.consolidate_metadata``), which no record vouches for and which goes stale."""
    return zarr.open_group(path, mode="r", use_consolidated=False)


@contextlib.contextmanager
def quiet_codec_warnings():
    """BitRound is a numcodecs codec outside the Zarr v3 spec and zarr warns on
    every construction; the README says it once instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")
        yield


def store_state(path: Path) -> str:
    """``"new"``, ``"planned"`` (creation finished) or ``"unplanned"``.

    Raises when the path exists but is not a strata store, so a typo in
    ``--out`` can never overwrite somebody's data.
    """
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise StrataError(f"--out: {path} exists and is not a strata store (it is a file)")
    if not any(path.iterdir()):
        return "new"
    try:
        group = open_group_read(path)
        attrs = group.attrs.get(schema.ROOT_ATTR)
    except Exception:
        attrs = None
    if not isinstance(attrs, dict) or "parameters" not in attrs:
        raise StrataError(f"--out: {path} exists and is not a strata store; choose a new path")
    if manifest.read_record(group, schema.PLAN_RECORD):
        return "planned"
    if attrs.get("complete"):  # damaged after its finish: never recreate (delete) a finished store's data
        raise StrataError(f"--out: {path}: damaged store: marked complete, but its {schema.PLAN_RECORD} record is "
                          "missing; run strata verify, or extract into a new --out")
    return "unplanned"


def check_parameters(path: Path, existing: dict, requested: dict, unrecorded: dict | None = None,
                     derived: tuple[str, ...] = ()) -> None:
    """Refuse to resume a store with different extraction parameters.  ``unrecorded``: what
    a parameter absent from either side means (parameters added later are recorded only
    when they differ from what every older store did, so those stores still resume).
    ``derived``: parameters that follow from the others (the shard size from the dtype and
    layers, unless given); named only when nothing else differs, since the user set
    the others and changing those is what to undo."""
    unrecorded = unrecorded or {}
    keys = sorted(set(existing) | set(requested))
    existing, requested = ({k: side.get(k, unrecorded.get(k)) for k in keys} for side in (existing, requested))
    differ = [k for k in keys if existing[k] != requested[k]]
    if any(k not in derived for k in differ):
        differ = [k for k in differ if k not in derived]
    if differ:
        shown = "; ".join(f"{k}: store has {existing[k]!r}, command has {requested[k]!r}" for k in differ)
        raise StrataError(f"--out: {path} was extracted with different parameters ({shown}); use a new --out")


def _array(group, name, data=None, *, shape=None, dtype=None, chunks=None, dims, **kwargs):
    """Create one array; write ``data`` when given."""
    shape = data.shape if data is not None else shape
    dtype = data.dtype if data is not None and dtype is None else dtype
    if chunks is None:
        chunks = tuple(max(1, min(s, 1 << 16)) for s in shape)
    arr = group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, dimension_names=dims,
                             overwrite=True, **kwargs)
    if data is not None and data.size:
        arr[...] = data
    return arr


def create_store(path: Path, *, layout: Layout, layer_ids: list[int], hidden: int, dtype: str, codec: str,
                 pool: list[str], parameters: dict, provenance: dict, corpus: dict,
                 attention: tuple[int, int, int] | None = None) -> None:
    """Create a store and write everything that does not need the model.

    ``corpus`` holds ``token_sentence``, ``token_word``, ``token_text``,
    ``sentence_skipped`` (arrays) and ``token_labels`` / ``sentence_labels``
    (name -> (int16 codes, class names)).  ``attention`` = (blocks, heads,
    positions) creates ``attention_cls``.
    """
    with disk_errors(path), quiet_codec_warnings():
        _clear_all_but_the_root(path)
        fault_point("store-cleared")
        # The root's strata attributes go in the same (atomic) write that creates it: a
        # kill at any moment leaves an empty directory or an unplanned strata store, and
        # the same command creates both again (never "not a strata store").
        group = zarr.open_group(path, mode="w", zarr_format=3, attributes={schema.ROOT_ATTR: {
            "schema_version": schema.SCHEMA_VERSION,
            "complete": False,
            "parameters": parameters,
            "provenance": provenance,
        }})
        filters, compressors = parse_codec(codec, np.dtype(dtype))
        n_layers = len(layer_ids)
        float_kwargs = dict(filters=filters, compressors=compressors, fill_value=np.nan,
                            config={"write_empty_chunks": True})
        group.create_array(
            schema.ACTIVATIONS, shape=(n_layers, max(layout.n_tokens, 0), hidden), dtype=dtype,
            chunks=(1, layout.chunk_tokens, hidden), shards=(n_layers, layout.shard_tokens, hidden),
            dimension_names=schema.ACTIVATION_DIMS, **float_kwargs)
        sent_chunk, sent_shard = default_geometry(n_layers, hidden, np.dtype(dtype).itemsize)
        sent_chunk = min(sent_chunk, layout.n_sentences)
        sent_shard = min(sent_shard, -(-layout.n_sentences // sent_chunk) * sent_chunk)
        for kind in pool:
            group.create_array(
                schema.pooled_name(kind), shape=(n_layers, layout.n_sentences, hidden), dtype=dtype,
                chunks=(1, sent_chunk, hidden), shards=(n_layers, sent_shard, hidden),
                dimension_names=schema.POOLED_DIMS, **float_kwargs)
        if attention is not None:
            blocks, heads, width = attention
            rows = max(1, min(layout.n_sentences, CHUNK_BYTES // (heads * width * np.dtype(dtype).itemsize)))
            group.create_array(
                schema.ATTENTION_CLS, shape=(blocks, layout.n_sentences, heads, width), dtype=dtype,
                chunks=(1, rows, heads, width), shards=(blocks, -(-layout.n_sentences // rows) * rows, heads, width),
                dimension_names=schema.ATTENTION_DIMS, **float_kwargs)
        _array(group, schema.LAYER, np.asarray(layer_ids, dtype=np.int16), dims=("layer",))
        _array(group, schema.SENTENCE_OFFSETS, layout.offsets.astype(np.int64), dims=("sentence_edge",))
        _array(group, schema.SENTENCE_SKIPPED, corpus["sentence_skipped"].astype(bool), dims=("sentence",))
        _array(group, schema.TOKEN_SENTENCE, corpus["token_sentence"].astype(np.int32), dims=("token",))
        _array(group, schema.TOKEN_WORD, corpus["token_word"].astype(np.int32), dims=("token",))
        _array(group, schema.TOKEN_TEXT, shape=(layout.n_tokens,), dtype=str, dims=("token",),
               data=np.asarray(corpus["token_text"], dtype=np.dtypes.StringDType()))
        label_arrays = []
        for prefix, dim, labels in ((schema.TOKEN_LABEL_PREFIX, "token", corpus["token_labels"]),
                                    (schema.SENTENCE_LABEL_PREFIX, "sentence", corpus["sentence_labels"])):
            for name, (codes, classes) in labels.items():
                arr = _array(group, prefix + name, np.asarray(codes, dtype=np.int16), dims=(dim,),
                             fill_value=-1, attributes={"classes": list(classes), "level": dim})
                label_arrays.append(arr.basename)
        written = [schema.LAYER, schema.SENTENCE_OFFSETS, schema.SENTENCE_SKIPPED, schema.TOKEN_SENTENCE,
                   schema.TOKEN_WORD, schema.TOKEN_TEXT, *label_arrays]
        files = [f for name in written for f in manifest.array_files(path, name)]
        fault_point("store-created")
        manifest.write_record(group, schema.PLAN_RECORD, {
            "n_units": layout.n_units,
            "shard_tokens": layout.shard_tokens,
            "checksums": manifest.checksums(path, files),
        })


def _clear_all_but_the_root(path: Path) -> None:
    """Empty an interrupted creation's directory except its root ``zarr.json``, which
    ``open_group(mode="w")`` replaces last: until then the directory still reads as an
    unplanned strata store."""
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.name == schema.METADATA_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _writable(array):
    """``array`` as reopened for writing, with every chunk written as given.

    zarr does not store an array's runtime config, so a reopened array is back
    at its default (``write_empty_chunks=False``), which compares every inner
    chunk with the NaN fill value before compressing it: about 0.16 core-s of
    the 0.6 a 64 MiB activation shard costs to write, and half of the pooled
    arrays' write time in ``finalize``.  Activations are never NaN (non-finite
    values are refused), so their bytes are the same; a pooled chunk whose
    sentences were all skipped is stored as NaNs instead of left out, which
    readers see as the same values.
    """
    return array.with_config({"write_empty_chunks": True})


def _shard_name(unit: int) -> str:
    """The file of a unit's activation shard (the token axis is cut into one shard per unit)."""
    return f"{schema.ACTIVATIONS}/c/0/{unit}/0"


def _staged_name(kind: str, unit: int) -> str:
    """Where a unit's per-sentence rows of ``kind`` wait for finalize."""
    return f"{schema.STAGING}/{kind}_{unit:07d}"


class StoreWriter:
    """Writes units into a created store and finishes it."""

    def __init__(self, path: Path, layout: Layout):
        self.path = Path(path)
        self.layout = layout
        with quiet_codec_warnings():
            self.group = zarr.open_group(self.path, mode="r+", use_consolidated=False)
            self.activations = _writable(self.group[schema.ACTIVATIONS])
        self.pool = [k for k in schema.POOL_KINDS if schema.pooled_name(k) in self.group]
        #: per-sentence arrays assembled at the end: staging key -> array name
        self.sentence_arrays = {k: schema.pooled_name(k) for k in self.pool}
        if schema.ATTENTION_CLS in self.group:
            self.sentence_arrays["attention"] = schema.ATTENTION_CLS

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs[schema.ROOT_ATTR])

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    def pending_units(self) -> list[int]:
        done = manifest.finished_units(self.path)
        return [u for u in range(self.layout.n_units) if u not in done]

    def remove_partial_files(self) -> None:
        """Delete temp files left by a write that was killed mid-way."""
        for partial in self.path.rglob("*.partial"):
            partial.unlink(missing_ok=True)

    def write_unit(self, unit: int, activations: np.ndarray, pooled: dict[str, np.ndarray], stats: dict) -> None:
        """Write one unit's shard and its per-sentence rows (pooled kinds, and
        ``attention`` when stored), then record it as done."""
        start, stop = self.layout.unit_tokens(unit)
        assert activations.shape[1] == stop - start, (activations.shape, start, stop)
        with disk_errors(self.path), quiet_codec_warnings():
            files, staged = [], []
            if stop > start:
                self.activations[:, start:stop] = activations
                files.append(_shard_name(unit))
            for kind in self.sentence_arrays:
                rows = pooled[kind]
                if rows.shape[1] == 0:
                    continue
                # Created by its full path, not through ``require_group(STAGING)``: that
                # looks, then creates, and of two processes writing their first units at
                # once one got ContainsGroupError; a path's missing parents are created
                # only-if-absent, which is safe.
                name = _staged_name(kind, unit)
                self.group.create_array(name, shape=rows.shape, dtype=rows.dtype, chunks=rows.shape,
                                        compressors=self.activations.compressors, overwrite=True)[...] = rows
                staged += [f"{name}/{schema.METADATA_FILE}", *manifest.array_files(self.path, name)]
            fault_point("unit-written")
            # Staged rows are consumed (and deleted) by finalize, so their checksums are
            # kept apart from ``checksums``, the files of the finished store.
            manifest.write_record(self.group, schema.unit_record(unit), {
                "unit": unit, "tokens": [start, stop], "sentences": list(self.layout.owned_sentences(unit)),
                "checksums": manifest.checksums(self.path, files), "sizes": manifest.sizes(self.path, files),
                "staged_checksums": manifest.checksums(self.path, staged), **stats,
            })

    def damaged_units(self) -> dict[int, str]:
        """Recorded units whose files are not what their record vouches for, each with its
        first problem (``"activations/c/0/2/0 missing"``): a shard deleted, truncated or
        overwritten after its record, or lost by a machine crash that kept the record (no
        fsync).  Their staged rows are checked too until finalize has consumed them (records
        written before 2026-12-03 vouch for no staged file: only their staging folder is
        looked for).  A resume redoes these units; without this check it finalized a store
        with a unit missing and called it complete."""
        assembled = manifest.read_record(self.group, schema.FINAL_RECORD) is not None
        records = {u: manifest.read_record(self.group, schema.unit_record(u))
                   for u in sorted(manifest.finished_units(self.path)) if u < self.layout.n_units}
        files = {}  # unit -> {file: sha256, or None where only its presence can be checked}
        for unit, record in records.items():
            files[unit] = dict(record.get("checksums") or {})
            if assembled:
                continue
            if "staged_checksums" in record:
                files[unit].update(record["staged_checksums"])
            else:  # an older record: the staged arrays' presence, at least
                first, end = self.layout.owned_sentences(unit)
                if end > first:
                    files[unit].update({f"{_staged_name(kind, unit)}/{schema.METADATA_FILE}": None
                                        for kind in self.sentence_arrays})
        vouched = {rel: sha for unit_files in files.values() for rel, sha in unit_files.items() if sha}
        problems = manifest.file_problems(self.path, vouched, desc="checking finished units")
        for unit_files in files.values():
            problems.update({rel: "missing" for rel, sha in unit_files.items()
                             if sha is None and not (self.path / rel).is_file()})
        return {unit: next(f"{rel} {problems[rel]}" for rel in unit_files if rel in problems)
                for unit, unit_files in files.items() if any(rel in problems for rel in unit_files)}

    def changed_files(self) -> list[str]:
        """Files the records of a finished store vouch for that are missing or not of their
        recorded size (records since 2026-12-03 hold sizes; older ones are only looked for):
        compared, not hashed, which is what a rerun on a complete store can afford (verify
        hashes them).  Each as ``"FILE is missing"`` or ``"FILE has N bytes, not M"``."""
        names = [*map(schema.unit_record, sorted(manifest.finished_units(self.path))), schema.FINAL_RECORD]
        changed = []
        for record in (manifest.read_record(self.group, name) or {} for name in names):
            recorded = record.get("sizes") or {}
            for rel in record.get("checksums") or {}:
                path = self.path / rel
                if not path.is_file():
                    changed.append(f"{rel} is missing")
                elif rel in recorded and path.stat().st_size != recorded[rel]:
                    changed.append(f"{rel} has {path.stat().st_size:,} bytes, not {recorded[rel]:,}")
        return changed

    def forget_unit(self, unit: int) -> None:
        """Remove a unit's record, so that the run redoes the unit, then its shard and staged
        rows: zarr reads a shard file it writes into, and a damaged one fails that read."""
        with disk_errors(self.path):
            shutil.rmtree(self.path / schema.MANIFEST / schema.unit_record(unit))
            (self.path / _shard_name(unit)).unlink(missing_ok=True)
            for kind in self.sentence_arrays:
                shutil.rmtree(self.path / _staged_name(kind, unit), ignore_errors=True)

    def finalize(self, summary: dict) -> None:
        """Assemble pooled arrays, record their checksums, mark complete.

        Only call once every unit is recorded.  Safe to repeat after a kill.
        """
        with disk_errors(self.path), quiet_codec_warnings():
            if manifest.read_record(self.group, schema.FINAL_RECORD) is None:
                files = []
                for kind, name in self.sentence_arrays.items():
                    self._assemble_pooled(kind)
                    files += manifest.array_files(self.path, name)
                fault_point("pooled-written")
                manifest.write_record(self.group, schema.FINAL_RECORD, {"checksums": manifest.checksums(self.path, files),
                                                                        "sizes": manifest.sizes(self.path, files)})
            # not ignore_errors: staging left behind would be unrecorded files in a "complete" store
            if (self.path / schema.STAGING).exists():
                shutil.rmtree(self.path / schema.STAGING)
            attrs = self.attrs
            attrs.update(complete=True, summary=summary)
            # Metadata (label classes, shapes, codecs, attributes) changes what
            # readers see as much as a shard does, so verify checks it too.
            # Recorded after staging is gone, and rewritten on a repeat.
            manifest.write_record(self.group, schema.METADATA_RECORD, {
                "checksums": manifest.checksums(self.path, manifest.metadata_files(self.path)),
                "root_attributes_sha256": manifest.attributes_sha256(attrs),
            })
            self.group.attrs[schema.ROOT_ATTR] = attrs

    def _assemble_pooled(self, kind: str) -> None:
        """Copy each unit's staged rows into the pooled array, shard by shard."""
        target = _writable(self.group[self.sentence_arrays[kind]])
        shard = target.shards[1]
        owners = [(u, *self.layout.owned_sentences(u)) for u in range(self.layout.n_units)]
        for lo in range(0, self.layout.n_sentences, shard):
            hi = min(lo + shard, self.layout.n_sentences)
            block = np.full((target.shape[0], hi - lo, *target.shape[2:]), np.nan, dtype=target.dtype)
            for unit, a, b in owners:
                if b <= lo or a >= hi or a == b:
                    continue
                rows = self.group[_staged_name(kind, unit)]
                s, e = max(a, lo), min(b, hi)
                block[:, s - lo:e - lo] = rows[:, s - a:e - a]
            target[:, lo:hi] = block
