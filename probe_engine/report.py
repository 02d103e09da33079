"""``strata report``: the base-vs-fine-tuned report, one self-contained HTML page.

It reads results that strata already wrote, one group of paths per model (the
base model first): ``strata probe`` directories or ``results.json``, ``strata
neurons`` directories or ``neurons.json``, ``strata compare`` directories or
``compare.json`` (a compare result belongs to the model whose group lists it:
it says how that model differs from the base).  The kind of each file is read
from its top-level key, so paths can come in any order.

Sections, each present when its inputs are (the page says which are missing):

1. Layer-wise probe accuracy, base vs each other model (Durrani et al. 2020, Fig. 1),
   one figure per label set and pooling.
2. Top neurons per layer (Durrani et al., Fig. 2).
3. Top vs bottom vs random neurons (Durrani et al., Table 1).
4. RSA and linear CKA per layer against the base (Merchant et al. 2020, Fig. 2).
5. CLS vs mean pooling (Mosbach et al. 2020, Table 2): accuracy per layer and delta.

Figures are PNG files next to the page and embedded in it as data URIs, so the
page opens offline and can be mailed alone.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from probe_engine.outputs import atomic_write
from probe_engine.plot import figure, finite, layer_axis, save, text
from store.errors import StrataError

KINDS = {"strata_probe": "probe", "strata_neurons": "neurons", "strata_compare": "compare"}
FILES = ("results.json", "neurons.json", "compare.json")
#: what the report reads of each kind, as key paths ("*": every item of a list; compare's
#: sections depend on its --method: what each method wrote is needed, COMPARE_NEEDED)
NEEDED = {
    "probe": [("chosen",), ("chosen", "*", "label"), ("chosen", "*", "layers"), ("chosen", "*", "feature_set"),
              ("chosen", "*", "dev_accuracy"), ("chosen", "*", "test_accuracy")],
    "neurons": [("strata_neurons", "label"), ("layer_distribution",), ("minimal", "k"), ("oracle", "test_accuracy")]
    + [("ablation", s, k) for s in ("top", "bottom", "random") for k in ("retrained_test", "zeroed_test")],
    "compare": [("strata_compare", "a"), ("strata_compare", "b")],
}
COMPARE_NEEDED = {"cka": [("cka", "diagonal")], "rsa": [("rsa", "layers"), ("rsa", "mean"), ("rsa", "std")]}


def _missing(doc, path: tuple) -> str | None:
    """The first key of ``path`` that ``doc`` lacks, dotted (None: all there)."""
    items = [(doc, "")]
    for key in path:
        nxt = []
        for value, where in items:
            if key == "*":
                if not isinstance(value, list):
                    return where
                nxt += [(v, f"{where}[{i}]") for i, v in enumerate(value)]
            elif not isinstance(value, dict) or key not in value:
                return f"{where}.{key}".lstrip(".")
            else:
                nxt.append((value[key], f"{where}.{key}".lstrip(".")))
        items = nxt
    return None


def load_results(path: Path, option: str) -> tuple[str, dict]:
    """``(kind, document)`` of one results path (a directory or a JSON file)."""
    if path.is_dir():
        found = [path / f for f in FILES if (path / f).exists()]
        if not found:
            raise StrataError(f"{option}: {path} holds none of {', '.join(FILES)}")
        path = found[0]
    if not path.exists():
        raise StrataError(f"{option}: no such file or directory: {path}")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StrataError(f"{option}: {path} is not JSON ({e})") from None
    kind = next((KINDS[k] for k in KINDS if isinstance(doc, dict) and k in doc), None)
    if kind is None:
        raise StrataError(f"{option}: {path} is not a strata probe, neurons or compare result")
    needed = NEEDED[kind] + [p for method in COMPARE_NEEDED if kind == "compare" and method in doc
                             for p in COMPARE_NEEDED[method]]
    missing = [m for m in (_missing(doc, p) for p in needed) if m is not None]
    if missing:
        raise StrataError(f"{option}: {path} is not a complete strata {kind} result (it has no {missing[0]})")
    return kind, doc


def load_models(groups: list[tuple[str, str, list[str]]]) -> list[dict]:
    """``[(name, option, paths)]`` to ``[{"name", "probe": [...], "neurons": [...], "compare": [...]}]``."""
    models = []
    for name, option, paths in groups:
        model = {"name": name, "probe": [], "neurons": [], "compare": []}
        chosen_in = {}  # (label, pool, layers) -> the path holding that chosen probe
        seen = {}  # resolved path -> as given
        for p in paths:
            if (where := Path(p).resolve()) in seen:  # not "A and A both hold a chosen probe"
                spelled = "" if str(seen[where]) == str(p) else f" (first as {seen[where]})"
                raise StrataError(f"{option}: {p} is given twice{spelled}")
            seen[where] = p
            kind, doc = load_results(Path(p), option)
            if kind == "compare" and option == "--base":  # section 4 draws each other model against the base
                raise StrataError(f"--base: {p} is a strata compare result; give it with --other, after the "
                                  "results of the model it compares with the base")
            for c in doc["chosen"] if kind == "probe" else []:
                key = (c["label"], c.get("pool"), tuple(c["layers"]))
                if key in chosen_in:  # two lines through one layer would zigzag between them
                    what = f"label {c['label']}, {c['feature_set']}" + (f", {c['pool']}-pooled" if c.get("pool") else "")
                    raise StrataError(f"{option}: {chosen_in[key]} and {p} both hold a chosen probe for {what} "
                                      f"of {name}; give one of them")
                chosen_in[key] = p
            model[kind].append(doc)
        models.append(model)
    return models


def stores_of(model: dict) -> set[str]:
    """The stores a model's probe and neurons results were trained on."""
    return {doc[f"strata_{kind}"].get(split) for kind in ("probe", "neurons") for doc in model[kind]
            for split in ("train", "dev", "test")} - {None}


