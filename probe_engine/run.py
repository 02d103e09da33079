"""A whole ``strata probe`` run: plan the groups, run the missing ones, write results.

Each finished group is saved at once under ``DIR/groups/`` (arrays first, then
the JSON that marks it finished, each written to a temporary name and renamed),
so an interrupted run started again reuses every finished group and redoes only
the others.  Groups run one after another in this process (``--scheduler
threads``: the BLAS and Dask use the threads) or as tasks on a
``dask.distributed`` cluster (``--scheduler ADDRESS``).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from probe_engine.grid import group_id, parse_layers, result_identity
from probe_engine.group import open_stores, run_group
from probe_engine.labels import training_classes
from probe_engine.outputs import (make_output_dir, read_npz, remove_partial_files, sealed, unsealed, write_json,
                                  write_npz)
from probe_engine.stores import shared_rows_warning, verify_stores
from store.errors import StrataError, first_line
from store.lock import exclusive_writer
from store.manifest import sha256_file

RESULTS_VERSION = 1


def plan_groups(options: dict) -> list[dict]:
    """One spec per (label set, feature set); validates stores and labels up front."""
    feature_sets = parse_layers(options["layers_spec"], open_stores(options)["train"].layers)
    common = {k: options[k] for k in ("train", "dev", "test", "l1", "l2", "tol", "max_iter", "device",
                                      "max_memory", "seed")}
    if options.get("grid_schedule", "batched") != "batched":  # absent = batched: older runs' groups still resume
        common["grid_schedule"] = options["grid_schedule"]
    if options.get("gap_tol") is not None:  # absent = off, as above
        common["gap_tol"] = options["gap_tol"]
    if options.get("screen_tol") is not None:  # absent = off, as above
        common.update(screen_tol=options["screen_tol"], screen_margin=options["screen_margin"])
    # what the stores hold, not only where: a store rebuilt at the same path is trained on again
    opened = open_stores(options)
    if options.get("verify", True):
        verify_stores(opened.values())
    common["stores"] = {role: store.identity for role, store in opened.items()}
    specs = []
    for pool in options.get("pools") or [None]:
        stores = open_stores({**options, "pool": pool})
        for store in stores.values():
            store.features  # raises naming a missing pooled array
            for label in options["labels"]:
                store.require_rows(label)  # raises naming a missing label set or an empty split
        for label in options["labels"]:
            training_classes(stores["train"], label)  # at least two classes
            for layers in feature_sets:
                specs.append({**common, "pool": pool, "label": label, "layers": list(layers)})
    if (warning := shared_rows_warning(opened)) is not None:  # once everything else is known to be right
        print(f"strata probe: warning: {warning}", file=sys.stderr)
    return specs


def save_group(out: Path, gid: str, spec: dict, result: dict) -> None:
    """The group's arrays, then its record, sealed with its own digest and the arrays'
    (the record is what marks the group finished)."""
    folder = out / "groups"
    folder.mkdir(parents=True, exist_ok=True)
    write_npz(folder / f"{gid}.npz", result["arrays"])
    record = {"spec": spec, **result["summary"], "arrays_sha256": sha256_file(folder / f"{gid}.npz")}
    write_json(folder / f"{gid}.json", sealed(record))


def load_group(out: Path, gid: str, spec: dict) -> dict | None:
    """A finished group's record, or None when it must be trained (again): missing, for
    other options, or damaged, including a change that leaves the files readable (both
    are checked against the record's digests)."""
    path, npz = out / "groups" / f"{gid}.json", out / "groups" / f"{gid}.npz"
    if not path.exists() or not npz.exists():
        return None
    try:
        doc = unsealed(json.loads(path.read_text()))
        if doc is None or doc.pop("arrays_sha256", None) != sha256_file(npz):
            return None
    except (OSError, ValueError):
        return None
    return doc if result_identity(doc.get("spec", {})) == result_identity(spec) else None


def load_group_arrays(out: Path, gid: str) -> dict:
    return read_npz(out / "groups" / f"{gid}.npz")


def run_probe(options: dict, out: Path, *, scheduler: str = "threads", quiet: bool = False) -> dict:
    """Run every group of ``options`` into ``out``; returns the results document."""
    specs = plan_groups(options)
    # the cluster is reached before --out is made: a wrong address leaves nothing behind
    client = None if scheduler == "threads" else _connect(scheduler)
    with contextlib.ExitStack() as held:
        if client is not None:
            held.enter_context(client)  # closed on the way out, also when --out is locked
        make_output_dir(out)  # before the lock, which goes beside it: a path that cannot be made is one line
        held.enter_context(exclusive_writer(out, "strata probe"))  # one run per --out (store/lock.py)
        remove_partial_files(out, ("groups", "weights"))
        ids = [group_id(s) for s in specs]
        done = {gid: doc for gid, s in zip(ids, specs) if (doc := load_group(out, gid, s)) is not None}
        todo = [(gid, s) for gid, s in zip(ids, specs) if gid not in done]
        if done:
            print(f"strata probe: reusing {len(done)} finished group(s) in {out / 'groups'}", file=sys.stderr)
        started = time.perf_counter()
        if client is None:
            _run_local(todo, out, done, quiet)
        else:
            _run_distributed(client, todo, out, done, scheduler, quiet)
        return write_results(options, out, [(gid, done[gid]) for gid in ids], time.perf_counter() - started,
                             scheduler)


def _run_local(todo, out, done, quiet):
    # the bars are closed as an interrupt unwinds (``with``), not at exit: closed then, they
    # redrew their lines over strata's "interrupted" line, which left the terminal without it
    with tqdm(total=len(todo), desc="probe groups", unit="group", disable=quiet or not todo) as outer:
        for gid, spec in todo:
            probes = len(spec["l1"]) * len(spec["l2"])
            with tqdm(total=None, desc=f"  {spec['label']} layers {'+'.join(map(str, spec['layers']))}",
                      unit="pass", leave=False, disable=quiet) as inner:

                def progress(iteration, active, inner=inner, probes=probes):
                    inner.update(iteration - inner.n)
                    inner.set_postfix_str(f"{probes - active}/{probes} probes done", refresh=False)

                result = run_group(spec, progress)
            save_group(out, gid, spec, result)
            done[gid] = {"spec": spec, **result["summary"]}
            outer.update()


#: Seconds a cluster may have no worker at all before the run stops (a worker without a
#: nanny that died is not replaced, and the run would wait forever).
NO_WORKERS_TIMEOUT_S = 60.0


def _connect(address: str):
    from dask.distributed import Client

    try:
        return Client(address, timeout="20s")
    except Exception as e:
        raise StrataError(f"--scheduler: cannot reach a dask scheduler at {address} ({e})") from None


def _run_distributed(client, todo, out, done, address, quiet):
    from concurrent.futures import CancelledError

    from dask.distributed import wait
    from distributed.scheduler import KilledWorker

    resume = "the finished groups are kept: rerun the same command to resume"
    futures = {client.submit(run_group, spec, pure=False, key=f"strata-probe-{gid}"): (gid, spec)
               for gid, spec in todo}
    with tqdm(total=len(todo), desc=f"probe groups on {address}", unit="group",
              disable=quiet or not todo) as bar:  # closed as an error or interrupt unwinds, as in _run_local
        pending, workerless_since = set(futures), None
        while pending:
            try:
                finished, pending = wait(pending, timeout=5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            except (OSError, CancelledError) as e:  # the scheduler went away (killed: FuturesCancelledError)
                raise StrataError(f"--scheduler: lost the dask scheduler at {address} ({type(e).__name__}: "
                                  f"{first_line(e)}); {resume}") from None
            if not finished:
                if client.scheduler_info().get("workers"):
                    workerless_since = None
                elif (workerless_since := workerless_since or time.monotonic()) + NO_WORKERS_TIMEOUT_S < time.monotonic():
                    raise StrataError(f"--scheduler: {address} has had no worker for {NO_WORKERS_TIMEOUT_S:g} s; "
                                      f"{resume}")
                continue
            for future in finished:
                gid, spec = futures.pop(future)
                try:
                    result = future.result()
                except (KilledWorker, CancelledError, OSError) as e:  # a dying worker, a lost scheduler
                    raise StrataError(f"--scheduler: group {gid} failed on {address} ({type(e).__name__}: "
                                      f"{first_line(e)}); {resume}") from None
                # a saved group's result leaves the cluster: a later worker death never recomputes it
                future.release()
                save_group(out, gid, spec, result)
                done[gid] = {"spec": spec, **result["summary"]}
                bar.update()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    found = {"python": sys.version.split()[0]}
    for name in ("strata", "numpy", "dask", "zarr", "scikit-learn"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def write_results(options: dict, out: Path, groups: list[tuple[str, dict]], seconds: float, scheduler: str) -> dict:
    """``results.json``, the chosen probes' weights (npz, no pickle) and the plot."""
    from probe_engine.plot import plot_accuracy

    # An earlier run's results.json goes first: until the new one is written, no
    # results.json describes weights that are being replaced.
    (out / "results.json").unlink(missing_ok=True)
    (out / "weights").mkdir(exist_ok=True)
    probes, chosen = [], []
    for gid, doc in groups:
        for record in doc["records"]:
            probes.append({"group": gid, **record})
        if doc["chosen"] is None:
            continue
        best = doc["records"][doc["chosen"]]
        arrays = load_group_arrays(out, gid)
        layers = "all" if doc["feature_set"] == "all layers" else "+".join(map(str, doc["layers"]))
        pooled = f"_{doc['pool']}" if doc.get("pool") else ""
        stem = f"{doc['label']}{pooled}_layer{layers}"
        weights = {"W": arrays["W"][:, doc["chosen"]], "b": arrays["b"][doc["chosen"]],
                   "mean": arrays["mean"], "scale": arrays["scale"],
                   "classes": np.array(doc["classes"]), "layers": np.array(doc["layers"])}
        write_npz(out / "weights" / f"{stem}.npz", weights)
        chosen.append({"feature_set": doc["feature_set"], "layers": doc["layers"], "pool": doc.get("pool"),
                       "label": doc["label"],
                       **{k: best[k] for k in ("l1", "l2", "train_accuracy", "dev_accuracy", "test_accuracy",
                                               "nonzeros", "converged")},
                       "weights": f"weights/{stem}.npz", "per_class": doc["per_class"],
                       "unseen_label_tokens": doc["unseen_label_tokens"], "rows": doc["rows"]})
    document = {
        "strata_probe": {"results_version": RESULTS_VERSION,
                         "objective": "mean CE(softmax(xW+b), y) + l1*sum|W| + l2*sum W^2, standardized x, b free",
                         "train": options["train"], "dev": options["dev"], "test": options["test"],
                         "labels": options["labels"], "layers": options["layers_spec"],
                         "pool": options.get("pools"),
                         "l1": options["l1"], "l2": options["l2"], "tol": options["tol"],
                         "gap_tol": options.get("gap_tol"), "screen_tol": options.get("screen_tol"),
                         "screen_margin": options.get("screen_margin") if options.get("screen_tol") else None,
                         "max_iter": options["max_iter"], "device": options["device"],
                         "grid_schedule": options.get("grid_schedule", "batched"),
                         "scheduler": "threads" if scheduler == "threads" else "distributed",
                         "seed": options["seed"], "command": options.get("command"),
                         "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "seconds_this_run": round(seconds, 3), "versions": _versions()},
        "probes": probes,
        "chosen": chosen,
        "groups": [{"group": gid, **{k: v for k, v in doc.items() if k not in ("records", "per_class", "spec")}}
                   for gid, doc in groups],
    }
    # weights of an earlier run into the same directory that this results.json does not list
    listed = {entry["weights"] for entry in chosen}
    for stale in (out / "weights").glob("*.npz"):
        if f"weights/{stale.name}" not in listed:
            stale.unlink()
    plot_accuracy(chosen, out / "accuracy_per_layer.png")
    write_json(out / "results.json", document)  # last: a results.json means every file beside it is whole
    return document
