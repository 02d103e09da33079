"""The accuracy-per-layer figure of a probe run (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path


def plot_accuracy(chosen: list[dict], path: Path) -> None:
    """Dev (and test) accuracy of the chosen probe of every single-layer feature set,
    per label set; concatenated feature sets as dashed horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    labels = list(dict.fromkeys(c["label"] for c in chosen))
    for k, label in enumerate(labels):
        color = f"C{k}"
        single = sorted((c for c in chosen if c["label"] == label and len(c["layers"]) == 1),
                        key=lambda c: c["layers"][0])
        for split, style in (("dev", "-o"), ("test", ":s")):
            points = [(c["layers"][0], c[f"{split}_accuracy"]) for c in single if c[f"{split}_accuracy"] is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, style, color=color, label=f"{label} {split}", markersize=4)
        for c in chosen:
            if c["label"] == label and len(c["layers"]) > 1 and c["dev_accuracy"] is not None:
                ax.axhline(c["dev_accuracy"], color=color, linestyle="--", linewidth=1,
                           label=f"{label} dev, {c['feature_set']}")
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel("accuracy")
    ax.set_title("Probe accuracy per layer (probe chosen on dev)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
