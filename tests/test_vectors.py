"""Stored vectors equal a manual, one-sentence-at-a-time forward pass.

For every aggregation and three tokenizer families, each stored word (or
subword) vector is checked against the hidden state read by hand at the right
subword position of an unbatched forward pass; pooled vectors likewise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModel, AutoTokenizer

from tests.conftest import SENTENCES


def manual_vectors(model_dir, words, word_vector):
    """Hidden states of one sentence (float32), picked without strata's code."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    enc = tok([words], is_split_into_words=True, return_tensors="pt", split_special_tokens=True)
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    states = torch.stack(hidden)[:, 0].numpy()  # (layer, position, neuron)
    wids = enc.word_ids(0)
    vectors = []
    if word_vector == "subword":
        vectors = [states[:, p] for p, w in enumerate(wids) if w is not None]
    else:
        for w in range(len(words)):
            positions = [p for p, x in enumerate(wids) if x == w]
            pick = {"first": [positions[0]], "last": [positions[-1]], "mean": positions}[word_vector]
            vectors.append(states[:, pick].mean(axis=1))
    content = [p for p, w in enumerate(wids) if w is not None]
    cls_id = tok.cls_token_id
    ids = enc["input_ids"][0].tolist()
    cls_at = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
    return np.stack(vectors, axis=1), states[:, cls_at], states[:, content].mean(axis=1)


@pytest.mark.parametrize("family", ["bert", "gpt2", "roberta"])
@pytest.mark.parametrize("word_vector", ["last", "first", "mean", "subword"])
def test_stored_vectors_match_manual_forward(strata, tiny_models_by_name, text_corpus, tmp_path, family,
                                             word_vector):
    model_dir = tiny_models_by_name[family]
    out = tmp_path / "s.zarr"
    # A small token budget and tiny shards force multi-sentence batches,
    # several units, and sentences straddling shard boundaries.
    code, _, err = strata("extract", "--model", model_dir, "--input", text_corpus, "--format", "text",
                          "--out", out, "--dtype", "float32", "--word-vector", word_vector,
                          "--batch-tokens", "64", "--shard-tokens", "32")
    assert code == 0, err
    g = zarr.open_group(out, mode="r")
    acts, offsets = g["activations"][...], g["sentence_offsets"][...]
    assert g["layer"][...].tolist() == [0, 1, 2]
    n_sentences = len(SENTENCES) * 3
    assert len(offsets) == n_sentences + 1
    assert g["activations"].shards[1] == 32 and acts.shape[1] > 4 * 32  # several units
    multi_subword = 0
    for i in range(n_sentences):
        words = SENTENCES[i % len(SENTENCES)].split()
        expected, cls, mean = manual_vectors(model_dir, words, word_vector)
        stored = acts[:, offsets[i]:offsets[i + 1]]
        assert stored.shape == expected.shape
        np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g["pooled_cls"][:, i], cls, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g["pooled_mean"][:, i], mean, rtol=1e-4, atol=1e-5)
        multi_subword += stored.shape[1] - len(words) if word_vector == "subword" else 0
    if word_vector == "subword":
        assert multi_subword > 0  # the tiny vocabularies really split words
    text = g["token_text"][...]
    if word_vector != "subword":
        assert text[offsets[1]:offsets[2]].tolist() == SENTENCES[1].split()


