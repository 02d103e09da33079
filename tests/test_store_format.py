"""The store is plain Zarr v3: readable without strata, self-describing, verifiable."""

from __future__ import annotations

import json
from collections import Counter

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from extractor.readers import read_corpus


@pytest.fixture(scope="module")
def ud_store(tmp_path_factory, tiny_bert, ud_dev):
    from strata import main

    out = tmp_path_factory.mktemp("ud") / "ud.zarr"
    # max_positions is 64 for the tiny BERT, so some UD sentences are skipped.
    assert main(["extract", "--model", str(tiny_bert), "--input", str(ud_dev), "--format", "conllu",
                 "--out", str(out), "--max-sentences", "300", "--layers", "0,2"]) == 0
    return out


def test_plain_zarr_dask_and_xarray_read_it(ud_store):
    group = zarr.open_group(ud_store, mode="r")
    acts = group["activations"]
    assert acts.metadata.dimension_names == ("layer", "token", "neuron")
    assert group["pooled_cls"].metadata.dimension_names == ("layer", "sentence", "neuron")
    assert group["layer"][...].tolist() == [0, 2]
    lazy = da.from_zarr(str(ud_store), component="activations")
    np.testing.assert_array_equal(lazy[1, :50].compute(), acts[1, :50])
    ds = xr.open_zarr(ud_store, consolidated=False)
    assert ds["activations"].dims == ("layer", "token", "neuron")
    assert ds.sizes["token"] == acts.shape[1] and ds.sizes["sentence"] == 300
    np.testing.assert_array_equal(ds["label_upos"].values, group["label_upos"][...])


def test_labels_words_and_offsets_follow_the_corpus(ud_store, ud_dev):
    corpus = read_corpus(ud_dev, "conllu", max_sentences=300)
    group = zarr.open_group(ud_store, mode="r")
    skipped = group["sentence_skipped"][...]
    assert 0 < skipped.sum() < 300
    kept = [i for i in range(300) if not skipped[i]]
    words = [w for i in kept for w in corpus.sentences[i]]
    assert group["token_text"][...].tolist() == words
    classes = group["label_upos"].attrs["classes"]
    assert classes == sorted(classes)
    stored = [classes[c] for c in group["label_upos"][...]]
    assert stored == [lab for i in kept for lab in corpus.token_labels["upos"][i]]
    offsets = group["sentence_offsets"][...]
    lengths = np.diff(offsets)
    assert all(lengths[i] == 0 for i in range(300) if skipped[i])
    assert all(lengths[i] == len(corpus.sentences[i]) for i in kept)
    assert np.isnan(group["pooled_mean"][:, np.flatnonzero(skipped)[0]]).all()


def test_provenance(ud_store, ud_dev, tiny_bert):
    attrs = zarr.open_group(ud_store, mode="r").attrs["strata"]
    assert attrs["schema_version"] == 1 and attrs["complete"] is True
    prov = attrs["provenance"]
    import hashlib

    assert prov["dataset"]["sha256"] == hashlib.sha256(ud_dev.read_bytes()).hexdigest()
    assert prov["model"] == str(tiny_bert) and len(prov["config_sha256"]) == 64
    assert prov["aggregation"]["word_vector"] == "last"
    assert prov["versions"]["zarr"] == zarr.__version__
    assert prov["command"][:4] == ["strata", "extract", "--model", str(tiny_bert)]
    assert attrs["parameters"]["layers"] == [0, 2]


def test_inspect_json(strata, ud_store, ud_dev):
    code, out, _ = strata("inspect", ud_store, "--json")
    assert code == 0
    info = json.loads(out)
    group = zarr.open_group(ud_store, mode="r")
    skipped = group["sentence_skipped"][...]
    assert info["complete"] and info["sentences"] == 300 and info["sentences_skipped"] == int(skipped.sum())
    assert info["layers"] == [0, 2] and info["hidden_size"] == 32 and info["dtype"] == "float16"
    corpus = read_corpus(ud_dev, "conllu", max_sentences=300)
    expected = Counter(lab for i in range(300) if not skipped[i] for lab in corpus.token_labels["xpos"][i])
    assert info["label_sets"]["xpos"]["classes"] == dict(sorted(expected.items()))
    assert info["arrays"]["activations"]["shape"] == [2, info["tokens"], 32]
    assert info["bytes_on_disk"] > 0
    code, out, _ = strata("inspect", ud_store)
    assert "skipped" in out and "labels      upos (token, " in out


