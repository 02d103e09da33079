"""Parallel forward streams: the scheduler's guarantees, and stores that do not depend on them."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from extractor.run import ExtractOptions, extract
from extractor.streams import run_streams
from tests.store_compare import assert_stores_identical


class Recorder:
    """Units with a seeded random number of batches (0..3) of random duration; records
    the write order and the most units open at once."""

    def __init__(self, seed: int, fail_compute_at: int | None = None, fail_write_at: int | None = None):
        self.rng = random.Random(seed)
        self.fail_compute_at, self.fail_write_at = fail_compute_at, fail_write_at
        self.written, self.open, self.most_open = [], 0, 0
        self.lock = threading.Lock()

    def open_unit(self, unit):
        with self.lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            return {"unit": unit, "batches": list(range(self.rng.randint(0, 3))),
                    "delays": [self.rng.random() * 0.004 for _ in range(3)]}

    def compute(self, state, batch):
        time.sleep(state["delays"][batch])
        if state["unit"] == self.fail_compute_at:
            raise ValueError(f"batch of unit {state['unit']}")

    def write(self, state):
        if state["unit"] == self.fail_write_at:
            raise OSError(f"write of unit {state['unit']}")
        with self.lock:
            self.written.append(state["unit"])
            self.open -= 1

    def run(self, n_units: int, streams: int):
        run_streams(range(n_units), self.open_unit, lambda s: s["batches"], self.compute, self.write, streams)


@pytest.mark.parametrize("streams", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_units_are_written_in_order_with_bounded_memory(streams, seed):
    rec = Recorder(seed)
    rec.run(60, streams)
    assert rec.written == list(range(60))  # units with no batches too
    assert rec.most_open <= streams + 1


@pytest.mark.parametrize("streams", [1, 2])
@pytest.mark.parametrize("failing, error, message, written", [
    (dict(fail_compute_at=9), ValueError, "batch of unit 9", 9),  # the units before it are still written
    (dict(fail_write_at=4), OSError, "write of unit 4", 4),  # no unit after a failed write is
])
def test_a_failure_stops_the_run_and_only_earlier_units_are_written(streams, failing, error, message, written):
    rec = Recorder(0, **failing)
    with pytest.raises(error, match=f"^{message}$"):
        run_streams(range(60), rec.open_unit, lambda s: [0, 1], rec.compute, rec.write, streams)
    assert rec.written == list(range(written))


def test_failure_while_a_stream_waits_for_room_does_not_hang():
    """One stream holds the work queue waiting for room (streams + 1 units open)
    when a batch fails: the failure must free it, not deadlock."""
    def compute(state, batch):
        if state["unit"] == 0:
            time.sleep(0.2)  # the other stream fills every open slot meanwhile
            raise ValueError("late failure")

    rec = Recorder(0)
    finished = []
    worker = threading.Thread(target=lambda: finished.append(pytest.raises(
        ValueError, run_streams, range(50), rec.open_unit, lambda s: [0], compute, rec.write, 2)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert finished, "run_streams hung after a failure"


def test_an_interrupt_returns_only_once_every_stream_has_finished_its_batch(ctrl_c_raises):
    """A stream still inside torch when the interpreter exits aborts the process (SIGABRT,
    "terminate called without an active exception"): the interrupt waits for the batches."""
    rec = Recorder(0)
    batch_ends = []

    def compute(state, batch):
        if state["unit"] == 0:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the streams compute
        time.sleep(0.5)
        batch_ends.append(state["unit"])

    started = len(threading.enumerate())
    with pytest.raises(KeyboardInterrupt):
        run_streams(range(50), rec.open_unit, lambda s: [0], compute, rec.write, 2)
        time.sleep(10)  # the interrupt reaches the main thread in its join, not here
    assert len(threading.enumerate()) == started  # no stream left running
    assert batch_ends  # the batches begun were finished, and no more begun
    assert len(batch_ends) <= 3


def test_an_interrupt_waits_for_the_batches_even_when_is_alive_says_false(monkeypatch, ctrl_c_raises):
    """Python 3.11's Thread.join, interrupted by Ctrl-C, can mark a thread still running
    as stopped: is_alive() then says False, and the wait that trusted it let the process
    exit with a stream inside torch (SIGABRT in 3 of 8 interrupted extractions)."""
    monkeypatch.setattr(threading.Thread, "is_alive", lambda self: False)
    rec = Recorder(0)
    begun, ended = [], []

    def compute(state, batch):
        begun.append(state["unit"])
        if state["unit"] == 0:
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        ended.append(state["unit"])

    with pytest.raises(KeyboardInterrupt):
        run_streams(range(50), rec.open_unit, lambda s: [0], compute, rec.write, 2)
        time.sleep(10)
    assert begun and sorted(ended) == sorted(begun)  # every batch begun had ended before the raise


def _extract(tiny_bert, ud_dev, out, **extra):
    extract(ExtractOptions(model=str(tiny_bert), input=str(ud_dev), format="conllu", out=str(out),
                           max_sentences=120, shard_tokens=128, batch_tokens=256, **extra), argv=[])


def test_store_bytes_do_not_depend_on_the_number_of_streams(tiny_bert, ud_dev, tmp_path):
    _extract(tiny_bert, ud_dev, tmp_path / "one.zarr", threads=1)
    for streams in (2, 3):
        _extract(tiny_bert, ud_dev, tmp_path / f"{streams}.zarr", threads=streams)
        assert_stores_identical(tmp_path / "one.zarr", tmp_path / f"{streams}.zarr")


def test_a_crash_with_three_streams_resumes_with_one(tiny_bert, ud_dev, tmp_path):
    """``--threads`` is not a store parameter, and units are recorded in order."""
    from tests.test_resume import extract_args, run_here, run_subprocess

    _extract(tiny_bert, ud_dev, tmp_path / "ref.zarr", threads=2)
    out = tmp_path / "s.zarr"
    crashed = run_subprocess([*extract_args(tiny_bert, ud_dev, out), "--threads", "3"],
                             {"STRATA_FAULT": "unit-written:6"})
    assert crashed.returncode == 137
    finished = sorted(int(p.parent.name[len("unit_"):]) for p in (out / "manifest").glob("unit_*/zarr.json"))
    assert finished == list(range(5))
    assert run_here([*extract_args(tiny_bert, ud_dev, out), "--threads", "1"]) == 0
    assert_stores_identical(tmp_path / "ref.zarr", out)
