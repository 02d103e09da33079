"""``strata probe`` end to end on small stores: results against an independent
computation, streamed = in memory, resume, distributed = local, and every error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from sklearn.metrics import precision_recall_fscore_support

from probe_engine import run as probe_run

# l2 > 0 throughout: every probe is strongly convex and certifies within a few hundred passes
# (an l2 = 0 point in the all-layer group ran to --max-iter, 30 s of every run on a slow
# 2-core machine); l2 = 0 is held to scikit-learn in tests/test_duality_gap.py
GRID = ["--l1", "0,1e-3,1e-2", "--l2", "1e-4,1e-3"]


def probe_args(stores, out, *extra):
    return ["probe", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"],
            "--labels", "upos", *GRID, "--tol", "1e-5", "--quiet", "--out", out, *extra]


@pytest.fixture(scope="module")
def first_run(stores, tmp_path_factory):
    from strata import main

    out = tmp_path_factory.mktemp("probe_out") / "run"
    assert main([str(a) for a in probe_args(stores, out, "--layers", "each,all")]) == 0
    return out


def load(out):
    return json.loads((out / "results.json").read_text())


def features(store, layers, mean, scale):
    """Features read with plain zarr and standardized by hand, labelled tokens only."""
    group = zarr.open_group(store, mode="r")
    stored = group["layer"][...].tolist()
    X = np.concatenate([group["activations"][stored.index(layer)] for layer in layers], axis=1).astype(np.float32)
    codes = group["label_upos"][...]
    names = np.array(group["label_upos"].attrs["classes"])
    keep = codes >= 0
    return (X[keep] - mean) / scale, names[codes[keep]]


def test_results_match_an_independent_computation(first_run, stores):
    doc = load(first_run)
    assert {(p["feature_set"], p["l1"], p["l2"]) for p in doc["probes"]} == {
        (fs, l1, l2) for fs in ("layer 0", "layer 1", "layer 2", "all layers") for l1 in (0, 1e-3, 1e-2) for l2 in (1e-4, 1e-3)}
    assert len(doc["chosen"]) == 4
    for chosen in doc["chosen"]:
        group = [p for p in doc["probes"] if p["feature_set"] == chosen["feature_set"]]
        assert chosen["dev_accuracy"] == max(p["dev_accuracy"] for p in group)
        w = np.load(first_run / chosen["weights"], allow_pickle=False)
        assert w["layers"].tolist() == chosen["layers"]
        classes = w["classes"]
        for split in ("dev", "test"):
            X, truth = features(stores[split], chosen["layers"], w["mean"], w["scale"])
            pred = classes[(X @ w["W"] + w["b"]).argmax(axis=1)]
            assert chosen[f"{split}_accuracy"] == pytest.approx((pred == truth).mean(), abs=1e-9)
            prec, rec, f1, support = precision_recall_fscore_support(truth, pred, labels=classes, zero_division=0)
            for k, name in enumerate(classes):
                assert chosen["per_class"][split][name]["f1"] == pytest.approx(f1[k])
                assert chosen["per_class"][split][name]["support"] == support[k]
        assert chosen["nonzeros"] == np.count_nonzero(w["W"])
    # train statistics are the training rows' mean and population std
    w = np.load(first_run / doc["chosen"][0]["weights"], allow_pickle=False)
    raw, _ = features(stores["train"], doc["chosen"][0]["layers"], 0.0, 1.0)
    np.testing.assert_allclose(w["mean"], raw.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w["scale"], raw.std(axis=0), rtol=1e-4)


def test_convergence_is_reported_truthfully_and_sparsity_follows_l1(first_run, stores, tmp_path, strata):
    doc = load(first_run)
    for p in doc["probes"]:
        assert p["converged"] == (p["optimality"] <= 1e-5) and p["stopped_by"] == "gradient"
        assert p["seed"] == 0 and p["seconds"] > 0
    assert all(p["converged"] for p in doc["probes"])  # strongly convex (l2 > 0): certified in time
    layer2 = {(p["l1"], p["l2"]): p["nonzeros"] for p in doc["probes"] if p["feature_set"] == "layer 2"}
    assert layer2[(1e-2, 1e-4)] < layer2[(1e-3, 1e-4)] < layer2[(0, 1e-4)] == 32 * 17
    # a probe stopped by --max-iter says so: not converged, its passes, its optimality
    assert strata(*probe_args(stores, tmp_path / "short", "--layers", "1", "--max-iter", "5"))[0] == 0
    short = load(tmp_path / "short")
    assert short["strata_probe"]["max_iter"] == 5
    for p in short["probes"]:
        assert (p["converged"], p["iterations"], p["stopped_by"]) == (False, 5, "max_iter") and p["optimality"] > 1e-5


def test_plot_and_table(first_run, stores, strata, tmp_path):
    assert (first_run / "accuracy_per_layer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copytree(first_run, tmp_path / "again")
    code, out, err = strata(*probe_args(stores, tmp_path / "again", "--layers", "each,all"))
    assert code == 0
    assert out.splitlines()[0].split() == ["label", "features", "l1", "l2", "train", "dev", "test", "nonzero",
                                           "probes", "converged"]
    assert "reusing 4 finished group(s)" in err


def test_streamed_equals_in_memory_bitwise(first_run, stores, tmp_path, strata):
    code, _, _ = strata(*probe_args(stores, tmp_path / "streamed", "--layers", "2", "--max-memory", "1kB"))
    assert code == 0
    streamed, in_memory = load(tmp_path / "streamed"), load(first_run)
    assert not streamed["groups"][0]["in_memory"] and all(g["in_memory"] for g in in_memory["groups"])
    assert strip_times(streamed["probes"]) == strip_times(p for p in in_memory["probes"] if p["layers"] == [2])
    a, b = streamed["chosen"][0], next(c for c in in_memory["chosen"] if c["layers"] == [2])
    wa, wb = np.load(tmp_path / "streamed" / a["weights"]), np.load(first_run / b["weights"])
    assert np.array_equal(wa["W"], wb["W"]) and np.array_equal(wa["b"], wb["b"])


def strip_times(probes):
    return [{k: v for k, v in p.items() if k != "seconds"} for p in probes]


def single_layer(probes):
    """The first run's probes of single layers: reruns that check determinism, resume and
    distribution skip the all-layer group (its slowest); a group's results do not depend
    on the others (the streamed test compares one group against the whole run)."""
    return [p for p in probes if len(p["layers"]) == 1]


def test_same_seed_is_bitwise_identical(first_run, stores, tmp_path, strata):
    assert strata(*probe_args(stores, tmp_path / "rerun", "--layers", "each"))[0] == 0
    assert strip_times(load(tmp_path / "rerun")["probes"]) == strip_times(single_layer(load(first_run)["probes"]))
    for gid in {p["group"] for p in load(tmp_path / "rerun")["probes"]}:
        a = np.load(first_run / "groups" / f"{gid}.npz")
        b = np.load(tmp_path / "rerun" / "groups" / f"{gid}.npz")
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_interrupted_run_resumes_from_finished_groups(first_run, stores, tmp_path, strata, monkeypatch):
    calls = []
    real = probe_run.run_group

    def crash_on_third(spec, progress=None):
        calls.append(spec["layers"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(spec, progress)

    monkeypatch.setattr(probe_run, "run_group", crash_on_third)
    code, _, err = strata(*probe_args(stores, tmp_path / "resumed", "--layers", "each"))
    assert code == 130 and "rerun the same command to resume" in err
    assert not (tmp_path / "resumed" / "results.json").exists()
    assert len(list((tmp_path / "resumed" / "groups").glob("*.json"))) == 2
    calls.clear()
    code, _, err = strata(*probe_args(stores, tmp_path / "resumed", "--layers", "each"))
    assert code == 0 and "reusing 2 finished group(s)" in err
    assert calls == [[2]]  # only the group that had not finished
    assert strip_times(load(tmp_path / "resumed")["probes"]) == strip_times(single_layer(load(first_run)["probes"]))


def test_gap_tol_stops_on_a_certified_duality_gap(stores, tmp_path, strata):
    """With --gap-tol every probe stops on one of its two certificates, and each record carries
    its gap: objective - optimum <= duality_gap."""
    out = tmp_path / "gap"
    code, _, err = strata(*probe_args(stores, out, "--layers", "1", "--gap-tol", "1e-2"))
    assert code == 0, err
    doc = load(out)
    assert doc["strata_probe"]["gap_tol"] == 1e-2
    for p in doc["probes"]:
        gap, objective = p["duality_gap"], p["objective"]
        assert gap >= -1e-7 * objective
        if p["converged"]:
            assert p["optimality"] <= 1e-5 or gap <= 1e-2 * (objective - gap), p
    by_gap = [p for p in doc["probes"] if p["optimality"] > 1e-5 and p["converged"]]
    assert by_gap, "no probe stopped on its gap"
    # the record says which test stopped it: its optimality is above the tol it records
    assert all(p["stopped_by"] == ("gap" if p in by_gap else "gradient") for p in doc["probes"] if p["converged"])


def test_distributed_equals_local(first_run, stores, tmp_path, strata):
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        code, _, err = strata(*probe_args(stores, tmp_path / "dist", "--layers", "each",
                                          "--scheduler", cluster.scheduler_address))
    assert code == 0, err
    dist, local = load(tmp_path / "dist"), {"probes": single_layer(load(first_run)["probes"])}
    assert dist["strata_probe"]["scheduler"] == "distributed"
    assert len(dist["probes"]) == len(local["probes"]) == 18
    # Dask workers run single-threaded BLAS, which sums in another order than two threads:
    # the same solutions up to float32 rounding, not bitwise (and the step sizes
    # follow the rounding, so pass counts differ).
    for a, b in zip(dist["probes"], local["probes"]):
        assert (a["feature_set"], a["l1"], a["l2"]) == (b["feature_set"], b["l1"], b["l2"])
        assert a["converged"] and b["converged"]
        assert abs(a["nonzeros"] - b["nonzeros"]) <= 0.05 * b["nonzeros"]
        # l2 > 0: the objective is strongly convex and the certificate bounds the objective gap
        assert a["objective"] == pytest.approx(b["objective"], rel=1e-5)
        assert a["dev_accuracy"] == pytest.approx(b["dev_accuracy"], abs=5e-3)  # a few boundary tokens


def test_a_worker_that_dies_is_a_one_line_error_and_the_run_resumes(stores, tmp_path, strata, monkeypatch):
    """Every worker process dies in its first group (dask retries none here): the run stops
    with one line, no results.json, and the same command finishes on a healthy cluster."""
    import dask
    from dask.distributed import LocalCluster

    out = tmp_path / "dist"
    args = probe_args(stores, out, "--layers", "1")
    monkeypatch.setenv("STRATA_FAULT", "probe-group:1")  # the workers inherit it
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        code, _, err = strata(*args, "--scheduler", cluster.scheduler_address)
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"strata probe: error: --scheduler: group ") and " failed on tcp://" in line
    assert "(KilledWorker: " in line and line.endswith("the finished groups are kept: rerun the same command to resume")
    assert not (out / "results.json").exists()
    monkeypatch.delenv("STRATA_FAULT")
    assert strata(*args)[0] == 0


def test_a_scheduler_killed_mid_run_is_a_one_line_error(stores, tmp_path, strata, monkeypatch):
    """A killed scheduler cancels every future, and dask's ``wait`` raises
    FuturesCancelledError (a CancelledError) itself: it ended the run with a traceback."""
    from concurrent.futures import CancelledError

    import dask.distributed
    from dask.distributed import LocalCluster

    def cancelled(*args, **kwargs):
        raise CancelledError("4 Futures cancelled:\nReasons: scheduler-connection-lost")

    monkeypatch.setattr(dask.distributed, "wait", cancelled)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        code, _, err = strata(*probe_args(stores, tmp_path / "out", "--layers", "1"), "--scheduler",
                              cluster.scheduler_address)
    assert (code, err.strip().splitlines()[-1]) == (1, (
        f"strata probe: error: --scheduler: lost the dask scheduler at {cluster.scheduler_address} "
        "(CancelledError: 4 Futures cancelled:); the finished groups are kept: rerun the same command to resume"))


@pytest.mark.parametrize("schedule", ["path", "batched"])
def test_grid_schedules_give_the_same_solutions(first_run, stores, tmp_path, strata, schedule):
    """The default schedule on the CPU (``auto``) is ``l1-path``, and every schedule solves
    the same problems: where the minimizer is unique (l2 > 0) and both runs certified it,
    the objectives agree; groups of another schedule are not reused."""
    from probe_engine.train import resolve_grid_schedule

    assert load(first_run)["strata_probe"]["grid_schedule"] == "l1-path"
    assert resolve_grid_schedule("auto", "cuda") == "batched" and resolve_grid_schedule("path", "cuda") == "path"
    assert resolve_grid_schedule("auto", "cuda:1") == "batched" and resolve_grid_schedule("auto", "cpu") == "l1-path"
    out = tmp_path / schedule
    shutil.copytree(first_run / "groups", out / "groups")
    code, _, err = strata(*probe_args(stores, out, "--layers", "each", "--grid-schedule", schedule))
    assert code == 0 and "reusing" not in err
    other, default = load(out), {"probes": single_layer(load(first_run)["probes"])}
    assert other["strata_probe"]["grid_schedule"] == schedule
    compared = 0
    for a, b in zip(other["probes"], default["probes"], strict=True):
        assert (a["feature_set"], a["l1"], a["l2"]) == (b["feature_set"], b["l1"], b["l2"])
        if b["l2"] > 0 and a["converged"] and b["converged"]:
            assert a["objective"] == pytest.approx(b["objective"], rel=1e-5)
            compared += 1
    assert compared >= 8


def test_screened_grid_solves_only_the_contenders_to_tol(first_run, stores, tmp_path, strata):
    """--screen-tol: round 1 is exactly the grid solved to the screen tolerance; the probes
    within --screen-margin of its best dev accuracy, and only those, go on to --tol and
    reach the exhaustive run's objectives; the choice is made among them."""
    margin = 0.01
    code, _, err = strata(*probe_args(stores, tmp_path / "loose", "--layers", "all", "--tol", "1e-2"))
    assert code == 0, err
    code, out, err = strata(*probe_args(stores, tmp_path / "screened", "--layers", "all", "--screen-tol", "1e-2",
                                        "--screen-margin", str(margin)))
    assert code == 0, err
    loose, screened = load(tmp_path / "loose")["probes"], load(tmp_path / "screened")
    exhaustive = [p for p in load(first_run)["probes"] if p["layers"] == [0, 1, 2]]
    accuracy = np.array([p["dev_accuracy"] for p in loose])
    contender = accuracy >= accuracy.max() - margin
    assert 0 < contender.sum() < len(contender)  # the test screens something out, and keeps something
    assert [not p["screened_out"] for p in screened["probes"]] == contender.tolist()
    for p, first, full in zip(screened["probes"], loose, exhaustive):
        assert (p["l1"], p["l2"]) == (first["l1"], first["l2"]) == (full["l1"], full["l2"])
        if p["screened_out"]:  # round 1's answer, bit for bit
            assert p["tol"] == 1e-2 and p["converged"]
            assert {k: p[k] for k in ("objective", "iterations", "optimality", "dev_accuracy", "nonzeros")} == \
                {k: first[k] for k in ("objective", "iterations", "optimality", "dev_accuracy", "nonzeros")}
        else:  # warm-started from it: certified to --tol where the exhaustive run was (l2 > 0 here)
            assert p["tol"] == 1e-5 and first["iterations"] < p["iterations"] <= 2000
            assert p["converged"] == full["converged"]
            if full["converged"]:
                assert p["optimality"] <= 1e-5
                np.testing.assert_allclose(p["objective"], full["objective"], rtol=1e-6)
    chosen = screened["chosen"][0]
    refined = [p for p in screened["probes"] if not p["screened_out"]]
    best = max(refined, key=lambda p: p["dev_accuracy"])
    assert (chosen["l1"], chosen["l2"]) == (best["l1"], best["l2"])
    assert screened["strata_probe"]["screen_tol"] == 1e-2 and screened["strata_probe"]["screen_margin"] == margin
    n_out = len(contender) - int(contender.sum())
    assert f"screened: {n_out} of {len(contender)} probes were left at --screen-tol 0.01 (more than 1 dev points " \
           "behind); the chosen ones are certified to --tol 1e-05" in out