def test_inspect_counts_sentence_labels_of_kept_sentences(strata, tiny_bert, tmp_path):
    tsv = tmp_path / "s.tsv"
    tsv.write_text("tr\tA\ta short one\ntr\tB\t" + " ".join(["word"] * 100) + "\ntr\tA\tanother one\n")
    store = tmp_path / "s.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", tsv, "--format", "senteval", "--out", store)[0] == 0
    info = json.loads(strata("inspect", store, "--json")[1])
    assert info["sentences_skipped"] == 1
    assert info["label_sets"]["label"]["classes"] == {"A": 2, "B": 0}  # the skipped one is no example


def test_verify_detects_corruption(strata, ud_store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(ud_store, copy)
    assert strata("verify", copy)[0] == 0
    shard = copy / "activations" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    code, _, err = strata("verify", copy)
    assert code == 1
    assert err.strip() == f"strata verify: error: {copy}: checksum mismatch in activations/c/0/0/0"
    shard.unlink()
    assert strata("verify", copy)[2].strip() == f"strata verify: error: {copy}: missing file activations/c/0/0/0"


def test_bitround_codec(strata, tiny_bert, text_corpus, tmp_path):
    assert strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                  "--out", tmp_path / "l.zarr")[0] == 0
    assert strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                  "--out", tmp_path / "b.zarr", "--codec", "bitround:3")[0] == 0
    exact = zarr.open_group(tmp_path / "l.zarr", mode="r")["activations"][...].astype(np.float32)
    rounded = zarr.open_group(tmp_path / "b.zarr", mode="r")["activations"][...].astype(np.float32)
    assert not np.array_equal(exact, rounded)
    # keeping 3 mantissa bits: relative error at most 2^-4
    # (plus an absolute term for float16 subnormals, whose precision is fixed)
    assert (np.abs(rounded - exact) <= np.abs(exact) * 2.0 ** -4 + 2.0 ** -17).all()
    code, _, err = strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                          "--out", tmp_path / "x.zarr", "--codec", "bitround:11")
    assert code == 1 and "--codec: bitround needs 1..10 mantissa bits for float16, got '11'" in err


def _edit_json(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def test_verify_covers_metadata(strata, ud_store, tmp_path):
    """Label classes, array metadata and root attributes are checksummed at finalize."""
    import shutil

    def swap_first_classes(doc):
        classes = doc["attributes"]["classes"]
        classes[0], classes[1] = classes[1], classes[0]

    def edit_summary(doc):
        doc["attributes"]["strata"]["summary"]["tokens"] = 999

    cases = [("label_upos/zarr.json", swap_first_classes, "checksum mismatch in label_upos/zarr.json"),
             ("zarr.json", edit_summary, "checksum mismatch in the root attributes (zarr.json)"),
             ("activations/zarr.json", lambda doc: doc.clear(), "checksum mismatch in activations/zarr.json")]
    for i, (rel, change, message) in enumerate(cases):
        copy = tmp_path / f"copy{i}.zarr"
        shutil.copytree(ud_store, copy)
        _edit_json(copy / rel, change)
        code, _, err = strata("verify", copy)
        assert code == 1
        assert err.strip() == f"strata verify: error: {copy}: {message}"
    # Rewriting the root zarr.json with the same attributes (another layout) is no change.
    copy = tmp_path / "same.zarr"
    shutil.copytree(ud_store, copy)
    (copy / "zarr.json").write_text(json.dumps(json.loads((copy / "zarr.json").read_text())))
    assert strata("verify", copy)[0] == 0


def test_verify_flags_files_written_after_finishing(strata, tiny_bert, text_corpus, tmp_path):
    out = tmp_path / "s.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text", "--out", out)[0] == 0
    # No sentence is skipped, so the all-False (fill value) chunk was never written.
    assert not (out / "sentence_skipped" / "c").exists()
    zarr.open_group(out, mode="r+")["sentence_skipped"][0] = True
    code, _, err = strata("verify", out)
    assert code == 1
    assert err.strip() == (f"strata verify: error: {out}: unrecorded file sentence_skipped/c/0 "
                           "(not part of the finished store)")


