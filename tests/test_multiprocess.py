"""Several processes under Accelerate write the same store as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from store import manifest, schema
from tests.store_compare import assert_stores_identical
from tests.test_resume import extract_args, run_here, run_subprocess

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n_processes: int, args: list[str], env_extra=None):
    """``accelerate launch --multi_gpu -m extractor ARGS`` with n processes.

    On a machine without GPUs ``--multi_gpu`` starts n torchrun workers that
    talk over gloo (``--cpu`` would start a single process).  A free port, not
    torchrun's fixed default, so two test runs on one machine do not collide.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n_processes),
           "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "extractor", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_bert, ud_dev):
    out = tmp_path_factory.mktemp("single") / "one.zarr"
    assert run_here(extract_args(tiny_bert, ud_dev, out)) == 0
    return out


def test_two_processes_equal_one(single, tiny_bert, ud_dev, tmp_path):
    out = tmp_path / "two.zarr"
    result = launch(2, [*extract_args(tiny_bert, ud_dev, out)[1:], "--json"])
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["processes"] == 2 and summary["status"] == "complete"
    assert_stores_identical(single, out)
    # the work was split: process p wrote every second unit from p (one process doing all
    # of them gives the same bytes, so only the records tell)
    group = zarr.open_group(out, mode="r")
    n_units = manifest.read_record(group, schema.PLAN_RECORD)["n_units"]
    writers = [manifest.read_record(group, schema.unit_record(u))["process"] for u in range(n_units)]
    assert n_units >= 4 and writers == [u % 2 for u in range(n_units)]


def test_crash_with_one_process_resume_with_two(single, tiny_bert, ud_dev, tmp_path):
    out = tmp_path / "mixed.zarr"
    crashed = run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": "unit-written:4"})
    assert crashed.returncode == 137
    result = launch(2, extract_args(tiny_bert, ud_dev, out)[1:])
    assert result.returncode == 0, result.stderr
    assert_stores_identical(single, out)


def test_error_in_one_process_stops_all(tiny_bert, ud_dev, tmp_path):
    """A bad --layers is found by every process; none hangs waiting for another."""
    result = launch(2, extract_args(tiny_bert, ud_dev, tmp_path / "x.zarr", "--layers", "0,9")[1:])
    assert result.returncode != 0
    assert "--layers: layer 9 is out of range" in result.stderr
    # each process reports it on a line of its own (print's two writes used to interleave
    # between the processes: "...(0..2, 0 = embedding output)strata extract: error: ...")
    lines = [line for line in result.stderr.splitlines() if "strata extract: error:" in line]
    assert lines and all(line.startswith("strata extract: error: --layers: layer 9 is out of range")
                         and line.count("error:") == 1 for line in lines), lines


def test_variant_and_attention_rows_two_processes_equal_one(tiny_bert, ud_dev, tmp_path):
    """Each process builds the variant's weights itself (same seed, same bits), and the
    per-sentence attention rows go through the same staging as pooled vectors."""
    extra = ["--variant", "reinit:2-", "--variant-seed", "3", "--attention", "cls"]
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    assert run_here(extract_args(tiny_bert, ud_dev, one, *extra)) == 0
    result = launch(2, extract_args(tiny_bert, ud_dev, two, *extra)[1:])
    assert result.returncode == 0, result.stderr
    assert_stores_identical(one, two)


def test_a_store_another_run_holds_stops_every_process(tiny_bert, ud_dev, tmp_path):
    """Only process 0 takes the store's lock; its refusal reaches the other process, which
    stops with the same line instead of waiting at the next barrier, and nothing is written."""
    from store.lock import exclusive_writer

    out = tmp_path / "x.zarr"
    with exclusive_writer(out, "another run"):
        result = launch(2, extract_args(tiny_bert, ud_dev, out)[1:])
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "strata extract: error:" in line]
    assert len(lines) == 2 and all(line.startswith(f"strata extract: error: --out: {out} is being written by "
                                                   "another run (another run, pid ") for line in lines), lines
    assert not out.exists()
