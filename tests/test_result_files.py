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
    assert (code, err.strip()) == (1, f"strata probe: error: --out: cannot create {out}: {os.strerror(errno.EACCES)}")
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


PROBE = ["--labels", "upos", "--layers", "1", "--l1", "0", "--l2", "1e-3", "--quiet"]


def test_results_json_is_written_after_every_file_it_describes(stores, tmp_path, strata, monkeypatch):
    """A kill while the plot is being drawn leaves no results.json (which would say the run
    is done beside a missing or half-written PNG); the rerun writes both."""
    from probe_engine import plot

    def killed(*args):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(plot, "plot_accuracy", killed)
    code, _, err = strata("probe", "--train", stores["train"], "--dev", stores["dev"], *PROBE, "--out", out)
    assert code == 130 and not (out / "results.json").exists()
    monkeypatch.undo()
    assert strata("probe", "--train", stores["train"], "--dev", stores["dev"], *PROBE, "--out", out)[0] == 0
    assert (out / "results.json").exists()
    assert (out / "accuracy_per_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_removes_the_temporary_files_a_killed_run_left(stores, tmp_path, strata):
    out = tmp_path / "run"
    assert strata("probe", "--train", stores["train"], "--dev", stores["dev"], *PROBE, "--out", out)[0] == 0
    left = [out / "groups" / "0123abcd.npz.9009185a334d.partial", out / "weights" / "upos_layer1.npz.partial",
            out / "results.json.fc63d9a8a40a.partial"]
    for path in left:
        path.write_bytes(b"half")
    assert strata("probe", "--train", stores["train"], "--dev", stores["dev"], *PROBE, "--out", out)[0] == 0
    assert not list(out.rglob("*.partial"))
    neurons = tmp_path / "neurons"
    args = ["neurons", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"], "--labels", "upos",
            "--l1", "0", "--l2", "1e-3", "--fractions", "0.5", "--quiet", "--out", neurons]
    assert strata(*args)[0] == 0
    (neurons / "steps" / "oracle.npz.66704a53214a.partial").write_bytes(b"half")
    (neurons / "neurons.json.773ac68322c9.partial").write_bytes(b"half")
    assert strata(*args)[0] == 0
    assert not list(neurons.rglob("*.partial"))


def test_the_sweep_leaves_other_folders_of_an_out_alone(tmp_path):
    """An --out may hold other things, e.g. a store being extracted with its own .partial files."""
    from probe_engine.outputs import remove_partial_files

    (tmp_path / "groups").mkdir()
    (tmp_path / "train.zarr" / "activations").mkdir(parents=True)
    ours = [tmp_path / "results.json.0a1b2c3d4e5f.partial", tmp_path / "groups" / "g.npz.0a1b2c3d4e5f.partial"]
    theirs = tmp_path / "train.zarr" / "activations" / "shard.partial"
    for path in (*ours, theirs):
        path.write_bytes(b"half")
    remove_partial_files(tmp_path, ("groups", "weights"))
    assert not any(p.exists() for p in ours) and theirs.exists()
