"""The figures strata writes (PNG, matplotlib's Agg backend): a probe run's accuracy per
layer, a neuron analysis's layer distribution and minimal set, a comparison's CKA heatmap
and similarity per layer, and the helpers ``strata report`` draws its figures with."""

from __future__ import annotations

import math
from pathlib import Path


def figure(width: float = 6.4, height: float = 4.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt, *plt.subplots(figsize=(width, height), dpi=120)



def text(s: str) -> str:
    """``s`` as matplotlib shows it literally: ``$`` would start mathtext (an unpaired one
    raises), and a legend hides labels that start with ``_``."""
    s = str(s).replace("$", r"\$")
    return " " + s if s.startswith("_") else s


def layer_axis(ax) -> None:
    """Integer ticks on a layer axis (one layer alone got ticks at -0.04, -0.02, ...)."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (0 = embedding output)")


def finite(v) -> float:
    """A JSON number for plotting: null (undefined) becomes NaN, drawn as a gap."""
    return float("nan") if v is None or not math.isfinite(v) else float(v)


def plot_accuracy(chosen: list[dict], path: Path) -> None:
    """Dev (and test) accuracy of the chosen probe of every single-layer feature set,
    per label set; concatenated feature sets as dashed horizontal lines."""
    plt, fig, ax = figure()
    series = list(dict.fromkeys((c["label"], c.get("pool")) for c in chosen))
    for k, (label, pool) in enumerate(series):
        color, name = f"C{k}", label + (f" {pool}-pooled" if pool else "")
        mine = [c for c in chosen if c["label"] == label and c.get("pool") == pool]
        single = sorted((c for c in mine if len(c["layers"]) == 1), key=lambda c: c["layers"][0])
        for split, style in (("dev", "-o"), ("test", ":s")):
            points = [(c["layers"][0], c[f"{split}_accuracy"]) for c in single if c[f"{split}_accuracy"] is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, color=color, label=text(f"{name} {split}"), markersize=4)
        for c in mine:
            if len(c["layers"]) > 1 and c["dev_accuracy"] is not None:
                ax.axhline(c["dev_accuracy"], color=color, linestyle="--", linewidth=1,
                           label=text(f"{name} dev, {c['feature_set']}"))
    layer_axis(ax)
    ax.set_ylabel("accuracy")
    ax.set_title("Probe accuracy per layer (probe chosen on dev)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(plt, fig, path)


def save(plt, fig, path: Path) -> Path:
    """``fig`` to ``path`` whole or not at all (a kill mid-write left a 0-byte PNG)."""
    from probe_engine.outputs import atomic_write

    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".")))
    plt.close(fig)
    return path



def plot_layer_distribution(doc: dict, path: Path) -> None:
    """Selected neurons per layer (Durrani et al. Fig. 2)."""
    plt, fig, ax = figure()
    dist = doc["layer_distribution"]
    ax.bar([str(layer) for layer in dist], list(dist.values()), color="C0")
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("selected neurons")
    ax.set_title(text(f"{doc['strata_neurons']['label']}: top {doc['minimal']['k']:,} neurons across layers"))
    save(plt, fig, path)


def plot_minimal_set(doc: dict, path: Path) -> None:
    """Dev accuracy of top-k probes against the fraction of neurons, with the oracle and delta."""
    plt, fig, ax = figure()
    fractions = [t["fraction"] for t in doc["top_k"]]
    ax.plot(fractions, [t["dev_accuracy"] for t in doc["top_k"]], "-o", markersize=4, label="top-k probe, dev")
    oracle = doc["oracle"]["dev_accuracy"]
    ax.axhline(oracle, color="k", linewidth=1, label="oracle, dev")
    ax.axhline(oracle - doc["strata_neurons"]["delta"], color="k", linestyle="--", linewidth=1, label="oracle - delta")
    # at the fraction asked for (k / d rounds it up: 538 / 2,688 = 0.2001 for 0.2)
    chosen = next((t["fraction"] for t in doc["top_k"] if t["k"] == doc["minimal"]["k"]), doc["minimal"]["fraction"])
    within = doc["minimal"].get("within_delta", True)
    ax.axvline(chosen, color="C3", linestyle=":", label=f"minimal k = {doc['minimal']['k']:,}"
               + ("" if within else " (NOT within delta)"))
    ax.set_title(text(f"{doc['strata_neurons']['label']}: minimal neuron set ({doc['strata_neurons']['ranking']} "
                      "ranking)" + ("" if within else ": no fraction tried reaches oracle - delta")))
    ax.set_xlabel("fraction of neurons")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(plt, fig, path)


def plot_cka_heatmap(doc: dict, path: Path) -> None:
    """Linear CKA of every layer of A (rows) against every layer of B (columns)."""
    plt, fig, ax = figure()
    matrix = doc["cka"]["matrix"]
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.set_yticks(range(len(doc["layers_a"])), doc["layers_a"])
    ax.set_xticks(range(len(doc["layers_b"])), doc["layers_b"])
    ax.set_ylabel("layer of A")
    ax.set_xlabel("layer of B")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            value = finite(value)
            ax.text(j, i, "-" if math.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if not value >= 0.6 else "black")
    fig.colorbar(image, ax=ax, label="linear CKA")
    ax.set_title("Linear CKA between layers (Kornblith et al. 2019)")
    save(plt, fig, path)


def plot_similarity_per_layer(doc: dict, path: Path) -> None:
    """RSA (mean with its spread over repeats) and CKA of the same layer id in A and B."""
    plt, fig, ax = figure()
    if "rsa" in doc:
        layers = sorted(doc["rsa"]["layers"])
        mean = [finite(doc["rsa"]["mean"][str(x)]) for x in layers]
        std = [doc["rsa"]["std"][str(x)] or 0.0 for x in layers]
        ax.errorbar(layers, mean, yerr=std, fmt="-o", markersize=4, capsize=3, label="RSA (± std over samples)")
    if "cka" in doc:
        diagonal = doc["cka"]["diagonal"]
        layers = sorted(int(x) for x in diagonal)
        ax.plot(layers, [finite(diagonal[str(x)]) for x in layers], "-s", markersize=4, label="linear CKA")
    layer_axis(ax)
    ax.set_ylabel("similarity of A and B")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    ax.set_title("Similarity of the same layer in A and B")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(plt, fig, path)