@pytest.mark.parametrize("family", ["bert", "gpt2", "roberta"])
def test_words_spelled_like_special_tokens_are_text(strata, tiny_models_by_name, tmp_path, family):
    """A corpus word "[SEP]" or "<pad>" is text: the model never reads a control token
    mid-sentence.  Before, RoBERTa read "<pad>" as its pad id, which takes no position,
    and the words after it got their neighbour's positions."""
    model_dir = tiny_models_by_name[family]
    tok = AutoTokenizer.from_pretrained(model_dir)
    spellings = [t for t in tok.all_special_tokens if t.strip()]
    sentences = [["the", "cat", "sat"], ["the", *spellings, "cat", "sat"]]
    corpus = tmp_path / "special.txt"
    corpus.write_text("\n".join(" ".join(words) for words in sentences) + "\n")
    out = tmp_path / "s.zarr"
    code, _, err = strata("extract", "--model", model_dir, "--input", corpus, "--format", "text",
                          "--out", out, "--dtype", "float32")
    assert code == 0, err
    g = zarr.open_group(out, mode="r")
    acts, offsets = g["activations"][...], g["sentence_offsets"][...]
    for i, words in enumerate(sentences):
        expected, _, _ = manual_vectors(model_dir, words, "last")
        np.testing.assert_allclose(acts[:, offsets[i]:offsets[i + 1]], expected, rtol=1e-4, atol=1e-5)
    enc = tok([sentences[1]], is_split_into_words=True, split_special_tokens=True)
    content = [t for t, w in zip(enc["input_ids"][0], enc.word_ids(0)) if w is not None]
    control = set(tok.all_special_ids) - {tok.unk_token_id}  # a tiny vocabulary spells "[" as unk
    assert content and not set(content) & control  # the reference reads them as text too
    assert g["token_text"][offsets[1]:offsets[2]].tolist() == sentences[1]


def test_first_last_mean_differ_on_split_words(strata, tiny_bert, text_corpus, tmp_path):
    """Guards against an aggregation silently ignoring its option."""
    stores = {}
    for wv in ("first", "last", "mean"):
        out = tmp_path / f"{wv}.zarr"
        assert strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text", "--out", out,
                      "--word-vector", wv, "--dtype", "float32")[0] == 0
        stores[wv] = zarr.open_group(out, mode="r")["activations"][...]
    assert not np.allclose(stores["first"], stores["last"])
    assert not np.allclose(stores["mean"], stores["last"])


def test_float16_store_is_rounded_float32(strata, tiny_bert, text_corpus, tmp_path):
    for dtype in ("float16", "float32"):
        assert strata("extract", "--model", tiny_bert, "--input", text_corpus, "--format", "text",
                      "--out", tmp_path / dtype, "--dtype", dtype)[0] == 0
    half = zarr.open_group(tmp_path / "float16", mode="r")["activations"][...]
    full = zarr.open_group(tmp_path / "float32", mode="r")["activations"][...]
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, full.astype(np.float16))


def test_a_byte_level_tokenizer_of_the_generic_class_keeps_each_words_space(strata, tiny_gpt2, text_corpus,
                                                                              tmp_path):
    """Saved as the generic PreTrainedTokenizerFast with add_prefix_space off (as some hub
    models are), reloading with add_prefix_space=True only set the flag: every pre-split
    word lost its leading space, silently.  Checked against running text, word by word."""
    import json
    import shutil

    generic = tmp_path / "generic"
    shutil.copytree(tiny_gpt2, generic)
    doc = json.loads((generic / "tokenizer.json").read_text())
    assert doc["pre_tokenizer"]["type"] == "ByteLevel"
    doc["pre_tokenizer"]["add_prefix_space"] = False
    (generic / "tokenizer.json").write_text(json.dumps(doc))
    config = json.loads((generic / "tokenizer_config.json").read_text())
    config.pop("add_prefix_space", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (generic / "tokenizer_config.json").write_text(json.dumps(config))
    out = tmp_path / "s.zarr"
    assert strata("extract", "--model", generic, "--input", text_corpus, "--format", "text", "--out", out,
                  "--dtype", "float32", "--pool", "none")[0] == 0
    g = zarr.open_group(out, mode="r")
    acts, offsets = g["activations"][...], g["sentence_offsets"][...]
    tok, model = AutoTokenizer.from_pretrained(tiny_gpt2), AutoModel.from_pretrained(tiny_gpt2).eval()
    for i, sentence in enumerate(SENTENCES):
        pieces = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in sentence.split()]
        with torch.no_grad():
            hidden = model(torch.tensor([[x for p in pieces for x in p]]), output_hidden_states=True).hidden_states
        last = np.cumsum([len(p) for p in pieces]) - 1
        np.testing.assert_allclose(acts[:, offsets[i]:offsets[i + 1]], torch.stack(hidden)[:, 0, last].numpy(),
                                   rtol=1e-4, atol=1e-5)
