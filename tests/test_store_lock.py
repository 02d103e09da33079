"""One ``strata extract`` per store: a second run on a store another run is writing is a
one-line error that touches nothing; a crashed run's lock file does not block its resume."""

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
    with store_lock.exclusive_writer(out):  # stands in for a run that is writing out
        assert lock_file.exists()
        code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
        assert (code, err.strip()) == (1, f"strata extract: error: --out: {out} is being written by another "
                                          f"strata extract (it holds {lock_file}); wait for it to finish, then rerun")
        assert not out.exists()
        # the same store by another spelling of its path takes the same lock
        code, _, err = strata(*extract_args(tiny_bert, ud_dev, tmp_path / "sub" / ".." / "s.zarr"))
        assert code == 1 and "is being written by another strata extract" in err
    assert not lock_file.exists()  # removed on release
    code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
    assert code == 0, err
    assert not lock_file.exists()
    with store_lock.exclusive_writer(out):  # a complete store is refused too while locked: it may be redone
        code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
        assert code == 1 and "is being written by another strata extract" in err


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
    with store_lock.exclusive_writer(out):
        assert len(calls) == 2 and calls[1] == path.stat().st_ino  # tried again on the file now there
        monkeypatch.setattr(store_lock.fcntl, "flock", real_flock)
        with pytest.raises(StrataError, match="is being written by another strata extract"):
            with store_lock.exclusive_writer(out):
                pass
    assert not path.exists()
