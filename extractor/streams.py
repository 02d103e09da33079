"""Running the units' forward batches on parallel streams, and their writes beside them.

Why this exists: on a CPU, torch splits each operation of a forward pass over
its threads (intra-op parallelism) and joins them at the end of every operation.
A MiniLM batch of ~1,000 tokens gains only ~1.7x from 2 threads, and worse, any
other work in the process (compressing and writing a finished shard) takes a
core from one of torch's threads and leaves the other waiting at the next join.
On the project's 2-core Intel machine the bare sorted model loop ran at ~6,100
words/s; strata's forward passes reached that speed only until the first shard
write began, then the run fell to ~3,800 words/s while a write takes ~0.45
core-seconds per 12,288-token shard.

So on a CPU strata runs one batch per thread with torch at one thread
(inter-op parallelism: independent batches never wait for each other), and a
shard's compression and write, on one more thread, only ever slows the one
stream it shares a core with.  The forward kernels are independent of the
thread count (tests/test_linear_kernel.py), and each batch is computed the same
way whichever stream runs it, so the stored bytes do not depend on the number
of streams (tests/test_streams.py holds this bitwise).  On a GPU there is one
stream: the GPU already runs each batch in parallel.

Python's threads suffice here because torch releases the GIL inside its
operations; the model's Python code between them is a few percent of a batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from store.signals import signals_held


@contextmanager
def torch_threads(n: int):
    """Set torch's intra-op thread count for the block, restore it after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_streams(units: Iterable[int], open_unit: Callable[[int], Any], batches_of: Callable[[Any], list],
                compute: Callable[[Any, Any], None], write: Callable[[Any], None], streams: int) -> None:
    """For every unit in order: ``state = open_unit(unit)``, ``compute(state, batch)``
    for each of ``batches_of(state)`` on ``streams`` threads, then ``write(state)``
    on the writer thread once all its batches are done.

    At most ``streams + 1`` units are open (computed or being written) at once,
    which bounds memory to that many shards.  The first error anywhere stops
    every stream after its current batch and is raised here.  The units before
    a failed batch are still written; no unit after a failed write is.  Each
    write is complete on its own, so what is written stays valid.
    """
    take = threading.Lock()  # guards the work iterator
    # guards the batch counts, the write order and the failure; re-entrant because a write that
    # is already done when its callback is added runs ``written`` (and maybe ``fail``) at once
    lock = threading.RLock()
    # Open units.  A stream may wait for room while holding ``take``; the
    # streams finishing a unit and the writer freeing room never need ``take``.
    room = threading.Semaphore(streams + 1)
    failure: list[BaseException] = []
    remaining: dict[int, int] = {}  # open unit's position -> batches not yet computed
    computed: dict[int, Any] = {}  # position -> state of a computed unit waiting for its predecessors
    next_write = 0  # position of the next unit to write

    def work():
        for position, unit in enumerate(units):
            room.acquire()
            if failure:
                return
            state = open_unit(unit)
            batches = batches_of(state)
            with lock:
                remaining[position] = len(batches)
            if not batches:
                yield position, state, None
            for batch in batches:
                yield position, state, batch

    items = work()

    def fail(error: BaseException) -> None:
        with lock:
            failure.append(error)
        for _ in range(streams):  # wake any stream waiting for room: no write will free it
            room.release()

    write_failed = threading.Event()

    def write_unless_failed(state) -> None:
        # After a failed write the later units are not written either (a unit
        # computed before another unit's batch failed still is).
        if not write_failed.is_set():
            write(state)

    def written(future) -> None:
        room.release()
        if future.exception() is not None:
            write_failed.set()
            fail(future.exception())

    with ThreadPoolExecutor(1, "strata-writer") as writer:
        def stream() -> None:
            nonlocal next_write
            while True:
                with take:
                    if failure:
                        return
                    try:
                        position, state, batch = next(items)
                    except StopIteration:
                        return
                    except BaseException as e:  # open_unit failed
                        fail(e)
                        return
                try:
                    if batch is not None:
                        compute(state, batch)
                except BaseException as e:
                    fail(e)
                    return
                with lock:
                    remaining[position] -= 1
                    if remaining[position] <= 0:
                        del remaining[position]
                        computed[position] = state
                    while next_write in computed:
                        writer.submit(write_unless_failed, computed.pop(next_write)).add_done_callback(written)
                        next_write += 1

        if streams == 1:
            stream()
        else:
            # Each stream says itself when it has returned.  Thread.join and is_alive are not
            # trusted with that: in Python 3.11 a join interrupted by Ctrl-C can mark a thread
            # that is still running as stopped (the workaround of bpo-45274 takes the thread's
            # own lock for one the join acquired), and then is_alive says False.
            returned = [threading.Event() for _ in range(streams)]

            def stream_then_say(k: int) -> None:
                try:
                    stream()
                finally:
                    returned[k].set()

            # daemon: a second Ctrl-C (or SIGTERM) ends the process without waiting for them
            threads = [threading.Thread(target=stream_then_say, args=(k,), name=f"strata-stream-{k}", daemon=True)
                       for k in range(streams)]
            started: list[int] = []
            try:
                # Ctrl-C held back while the threads start: raised inside a start, it left a
                # thread running that was not yet counted as started, so never waited for.
                with signals_held():
                    for k, t in enumerate(threads):
                        t.start()
                        started.append(k)
                for k in started:
                    returned[k].wait()
            except BaseException as e:  # KeyboardInterrupt: stop the streams, keep finished writes
                fail(e)
                # Each stream stops after its current batch (a fraction of a second). Not
                # waiting for it let the interpreter exit with a stream inside torch, which
                # aborted the process ("terminate called without an active exception", a
                # SIGABRT instead of the interrupt's exit code: about 1 run in 5 with no wait,
                # 3 in 8 on 2026-12-03 with the wait that trusted is_alive).
                for k in started:
                    returned[k].wait()
                for k in started:
                    threads[k].join()  # each has returned: only its last few bytecodes are left
                raise
            for t in threads:
                t.join()
        # the writer pool's exit waits for the last write
    if failure:
        raise failure[0]