def test_a_rebuilt_store_or_a_damaged_group_is_trained_again(stores, tmp_path, strata):
    """Finished groups are reused for the same store contents only: a store rebuilt at the
    same path (other sentences) is trained on again, and so is a group whose file is damaged."""
    train = tmp_path / "train.zarr"
    shutil.copytree(stores["train"], train)
    args = ["probe", "--train", train, "--dev", stores["dev"], "--labels", "upos", "--layers", "2", *GRID,
            "--quiet", "--out", tmp_path / "out"]
    assert strata(*args)[0] == 0
    before = load(tmp_path / "out")["chosen"][0]["rows"]["train"]
    code, _, err = strata(*args)
    assert code == 0 and "reusing 1 finished group(s)" in err
    shutil.rmtree(train)
    shutil.copytree(stores["test"], train)  # same model and layers, other sentences
    code, _, err = strata(*args)
    assert code == 0 and "reusing" not in err
    assert load(tmp_path / "out")["chosen"][0]["rows"]["train"] != before
    group_file = max((tmp_path / "out" / "groups").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    group_file.write_text("{")  # damaged: trained again, no traceback
    code, _, err = strata(*args)
    assert code == 0 and "reusing" not in err and err.strip() == ""
    def probes():
        return [{k: v for k, v in p.items() if k != "seconds"} for p in load(tmp_path / "out")["probes"]]

    expected = probes()
    # a change that leaves the files readable: one digit of the record, the arrays without W
    # (reused, the first reported a dev accuracy never measured, the second crashed the run
    # after results.json was gone)
    text = group_file.read_text()
    accuracy = json.loads(text)["records"][0]["dev_accuracy"]
    group_file.write_text(text.replace(json.dumps(accuracy), json.dumps(accuracy + 0.07), 1))
    code, _, err = strata(*args)
    assert code == 0 and "reusing" not in err and probes() == expected
    arrays = group_file.with_suffix(".npz")
    with np.load(arrays) as z:
        kept = {k: z[k] for k in z.files if k != "W"}
    np.savez(arrays, **kept)
    code, _, err = strata(*args)
    assert code == 0 and "reusing" not in err and probes() == expected


def test_weights_of_an_earlier_run_are_removed_and_label_sets_count_once(first_run, stores, tmp_path, strata):
    out = tmp_path / "again"
    shutil.copytree(first_run, out)
    assert len(list((out / "weights").glob("*.npz"))) == 4  # layers 0, 1, 2 and all
    assert strata(*probe_args(stores, out, "--layers", "2", "--labels", "upos,upos"))[0] == 0
    doc = load(out)
    assert sorted(p.name for p in (out / "weights").glob("*.npz")) == ["upos_layer2.npz"]
    assert [c["weights"] for c in doc["chosen"]] == ["weights/upos_layer2.npz"]
    assert len(doc["probes"]) == 6 and doc["strata_probe"]["labels"] == ["upos"]


def test_non_finite_dev_activations_and_an_out_under_a_file_are_refused(stores, tmp_path, strata):
    dev = tmp_path / "dev.zarr"
    shutil.copytree(stores["dev"], dev)
    zarr.open_group(dev, mode="r+")["activations"][1, 7, 4] = np.inf
    code, _, err = strata("probe", "--train", stores["train"], "--dev", dev, "--labels", "upos", "--layers", "1",
                          *GRID, "--quiet", "--out", tmp_path / "out", "--no-verify")
    assert (code, err.strip()) == (1, f"strata probe: error: --dev: {dev.resolve()} has non-finite activations "
                                      "(layer 1, neuron 4)")
    (tmp_path / "file").write_text("")
    code, _, err = strata(*probe_args(stores, tmp_path / "file" / "sub"))
    assert (code, err.strip()) == (1, f"strata probe: error: --out: {(tmp_path / 'file').absolute()} is a file, "
                                      "not a directory")
    code, _, err = strata(*probe_args({**stores, "dev": tmp_path / "none.zarr"}, tmp_path / "o"))
    assert (code, err.strip()) == (1, f"strata probe: error: --dev: {(tmp_path / 'none.zarr').resolve()}: "
                                      "no such store")


def test_choose_breaks_dev_ties_toward_the_simpler_probe():
    """Best dev accuracy; among equals fewer non-zeros, then the larger l1, then the larger l2;
    a screened-out probe is never chosen while any probe was solved to tol."""
    from probe_engine.group import choose

    def rec(dev, nonzeros, l1, l2, screened_out=False):
        return {"dev_accuracy": dev, "nonzeros": nonzeros, "l1": l1, "l2": l2, "screened_out": screened_out}

    assert choose([rec(0.90, 10, 1e-3, 0), rec(0.91, 500, 0, 0), rec(0.90, 5, 0, 0)]) == 1
    assert choose([rec(0.9, 40, 1e-2, 1e-2), rec(0.9, 30, 0, 0), rec(0.9, 35, 1e-1, 1e-1)]) == 1
    assert choose([rec(0.9, 30, 1e-3, 1e-2), rec(0.9, 30, 1e-2, 0), rec(0.9, 30, 0, 1e-1)]) == 1
    assert choose([rec(0.9, 30, 1e-3, 1e-4), rec(0.9, 30, 1e-3, 1e-2), rec(0.9, 30, 1e-3, 1e-3)]) == 1
    assert choose([rec(0.95, 3, 0, 0, screened_out=True), rec(0.9, 30, 0, 0)]) == 1
    assert choose([rec(0.8, 3, 0, 0, screened_out=True), rec(0.9, 30, 0, 0, screened_out=True)]) == 1


def test_a_run_killed_while_replacing_weights_leaves_no_results_of_the_earlier_run(first_run, stores, tmp_path,
                                                                                   strata, monkeypatch):
    """The earlier results.json goes before any weights file is replaced: a kill in between
    leaves no results.json (an unfinished run), never one describing other weights."""
    out = tmp_path / "again"
    shutil.copytree(first_run, out)
    real = probe_run.write_npz

    def killed_at_the_weights(path, arrays):
        if path.parent.name == "weights":
            raise KeyboardInterrupt
        real(path, arrays)

    monkeypatch.setattr(probe_run, "write_npz", killed_at_the_weights)
    code, _, err = strata(*probe_args(stores, out, "--layers", "2", "--l2", "1e-1"))
    assert code == 130 and "rerun the same command to resume" in err
    assert not (out / "results.json").exists()
    monkeypatch.setattr(probe_run, "write_npz", real)
    assert strata(*probe_args(stores, out, "--layers", "2", "--l2", "1e-1"))[0] == 0
    assert [c["l2"] for c in load(out)["chosen"]] == [0.1]


def test_the_table_counts_unseen_classes_for_every_label_set():
    from probe_engine.probe_table import format_table

    def chosen(label, unseen):
        return {"label": label, "layers": [1], "feature_set": "layer 1", "l1": 0.0, "l2": 1e-3,
                "train_accuracy": 1.0, "dev_accuracy": 0.5, "test_accuracy": None, "nonzeros": 3,
                "unseen_label_tokens": unseen}

    table = format_table({"probes": [], "strata_probe": {}, "chosen": [
        chosen("upos", {"dev": 0, "test": 0}), chosen("xpos", {"dev": 22, "test": 3}), chosen("deprel", {"dev": 8})]})
    lone = chosen("upos", {})
    lone["l1"], lone["l2"] = 2.5e-4, 1e-5
    assert format_table({"probes": [], "strata_probe": {}, "chosen": [lone]}).splitlines()[1].split()[3:5] == [
        "0.00025", "1e-05"]  # as given, not rounded to 3e-04
    assert table.splitlines()[-2:] == [
        "xpos: classes unseen in training (counted as errors): dev 22 rows, test 3 rows",
        "deprel: classes unseen in training (counted as errors): dev 8 rows"]


def test_the_table_names_the_probes_that_ran_out_of_passes():
    from probe_engine.probe_table import format_table

    def probe(l1, converged, optimality=1e-6):
        return {"label": "upos", "layers": [0], "feature_set": "layer 0", "l1": l1, "l2": 0.0, "tol": 1e-5,
                "converged": converged, "optimality": optimality}

    chosen = {"label": "upos", "layers": [0], "feature_set": "layer 0", "l1": 1e-3, "l2": 0.0, "train_accuracy": 1.0,
              "dev_accuracy": 0.5, "test_accuracy": None, "nonzeros": 3, "unseen_label_tokens": {}}
    probes = [probe(0.0, False, 3.7e-5), probe(1e-3, True)] + [probe(10.0 ** -k, False, 2e-5) for k in (4, 5, 6)]
    table = format_table({"probes": probes, "strata_probe": {"max_iter": 2000}, "chosen": [chosen]})
    assert table.splitlines()[1].split()[-1] == "1/5"
    assert table.splitlines()[-1] == (
        "not certified in --max-iter 2000 passes: upos layer 0 l1 0 l2 0 (optimality 3.7e-05 > 1e-05), "
        "upos layer 0 l1 0.0001 l2 0 (optimality 2e-05 > 1e-05), upos layer 0 l1 1e-05 l2 0 (optimality 2e-05 > "
        "1e-05) and 1 more; each reports its last point (a larger --max-iter or penalty certifies it)")
    assert "not certified" not in format_table({"probes": probes[1:2], "strata_probe": {}, "chosen": [chosen]})
    # screening's line does not call an uncertified chosen probe certified
    screened = {"probes": [{**probes[0], "screened_out": False}, {**probes[1], "screened_out": True}],
                "strata_probe": {"max_iter": 20, "screen_tol": 1e-2, "screen_margin": 0.003, "tol": 1e-5},
                "chosen": [{**chosen, "converged": False}]}
    assert ("the chosen ones are refined toward --tol 1e-05, not all certified (see below)"
            in format_table(screened).splitlines()[-2])
    screened["chosen"][0]["converged"] = True
    assert format_table(screened).splitlines()[-2].endswith("the chosen ones are certified to --tol 1e-05")


def test_the_table_keeps_its_columns_in_line_for_long_cells():
    """Widths follow the widest cell: a long label name, a pooled feature set and a penalty
    printed as 1.23457e-05 push their columns right instead of shifting the rest of the row."""
    from probe_engine.probe_table import format_table

    def chosen(label, pool, l1):
        return {"label": label, "layers": [1], "feature_set": "layer 1", "pool": pool, "l1": l1, "l2": 1e-3,
                "train_accuracy": 1.0, "dev_accuracy": 0.5, "test_accuracy": 0.25, "nonzeros": 12345,
                "unseen_label_tokens": {}}

    lines = format_table({"probes": [], "strata_probe": {}, "chosen": [
        chosen("upos", None, 0.0), chosen("bigram_shift_label", "mean", 1.23456789e-5)]}).splitlines()
    header = lines[0]
    for name, value in (("l1", ["0", "1.23457e-05"]), ("dev", ["50.0", "50.0"]), ("nonzero", ["12345", "12345"]),
                        ("converged", ["0/0", "0/0"])):
        end = header.index(name) + len(name)  # right-aligned: every cell ends under its header's end
        assert [line[:end].split()[-1] for line in lines[1:]] == value, name
    assert lines[2].startswith("bigram_shift_label layer 1 (mean)")
    assert [line.index("layer 1") for line in lines[1:]] == [header.index("features")] * 2
