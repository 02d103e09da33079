"""One run per store or --out directory: a second ``strata extract``, ``probe`` or ``neurons``
where another run is writing is a one-line error that touches nothing; a crashed run's lock
file does not block its resume."""

from __future__ import annotations

import errno
import os
import signal
import socket
import time

import pytest

from store import lock as store_lock
from store.errors import StrataError
from store.signals import Terminated, sigterm_unwinds, signals_held
from tests.store_compare import assert_stores_identical
from tests.test_resume import extract_args, reference, run_subprocess  # noqa: F401 (a fixture)


def test_a_second_run_on_a_store_being_written_is_refused(tiny_bert, ud_dev, tmp_path, strata):
    out = tmp_path / "s.zarr"
    lock_file = tmp_path / ".s.zarr.lock"
    with store_lock.exclusive_writer(out, "strata extract"):  # stands in for a run that is writing out
        assert lock_file.read_text() == f"strata extract, pid {os.getpid()} on {socket.gethostname()}"
        code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
        assert (code, err.strip()) == (1, f"strata extract: error: --out: {out} is being written by another run "
                                          f"(strata extract, pid {os.getpid()} on {socket.gethostname()}, which holds "
                                          f"{lock_file}); wait for it to finish, then rerun")
        assert not out.exists()
        # the same store by another spelling of its path takes the same lock
        code, _, err = strata(*extract_args(tiny_bert, ud_dev, tmp_path / "sub" / ".." / "s.zarr"))
        assert code == 1 and "is being written by another run" in err
    assert not lock_file.exists()  # removed on release
    code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
    assert code == 0, err
    assert not lock_file.exists()
    # a complete store is refused too while locked: the holder may be redoing it
    with store_lock.exclusive_writer(out, "strata extract"):
        code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
        assert code == 1 and "is being written by another run" in err


def test_a_killed_run_leaves_a_lock_file_that_does_not_block_its_resume(reference, tiny_bert, ud_dev, tmp_path,
                                                                        strata):
    out = tmp_path / "s.zarr"
    assert run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": "unit-written:2"}).returncode == 137
    assert (tmp_path / ".s.zarr.lock").exists()  # the kernel let go of the lock, the file stayed
    code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
    assert code == 0, err
    assert not (tmp_path / ".s.zarr.lock").exists()
    assert_stores_identical(reference, out)


def test_a_lock_file_removed_while_being_locked_is_not_trusted(tmp_path, monkeypatch):
    """A run that opens the lock file just before its holder removes it and lets go
    locks an orphan inode: it must take the file now at the path instead, or two runs
    would both hold 'the' lock."""
    out = tmp_path / "s.zarr"
    path = store_lock.lock_path(out)
    path.write_text("")
    real_flock, calls = store_lock.fcntl.flock, []

    def holder_lets_go_first(fd, operation):
        calls.append(os.fstat(fd).st_ino)
        if len(calls) == 1:  # between this run's open and its flock, the holder unlinks
            path.unlink()
        return real_flock(fd, operation)

    monkeypatch.setattr(store_lock.fcntl, "flock", holder_lets_go_first)
    with store_lock.exclusive_writer(out, "strata extract"):
        assert len(calls) == 2 and calls[1] == path.stat().st_ino  # tried again on the file now there
        monkeypatch.setattr(store_lock.fcntl, "flock", real_flock)
        with pytest.raises(StrataError, match="is being written by another run"):
            with store_lock.exclusive_writer(out, "strata extract"):
                pass
    assert not path.exists()


def test_probe_and_neurons_refuse_an_out_another_run_is_writing(stores, tmp_path, strata):
    """A second ``strata probe`` in a finished run's --out would remove that run's weights
    under its results: refused while the first holds the directory, every file unchanged."""
    out = tmp_path / "run"
    probe = ["probe", "--train", stores["train"], "--dev", stores["dev"], "--labels", "upos", "--layers", "1",
             "--l1", "0", "--l2", "1e-3", "--quiet", "--out", out]
    assert strata(*probe)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with store_lock.exclusive_writer(out, "strata probe"):
        code, _, err = strata(*probe[:-2], "--layers", "2", "--out", out)
        assert (code, err.strip()) == (1, f"strata probe: error: --out: {out} is being written by another run "
                                          f"(strata probe, pid {os.getpid()} on {socket.gethostname()}, which holds "
                                          f"{tmp_path / '.run.lock'}); "
                                          "wait for it to finish, then rerun")
        code, _, err = strata("neurons", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"],
                              "--labels", "upos", "--l1", "0", "--l2", "1e-3", "--fractions", "0.5", "--quiet",
                              "--out", tmp_path / "run")
        assert code == 1 and err.strip().startswith(f"strata neurons: error: --out: {out} is being written by "
                                                    "another run (strata probe, pid ")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (tmp_path / ".run.lock").exists()


def test_a_run_never_removes_or_writes_through_a_lock_file_that_is_not_its_own(tmp_path):
    out = tmp_path / "s.zarr"
    path = store_lock.lock_path(out)
    # someone deletes a held lock file by hand (like a stale git index.lock): the next run
    # takes a new one, and the first run's release must leave that one alone
    with store_lock.exclusive_writer(out, "A"):
        path.unlink()
        b = store_lock.exclusive_writer(out, "B")
        b.__enter__()
    assert path.read_text().startswith("B, pid ")
    with pytest.raises(StrataError, match=r"another run \(B, pid "):
        with store_lock.exclusive_writer(out, "C"):
            pass
    b.__exit__(None, None, None)
    assert not path.exists()
    # a link left at the lock's path is refused, never written through
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    path.symlink_to(precious)
    with pytest.raises(StrataError) as refused:
        with store_lock.exclusive_writer(out, "A"):
            pass
    assert str(refused.value) == f"--out: {path} is a symbolic link, not strata's lock file; remove it"
    assert precious.read_text() == "keep"


