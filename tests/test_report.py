"""``strata report`` from real probe, neurons and compare results of two tiny models:
every promised figure and table is in the page, embedded, with the numbers of the results."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

UD = {"train": "en_ewt-ud-train.conllu", "dev": "en_ewt-ud-dev.conllu", "test": "en_ewt-ud-test.conllu"}
SMALL = ["--l1", "0,1e-3", "--l2", "1e-3", "--quiet"]


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.cells, self.missing, self.headings, self._tag = [], [], 0, [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._tag = tag
        if tag == "img":
            self.images.append(attrs["src"])
        if attrs.get("class") == "missing":
            self.missing += 1

    def handle_endtag(self, tag):
        self._tag = None

    def handle_data(self, data):
        if self._tag == "td":
            self.cells.append(data)
        if self._tag == "h2":
            self.headings.append(data)


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_bert, ud_dev):
    from strata import main

    from tests.test_pooled_probes import first_sentences

    root = tmp_path_factory.mktemp("report")
    tsv = root / "length.tsv"
    inputs = [first_sentences(ud_dev.parent / UD[s], n, root / f"{s}.conllu") for s, n in (("train", 500), ("dev", 200))]
    assert main(["tasks", "sentence-length", "--train", str(inputs[0]), "--dev", str(inputs[1]),
                 "--length-bins", "1,10,20,200", "--out", str(tsv)]) == 0
    out = {}
    for model, variant in (("base", []), ("other", ["--variant", "random-init", "--variant-seed", "1"])):
        stores = {}
        for split, n in (("train", 300), ("dev", 100), ("test", 100)):
            stores[split] = root / f"{model}_{split}.zarr"
            assert main(["extract", "--model", str(tiny_bert), "--input", str(ud_dev.parent / UD[split]), "--format",
                         "conllu", "--max-sentences", str(n), "--out", str(stores[split]), *variant]) == 0
        sentences = root / f"{model}_length.zarr"
        assert main(["extract", "--model", str(tiny_bert), "--input", str(tsv), "--format", "senteval",
                     "--out", str(sentences), *variant]) == 0
        split_args = ["--train", str(stores["train"]), "--dev", str(stores["dev"]), "--test", str(stores["test"])]
        assert main(["probe", *split_args, "--labels", "upos", *SMALL, "--out", str(root / f"{model}_probe")]) == 0
        assert main(["probe", "--train", str(sentences), "--dev", str(sentences), "--labels", "label",
                     "--pool", "cls,mean", *SMALL, "--out", str(root / f"{model}_pooled")]) == 0
        assert main(["neurons", *split_args, "--labels", "upos", *SMALL, "--fractions", "0.1,0.3,1",
                     "--out", str(root / f"{model}_neurons")]) == 0
        out[model] = [root / f"{model}_probe", root / f"{model}_pooled" / "results.json", root / f"{model}_neurons"]
        out[f"{model}_dev"] = stores["dev"]
    assert main(["compare", str(out["base_dev"]), str(out["other_dev"]), "--tokens", "300", "--quiet",
                 "--out", str(root / "compare")]) == 0
    out["other"].append(root / "compare")
    return out


def test_report_holds_every_section(results, tmp_path, strata):
    page_path = tmp_path / "r" / "report.html"
    code, stdout, _ = strata("report", "--base", *results["base"], "--other", *results["other"],
                             "--names", "tiny,random", "--out", page_path)
    assert code == 0, stdout
    page = Page()
    page.feed(page_path.read_text(encoding="utf-8"))
    assert page.missing == 0
    assert len(page.headings) == 5
    # accuracy (upos tokens, label cls-pooled, label mean-pooled), neurons per layer, similarity
    assert len(page.images) == 5
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in page_path.parent.glob("*.png")) == sorted(
        ["accuracy_upos.png", "accuracy_label_cls.png", "accuracy_label_mean.png", "neurons_per_layer.png",
         "similarity.png"])
    neurons = json.loads((results["base"][2] / "neurons.json").read_text())
    row = page.cells[page.cells.index("tiny"):][:10]
    assert row[:3] == ["tiny", "upos", str(neurons["minimal"]["k"])]
    assert row[4] == f"{100 * neurons['ablation']['top']['retrained_test']:.1f}"
    pooled = json.loads(results["base"][1].read_text())["chosen"]
    by = {(c["pool"], c["layers"][0]): c for c in pooled}
    delta = 100 * (by[("mean", 2)]["dev_accuracy"] - by[("cls", 2)]["dev_accuracy"])
    assert f"{delta:+.1f}" in page.cells
    assert stdout.startswith(f"{page_path}: 1. Layer-wise probe accuracy, 2. Top neurons per layer")


def test_report_says_what_is_missing(results, tmp_path, strata):
    page_path = tmp_path / "only_probe.html"
    assert strata("report", "--base", results["base"][0], "--other", results["other"][0], "--out", page_path)[0] == 0
    page = Page()
    page.feed(page_path.read_text(encoding="utf-8"))
    assert page.missing == 4 and len(page.images) == 1


def test_a_report_of_the_base_model_alone(results, tmp_path, strata):
    """No --other: the base's own sections, and the similarity section says it has no other model."""
    page_path = tmp_path / "alone.html"
    code, stdout, err = strata("report", "--base", *results["base"], "--out", page_path)
    assert code == 0, err
    page = Page()
    page.feed(page_path.read_text(encoding="utf-8"))
    assert len(page.headings) == 5 and page.missing == 1
    assert stdout.startswith(f"{page_path}: 1. Layer-wise probe accuracy, 2. Top neurons per layer")


