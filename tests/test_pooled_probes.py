"""Sentence-level probes on pooled vectors (``--pool``) and the derived SentEval tasks
(``strata tasks``): the tasks against hand rules, the probes against an independent
computation from plain zarr and scikit-learn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from sklearn.linear_model import LogisticRegression

from extractor.sentence_tasks import bigram_shift, sentence_length

UD_FILES = {"train": "en_ewt-ud-train.conllu", "dev": "en_ewt-ud-dev.conllu", "test": "en_ewt-ud-test.conllu"}
SIZES = {"train": 500, "dev": 200, "test": 200}
BINS = "1,8,13,20,200"  # four length classes; tiny BERT (64 positions) skips the longest sentences


def first_sentences(path, n, out):
    """The first ``n`` sentences of a CoNLL-U file, written to ``out``."""
    blocks = path.read_text(encoding="utf-8").split("\n\n")[:n]
    out.write_text("\n\n".join(blocks) + "\n\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------- the derived tasks
def test_bigram_shift_inverts_half_by_one_adjacent_swap():
    sentences = [[f"w{i}_{j}" for j in range(2 + i % 7)] for i in range(101)] + [["alone"]]
    rows = bigram_shift(sentences, np.random.default_rng(3))
    assert rows[-1] is None  # one word: cannot be inverted, left out
    labels = [r[0] for r in rows[:-1]]
    assert labels.count("I") == 50 and labels.count("O") == 51
    for (label, words), original in zip(rows[:-1], sentences):
        diff = [j for j, (a, b) in enumerate(zip(words, original)) if a != b]
        if label == "O":
            assert words == original
        else:
            assert len(diff) == 2 and diff[1] == diff[0] + 1
            assert words[diff[0]] == original[diff[1]] and words[diff[1]] == original[diff[0]]
    again = bigram_shift(sentences, np.random.default_rng(3))
    assert again == rows
    assert bigram_shift(sentences, np.random.default_rng(4)) != rows


def test_bigram_shift_never_labels_an_unchanged_sentence_inverted():
    """A swap of two equal words changes nothing: only pairs of different words are swapped,
    and a sentence of one repeated word cannot be inverted."""
    sentences = [["no", "no", "way"]] * 40 + [["no", "no"]]
    rows = bigram_shift(sentences, np.random.default_rng(0))
    assert rows[-1] is None
    for label, words in rows[:-1]:
        assert (label == "I") == (words != ["no", "no", "way"])
        if label == "I":
            assert words == ["no", "way", "no"]


def test_sentence_length_bins_by_hand():
    sentences = [["w"] * n for n in (4, 5, 8, 9, 28, 29)]
    rows = sentence_length(sentences, (5, 9, 13, 17, 21, 26, 29))
    assert [r and r[0] for r in rows] == [None, "5-8", "5-8", "9-12", "26-28", None]


def test_tasks_command_writes_senteval(tmp_path, ud_dev, strata):
    train = first_sentences(ud_dev, 40, tmp_path / "a.conllu")
    dev = first_sentences(ud_dev.parent / UD_FILES["test"], 10, tmp_path / "b.conllu")
    out = tmp_path / "bs.tsv"
    code, stdout, _ = strata("tasks", "bigram-shift", "--train", train, "--dev", dev, "--out", out, "--seed", "1")
    assert code == 0
    rows = [line.split("\t") for line in out.read_text(encoding="utf-8").splitlines()]
    # one of the first 40 UD dev sentences has a single word: it cannot be inverted
    assert [r[0] for r in rows] == ["tr"] * 39 + ["va"] * 10
    assert sorted(r[1] for r in rows) == ["I"] * 24 + ["O"] * 25  # floor(39/2) + floor(10/2) inverted
    assert all(r[1] in ("I", "O") for r in rows)
    assert stdout.startswith(f"{out}: bigram-shift, sentences written: train 39, dev 10; left out: 1; classes: ")
    # the same command again writes the same bytes; another seed other bytes
    before = out.read_bytes()
    assert strata("tasks", "bigram-shift", "--train", train, "--dev", dev, "--out", out, "--seed", "1")[0] == 0
    assert out.read_bytes() == before
    assert strata("tasks", "bigram-shift", "--train", train, "--dev", dev, "--out", out, "--seed", "2")[0] == 0
    assert out.read_bytes() != before


def test_tasks_splits_do_not_depend_on_which_others_are_given(tmp_path, ud_dev, strata):
    train = first_sentences(ud_dev, 30, tmp_path / "a.conllu")
    dev = first_sentences(ud_dev.parent / UD_FILES["train"], 10, tmp_path / "b.conllu")
    test = first_sentences(ud_dev.parent / UD_FILES["test"], 30, tmp_path / "c.conllu")
    assert strata("tasks", "bigram-shift", "--train", train, "--test", test, "--out", tmp_path / "tt.tsv")[0] == 0
    assert strata("tasks", "bigram-shift", "--train", train, "--dev", dev, "--test", test,
                  "--out", tmp_path / "tdt.tsv")[0] == 0
    rows = {name: [r for r in (tmp_path / name).read_text().splitlines() if r.startswith("te")]
            for name in ("tt.tsv", "tdt.tsv")}
    assert rows["tt.tsv"] == rows["tdt.tsv"] and len(rows["tt.tsv"]) > 20


def test_tasks_out_that_cannot_be_written(tmp_path, ud_dev, strata):
    code, _, err = strata("tasks", "bigram-shift", "--train", ud_dev, "--out", tmp_path / "none" / "x.tsv")
    assert (code, err.strip()) == (1, f"strata tasks: error: --out: cannot write {tmp_path / 'none' / 'x.tsv'}: "
                                      "No such file or directory")
    code, _, err = strata("tasks", "bigram-shift", "--train", ud_dev, "--out", tmp_path)
    assert (code, err.strip()) == (1, f"strata tasks: error: --out: {tmp_path} is a directory; "
                                      "give the TSV file to write")
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.tmp-*")) and not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(SystemExit) as exit_:  # an argparse choice (neurox needs a labels file tasks do not take)
        strata("tasks", "bigram-shift", "--train", ud_dev, "--format", "neurox", "--out", tmp_path / "n")
    assert exit_.value.code == 2


@pytest.mark.parametrize("bins, message", [
    ("5,x", "--length-bins: '5,x' is not a comma-separated list of integers"),
    ("9,5", "--length-bins: need at least two increasing word counts >= 1, got '9,5'"),
    ("5", "--length-bins: need at least two increasing word counts >= 1, got '5'"),
    ("5,,9", "--length-bins: '5,,9' is not a comma-separated list of integers"),
])
def test_tasks_command_errors(tmp_path, ud_dev, strata, bins, message):
    code, _, err = strata("tasks", "sentence-length", "--train", ud_dev, "--length-bins", bins,
                          "--out", tmp_path / "x.tsv")
    assert code == 1
    assert err.strip() == f"strata tasks: error: {message}"
    assert not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("task, option, message", [
    ("bigram-shift", ["--length-bins", "5,9"], "--length-bins: only sentence-length uses it, not bigram-shift"),
    ("sentence-length", ["--seed", "3"], "--seed: only bigram-shift uses it, not sentence-length"),
])
def test_tasks_refuse_an_option_of_the_other_task(tmp_path, ud_dev, strata, task, option, message):
    """It was ignored: a user binning bigram-shift by length got the plain task."""
    code, _, err = strata("tasks", task, "--train", ud_dev, *option, "--out", tmp_path / "x.tsv")
    assert (code, err.strip()) == (1, f"strata tasks: error: {message}")
    assert not (tmp_path / "x.tsv").exists()


def test_tasks_warn_when_dev_is_the_train_file(tmp_path, ud_dev, strata):
    code, _, err = strata("tasks", "sentence-length", "--train", ud_dev, "--dev", ud_dev, "--out", tmp_path / "x.tsv")
    assert code == 0
    assert [line for line in err.splitlines() if "warning" in line] == [
        "strata tasks: warning: --dev is the --train file: both splits hold the same sentences, so a probe's dev "
        "accuracy measures memorization"]


def test_tasks_names_the_option_of_a_missing_input(tmp_path, ud_dev, strata):
    code, _, err = strata("tasks", "bigram-shift", "--train", ud_dev, "--dev", tmp_path / "none.conllu",
                          "--out", tmp_path / "x.tsv")
    assert (code, err.strip()) == (1, f"strata tasks: error: --dev: input file not found: {tmp_path / 'none.conllu'}")


# --------------------------------------------------------------------------- pooled probes
@pytest.fixture(scope="module")
def senteval_store(tmp_path_factory, tiny_bert, ud_dev):
    """sentence-length over the first UD sentences of each split, extracted with both poolings."""
    from strata import main

    root = tmp_path_factory.mktemp("pooled")
    inputs = {split: first_sentences(ud_dev.parent / UD_FILES[split], SIZES[split], root / f"{split}.conllu")
              for split in UD_FILES}
    tsv, store = root / "length.tsv", root / "length.zarr"
    assert main(["tasks", "sentence-length", "--train", str(inputs["train"]), "--dev", str(inputs["dev"]),
                 "--test", str(inputs["test"]), "--length-bins", BINS, "--out", str(tsv)]) == 0
    assert main(["extract", "--model", str(tiny_bert), "--input", str(tsv), "--format", "senteval",
                 "--out", str(store), "--pool", "cls,mean"]) == 0
    return store


def pooled_rows(store, kind, layer, split):
    """Pooled vectors and class names of one SentEval split, read with plain zarr."""
    group = zarr.open_group(store, mode="r")
    splits = group["sentence_label_split"]
    rows = (splits[...] == list(splits.attrs["classes"]).index(split)) & ~group["sentence_skipped"][...]
    labels = group["sentence_label_label"]
    X = group[f"pooled_{kind}"][group["layer"][...].tolist().index(layer)][rows].astype(np.float64)
    return X, np.array(labels.attrs["classes"])[labels[...][rows]]


def test_pooled_probe_matches_scikit_learn(senteval_store, tmp_path, strata):
    out = tmp_path / "run"
    code, stdout, _ = strata("probe", "--train", senteval_store, "--dev", senteval_store, "--test", senteval_store,
                             "--labels", "label", "--pool", "cls,mean", "--layers", "each", "--l1", "0",
                             "--l2", "1e-2", "--tol", "1e-6", "--quiet", "--out", out)
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["strata_probe"]["pool"] == ["cls", "mean"]
    assert {(c["pool"], c["layers"][0]) for c in doc["chosen"]} == {(k, i) for k in ("cls", "mean") for i in (0, 1, 2)}
    assert "layer 2 (mean)" in stdout
    group = zarr.open_group(senteval_store, mode="r")
    skipped = int(group["sentence_skipped"][...].sum())
    assert skipped > 0  # the long sentences are not rows
    for chosen in doc["chosen"]:
        kind, layer = chosen["pool"], chosen["layers"][0]
        X, y = pooled_rows(senteval_store, kind, layer, "tr")
        assert chosen["rows"]["train"] == len(y)
        weights = np.load(out / chosen["weights"])
        Z = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1)
        # scikit-learn solves the same problem: C = 1 / (2 * l2 * n)
        ref = LogisticRegression(C=1 / (2 * 1e-2 * len(y)), tol=1e-10, max_iter=10000).fit(Z, y)
        assert list(ref.classes_) == list(weights["classes"])
        np.testing.assert_allclose(weights["W"], ref.coef_.T, atol=2e-3)
        for split, code_ in (("dev", "va"), ("test", "te")):
            Xs, ys = pooled_rows(senteval_store, kind, layer, code_)
            Zs = (Xs.astype(np.float32) - weights["mean"]) / weights["scale"]
            pred = weights["classes"][np.argmax(Zs @ weights["W"] + weights["b"], axis=1)]
            assert chosen[f"{split}_accuracy"] == pytest.approx(np.mean(pred == ys), abs=1e-12)
            assert chosen["rows"][split] == len(ys)


def test_pooled_neurons_run_and_control_is_refused(senteval_store, tmp_path, strata):
    args = ["neurons", "--train", senteval_store, "--dev", senteval_store, "--test", senteval_store,
            "--labels", "label", "--pool", "mean", "--l1", "1e-3", "--l2", "1e-3", "--fractions", "0.1,0.5,1",
            "--quiet", "--out", tmp_path / "n"]
    code, stdout, _ = strata(*args)
    assert code == 0
    doc = json.loads((tmp_path / "n" / "neurons.json").read_text())
    assert doc["strata_neurons"]["pool"] == "mean"
    assert doc["neurons_total"] == 3 * 32
    assert sorted(np.load(tmp_path / "n" / "ordering.npz")["ordering"].tolist()) == list(range(96))
    assert stdout.startswith("# Neuron analysis: label (mean-pooled sentence vectors)")
    X, y = pooled_rows(senteval_store, "mean", 0, "tr")
    assert doc["oracle"]["train_accuracy"] is not None and len(y) > 300
    code, _, err = strata(*args, "--control")
    assert code == 1
    assert err.strip() == ("strata neurons: error: --control: a control task is not defined for a sentence-level "
                           "label set (Hewitt & Liang draw control labels per word type); drop --control or --pool")


def test_pool_errors(senteval_store, tmp_path, strata, tiny_bert, ud_dev):
    common = ["probe", "--train", senteval_store, "--dev", senteval_store, "--quiet", "--out", tmp_path / "o"]
    code, _, err = strata(*common, "--labels", "label")
    assert code == 1
    assert err.strip() == (f"strata probe: error: --labels: {senteval_store} has no token-level label set 'label' "
                           "(it has: none); it is a sentence-level label set: probe pooled sentence vectors with "
                           "--pool cls or --pool mean")
    train_only = tmp_path / "train_only.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", senteval_store.parent / "length.tsv", "--format",
                  "senteval", "--max-sentences", "50", "--out", train_only)[0] == 0
    code, _, err = strata("probe", "--train", train_only, "--dev", train_only, "--labels", "label", "--pool", "mean",
                          "--quiet", "--out", tmp_path / "o")
    assert err.strip() == (f"strata probe: error: --dev: {train_only.resolve()} has no rows labelled in 'label' "
                           "(no sentence of SentEval split 'va')")
    code, _, err = strata(*common, "--labels", "label", "--pool", "max")
    assert err.strip() == "strata probe: error: --pool: 'max' is not one of cls, mean"
    nopool = tmp_path / "nopool.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu", "--out", nopool,
                  "--max-sentences", "20", "--pool", "cls")[0] == 0
    code, _, err = strata("probe", "--train", nopool, "--dev", nopool, "--labels", "upos", "--pool", "mean",
                          "--quiet", "--out", tmp_path / "o")
    assert err.strip() == (f"strata probe: error: --pool: {nopool.resolve()} has no pooled_mean array "
                           "(extract it with --pool mean)")
    code, _, err = strata("probe", "--train", nopool, "--dev", nopool, "--labels", "upos", "--pool", "cls",
                          "--quiet", "--out", tmp_path / "o")
    assert err.strip() == (f"strata probe: error: --labels: {nopool.resolve()} has no sentence-level label set "
                           "'upos' (it has: none); --pool probes need one label per sentence")


def test_tasks_refuses_a_negative_seed(tmp_path, ud_dev, strata):
    code, _, err = strata("tasks", "bigram-shift", "--train", ud_dev, "--seed=-1", "--out", tmp_path / "x.tsv")
    assert code == 1 and err.strip() == "strata tasks: error: --seed: must be >= 0, got -1"
    assert not (tmp_path / "x.tsv").exists()
