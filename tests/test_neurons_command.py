"""``strata neurons`` end to end on small stores: every number traceable, resume, errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from probe_engine import neurons as neuron_steps


ARGS = ["--labels", "upos", "--l1", "0,1e-3", "--l2", "1e-3", "--fractions", "0.05,0.1,0.3,0.6",
        "--delta", "0.02", "--control", "--quiet"]


def neurons_args(stores, out, *extra):
    return ["neurons", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"], *ARGS,
            "--out", out, *extra]


@pytest.fixture(scope="module")
def analysis(stores, tmp_path_factory):
    from strata import main

    out = tmp_path_factory.mktemp("neurons") / "run"
    assert main([str(a) for a in neurons_args(stores, out)]) == 0
    return out


def load(out):
    return json.loads((out / "neurons.json").read_text())


def test_the_analysis_hangs_together(analysis):
    doc = load(analysis)
    d = doc["neurons_total"]
    assert d == 3 * 32 and doc["layers"] == [0, 1, 2]
    # the oracle's grid is screened by default: chosen among the points solved to --tol
    assert doc["strata_neurons"]["screen_tol"] == 1e-3
    # when it finished, as results.json and compare.json say (the README promised it before it was there)
    from datetime import datetime
    assert datetime.fromisoformat(doc["strata_neurons"]["finished"]).tzinfo is not None
    refined = [r for r in doc["oracle_grid"] if not r["screened_out"]]
    assert refined and all(r["tol"] == doc["strata_neurons"]["tol"] and r["converged"] for r in refined)
    assert all(r["tol"] == 1e-3 for r in doc["oracle_grid"] if r["screened_out"])
    assert doc["oracle"]["dev_accuracy"] == max(r["dev_accuracy"] for r in refined)
    assert [t["k"] for t in doc["top_k"]] == [5, 10, 29, 58]  # ceil(fraction * 96)
    m = doc["minimal"]
    within = [t for t in doc["top_k"] if t["dev_accuracy"] >= doc["oracle"]["dev_accuracy"] - 0.02]
    assert m["within_delta"] == bool(within)
    assert m["k"] == (min(t["k"] for t in within) if within else 58)
    assert sum(doc["layer_distribution"].values()) == m["k"]
    ordering = np.load(analysis / "ordering.npz")
    assert sorted(ordering["ordering"].tolist()) == list(range(d))  # a permutation of all neurons
    assert ordering["selected"].tolist() == ordering["ordering"][:m["k"]].tolist()
    counts = np.bincount(ordering["selected"] // 32, minlength=3)
    assert list(doc["layer_distribution"].values()) == counts.tolist()
    for name in ("top", "bottom", "random"):
        assert set(doc["ablation"][name]) == {"retrained_dev", "retrained_test", "zeroed_dev", "zeroed_test"}
    # the retrained top k is the minimal step's probe at k, not a second training of it
    assert (doc["ablation"]["top"]["retrained_dev"], doc["ablation"]["top"]["retrained_test"]) == \
        (m["dev_accuracy"], m["test_accuracy"])
    steps = json.loads((analysis / "steps" / "ablation.json").read_text())
    assert steps["retrained"]["top_from"] == "minimal" and len(steps["retrained"]["iterations"]) == 3
    c = doc["control"]
    for key in ("all_neurons", "selected_neurons"):
        assert c[key]["selectivity_test"] == pytest.approx(c[key]["task_test"] - c[key]["control_test"])
    assert c["all_neurons"]["task_test"] == doc["oracle"]["test_accuracy"]
    summary = (analysis / "summary.md").read_text()
    assert f"k = {m['k']}" in summary and "selectivity" in summary
    # bottom k: the last k of the ordering, or drawn among the oracle's zero-weight neurons when
    # at least k of them are tied there
    W = np.load(analysis / "steps" / "oracle.npz")["W"]
    unweighted = np.flatnonzero(~W.any(axis=1))
    ordering = np.load(analysis / "ordering.npz")["ordering"]
    bottom = steps["sets"]["bottom"]
    assert doc["ablation_bottom"]["unweighted_neurons"] == len(unweighted)
    if doc["ablation_bottom"]["drawn_among_unweighted"]:
        assert len(unweighted) >= m["k"] and set(bottom) <= set(unweighted.tolist()) and "were drawn" in summary
    else:
        assert len(unweighted) < m["k"] and bottom == sorted(ordering[-m["k"]:].tolist())
    for png in ("layer_distribution.png", "minimal_set.png"):
        assert (analysis / png).read_bytes()[:4] == b"\x89PNG"


def test_zeroed_ablation_matches_a_manual_computation(analysis, stores):
    """The oracle with every weight outside the top k set to zero, scored by hand on plain zarr."""
    doc = load(analysis)
    oracle = np.load(analysis / "steps" / "oracle.npz")
    top = np.load(analysis / "ordering.npz")["selected"]
    group = zarr.open_group(stores["test"], mode="r")
    X = np.concatenate([group["activations"][i] for i in range(3)], axis=1).astype(np.float32)
    codes = group["label_upos"][...]
    keep = codes >= 0
    names = np.array(group["label_upos"].attrs["classes"])[codes[keep]]
    Xs = (X[keep] - oracle["mean"]) / oracle["scale"]
    W = np.zeros_like(oracle["W"])
    W[top] = oracle["W"][top]
    pred = np.array(doc["classes"])[(Xs @ W + oracle["b"]).argmax(axis=1)]
    assert doc["ablation"]["top"]["zeroed_test"] == pytest.approx((pred == names).mean(), abs=1e-9)


def test_interrupted_analysis_continues_from_finished_steps(analysis, stores, tmp_path, strata, monkeypatch):
    shutil.copytree(analysis / "steps", tmp_path / "run" / "steps")
    (tmp_path / "run" / "steps" / "control.json").unlink()  # as if killed during the control step
    trained = []
    real = neuron_steps.NeuronData.train_and_score

    def spy(self, *args, **kwargs):
        trained.append(args[4])  # the label kind: task or control
        return real(self, *args, **kwargs)

    monkeypatch.setattr(neuron_steps.NeuronData, "train_and_score", spy)
    monkeypatch.setattr(neuron_steps, "run_group", lambda spec: pytest.fail("the oracle was retrained"))
    code, out, err = strata(*neurons_args(stores, tmp_path / "run"))
    assert code == 0, err
    assert trained == ["control"]
    doc = load(tmp_path / "run")
    assert doc["strata_neurons"]["steps_reused"] == ["oracle", "ranking", "minimal", "ablation"]
    assert doc["control"] == load(analysis)["control"]


def test_probeless_ranking_needs_no_probe(analysis, stores, tmp_path, strata):
    shutil.copytree(analysis / "steps", tmp_path / "run" / "steps")
    code, _, err = strata(*neurons_args(stores, tmp_path / "run", "--ranking", "probeless"))
    assert code == 0, err
    doc = load(tmp_path / "run")
    assert doc["strata_neurons"]["steps_reused"] == ["oracle"]  # a new ranking redoes every later step
    assert doc["strata_neurons"]["ranking"] == "probeless"


def test_screening_off_solves_every_oracle_point_to_tol(analysis, stores, tmp_path, strata):
    """--screen-tol off: every grid point to --tol; no step of a screened run is reused (the
    option is an input of every step)."""
    shutil.copytree(analysis / "steps", tmp_path / "run" / "steps")
    code, _, err = strata(*neurons_args(stores, tmp_path / "run", "--screen-tol", "off"))
    assert code == 0, err
    doc = load(tmp_path / "run")
    assert doc["strata_neurons"]["screen_tol"] is None and doc["strata_neurons"]["steps_reused"] == []
    assert all(r["tol"] == doc["strata_neurons"]["tol"] and not r["screened_out"] and r["converged"]
               for r in doc["oracle_grid"])


def test_a_screened_out_oracle_point_is_not_chosen(stores, tmp_path, strata):
    """With no margin only round 1's best grid point goes on to --tol; the oracle is that point,
    the other is reported at the screen tolerance."""
    code, _, err = strata(*neurons_args(stores, tmp_path / "run", "--screen-margin", "0"))
    assert code == 0, err
    doc = load(tmp_path / "run")
    out = [r for r in doc["oracle_grid"] if r["screened_out"]]
    kept = [r for r in doc["oracle_grid"] if not r["screened_out"]]
    assert len(out) == 1 and len(kept) == 1 and out[0]["tol"] == 1e-3 and kept[0]["tol"] == 1e-5
    assert (doc["oracle"]["l1"], doc["oracle"]["l2"]) == (kept[0]["l1"], kept[0]["l2"])
    assert "chosen on dev from 2 grid points, 1 of them screened out at tol 0.001." in \
        (tmp_path / "run" / "summary.md").read_text()


@pytest.mark.parametrize("option,value,message", [
    ("--screen-tol", "-1", "--screen-tol: must be > 0 and finite, or off, got -1"),
    ("--fractions", "0.1,1.5", "--fractions: 1.5 is not in (0, 1]"),
    ("--fractions", "0", "--fractions: 0.0 is not in (0, 1]"),
    ("--delta", "-0.1", "--delta: must be >= 0, got -0.1"),
    ("--labels", "upos,xpos", "--labels: strata neurons takes one label set"),
])
def test_bad_options(stores, tmp_path, strata, option, value, message):
    args = neurons_args(stores, tmp_path / "out")
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    assert strata(*args)[0] == 1
    assert strata(*args)[2].strip() == f"strata neurons: error: {message}"


def test_one_class_is_refused(stores, tmp_path, strata):
    train = tmp_path / "one.zarr"
    shutil.copytree(stores["train"], train)
    labels = zarr.open_group(train, mode="r+")["label_upos"]
    labels[...] = np.where(labels[...] >= 0, 3, -1).astype(np.int16)
    code, _, err = strata(*neurons_args({**stores, "train": train}, tmp_path / "out"))
    # the edit breaks the store's checksums, and verify runs before any label is read
    assert (code, err.strip()) == (1, f"strata neurons: error: --train: {train.resolve()}: checksum mismatch in "
                                      "label_upos/c/0 (strata verify checks it; --no-verify skips the check)")
    code, _, err = strata(*neurons_args({**stores, "train": train}, tmp_path / "out", "--no-verify"))
    assert code == 1
    assert err.strip() == f"strata neurons: error: --labels: 'upos' has 1 class(es) in {train.resolve()}; a probe needs two"


def test_control_on_a_sentence_level_task_is_refused(tiny_bert, tmp_path, strata):
    tsv = tmp_path / "probing.txt"
    tsv.write_text("".join(f"{s}\t{lab}\tthe cat sat number {i}\n"
                           for i, (s, lab) in enumerate([("tr", "A"), ("tr", "B"), ("va", "A"), ("te", "B")] * 5)))
    store = tmp_path / "sent.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", tsv, "--format", "senteval", "--out", store)[0] == 0
    code, _, err = strata("neurons", "--train", store, "--dev", store, "--test", store, "--labels", "label",
                          "--control", "--quiet", "--out", tmp_path / "out")
    assert code == 1
    assert err.strip() == ("strata neurons: error: --control: a control task is not defined for a sentence-level "
                           "label set (Hewitt & Liang draw control labels per word type); drop --control or --pool")


@pytest.mark.parametrize("cap", ["all", "train in memory, dev part", "train part"])
def test_control_labels_share_the_task_features_under_one_memory_cap(analysis, stores, monkeypatch, cap):
    """The control task relabels the task's blocks (each split read and held once, the same
    feature arrays), and ``max_memory`` bounds what train, dev and test hold together, train first."""
    from probe_engine.blocks import InMemoryBlocks
    from probe_engine.features import FeatureSet, Standardizer

    oracle = np.load(analysis / "steps" / "oracle.npz")
    classes = load(analysis)["classes"]
    reads = []
    real_read = FeatureSet.read_raw
    monkeypatch.setattr(FeatureSet, "read_raw", lambda self, i: reads.append((str(self.store.path), i))
                        or real_read(self, i))

    def data(max_memory):
        options = {"device": "cpu", "label": "upos", "max_memory": max_memory,
                   **{split: str(stores[split]) for split in ("train", "dev", "test")}}
        return neuron_steps.NeuronData(options, Standardizer(oracle["mean"], oracle["scale"]), classes, n_probes=4)

    probe = data(1 << 40)
    sizes = {split: FeatureSet(probe.stores[split], probe.positions, probe.y[split], probe.block).memory_bytes()
             for split in ("train", "dev", "test")}
    max_memory = {"all": sum(sizes.values()), "train in memory, dev part": sizes["train"] + sizes["dev"] // 4,
                  "train part": sizes["train"] // 3}[cap]
    nd = data(max_memory)
    held = 0
    for split in ("train", "dev", "test"):
        y_control = np.where(nd.y[split] != -1, (nd.y[split] + 1) % 3, -1)  # any labels keeping the same rows
        task, control = nd.blocks(split, nd.y[split], "task"), nd.blocks(split, y_control, "control")
        for (Xt, yt), (Xc, yc) in zip(task, control, strict=True):
            assert np.array_equal(Xt, Xc) and np.array_equal(yc, (yt + 1) % 3)
        if isinstance(task, InMemoryBlocks):
            assert all(Xc is Xt for (Xt, _), (Xc, _) in zip(task.pairs, control.pairs))  # shared, not copied
            held += sizes[split]
        else:
            assert control.keep == 0 and not control.held  # held blocks are the task's copy alone
            held += nd._task_features[split].held_bytes(task)
    assert held <= max_memory
    in_memory = {split: isinstance(nd.blocks(split, nd.y[split], "task"), InMemoryBlocks) for split in sizes}
    assert in_memory == {"all": dict(train=True, dev=True, test=True),
                         "train in memory, dev part": dict(train=True, dev=False, test=False),
                         "train part": dict(train=False, dev=False, test=False)}[cap]
    if cap == "all":  # every split read once, whatever the label kind
        assert sorted(reads) == sorted(set(reads))
        train = nd._task_features["train"]
        other = FeatureSet(nd.stores["train"], nd.positions, np.where(nd.y["train"] == 0, -1, nd.y["train"]), nd.block)
        with pytest.raises(ValueError, match="^relabeled: the two label sets keep different rows$"):
            other.relabeled(nd.blocks("train", nd.y["train"], "task"), train, np)


def test_another_seed_redoes_only_the_steps_that_draw(analysis, stores, tmp_path, strata):
    """The seed draws the random ablation set and the control labels, nothing before them."""
    shutil.copytree(analysis / "steps", tmp_path / "run" / "steps")
    code, _, err = strata(*neurons_args(stores, tmp_path / "run", "--seed", "1"))
    assert code == 0, err
    doc = load(tmp_path / "run")
    assert doc["strata_neurons"]["steps_reused"] == ["oracle", "ranking", "minimal"]
    random_set = json.loads((tmp_path / "run" / "steps" / "ablation.json").read_text())["sets"]["random"]
    assert random_set != json.loads((analysis / "steps" / "ablation.json").read_text())["sets"]["random"]


def test_a_sparse_oracle_ties_only_its_all_zero_neurons_last(stores, tmp_path, strata):
    """An l1 oracle zeroes some neurons for every class and others for a few classes only:
    "unweighted" (tied last by LCA, where the bottom k are drawn) means zero for every class,
    and the bottom k come from those neurons alone."""
    out = tmp_path / "sparse"
    code, _, err = strata("neurons", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"],
                          "--labels", "upos", "--l1", "3e-2", "--l2", "1e-3", "--fractions", "0.05,0.1",
                          "--delta", "0.5", "--quiet", "--out", out)
    assert code == 0, err
    doc = load(out)
    W = np.load(out / "steps" / "oracle.npz")["W"]
    zero = W == 0
    all_zero = zero.all(axis=1)
    assert all_zero.any() and (zero.any(axis=1) & ~all_zero).any()  # both kinds of neuron are there
    assert doc["ablation_bottom"]["unweighted_neurons"] == int(all_zero.sum())
    bottom = json.loads((out / "steps" / "ablation.json").read_text())["sets"]["bottom"]
    assert all_zero.sum() >= doc["minimal"]["k"] and doc["ablation_bottom"]["drawn_among_unweighted"]
    assert len(bottom) == doc["minimal"]["k"] and all_zero[bottom].all()


def test_an_oracle_npz_from_another_run_is_not_paired_with_this_runs_json(analysis, stores, tmp_path, strata,
                                                                           monkeypatch):
    """A run with other options killed after writing its oracle.npz but before its
    oracle.json leaves this run's json beside another run's weights: the oracle is redone."""
    from probe_engine.outputs import read_npz, write_npz

    run = tmp_path / "run"
    shutil.copytree(analysis / "steps", run / "steps")
    foreign = read_npz(run / "steps" / "oracle.npz")
    foreign["W"] = foreign["W"] * 2
    foreign["inputs"] = np.array("0123456789abcdef")  # another run's inputs hash
    write_npz(run / "steps" / "oracle.npz", foreign)
    retrained = []
    real = neuron_steps.run_group
    monkeypatch.setattr(neuron_steps, "run_group", lambda spec: retrained.append(1) or real(spec))
    code, _, err = strata(*neurons_args(stores, run))
    assert code == 0, err
    assert retrained == [1]
    assert "oracle" not in load(run)["strata_neurons"]["steps_reused"]
    assert load(run)["ablation"] == load(analysis)["ablation"]


def test_a_missing_oracle_npz_redoes_the_oracle(analysis, stores, tmp_path, strata):
    run = tmp_path / "run"
    shutil.copytree(analysis / "steps", run / "steps")
    (run / "steps" / "oracle.npz").unlink()
    code, _, err = strata(*neurons_args(stores, run))
    assert code == 0, err
    assert "oracle" not in load(run)["strata_neurons"]["steps_reused"]
    assert load(run)["ablation"] == load(analysis)["ablation"]


def test_control_labels_of_one_class_are_refused(tiny_bert, tmp_path, strata):
    """A task whose training tokens are nearly all of one class: every word type drew it,
    and a control probe of one class would report 100% and a selectivity of nonsense."""
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
    text, labels = tmp_path / "x.txt", tmp_path / "x.lab"
    sentences = [[words[(i + j) % len(words)] for j in range(6)] for i in range(40)]
    text.write_text("".join(" ".join(s) + "\n" for s in sentences))
    labels.write_text("".join(" ".join("B" if (i, j) == (0, 0) else "A" for j in range(6)) + "\n"
                              for i in range(40)))
    store = tmp_path / "x.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", text, "--labels", labels, "--format", "neurox",
                  "--out", store, "--pool", "none")[0] == 0
    code, _, err = strata("neurons", "--train", store, "--dev", store, "--test", store, "--labels", "label",
                          "--l1", "0", "--l2", "1e-3", "--fractions", "0.5", "--control", "--quiet",
                          "--out", tmp_path / "out")
    assert code == 1
    assert err.strip() == ("strata neurons: error: --control: with --seed 0 every training word type drew the "
                           "class 'A'; a control probe needs two classes: try another --seed")
    assert not (tmp_path / "out").exists()  # the draw needs no training: refused before the first step


def test_control_on_a_subword_store_is_refused(tiny_bert, ud_dev, tmp_path, strata):
    """Its rows are subword pieces: a control label per piece is not Hewitt & Liang's per word type."""
    store = tmp_path / "sub.zarr"
    assert strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu", "--max-sentences", "30",
                  "--word-vector", "subword", "--pool", "none", "--out", store)[0] == 0
    code, _, err = strata("neurons", "--train", store, "--dev", store, "--test", store, "--labels", "upos",
                          "--control", "--quiet", "--out", tmp_path / "out")
    assert (code, err.strip()) == (1, f"strata neurons: error: --control: {store.resolve()} is a subword store "
                                      "(--word-vector subword): its rows are subword pieces, and control labels are "
                                      "drawn per word type; extract with --word-vector last, first or mean")


