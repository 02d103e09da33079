"""Train and evaluate one probe group: one feature set, one label set, the whole grid.

``run_group`` takes a plain JSON spec and opens the stores itself, so the same
function runs in this process or on any ``dask.distributed`` worker that sees
the stores' paths.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

from probe_engine.backend import array_module
from probe_engine.features import FeatureSet, block_tokens_for
from probe_engine.grid import feature_set_name
from probe_engine.labels import mapped_classes, training_classes, unseen_class_counts
from probe_engine.stores import ProbeStore, check_same_model
from probe_engine.screening import screened_grid
from probe_engine.train import accuracies, predict, train_grid
from store.writer import fault_point


def finite_or_none(x) -> float | None:
    """A float for results.json, where inf (a gap not computed) has no strict-JSON spelling."""
    return float(x) if np.isfinite(x) else None


def open_stores(spec: dict) -> dict[str, ProbeStore]:
    pool = spec.get("pool")
    stores = {"train": ProbeStore(Path(spec["train"]), "--train", pool)}
    for split in ("dev", "test"):
        if spec.get(split):
            stores[split] = ProbeStore(Path(spec[split]), f"--{split}", pool)
            check_same_model(stores["train"], stores[split])
    return stores


def stopped_by(sol, p: int, tol: float) -> str:
    """Which test ended probe ``p``: ``gradient`` (distance to the subdifferential at most
    ``tol``), ``gap`` (the duality gap under ``--gap-tol``, with the distance still above
    ``tol``) or ``max_iter`` (neither: its last point, uncertified)."""
    if not sol.converged[p]:
        return "max_iter"
    return "gradient" if sol.optimality[p] <= tol else "gap"


def choose(records: list[dict]) -> int:
    """The probe picked on dev among those solved to the run's tolerance (all of them
    unless the grid was screened): best dev accuracy; ties go to fewer non-zeros, then
    the larger l1, then the larger l2 (the simpler probe)."""
    eligible = [i for i, r in enumerate(records) if not r.get("screened_out")] or range(len(records))
    return max(eligible, key=lambda i: (records[i]["dev_accuracy"], -records[i]["nonzeros"],
                                        records[i]["l1"], records[i]["l2"]))


def run_group(spec: dict, progress=None) -> dict:
    """Returns ``{"summary": JSON-able dict, "arrays": {name: ndarray}}``.

    ``progress(iteration, active)`` is called after every training pass.
    """
    fault_point("probe-group")  # tests: a worker process that dies in its group
    xp = array_module(spec["device"])
    stores = open_stores(spec)
    train = stores["train"]
    positions = [train.layers.index(layer) for layer in spec["layers"]]
    y_train, classes, counts = training_classes(train, spec["label"])
    grid = [(l1, l2) for l1 in spec["l1"] for l2 in spec["l2"]]
    chunk = train.features.chunks[1]
    block = block_tokens_for(len(grid) * len(classes), chunk)
    features = FeatureSet(train, positions, y_train, block)
    in_memory = features.memory_bytes() <= spec["max_memory"]
    stats, blocks = features.statistics_and_blocks(xp, in_memory=in_memory, hold_bytes=spec["max_memory"])

    evaluation, unseen = {}, {}
    for split in ("dev", "test"):
        if split in stores:
            y, unseen[split] = mapped_classes(stores[split], spec["label"], classes)
            evaluation[split] = FeatureSet(stores[split], positions, y, block).blocks(stats, xp, in_memory=False,
                                                                                      check_finite=True)

    started = time.perf_counter()
    common = dict(xp=xp, tol=spec["tol"], gap_tol=spec.get("gap_tol"), max_iter=spec["max_iter"], counts=counts,
                  on_iteration=progress, schedule=spec.get("grid_schedule", "batched"))
    screen_tol = spec.get("screen_tol")
    if screen_tol is not None and "dev" in evaluation:
        def dev_accuracy(W, b):
            return accuracies(*predict(evaluation["dev"], W, b, xp))

        sol, refined = screened_grid(blocks, len(classes), spec["l1"], spec["l2"], dev_accuracy=dev_accuracy,
                                     screen_tol=screen_tol, margin=spec["screen_margin"], **common)
    else:
        sol, refined = train_grid(blocks, len(classes), spec["l1"], spec["l2"], **common), np.ones(len(grid), bool)
    train_seconds = time.perf_counter() - started

    predictions = {"train": predict(blocks, sol.W, sol.b, xp)}
    for split, split_blocks in evaluation.items():
        predictions[split] = predict(split_blocks, sol.W, sol.b, xp)
    accuracy = {split: accuracies(pred, truth) for split, (pred, truth) in predictions.items()}

    name = feature_set_name(tuple(spec["layers"]), train.layers)
    records = []
    for p, (l1, l2) in enumerate(grid):
        record = {"feature_set": name, "layers": spec["layers"], "pool": spec.get("pool"), "label": spec["label"],
                  "l1": l1, "l2": l2, "seed": spec["seed"]}
        for split in ("train", "dev", "test"):
            record[f"{split}_accuracy"] = float(accuracy[split][p]) if split in accuracy else None
        record_tol = spec["tol"] if refined[p] else screen_tol
        record.update(objective=float(sol.objective[p]), loss=float(sol.loss[p]),
                      tol=record_tol, screened_out=not bool(refined[p]),
                      converged=bool(sol.converged[p]), stopped_by=stopped_by(sol, p, record_tol),
                      iterations=int(sol.iterations[p]),
                      optimality=float(sol.optimality[p]), duality_gap=finite_or_none(sol.gap[p]),
                      nonzeros=int(np.count_nonzero(sol.W[:, p])),
                      seconds=train_seconds / len(grid))
        records.append(record)
    chosen = choose(records) if "dev" in accuracy else None
    per_class = {}
    if chosen is not None:
        for split in ("dev", "test"):
            if split in predictions:
                pred, truth = predictions[split]
                prec, rec, f1, support = precision_recall_fscore_support(
                    truth, pred[:, chosen], labels=np.arange(len(classes)), zero_division=0)
                per_class[split] = {c: {"precision": float(prec[k]), "recall": float(rec[k]), "f1": float(f1[k]),
                                        "support": int(support[k]), "in_training": True} for k, c in enumerate(classes)}
                # classes the training rows lack: never predicted, every token of theirs an error
                for c, n in unseen_class_counts(stores[split], spec["label"], classes).items():
                    per_class[split][c] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": n,
                                           "in_training": False}
    summary = {
        "feature_set": name, "layers": spec["layers"], "pool": spec.get("pool"), "label": spec["label"],
        "classes": classes,
        "rows": {split: int(len(truth)) for split, (_, truth) in predictions.items()},
        "unseen_label_tokens": unseen, "features": features.n_features, "probes": len(grid),
        "in_memory": in_memory, "blocks_held": features.n_blocks if in_memory else min(blocks.keep, features.n_blocks),
        "blocks": features.n_blocks, "block_tokens": block, "train_seconds": train_seconds,
        "records": records, "chosen": chosen, "per_class": per_class,
    }
    arrays = {"W": sol.W, "b": sol.b, "mean": stats.mean, "scale": stats.scale}
    return {"summary": summary, "arrays": arrays}
