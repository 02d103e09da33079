"""Processes writing their units into one store at the same moment never trip over each other.

Under ``accelerate launch`` every process writes its first unit at about the
same time.  Writing one used to create the ``staging`` group with zarr's
``require_group``, which looks and then creates: when two processes looked at
once, the later one failed with ContainsGroupError (in about 8% of exactly
simultaneous attempts on this machine), and the run died with a traceback.
Here two processes are released by a barrier onto each of many fresh stores.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import zarr

from store import manifest, schema
from store.layout import Layout
from store.writer import StoreWriter, create_store

STORES = 40
HIDDEN = 4
#: Two sentences of three tokens; unit k holds sentence k.
LAYOUT = Layout(offsets=np.array([0, 3, 6]), shard_tokens=3, chunk_tokens=3)


def make_store(path: Path) -> None:
    create_store(path, layout=LAYOUT, layer_ids=[0], hidden=HIDDEN, dtype="float32", codec="lossless",
                 pool=["cls"], parameters={}, provenance={}, attention=(1, 1, 3), corpus={
                     "token_sentence": np.repeat([0, 1], 3), "token_word": np.tile([0, 1, 2], 2),
                     "token_text": ["a"] * 6, "sentence_skipped": np.zeros(2, bool),
                     "token_labels": {}, "sentence_labels": {}})


def unit_values(unit: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    block = np.full((1, 3, HIDDEN), unit + 0.5, dtype=np.float32)
    return block, {"cls": np.full((1, 1, HIDDEN), unit + 0.25, dtype=np.float32),
                   "attention": np.full((1, 1, 1, 3), unit + 0.125, dtype=np.float32)}


def write_at_the_same_moment(paths: list[str], unit: int, barrier, errors) -> None:
    for path in paths:
        writer = StoreWriter(Path(path), LAYOUT)
        barrier.wait()
        try:
            writer.write_unit(unit, *unit_values(unit), {"seconds": 0.0})
        except Exception as e:  # reported to the test, which names the store
            errors.put(f"{path}: unit {unit}: {type(e).__name__}: {e}")


def test_two_processes_write_their_first_units_at_once(tmp_path):
    paths = [str(tmp_path / f"s{i}.zarr") for i in range(STORES)]
    for path in paths:
        make_store(Path(path))
    context = multiprocessing.get_context("spawn")  # no fork of pytest's threads
    barrier, errors = context.Barrier(2), context.Queue()
    workers = [context.Process(target=write_at_the_same_moment, args=(paths, unit, barrier, errors))
               for unit in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []
    for path in paths:
        assert manifest.finished_units(Path(path)) == {0, 1}, path
        staging = zarr.open_group(path, mode="r")[schema.STAGING]
        for unit in (0, 1):
            for kind, rows in unit_values(unit)[1].items():
                np.testing.assert_array_equal(staging[f"{kind}_{unit:07d}"][...], rows, err_msg=path)