def test_a_step_run_again_runs_every_later_step_again(analysis, stores, tmp_path, strata):
    """The ablation uses the minimal step's k, the control task its neurons: after the
    minimal step is redone, neither may be taken from the run before."""
    run = tmp_path / "run"
    shutil.copytree(analysis / "steps", run / "steps")
    assert strata(*neurons_args(stores, run))[0] == 0
    assert load(run)["strata_neurons"]["steps_reused"] == ["oracle", "ranking", "minimal", "ablation", "control"]
    (run / "steps" / "minimal.json").write_text("{damaged")
    assert strata(*neurons_args(stores, run))[0] == 0
    assert load(run)["strata_neurons"]["steps_reused"] == ["oracle", "ranking"]
    assert load(run)["ablation"] == load(analysis)["ablation"]  # deterministic: the same numbers again
    # a change that still parses (one digit of the minimal step's dev accuracy) is redone too:
    # trusted, it reached neurons.json and summary.md
    record = run / "steps" / "minimal.json"
    text = record.read_text()
    accuracy = json.loads(text)["scores"]["dev"][0]
    record.write_text(text.replace(json.dumps(accuracy), json.dumps(accuracy + 0.07), 1))
    assert strata(*neurons_args(stores, run))[0] == 0
    assert load(run)["strata_neurons"]["steps_reused"] == ["oracle", "ranking"]
    assert load(run)["minimal"] == load(analysis)["minimal"]
