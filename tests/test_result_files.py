"""Result files (results.json, neurons.json, compare.json, weights): written whole or not
at all, and what the machine refuses while writing them is one line."""

from __future__ import annotations

import errno
import os
import re


def test_an_out_the_machine_refuses_is_one_line(stores, tmp_path, strata, monkeypatch):
    """An --out in a directory this user may not write (a stand-in: root, as in CI, may
    write anywhere) or on a full disk: one line naming the path, exit 1, no traceback."""
    import pathlib

    real_mkdir = pathlib.Path.mkdir
    out = tmp_path / "locked" / "run"

    def refused(self, *args, **kwargs):
        if self == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", refused)
    code, _, err = strata("probe", "--train", stores["train"], "--dev", stores["dev"], "--labels", "upos",
                          "--layers", "1", "--l1", "0", "--l2", "1e-3", "--quiet", "--out", out)
    assert (code, err.strip()) == (1, f"strata probe: error: {out}: {os.strerror(errno.EACCES)}")
    monkeypatch.setattr(pathlib.Path, "mkdir", real_mkdir)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    from probe_engine import outputs
    monkeypatch.setattr(outputs.os, "fsync", full)
    code, _, err = strata("probe", "--train", stores["train"], "--dev", stores["dev"], "--labels", "upos",
                          "--layers", "1", "--l1", "0", "--l2", "1e-3", "--quiet", "--out", tmp_path / "full")
    monkeypatch.undo()
    groups = tmp_path / "full" / "groups"
    assert code == 1 and re.fullmatch(rf"strata probe: error: {re.escape(str(groups))}/[^/]+\.(json|npz): "
                                      f"{os.strerror(errno.ENOSPC)}", err.strip()), err
    assert list(groups.iterdir()) == []  # the .partial it was writing is gone


def test_two_writers_of_one_result_file_each_write_a_whole_file(tmp_path):
    """compare and report take no lock: two runs writing one --out's compare.json at once
    each write their own temporary file, and the file left is one of theirs, whole."""
    from probe_engine.outputs import atomic_write

    path = tmp_path / "compare.json"

    def first(f):
        f.write(b"A" * 1000)
        atomic_write(path, lambda g: g.write(b"B" * 10))  # the other run, in between
        f.write(b"A" * 1000)

    atomic_write(path, first)
    assert path.read_bytes() == b"A" * 2000
    assert [p.name for p in tmp_path.iterdir()] == ["compare.json"]