def chosen_rows(model: dict) -> list[dict]:
    return [c for doc in model["probe"] for c in doc["chosen"]]


# --------------------------------------------------------------------------- figures
def accuracy_figures(models: list[dict], folder: Path) -> list[tuple[str, Path]]:
    """One figure per (label set, pooling): test (else dev) accuracy per layer, one line per model."""
    series = list(dict.fromkeys((c["label"], c.get("pool")) for m in models for c in chosen_rows(m)
                                if len(c["layers"]) == 1))
    out = []
    for label, pool in series:
        plt, fig, ax = figure()
        per_model = [sorted((c for c in chosen_rows(model) if c["label"] == label and c.get("pool") == pool
                             and len(c["layers"]) == 1), key=lambda c: c["layers"][0]) for model in models]
        # one split for every model, so the base's test is never drawn against another's dev
        split = "test" if all(c["test_accuracy"] is not None for rows in per_model for c in rows) else "dev"
        for k, (model, rows) in enumerate(zip(models, per_model)):
            if rows:
                ax.plot([c["layers"][0] for c in rows], [finite(c[f"{split}_accuracy"]) for c in rows],
                        "-o" if k == 0 else "--s", markersize=4, label=text(model["name"]))
        name = label + (f", {pool}-pooled" if pool else "")
        ax.set_title(text(f"Probe accuracy per layer: {name} ({split})"))
        layer_axis(ax)
        ax.set_ylabel(f"{split} accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out.append((f"Probe accuracy per layer: {name} ({split} accuracy)",
                    save(plt, fig, folder / f"accuracy_{label}{'_' + pool if pool else ''}.png")))
    return out


def neuron_distribution_figure(models: list[dict], folder: Path) -> tuple[str, Path] | None:
    runs = [(m["name"], doc) for m in models for doc in m["neurons"]]
    if not runs:
        return None
    plt, fig, ax = figure()
    width = 0.8 / len(runs)
    for k, (name, doc) in enumerate(runs):
        layers = [int(x) for x in doc["layer_distribution"]]
        counts = [doc["layer_distribution"][str(x)] for x in layers]
        ax.bar([x + k * width for x in layers], counts, width=width,
               label=text(f"{name}: {doc['strata_neurons']['label']} (k = {doc['minimal']['k']})"
                          + ("" if doc["minimal"].get("within_delta", True) else ", not within delta")))
    layer_axis(ax)
    ax.set_ylabel("selected neurons")
    ax.set_title("Top neurons per layer (minimal neuron set)")
    ax.legend(fontsize=7)
    return "Top neurons per layer", save(plt, fig, folder / "neurons_per_layer.png")