def test_report_flags_and_figure_text(results, tmp_path, strata):
    """Names matplotlib would read as mathtext or hide; one split for every model; a minimal
    set outside delta flagged; where each comparison's stores came from."""
    from probe_engine.plot import text

    assert (text("_hidden"), text("$x_{$")) == (" _hidden", r"\$x_{\$")
    neurons = json.loads((results["other"][2] / "neurons.json").read_text())
    neurons["minimal"]["within_delta"] = False
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "neurons.json").write_text(json.dumps(neurons))
    probe = json.loads((results["other"][0] / "results.json").read_text())
    for c in probe["chosen"]:
        c["test_accuracy"] = None
    (tmp_path / "dev_only.json").write_text(json.dumps(probe))
    page_path = tmp_path / "r" / "report.html"
    code, stdout, err = strata("report", "--base", *results["base"], "--other", tmp_path / "dev_only.json",
                               tmp_path / "outside", results["other"][-1], "--names", "$x_{$,_hidden",
                               "--out", page_path)
    assert code == 0, err
    page = page_path.read_text(encoding="utf-8")
    assert "Probe accuracy per layer: upos (dev accuracy)" in page  # the base has test, the other not
    assert "Probe accuracy per layer: label, cls-pooled (dev accuracy)" in page
    parsed = Page()
    parsed.feed(page)
    assert f"{neurons['minimal']['k']} (not within delta)" in parsed.cells
    compare = json.loads((results["other"][-1] / "compare.json").read_text())["strata_compare"]
    assert f"_hidden: A = {compare['a']}, B = {compare['b']}</p>" in page  # both among the models' stores
    assert "class='partial'" not in page  # every model has every kind of result
    code, _, err = strata("report", "--base", results["base"][1], "--other", results["other"][-1],
                          "--out", tmp_path / "pooled.html")
    assert code == 0, err
    assert (f"other 1: A = {compare['a']}, B = {compare['b']} (A is none of the stores base's probe and neurons "
            "results used)</p>") in (tmp_path / "pooled.html").read_text(encoding="utf-8")
    assert ("<p class='partial'>not shown: other 1 (no strata probe results given)</p>"
            in (tmp_path / "pooled.html").read_text(encoding="utf-8"))


