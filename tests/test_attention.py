"""``strata extract --attention cls`` and the attention statistics of ``strata compare``:
stored rows against a manual forward pass, entropy and EMD against hand values and SciPy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from scipy.stats import wasserstein_distance

from probe_engine.attention_stats import emd, entropy


def test_uniform_row_entropy_is_log_t_and_identical_rows_have_zero_emd():
    for T in (1, 2, 7, 40):
        row = np.full((1, 50), np.nan)
        row[0, :T] = 1.0 / T
        assert entropy(row)[0] == pytest.approx(np.log(T), abs=1e-12)
    rng = np.random.default_rng(0)
    rows = rng.random((3, 4, 9))
    assert emd(rows, rows.copy()).tolist() == np.zeros((3, 4)).tolist()


def test_emd_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.random((5, 12)), rng.random((5, 12))
    a[:, 9:] = np.nan  # a sentence of 9 positions padded to 12
    b[:, 9:] = np.nan
    positions = np.arange(9)
    want = [wasserstein_distance(positions, positions, a[i, :9], b[i, :9]) for i in range(5)]
    np.testing.assert_allclose(emd(a, b), want, rtol=1e-12)
    dirac = np.zeros((1, 6))
    far = dirac.copy()
    dirac[0, 0], far[0, 5] = 1, 1
    assert emd(dirac, far)[0] == 5.0


@pytest.fixture(scope="module")
def attention_store(tmp_path_factory, tiny_bert, ud_dev):
    from strata import main

    path = tmp_path_factory.mktemp("attention") / "att.zarr"
    assert main(["extract", "--model", str(tiny_bert), "--input", str(ud_dev), "--format", "conllu",
                 "--max-sentences", "60", "--attention", "cls", "--out", str(path)]) == 0
    return path


def test_stored_rows_match_a_manual_forward_pass(attention_store, tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    from extractor.readers import read_corpus

    group = zarr.open_group(attention_store, mode="r")
    stored = group["attention_cls"]
    assert tuple(stored.metadata.dimension_names) == ("block", "sentence", "head", "position")
    assert group.attrs["strata"]["parameters"]["attention"] == "cls"
    skipped = group["sentence_skipped"][...]
    corpus = read_corpus(group.attrs["strata"]["provenance"]["dataset"]["path"], "conllu", max_sentences=60)
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert, attn_implementation="eager").eval()
    for i in [s for s in range(60) if not skipped[s]][:5]:
        enc = tok(corpus.sentences[i], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            att = model(**enc, output_attentions=True).attentions
        n = enc["input_ids"].shape[1]
        want = np.stack([a[0, :, 0, :].numpy() for a in att])  # CLS is position 0 for BERT
        got = stored[:, i, :, :n].astype(np.float32)
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert np.isnan(stored[:, i, :, n:]).all()
    assert np.isnan(stored[:, np.flatnonzero(skipped)]).all()


def test_compare_reports_attention(attention_store, tmp_path, strata):
    code, stdout, _ = strata("compare", attention_store, attention_store, "--out", tmp_path / "c", "--quiet",
                             "--tokens", "100")
    assert code == 0
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    att = doc["attention"]
    assert att["blocks"] == [1, 2] and list(att["emd"].values()) == [0.0, 0.0]
    assert att["entropy_a"] == att["entropy_b"]
    group = zarr.open_group(attention_store, mode="r")
    keep = np.flatnonzero(~group["sentence_skipped"][...])
    assert att["entropy_a"]["1"] == pytest.approx(float(entropy(group["attention_cls"][0][keep]).mean()), rel=1e-12)
    assert "CLS attention" in stdout


def test_attention_statistics_of_models_with_other_heads_or_depths():
    """EMD pairs the same block and head, so it is left out (with the reason) when the models'
    blocks or heads differ; each model's entropies cover all its blocks."""
    from probe_engine.attention_stats import attention_statistics

    rng = np.random.default_rng(0)
    a = zarr.array(rng.random((2, 5, 2, 4)).astype(np.float16))
    b = zarr.array(rng.random((3, 5, 12, 4)).astype(np.float16))
    att = attention_statistics(a, b, np.arange(5))
    assert att["blocks"] == [1, 2, 3] and att["emd"] == {}
    assert att["emd_not_computed"] == "A has 2 blocks x 2 heads, B 3 x 12: the EMD compares the same block and head of both"
    assert list(att["entropy_a"]) == ["1", "2"] and list(att["entropy_b"]) == ["1", "2", "3"]
    assert att["entropy_b"]["3"] == pytest.approx(float(entropy(b[2][...]).mean()), rel=1e-12)
    same = attention_statistics(a, a, np.arange(5))
    assert "emd_not_computed" not in same and list(same["emd"].values()) == [0.0, 0.0]
