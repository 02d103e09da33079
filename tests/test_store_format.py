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