def similarity_figure(models: list[dict], folder: Path) -> tuple[str, Path] | None:
    runs = [(m["name"], doc) for m in models[1:] for doc in m["compare"]]
    if not runs:
        return None
    plt, fig, ax = figure()
    for k, (name, doc) in enumerate(runs):
        color = f"C{k}"
        pool = doc["strata_compare"].get("pool")
        name = name + (f" ({pool}-pooled)" if pool else "")
        if "cka" in doc:
            d = doc["cka"]["diagonal"]  # null where undefined (a constant layer): drawn as a gap
            layers = sorted(int(x) for x in d)
            ax.plot(layers, [finite(d[str(x)]) for x in layers], "-s", color=color,
                    markersize=4, label=text(f"{name}: CKA"))
        if "rsa" in doc:
            layers = sorted(doc["rsa"]["layers"])
            ax.errorbar(layers, [finite(doc["rsa"]["mean"][str(x)]) for x in layers],
                        yerr=[doc["rsa"]["std"][str(x)] or 0 for x in layers], fmt=":o", color=color,
                        markersize=4, capsize=3, label=text(f"{name}: RSA"))
    layer_axis(ax)
    ax.set_ylabel(text(f"similarity to {models[0]['name']}"))
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.set_title("Similarity to the base model per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return "Similarity to the base model per layer", save(plt, fig, folder / "similarity.png")


def similarity_sources(models: list[dict]) -> str | None:
    """What each comparison compared, flagged where its A is none of the base's stores."""
    base = stores_of(models[0])
    lines = []
    for m in models[1:]:
        own = stores_of(m)
        for doc in m["compare"]:
            run = doc["strata_compare"]
            line = f"{m['name']}: A = {run['a']}, B = {run['b']}" + (f", {run['pool']}-pooled" if run.get("pool") else "")
            if base and run["a"] not in base:
                line += f" (A is none of the stores {models[0]['name']}'s probe and neurons results used)"
            if own and run["b"] not in own:
                line += f" (B is none of the stores {m['name']}'s probe and neurons results used)"
            lines.append(line)
    return "".join(f"<p>{html.escape(x, quote=False)}</p>" for x in lines) or None


# --------------------------------------------------------------------------- tables
def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ablation_table(models: list[dict]) -> str | None:
    rows = []
    for m in models:
        for doc in m["neurons"]:
            a = doc["ablation"]
            within = doc["minimal"].get("within_delta", True)
            rows.append([m["name"], doc["strata_neurons"]["label"],
                         f"{doc['minimal']['k']}" + ("" if within else " (not within delta)"),
                         _pct(doc["oracle"]["test_accuracy"])]
                        + [_pct(a[s]["retrained_test"]) for s in ("top", "bottom", "random")]
                        + [_pct(a[s]["zeroed_test"]) for s in ("top", "bottom", "random")])
    if not rows:
        return None
    return _table(["model", "labels", "k", "all neurons", "top (retrained)", "bottom (retrained)",
                   "random (retrained)", "top (zeroed)", "bottom (zeroed)", "random (zeroed)"], rows)


def pooling_table(models: list[dict]) -> str | None:
    """CLS vs mean accuracy per layer and model, and mean - CLS."""
    rows = []
    for m in models:
        chosen = [c for c in chosen_rows(m) if c.get("pool") and len(c["layers"]) == 1]
        for label in dict.fromkeys(c["label"] for c in chosen):
            by = {(c["pool"], c["layers"][0]): c for c in chosen if c["label"] == label}
            for layer in sorted({x for _, x in by}):
                cls, mean = by.get(("cls", layer)), by.get(("mean", layer))
                if cls and mean:
                    split = "test" if cls["test_accuracy"] is not None and mean["test_accuracy"] is not None else "dev"
                    a, b = cls[f"{split}_accuracy"], mean[f"{split}_accuracy"]
                    rows.append([m["name"], label, layer, split, _pct(a), _pct(b), f"{100 * (b - a):+.1f}"])
    if not rows:
        return None
    return _table(["model", "labels", "layer", "split", "CLS", "mean", "mean − CLS"], rows)


# --------------------------------------------------------------------------- the page
STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}img{max-width:100%}.missing,.partial{color:#777;font-style:italic}"""


def _img(title: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(title)} ({html.escape(path.name)})</figcaption></figure>")


def build_report(models: list[dict], out: Path) -> dict:
    """Write ``out`` (HTML) and its PNGs in ``out``'s folder; returns what each section holds."""
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    names = ", ".join(m["name"] for m in models[1:])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>strata report</title>"
             f"<style>{STYLE}</style></head><body><h1>strata report: {html.escape(models[0]['name'])} vs "
             f"{html.escape(names)}</h1>"]
    sections = {}

    def section(title: str, content: str | None, missing: str, kind: str | None = None, among=models) -> None:
        sections[title] = content is not None
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(content if content is not None else f"<p class='missing'>{html.escape(missing)}</p>")
        lacking = [m["name"] for m in among if kind and not m[kind]]
        if content is not None and lacking:  # drawn for some models only: say which are not in it
            parts.append(f"<p class='partial'>not shown: {html.escape(', '.join(lacking))} (no strata {kind} "
                         "results given)</p>")

    figures = accuracy_figures(models, folder)
    section("1. Layer-wise probe accuracy (Durrani et al. Fig. 1)",
            "".join(_img(t, p) for t, p in figures) or None, "no strata probe results given", "probe")
    dist = neuron_distribution_figure(models, folder)
    section("2. Top neurons per layer (Durrani et al. Fig. 2)", dist and _img(*dist),
            "no strata neurons results given", "neurons")
    section("3. Top vs bottom vs random neurons, test accuracy (Durrani et al. Table 1)", ablation_table(models),
            "no strata neurons results given", "neurons")
    sim = similarity_figure(models, folder)
    section("4. RSA and CKA per layer against the base (Merchant et al. Fig. 2)",
            sim and _img(*sim) + (similarity_sources(models) or ""),
            "no strata compare results given with the other models", "compare", models[1:])
    section("5. CLS vs mean pooling (Mosbach et al. Table 2)", pooling_table(models),
            "no strata probe results with both --pool cls and --pool mean")
    parts.append("</body></html>")
    page = "\n".join(parts).encode("utf-8")
    atomic_write(out, lambda f: f.write(page))
    return {"sections": sections, "figures": [str(p) for _, p in figures]
            + [str(x[1]) for x in (dist, sim) if x is not None]}