def test_report_errors(results, tmp_path, strata):
    code, _, err = strata("report", "--base", *results["base"], "--other", *results["other"], "--names", "a",
                          "--out", tmp_path / "x.html")
    assert code == 1
    assert err.strip() == "strata report: error: --names: give 2 non-empty names (base first), got 'a'"
    bogus = tmp_path / "bogus.json"
    bogus.write_text('{"hello": 1}')
    code, _, err = strata("report", "--base", bogus, "--other", *results["other"], "--out", tmp_path / "x.html")
    assert err.strip() == f"strata report: error: --base: {bogus} is not a strata probe, neurons or compare result"
    code, _, err = strata("report", "--base", tmp_path, "--other", *results["other"], "--out", tmp_path / "x.html")
    assert err.strip() == (f"strata report: error: --base: {tmp_path} holds none of results.json, neurons.json, "
                           "compare.json")
    compare = results["other"][-1]
    code, _, err = strata("report", "--base", *results["base"], compare, "--other", *results["other"][:-1],
                          "--out", tmp_path / "x.html")
    assert err.strip() == (f"strata report: error: --base: {compare} is a strata compare result; give it with "
                           "--other, after the results of the model it compares with the base")
    stub = tmp_path / "stub.json"
    stub.write_text('{"strata_probe": {}}')
    code, _, err = strata("report", "--base", stub, "--other", *results["other"], "--out", tmp_path / "x.html")
    assert err.strip() == f"strata report: error: --base: {stub} is not a complete strata probe result (it has no chosen)"
    stub.write_text('{"strata_neurons": {}, "layer_distribution": {}, "ablation": {}, "minimal": {}, "oracle": {}}')
    code, _, err = strata("report", "--base", stub, "--other", *results["other"], "--out", tmp_path / "x.html")
    assert err.strip() == (f"strata report: error: --base: {stub} is not a complete strata neurons result "
                           "(it has no strata_neurons.label)")
    code, _, err = strata("report", "--base", *results["base"], results["base"][0], "--other", *results["other"],
                          "--out", tmp_path / "x.html")
    assert err.strip() == f"strata report: error: --base: {results['base'][0]} is given twice"
    twin = tmp_path / "twin"  # another copy of the same probe results: two lines through one layer
    (shutil.copytree if Path(results["base"][0]).is_dir() else shutil.copy)(results["base"][0], twin)
    code, _, err = strata("report", "--base", *results["base"], twin, "--other", *results["other"],
                          "--out", tmp_path / "x.html")
    assert err.strip() == (f"strata report: error: --base: {results['base'][0]} and {twin} both hold "
                           "a chosen probe for label upos, layer 0 of base; give one of them")
    stub.write_text('{"strata_probe": {}, "chosen": [{"label": "upos", "layers": [0]}]}')
    code, _, err = strata("report", "--base", stub, "--other", *results["other"], "--out", tmp_path / "x.html")
    assert err.strip() == (f"strata report: error: --base: {stub} is not a complete strata probe result "
                           "(it has no chosen[0].feature_set)")
    (tmp_path / "folder.html").mkdir()
    code, _, err = strata("report", "--base", *results["base"], "--other", *results["other"],
                          "--out", tmp_path / "folder.html")
    assert err.strip() == f"strata report: error: --out: {tmp_path / 'folder.html'} is a directory; give the HTML file to write"
    blocked = tmp_path / "file"
    blocked.write_text("")
    code, _, err = strata("report", "--base", *results["base"], "--other", *results["other"],
                          "--out", blocked / "r" / "r.html")
    assert (code, err.strip()) == (1, f"strata report: error: --out: {blocked} is not a directory, so "
                                      f"{blocked / 'r' / 'r.html'} cannot be written")
    assert not (tmp_path / "x.html").exists()


BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(BROWSER is None, reason="no Chromium here: the page is checked by parsing only "
                                            "(apt-get install chromium to render it)")
def test_report_renders_alone_in_a_browser(results, tmp_path, strata):
    """The page, copied alone (no PNG beside it), drawn by headless Chromium: the plots'
    blue and orange lines can only be on the screenshot if the embedded images decoded."""
    from matplotlib.image import imread

    page_path = tmp_path / "r" / "report.html"
    assert strata("report", "--base", *results["base"], "--other", *results["other"], "--names", "tiny,random",
                  "--out", page_path)[0] == 0
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(page_path, alone / "report.html")
    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,4200", f"--screenshot={shot}", (alone / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = (imread(shot)[:, :, :3] * 255).astype(int)
    for rgb in ((31, 119, 180), (255, 127, 14)):  # matplotlib's C0 and C1
        near = (np.abs(pixels - np.array(rgb)).max(axis=2) <= 30).sum()
        assert near > 500, f"only {near} pixels of colour {rgb}: the embedded figures did not render"
