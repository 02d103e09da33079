"""``--out`` of probe, neurons and compare (probe_engine.outputs.output_dir and
make_output_dir): every bad one is one line naming --out and the path, exit 1, and
nothing is written; plus the progress lines of probe (Ctrl-C) and neurons."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import zarr

from probe_engine import run as probe_run

COMMANDS = ("probe", "neurons", "compare")


def command_args(command, stores, out, *extra):
    """A quick, valid run of ``command`` into ``out``."""
    if command == "compare":
        return ["compare", stores["dev"], stores["dev"], "--tokens", "50", "--repeats", "2", "--quiet",
                "--out", out, *extra]
    splits = ["--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"]]
    grid = ["--l1", "0,1e-3", "--l2", "1e-3"]
    if command == "neurons":
        return ["neurons", *splits, "--labels", "upos", *grid, "--fractions", "0.1,0.3", "--quiet",
                "--out", out, *extra]
    return ["probe", *splits, "--labels", "upos", "--layers", "0", *grid, "--quiet", "--out", out, *extra]


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (links not followed), for "nothing was written"."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def victim(stores, tmp_path):
    """A copy of a strata store, to be given as --out."""
    path = tmp_path / "victim.zarr"
    shutil.copytree(stores["dev"], path)
    return path


@pytest.mark.parametrize("command", COMMANDS)
def test_a_strata_store_as_out_is_refused_and_stays_whole(command, stores, victim, strata):
    before = listing(victim)
    code, out, err = strata(*command_args(command, stores, victim))
    assert (code, err) == (1, f"strata {command}: error: --out: {victim} is a strata store; "
                              "give --out a directory of its own\n")
    assert out == ""
    inside = victim / "results"
    code, _, err = strata(*command_args(command, stores, inside))
    assert (code, err) == (1, f"strata {command}: error: --out: {inside} is inside a strata store, {victim}; "
                              "give --out a directory of its own\n")
    assert listing(victim) == before and not victim.with_name(f".{victim.name}.lock").exists()
    assert strata("verify", victim)[0] == 0


def test_a_zarr_group_or_a_link_to_a_store_as_out_is_refused(stores, victim, tmp_path, strata):
    group = tmp_path / "plain.zarr"
    zarr.open_group(group, mode="w", zarr_format=3)
    before = listing(group)
    code, _, err = strata(*command_args("probe", stores, group))
    assert (code, err) == (1, f"strata probe: error: --out: {group} is a Zarr store; "
                              "give --out a directory of its own\n")
    assert listing(group) == before
    link = tmp_path / "link"
    link.symlink_to(victim)  # where the files would land decides, not the spelling
    code, _, err = strata(*command_args("neurons", stores, link))
    assert (code, err) == (1, f"strata neurons: error: --out: {link} is a strata store; "
                              "give --out a directory of its own\n")
    assert strata("verify", victim)[0] == 0


def test_a_report_inside_a_store_is_refused(victim, tmp_path, strata):
    page = victim / "report.html"
    code, _, err = strata("report", "--base", tmp_path, "--other", tmp_path, "--out", page)
    assert (code, err) == (1, f"strata report: error: --out: {page} is inside a strata store, {victim}; "
                              "write the report outside it\n")
    assert strata("verify", victim)[0] == 0


@pytest.mark.parametrize("command", COMMANDS)
def test_a_dangling_link_as_out_is_one_line(command, stores, tmp_path, strata):
    target = tmp_path / "nonexistent" / "dir"
    dangling = tmp_path / "dang"
    dangling.symlink_to(target)
    before = listing(tmp_path)
    code, _, err = strata(*command_args(command, stores, dangling))
    assert (code, err) == (1, f"strata {command}: error: --out: {dangling} is a symbolic link to {target}, "
                              "which does not exist\n")
    below = dangling / "sub"  # a dangling link above --out is named too (mkdir would say "File exists")
    code, _, err = strata(*command_args(command, stores, below))
    assert (code, err) == (1, f"strata {command}: error: --out: {dangling} is a symbolic link to {target}, "
                              "which does not exist\n")
    assert listing(tmp_path) == before  # neither the link's target nor a lock file was made


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("command", COMMANDS)
def test_an_out_the_system_will_not_create_is_one_line(command, stores, strata):
    out = Path("/proc") / f"strata-test-{os.getpid()}"
    code, _, err = strata(*command_args(command, stores, out))
    # one line: no warning that the lock beside it could not be taken, no traceback
    assert (code, err) == (1, f"strata {command}: error: --out: cannot create {out}: No such file or directory\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_empty_out_is_refused(command, stores, tmp_path, monkeypatch, strata):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, out, err = strata(*command_args(command, stores, ""))
    assert (code, out, err) == (1, "", f"strata {command}: error: --out: empty path\n")
    assert listing(cwd) == []  # Path("") is the current directory: nothing went there


def test_an_interrupted_probe_ends_with_the_interrupted_line(stores, tmp_path, monkeypatch, strata):
    """Ctrl-C in a group: the progress bars are closed as the interrupt unwinds.  Closed
    later (at exit), they redrew their lines over the "interrupted" line, and a terminal
    showed none."""
    def interrupted(spec, progress=None):
        progress(3, 1)  # a pass done: the inner bar is drawn
        raise KeyboardInterrupt

    monkeypatch.setattr(probe_run, "run_group", interrupted)
    args = [a for a in command_args("probe", stores, tmp_path / "run") if a != "--quiet"]
    code, _, err = strata(*args)
    assert code == 130
    # the line is the last thing written, on a line of its own
    assert err.endswith("\nstrata probe: interrupted; rerun the same command to resume\n"), repr(err[-300:])


def progress_lines(err: str) -> list[str]:
    # a line may follow a closed progress bar's "\r" (the bar cleared, the cursor at column 0)
    return re.findall(r"^strata neurons: (\d+/\d+ \S+)", err.replace("\r", "\n"), flags=re.M)


def test_neurons_progress_counts_every_step_once(stores, tmp_path, strata):
    out = tmp_path / "run"
    args = [a for a in command_args("neurons", stores, out) if a != "--quiet"]
    code, _, err = strata(*args)
    assert code == 0, err
    assert progress_lines(err) == ["1/5 oracle", "2/5 ranking", "3/5 minimal", "4/5 ablations", "5/5 layer"]
    # --control: its step is 6/6; the finished steps are reused (the control task is not in
    # their inputs), and say so in their tick
    code, _, err = strata(*args, "--control")
    assert code == 0, err
    assert progress_lines(err) == ["1/6 oracle:", "2/6 ranking:", "3/6 minimal:", "4/6 ablation:", "5/6 layer",
                                   "6/6 control"]
    assert f"strata neurons: 1/6 oracle: reused (finished in an earlier run, {out / 'steps' / 'oracle'}.json)" in err


def test_a_report_input_that_does_not_exist_says_so(tmp_path, strata):
    nope = tmp_path / "nope"
    code, _, err = strata("report", "--base", nope, "--other", tmp_path, "--out", tmp_path / "r.html")
    assert (code, err) == (1, f"strata report: error: --base: no such file or directory: {nope}\n")
    assert listing(tmp_path) == []