def test_a_store_name_at_the_length_limit_still_gets_its_own_lock(tmp_path):
    out = tmp_path / ("s" * 250)  # .NAME.lock would be 256 characters
    path = store_lock.lock_path(out)
    assert len(path.name) <= 255 and path.parent == tmp_path
    assert path != store_lock.lock_path(tmp_path / ("s" * 249 + "t"))
    with store_lock.exclusive_writer(out, "A"):
        assert path.exists()
        with pytest.raises(StrataError, match="is being written by another run"):
            with store_lock.exclusive_writer(out, "B"):
                pass


def test_a_file_system_without_flock_goes_on_unlocked_and_says_so(tmp_path, monkeypatch, capsys):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(store_lock.fcntl, "flock", no_locks)
    out = tmp_path / "s.zarr"
    with store_lock.exclusive_writer(out, "strata probe"):
        pass
    assert capsys.readouterr().err == (f"strata probe: warning: going on without a lock ({store_lock.lock_path(out)}: "
                                       f"{os.strerror(errno.ENOLCK)})\n")


def test_directories_made_for_the_lock_are_removed_when_the_run_leaves_them_empty(tmp_path):
    out = tmp_path / "new" / "deeper" / "s.zarr"
    with pytest.raises(ValueError):
        with store_lock.exclusive_writer(out, "A"):
            assert (tmp_path / "new" / "deeper").is_dir()
            raise ValueError("the model did not load")
    assert list(tmp_path.iterdir()) == []
    with store_lock.exclusive_writer(out, "A"):
        out.mkdir()  # a run that wrote something keeps its directories
    assert out.is_dir() and not store_lock.lock_path(out).exists()


def test_another_users_lock_file_is_locked_read_only(tmp_path, monkeypatch):
    """Opening another user's 0644 lock file for writing fails (a permission error; root,
    as in CI, is never refused, hence the stand-in): flock needs no write access, so the
    run still takes, or is refused, the same lock."""
    out = tmp_path / "s.zarr"
    real_open = os.open

    def not_the_owner(path, flags, *mode):
        if flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_open(path, flags, *mode)

    with store_lock.exclusive_writer(out, "A"):
        monkeypatch.setattr(store_lock.os, "open", not_the_owner)
        with pytest.raises(StrataError, match=r"another run \(A, pid "):
            with store_lock.exclusive_writer(out, "B"):
                pass
        monkeypatch.setattr(store_lock.os, "open", real_open)
    store_lock.lock_path(out).write_text("")  # left by another user's killed run
    monkeypatch.setattr(store_lock.os, "open", not_the_owner)
    with store_lock.exclusive_writer(out, "B"):
        monkeypatch.setattr(store_lock.os, "open", real_open)
        with pytest.raises(StrataError, match="another run"):
            with store_lock.exclusive_writer(out, "C"):
                pass


def test_the_demo_never_deletes_what_another_run_is_writing(tmp_path, capsys):
    from extractor import demo

    out = tmp_path / "minilm-train.zarr"
    out.mkdir()
    (out / "zarr.json").write_text("{}")
    with store_lock.exclusive_writer(out, "strata extract"):
        with pytest.raises(demo.Failed):
            demo.fresh(out)
        assert (out / "zarr.json").exists()
    assert capsys.readouterr().err.startswith(f"make demo: error: --out: {out} is being written by another run "
                                              "(strata extract, pid ")
    assert demo.fresh(out) == out and not out.exists()


def test_sigterm_unwinds_like_ctrl_c_releasing_the_lock(reference, tiny_bert, ud_dev, tmp_path, strata):
    """`timeout`, `kill` or a scheduler's preemption: one line, exit 143, the lock file gone
    (a SIGKILL leaves it, above), and the rerun completes the same store."""
    out = tmp_path / "s.zarr"
    terminated = run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": "unit-written:2:TERM"})
    assert terminated.returncode == 143, terminated.stderr
    assert terminated.stderr.strip().splitlines()[-1] == (
        "strata extract: terminated (SIGTERM); rerun the same command to resume")
    assert not (tmp_path / ".s.zarr.lock").exists()
    code, out_text, err = strata("verify", out)
    assert code == 1 and "incomplete" in out_text + err
    code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
    assert code == 0, err
    assert_stores_identical(reference, out)


def test_signals_held_around_torchs_import_arrive_once_it_is_done():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with sigterm_unwinds():
            after = []
            with pytest.raises(Terminated):
                with signals_held():
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.2)  # held: nothing is raised in here
                    after.append("the block's end")
                after.append("the next statement")
            assert after == ["the block's end"]  # raised as the block ended
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_raises_only_while_a_command_runs_and_only_once(monkeypatch):
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with sigterm_unwinds():
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)  # the handler raises at once, in the main thread
            os.kill(os.getpid(), signal.SIGTERM)  # timeout's second one, to the process group: ignored
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        def theirs(signum, frame):
            pass

        signal.signal(signal.SIGTERM, theirs)  # an embedding program's handler is left alone
        with sigterm_unwinds():
            assert signal.getsignal(signal.SIGTERM) is theirs
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")  # several processes under torchrun: default
        with sigterm_unwinds():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
