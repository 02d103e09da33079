"""How a strata process takes SIGINT and SIGTERM: what unwinds, and what is held back.

Every package imports ``store``, so the process's signal handling lives here beside
``store/errors.py`` rather than in the ``strata`` command module (the extractor's
streams use it too, and must not import the command line).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, `kill`, a batch scheduler's preemption), raised where Ctrl-C
    raises KeyboardInterrupt, so that the one unwinding path already tested for Ctrl-C
    releases the lock, removes temporary files and keeps every finished write."""


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM raises :class:`Terminated` in the main thread while the command runs; more
    SIGTERMs while it unwinds are ignored (`timeout` sends two at once, one to the process
    and one to its process group, and the second one killed the run half-way through its
    cleanup, leaving the lock file); SIGKILL still ends it at once.  SIGTERM keeps its
    default (the process ends at once) where this does not apply: when SIGTERM already
    has a handler (an embedding program's), off the main thread (Python allows handlers
    only there), and under torchrun / ``accelerate launch`` with several processes, whose launcher sends SIGTERM to every process when one fails:
    a process then blocked in a collective would run the handler only once the collective
    returns, so the launcher would wait out its kill timeout instead of ending at once."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            or "TORCHELASTIC_RUN_ID" in os.environ):
        yield
        return

    def raise_terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM held back around ``import torch`` and delivered once it is done:
    torch's C++ initialisation calls back into Python, and an interrupt raised there
    aborted the process (SIGABRT, "terminate called after throwing an instance of
    'pybind11::error_already_set'") instead of unwinding: 3 of 120 Ctrl-Cs or SIGTERMs
    0.35-0.65 s after start.  Held by a handler that only records them (not by blocking
    them: a signal is the process's, and another thread could take it), so nothing is
    raised until the handlers are restored and each signal is raised again."""
    if threading.current_thread() is not threading.main_thread():  # Python allows handlers there only
        yield
        return
    arrived = []
    previous = {s: signal.signal(s, lambda signum, frame: arrived.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(arrived):
            signal.raise_signal(s)
