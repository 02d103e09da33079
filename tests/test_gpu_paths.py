"""Every command's ``--device cuda`` path against its CPU run.  Runs whenever a
GPU and CuPy are present; skipped otherwise, with the reason in pytest's summary.

The GPU does its float32 sums in another order, so the two devices agree to
float32 rounding, not bitwise; on one device a run repeats bitwise and the
streamed path equals the in-memory one bitwise, as on the CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from probe_engine.backend import gpu_available
from tests.test_compare import tiny_stores  # noqa: F401  (module fixtures reused)
from tests.test_probe_command import strip_times

pytestmark = pytest.mark.skipif(not gpu_available(), reason="no CUDA GPU with CuPy here: the GPU paths are untested "
                                                            "in this run")


def load(out, name="results.json"):
    return json.loads((out / name).read_text())


# Small, well-posed problems (l2 > 0: one minimizer): on tiny data a GPU pass is all
# kernel launches, so the tests keep the passes few.
# one schedule on both devices (``auto`` picks l1-path on the CPU, batched on the GPU)
PROBE = ["--labels", "upos", "--layers", "2,all", "--l1", "0,1e-3", "--l2", "1e-3", "--tol", "1e-5",
         "--grid-schedule", "batched", "--quiet"]


def probe(strata, stores, out, *extra):
    assert strata("probe", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"], *PROBE,
                  "--out", out, *extra)[0] == 0
    return load(out)


def test_probe_on_cuda_matches_cpu(stores, tmp_path, strata):
    cpu, gpu = probe(strata, stores, tmp_path / "cpu"), probe(strata, stores, tmp_path / "cuda", "--device", "cuda")
    assert gpu["strata_probe"]["device"] == "cuda"
    n_dev = int((zarr.open_group(stores["dev"], mode="r")["label_upos"][...] >= 0).sum())
    for a, b in zip(cpu["probes"], gpu["probes"], strict=True):
        assert (a["feature_set"], a["l1"], a["l2"]) == (b["feature_set"], b["l1"], b["l2"])
        assert a["converged"] and b["converged"]
        assert b["objective"] == pytest.approx(a["objective"], rel=1e-5)
        # a token or two may flip where two classes' logits tie to float32 rounding
        assert abs(a["dev_accuracy"] - b["dev_accuracy"]) <= 2 / n_dev
    for a, b in zip(cpu["chosen"], gpu["chosen"], strict=True):
        wa, wb = np.load(tmp_path / "cpu" / a["weights"]), np.load(tmp_path / "cuda" / b["weights"])
        if (a["l1"], a["l2"]) == (b["l1"], b["l2"]):
            np.testing.assert_allclose(wb["W"], wa["W"], atol=1e-3)


def test_probe_on_cuda_repeats_bitwise_and_streams_bitwise(stores, tmp_path, strata):
    first = probe(strata, stores, tmp_path / "first", "--device", "cuda")
    again = probe(strata, stores, tmp_path / "again", "--device", "cuda")
    streamed = probe(strata, stores, tmp_path / "streamed", "--device", "cuda", "--max-memory", "1kB")
    assert not streamed["groups"][0]["in_memory"] and first["groups"][0]["in_memory"]
    assert strip_times(again["probes"]) == strip_times(first["probes"])
    assert strip_times(streamed["probes"]) == strip_times(first["probes"])


def test_compare_on_cuda_matches_cpu(tiny_stores, tmp_path, strata):  # noqa: F811
    docs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert strata("compare", tiny_stores["base"], tiny_stores["random"], "--out", out, "--tokens", "300",
                      "--repeats", "2", "--seed", "4", "--quiet", "--device", device)[0] == 0
        docs[device] = load(out, "compare.json")
    np.testing.assert_allclose(docs["cuda"]["cka"]["matrix"], docs["cpu"]["cka"]["matrix"], rtol=1e-5)
    np.testing.assert_allclose(docs["cuda"]["rsa"]["per_repeat"], docs["cpu"]["rsa"]["per_repeat"], rtol=1e-5)
    out = tmp_path / "self"
    assert strata("compare", tiny_stores["base"], tiny_stores["base"], "--out", out, "--tokens", "100", "--quiet",
                  "--device", "cuda")[0] == 0
    doc = load(out, "compare.json")
    assert [doc["cka"]["matrix"][i][i] for i in range(3)] == [1.0, 1.0, 1.0]


def test_neurons_on_cuda_match_cpu(stores, tmp_path, strata):
    docs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert strata("neurons", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"],
                      "--labels", "upos", "--l1", "0,1e-3", "--l2", "1e-3", "--fractions", "0.1,0.3,0.6",
                      "--delta", "0.02", "--control", "--quiet", "--device", device, "--out", out)[0] == 0
        docs[device] = (load(out, "neurons.json"), np.load(out / "ordering.npz"))
    (cpu, a), (gpu, b) = docs["cpu"], docs["cuda"]
    assert gpu["minimal"]["k"] == cpu["minimal"]["k"]
    for key in ("oracle", "minimal"):
        assert gpu[key]["dev_accuracy"] == pytest.approx(cpu[key]["dev_accuracy"], abs=3e-3)
    top = cpu["minimal"]["k"]
    overlap = len(set(a["selected"].tolist()) & set(b["selected"].tolist())) / top
    assert overlap >= 0.9, f"top-{top} neurons on the GPU share only {overlap:.0%} with the CPU's"


def _without_times(value):
    """neurons.json without what differs between two runs of the same analysis: timings, when it
    finished and the command line."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items()
                if "seconds" not in k and k not in ("command", "finished")}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def test_neurons_on_cuda_stream_bitwise(stores, tmp_path, strata):
    """Under a memory cap the GPU pipeline streams train, dev and test (nothing held, or the
    float16 blocks held, finished to the GPU on the prefetch thread; the top-k probes' columns
    gathered from the streamed blocks; the control task relabeling them): the same bits as
    with everything held on the GPU."""
    group = zarr.open_group(stores["train"], mode="r")
    labelled = int((group["label_upos"][...] >= 0).sum())
    layers, _, hidden = group["activations"].shape
    float32_bytes = labelled * layers * hidden * 4
    runs = {}
    for name, cap in (("held", "64GB"), ("float16 held", f"{int(0.75 * float32_bytes)}B"), ("streamed", "1kB")):
        out = tmp_path / name.replace(" ", "_")
        assert strata("neurons", "--train", stores["train"], "--dev", stores["dev"], "--test", stores["test"],
                      "--labels", "upos", "--l1", "0,1e-3", "--l2", "1e-3", "--fractions", "0.1,0.3,0.6",
                      "--delta", "0.02", "--control", "--quiet", "--device", "cuda", "--max-memory", cap,
                      "--out", out)[0] == 0
        runs[name] = (_without_times(load(out, "neurons.json")), np.load(out / "ordering.npz"))
    reference, ordering = runs.pop("held")
    for name, (doc, order) in runs.items():
        assert doc == reference, name
        assert all(np.array_equal(order[k], ordering[k]) for k in ordering.files), name