def test_verify_store_without_metadata_record(strata, ud_store, tmp_path):
    """Stores finished before metadata checksums existed still verify their data files."""
    import shutil

    copy = tmp_path / "old.zarr"
    shutil.copytree(ud_store, copy)
    shutil.rmtree(copy / "manifest" / "metadata")
    # A store with the hashes added after the metadata record was finished with one: damaged.
    code, _, err = strata("verify", copy)
    assert code == 1
    assert err.strip() == (f"strata verify: error: {copy}: damaged store: marked complete, but its metadata "
                           "record is missing")
    assert strata("inspect", copy)[2].strip() == (f"strata inspect: error: {copy}: damaged store: marked complete, "
                                                  "but its metadata record is missing; run strata verify")

    def as_old(doc):  # what a store from before the hashes holds
        for key in ("tokens_sha256", "weights_sha256"):
            del doc["attributes"]["strata"]["parameters"][key]

    _edit_json(copy / "zarr.json", as_old)
    code, out, _ = strata("verify", copy)
    assert code == 0
    assert strata("inspect", copy)[0] == 0  # an old store is not damaged
    assert out.strip().endswith("files match their checksums "
                                "(metadata not recorded: the store predates metadata checksums)")
    shard = copy / "activations" / "c" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-1])
    assert strata("verify", copy)[2].strip() == f"strata verify: error: {copy}: checksum mismatch in activations/c/0/0/0"


def test_verify_names_records_missing_from_a_complete_store(strata, ud_store, tmp_path):
    """A store marked complete that lost a record is damaged: rerunning extract (which says
    "already complete") would not bring it back, so verify must not say "rerun"."""
    import shutil

    n_units = len(list((ud_store / "manifest").glob("unit_*")))
    cases = [("unit_0000000", f"1 of {n_units} unit records are missing (first: unit 0)"),
             ("final", "its final record is missing"), ("plan", "its plan record is missing")]
    for record, message in cases:
        copy = tmp_path / f"{record}.zarr"
        shutil.copytree(ud_store, copy)
        shutil.rmtree(copy / "manifest" / record)
        code, _, err = strata("verify", copy)
        assert code == 1
        assert err.strip() == f"strata verify: error: {copy}: damaged store: marked complete, but {message}"
        code, _, err = strata("inspect", copy)  # inspect says the same, never "complete"
        assert code == 1
        assert err.strip() == (f"strata inspect: error: {copy}: damaged store: marked complete, but "
                               f"{message.split(' (first')[0]}; run strata verify")


@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")  # zarr's, on consolidating
def test_verify_checks_consolidated_metadata_and_follows_symlinked_folders(strata, ud_store, tiny_bert, text_corpus,
                                                                          tmp_path):
    import shutil

    copy = tmp_path / "c.zarr"
    shutil.copytree(ud_store, copy)
    zarr.consolidate_metadata(copy)  # what a user may add for xarray: a true copy verifies
    assert strata("verify", copy)[0] == 0

    def swap(doc):
        classes = doc["consolidated_metadata"]["metadata"]["label_upos"]["attributes"]["classes"]
        classes[0], classes[1] = classes[1], classes[0]

    _edit_json(copy / "zarr.json", swap)  # xarray would read these classes; strata reads the array's own
    code, _, err = strata("verify", copy)
    assert code == 1
    assert err.strip() == (f"strata verify: error: {copy}: the consolidated metadata in the root zarr.json "
                           "differs from label_upos/zarr.json (rerun zarr.consolidate_metadata, or remove it)")
    assert strata("inspect", copy, "--json")[0] == 0  # strata's own reads ignore the copy

    linked = tmp_path / "l.zarr"  # a chunk behind a symlinked folder is still a file of the store
    assert strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text", "--out", linked)[0] == 0
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "c").mkdir(parents=True)
    assert not (linked / "sentence_skipped" / "c").exists()
    (linked / "sentence_skipped" / "c").symlink_to(elsewhere / "c", target_is_directory=True)
    zarr.open_group(linked, mode="r+")["sentence_skipped"][0] = True
    assert (elsewhere / "c" / "0").is_file()
    code, _, err = strata("verify", linked)
    assert code == 1
    assert err.strip() == (f"strata verify: error: {linked}: unrecorded file sentence_skipped/c/0 "
                           "(not part of the finished store)")


