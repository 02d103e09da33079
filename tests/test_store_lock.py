"""One run per store or --out directory: a second ``strata extract``, ``probe`` or ``neurons``
where another run is writing is a one-line error that touches nothing; a crashed run's lock
file does not block its resume."""

from __future__ import annotations

import os

import pytest

from store import lock as store_lock
from store.errors import StrataError
from tests.store_compare import assert_stores_identical
from tests.test_resume import extract_args, reference, run_subprocess  # noqa: F401 (a fixture)


def test_a_second_run_on_a_store_being_written_is_refused(tiny_bert, ud_dev, tmp_path, strata):
    out = tmp_path / "s.zarr"
    lock_file = tmp_path / ".s.zarr.lock"
    with store_lock.exclusive_writer(out, "strata extract"):  # stands in for a run that is writing out
        assert lock_file.read_text() == f"strata extract, pid {os.getpid()}"
        code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
        assert (code, err.strip()) == (1, f"strata extract: error: --out: {out} is being written by another run "
                                          f"(strata extract, pid {os.getpid()}, which holds {lock_file}); wait for it "
                                          "to finish, then rerun")
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
                                          f"(strata probe, pid {os.getpid()}, which holds {tmp_path / '.run.lock'}); "
                                          "wait for it to finish, then rerun")
        code, _, err = strata("neurons", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"],
                              "--labels", "upos", "--l1", "0", "--l2", "1e-3", "--fractions", "0.5", "--quiet",
                              "--out", tmp_path / "run")
        assert code == 1 and err.strip().startswith(f"strata neurons: error: --out: {out} is being written by "
                                                    "another run (strata probe, pid ")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not (tmp_path / ".run.lock").exists()