def test_extract_on_cuda_matches_cpu(tiny_bert, ud_dev, tmp_path, strata):
    stores = {}
    for device in ("cpu", "cuda"):
        stores[device] = tmp_path / f"{device}.zarr"
        assert strata("extract", "--model", tiny_bert, "--input", ud_dev, "--format", "conllu", "--max-sentences",
                      60, "--pool", "cls,mean", "--out", stores[device], "--device", device)[0] == 0
    a, b = (zarr.open_group(stores[d], mode="r") for d in ("cpu", "cuda"))
    for name in ("activations", "pooled_cls", "pooled_mean"):
        # float32 sums in another order: a stored float16 may round the other way, by one ulp
        x, y = a[name][...], b[name][...]
        missing = np.isnan(x)  # pooled rows of sentences skipped as too long
        assert np.array_equal(missing, np.isnan(y))
        x, y = x[~missing], y[~missing]
        ulp = np.spacing(np.maximum(np.abs(x), np.abs(y)))
        assert (np.abs(x.astype(np.float32) - y) <= ulp).all()
        assert (x != y).mean() < 1e-3
    assert b.attrs["strata"]["parameters"]["device"] == "cuda"
    assert strata("verify", stores["cuda"])[0] == 0


def test_estimator_on_cuda_in_a_pipeline():
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from probe_engine import ElasticNetProbe

    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 20))
    y = (X @ rng.normal(size=(20, 3)) + rng.gumbel(size=(600, 3))).argmax(axis=1)
    scores = {d: cross_val_score(make_pipeline(StandardScaler(), ElasticNetProbe(1e-3, 1e-3, tol=1e-6, device=d)),
                                 X, y, cv=3) for d in ("cpu", "cuda")}
    np.testing.assert_allclose(scores["cuda"], scores["cpu"], atol=2 / 200)