def test_verify_an_unreadable_file_is_one_line(strata, ud_store, tmp_path, monkeypatch):
    from store import manifest

    real = manifest.sha256_file

    def denied(path):
        if path.as_posix().endswith("activations/c/0/0/0"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(manifest, "sha256_file", denied)  # root reads any file: deny it here
    code, _, err = strata("verify", ud_store)
    assert code == 1
    assert err.strip() == f"strata verify: error: {ud_store}: cannot read activations/c/0/0/0 (Permission denied)"


def test_verify_corrupt_manifest_record(strata, ud_store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(ud_store, copy)
    (copy / "manifest" / "unit_0000000" / "zarr.json").write_text("garbage\n")
    code, _, err = strata("verify", copy)
    assert code == 1
    assert err.strip() == f"strata verify: error: {copy}: corrupt manifest record unit_0000000"


def test_inspect_damaged_or_unfinished_store(strata, ud_store, tmp_path):
    import shutil

    unfinished = tmp_path / "unfinished.zarr"
    shutil.copytree(ud_store, unfinished)
    # What an interrupted creation leaves: root attributes (not complete), no plan, arrays missing.
    for name in ("manifest", "sentence_skipped", "activations"):
        shutil.rmtree(unfinished / name)
    _edit_json(unfinished / "zarr.json", lambda doc: doc["attributes"]["strata"].update(complete=False))
    for args in ((unfinished,), (unfinished, "--json")):
        code, _, err = strata("inspect", *args)
        assert code == 1
        assert err.strip() == (f"strata inspect: error: {unfinished}: incomplete: creation did not finish; "
                               "rerun the same extract command")
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(ud_store, damaged)
    (damaged / "activations" / "zarr.json").write_text("{}")
    code, _, err = strata("inspect", damaged)
    assert (code, err.strip()) == (1, f"strata inspect: error: {damaged}: damaged store: checksum mismatch in "
                                      "activations/zarr.json; run strata verify")
    # what inspect shows, changed or lost: said, not shown as a complete store (both were)
    shutil.copy(ud_store / "activations" / "zarr.json", damaged / "activations" / "zarr.json")
    _edit_json(damaged / "activations" / "zarr.json", lambda doc: doc.update(data_type="float32"))
    assert strata("inspect", damaged)[2].strip() == (f"strata inspect: error: {damaged}: damaged store: checksum "
                                                      "mismatch in activations/zarr.json; run strata verify")
    shutil.copy(ud_store / "activations" / "zarr.json", damaged / "activations" / "zarr.json")
    (damaged / "sentence_offsets" / "zarr.json").unlink()
    assert strata("inspect", damaged)[2].strip() == (f"strata inspect: error: {damaged}: damaged store: missing "
                                                      "file sentence_offsets/zarr.json; run strata verify")
    broken_root = tmp_path / "broken_root.zarr"
    shutil.copytree(ud_store, broken_root)
    (broken_root / "zarr.json").write_text("{")
    for command in ("inspect", "verify"):
        code, _, err = strata(command, broken_root)
        assert code == 1
        assert err.strip() == f"strata {command}: error: {broken_root}: damaged store: its root zarr.json cannot be read"
    garbled = tmp_path / "garbled.zarr"  # a record that is there but unreadable: inspect names it
    shutil.copytree(ud_store, garbled)
    (garbled / "manifest" / "unit_0000000" / "zarr.json").write_text("{garbage")
    assert strata("inspect", garbled)[2].strip() == (f"strata inspect: error: {garbled}: corrupt manifest record "
                                                      "unit_0000000")
    rootless = tmp_path / "rootless.zarr"
    shutil.copytree(ud_store, rootless)
    (rootless / "zarr.json").unlink()
    for command in ("inspect", "verify"):
        assert strata(command, rootless)[2].strip() == (f"strata {command}: error: {rootless}: damaged store: "
                                                        "its root zarr.json is missing")
    (rootless / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    assert strata("inspect", rootless)[2].strip() == (f"strata inspect: error: {rootless}: damaged store: its root "
                                                      "zarr.json has no 'strata' attributes (rewritten by another tool?)")
    unrecorded = tmp_path / "unrecorded.zarr"  # complete, then a unit record deleted
    shutil.copytree(ud_store, unrecorded)
    units = sorted((unrecorded / "manifest").glob("unit_*"))
    shutil.rmtree(units[0])
    code, _, err = strata("inspect", unrecorded)
    assert code == 1
    assert err.strip() == (f"strata inspect: error: {unrecorded}: damaged store: marked complete, but 1 of "
                           f"{len(units)} unit records are missing; run strata verify")


def test_subword_store_gives_each_subword_its_text_word_and_word_label(tiny_bert, ud_dev, tmp_path):
    """--word-vector subword: one token per subword, special tokens excluded; its text is the
    tokenizer's subword string, token_word its word's index and every label its word's label
    (checked against the tokenizer's own word_ids, sentence by sentence)."""
    from transformers import AutoTokenizer

    from strata import main

    out = tmp_path / "sub.zarr"
    assert main(["extract", "--model", str(tiny_bert), "--input", str(ud_dev), "--format", "conllu",
                 "--out", str(out), "--max-sentences", "40", "--word-vector", "subword", "--pool", "none"]) == 0
    corpus = read_corpus(ud_dev, "conllu", max_sentences=40)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    group = zarr.open_group(out, mode="r")
    offsets, skipped = group["sentence_offsets"][...], group["sentence_skipped"][...]
    text, word = group["token_text"][...].tolist(), group["token_word"][...]
    classes = group["label_upos"].attrs["classes"]
    upos = [classes[c] for c in group["label_upos"][...]]
    split_words = 0
    for i, words in enumerate(corpus.sentences):
        if skipped[i]:
            continue
        enc = tok([words], is_split_into_words=True)
        content = [(p, w) for p, w in enumerate(enc.word_ids(0)) if w is not None]
        a, b = offsets[i], offsets[i + 1]
        assert b - a == len(content)
        assert text[a:b] == tok.convert_ids_to_tokens([enc["input_ids"][0][p] for p, _ in content])
        assert word[a:b].tolist() == [w for _, w in content]
        assert upos[a:b] == [corpus.token_labels["upos"][i][w] for _, w in content]
        split_words += len(content) - len(words)
    assert split_words > 0 and not skipped.all()


def test_extract_never_recreates_a_complete_store_that_lost_its_plan(strata, ud_store, tiny_bert, ud_dev, tmp_path):
    """Without the plan record a store reads as an interrupted creation, which extract
    creates again (deleting it); marked complete, it is damaged and is left as it is."""
    import shutil

    copy = tmp_path / "planless.zarr"
    shutil.copytree(ud_store, copy)
    shutil.rmtree(copy / "manifest" / "plan")
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    code, _, err = strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu",
                          "--out", copy, "--max-sentences", "300", "--layers", "0,2")
    assert code == 1
    assert err.strip() == (f"strata extract: error: --out: {copy}: damaged store: marked complete, but its plan "
                           "record is missing; run strata verify, or extract into a new --out")
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before


def test_a_closed_pipe_ends_quietly(ud_store):
    """`strata inspect S --json | head -0`: no BrokenPipeError traceback."""
    import subprocess
    import sys

    reader = subprocess.Popen([sys.executable, "-m", "strata", "inspect", str(ud_store), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # the reader goes away before strata writes (it is still importing)
    err = reader.stderr.read().decode()
    assert reader.wait() == 141 and err == ""
