"""Neuron analysis: oracle, ranking, minimal neuron set, ablations, layer distribution,
control task and selectivity, every step batched through the probe engine.

The method is Durrani, Sajjad & Dalvi ("How transfer learning impacts linguistic
knowledge in deep NLP models", 2021, sections 2 and 4.2; after Dalvi et al. 2019
and Durrani et al. 2020), with Hewitt & Liang's control tasks (EMNLP 2019):

1. **oracle**: the probe on all layers concatenated, (l1, l2) chosen on dev;
2. **ranking** of all neurons from the oracle's weights (``lca``) or from class
   means (``probeless``), see ranking.py;
3. **minimal**: one probe per fraction on its top-k neurons, all in one batch (the
   batch reads only the union of the probes' columns, blocks.ColumnBlocks, narrower
   as the wider probes finish, and each probe's own top-k is a column mask in the
   penalty, penalty.Restricted); the
   smallest k whose dev accuracy is within ``delta`` of the oracle's;
4. **ablation** at that k: top, bottom and random k, retrained (bottom and random in
   one batch; top is step 3's probe at k, the same problem) and as the oracle with
   every other weight zeroed (no training);
5. **layers**: how the selected neurons spread over layers;
6. **control** (optional): every word type gets one label drawn from the training
   label distribution; all-neuron and top-k probes retrained on those labels;
   selectivity = task accuracy - control accuracy.

Every retrained probe uses the oracle's (l1, l2).  Each step is saved under
``DIR/steps`` when it finishes; a run started again continues after the last
finished step.  The functions ``rank``, ``minimal_set``, ``ablations``,
``layer_distribution``, ``control_labels`` and ``selectivity`` are usable alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from probe_engine.backend import array_module
from probe_engine.features import FeatureSet, Standardizer, block_tokens_for
from probe_engine.group import open_stores, run_group
from probe_engine.labels import mapped_classes, training_classes
from probe_engine.outputs import (atomic_write, make_output_dir, read_npz, remove_partial_files, sealed, unsealed,
                                  write_json, write_npz)
from probe_engine.ranking import class_means, lca_ordering, probeless_ordering
from probe_engine.stores import shared_rows_warning, verify_stores
from probe_engine.train import accuracies, predict, train_probes
from store import schema
from store.errors import StrataError
from store.lock import exclusive_writer
from store.manifest import sha256_file

STEPS = ("oracle", "ranking", "minimal", "ablation", "control")
#: How control labels are drawn (:func:`control_labels`); recorded, and part of the control step's inputs.
CONTROL_DRAW = "blake2b-per-type"


# --------------------------------------------------------------------------- the steps as functions
def rank(method: str, W: np.ndarray | None = None, means: np.ndarray | None = None, *, probe=None) -> np.ndarray:
    """Neuron ordering, most salient first: ``lca`` from probe weights ``W (d, C)`` or a
    fitted :class:`~probe_engine.ElasticNetProbe` ``probe`` (its ``coef_standardized_``:
    its ``coef_`` is ``(C, d)`` and on the unstandardized scale, the wrong thing to pass as
    ``W``), ``probeless`` from class means ``(C, d)``; both in standardized feature space."""
    if method == "lca":
        if (W is None) == (probe is None):
            raise ValueError("rank('lca'): give W (neurons, classes) or probe (a fitted ElasticNetProbe), one of them")
        return lca_ordering(W if probe is None else probe.coef_standardized_.T)[0]
    if method == "probeless":
        if means is None:
            raise ValueError("rank('probeless'): give means, the class means (classes, neurons)")
        return probeless_ordering(means)
    raise StrataError(f"--ranking: {method!r} is not lca or probeless")


def sizes_for(fractions: list[float], d: int) -> list[int]:
    """Neuron counts for fractions of ``d`` (rounded up, at least 1)."""
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"fractions: each must be in (0, 1], got {bad[0]!r}")
    return [max(1, math.ceil(f * d - 1e-9)) for f in fractions]


def top_k_supports(ordering: np.ndarray, ks: list[int], d: int) -> np.ndarray:
    """Boolean ``(d, len(ks))``: column j marks the first ``ks[j]`` neurons of the ordering."""
    ordering = np.asarray(ordering)
    if ordering.ndim != 1 or ordering.dtype.kind not in "iu" or ((ordering < 0) | (ordering >= d)).any():
        raise ValueError(f"ordering: expected neuron indices in 0..{d - 1}, got {ordering!r}")
    bad = [k for k in ks if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(ordering)]
    if bad:
        raise ValueError(f"ks: each must be a whole number of neurons in 1..{len(ordering)}, got {bad[0]!r}")
    support = np.zeros((d, len(ks)), bool)
    for j, k in enumerate(ks):
        support[ordering[:k], j] = True
    return support


def minimal_set(ks: list[int], dev_accuracy: list[float], oracle_dev: float, delta: float) -> int | None:
    """Index of the smallest k whose dev accuracy is at least ``oracle_dev - delta``, or None.

    With a margin of 1e-12 for the subtraction's rounding (0.1 - 0.01 is 0.09000000000000001,
    which would leave out an accuracy of exactly 0.09); accuracies of different row counts
    differ by far more."""
    if not delta >= 0 or not math.isfinite(delta):  # NaN fails both comparisons
        raise ValueError(f"delta: must be >= 0 and finite, got {delta!r}")
    if len(ks) != len(dev_accuracy):
        raise ValueError(f"ks and dev_accuracy: one accuracy per k, got {len(ks)} ks and {len(dev_accuracy)} accuracies")
    ok = [j for j, acc in enumerate(dev_accuracy) if acc >= oracle_dev - delta - 1e-12]
    return min(ok, key=lambda j: ks[j]) if ok else None


def bottom_k(ordering: np.ndarray, k: int, unweighted: np.ndarray | None, rng) -> tuple[np.ndarray, bool]:
    """The k least salient neurons (Table 1's "bottom"): the last k of the ordering, except
    that neurons the oracle gives no weight in any class are tied (LCA orders them last by
    index only, so with an l1 that zeroes many, the last k would be the top layers' last
    neurons).  When at least k neurons are ``unweighted`` (bool ``(d,)``; ``None``: no ties,
    as for probeless), k of them are drawn with ``rng``.  Returns ``(neurons sorted, drawn)``."""
    if unweighted is not None and k <= int(unweighted.sum()):
        return np.sort(rng.choice(np.flatnonzero(unweighted), size=k, replace=False)), True
    return np.sort(ordering[len(ordering) - k:]), False


def layer_distribution(neurons: np.ndarray, layers: list[int], hidden: int) -> dict[int, int]:
    """How many of ``neurons`` (indices into all layers side by side) sit in each layer."""
    neurons = np.asarray(neurons, dtype=np.int64)
    if hidden < 1 or len(set(layers)) != len(layers):
        raise ValueError(f"layers and hidden: expected distinct layer ids and hidden >= 1, got {layers!r}, {hidden!r}")
    outside = neurons[(neurons < 0) | (neurons >= len(layers) * hidden)]
    if len(outside):  # bincount would count it in no layer, or fail on a negative one
        raise ValueError(f"neurons: expected indices in 0..{len(layers) * hidden - 1} "
                         f"({len(layers)} layers of {hidden}), got {outside[0]}")
    counts = np.bincount(neurons // hidden, minlength=len(layers))
    return {int(layer): int(n) for layer, n in zip(layers, counts)}


def control_labels(word_types: np.ndarray, class_counts: np.ndarray, seed: int) -> dict[str, int]:
    """Hewitt & Liang control task: each word type (exact, case-sensitive string) gets one
    class index drawn from the training class distribution, with ``seed``.

    Each type's draw is its own: a uniform number from the type's BLAKE2b hash keyed by the
    seed (64 bits), inverted through the cumulative class distribution.  So a type's class
    depends on the seed, the type and the distribution alone, never on which other types
    are drawn with it: one generator drawing for the sorted types of train, dev and test
    together (strata before 2026-12-04) gave 88% of the training tokens of a real run
    another control class when only ``--test`` changed.  Why not a generator per type:
    ``numpy.random.default_rng`` costs ~20 us to seed, the hash ~1 us."""
    class_counts = np.asarray(class_counts, dtype=np.float64)
    if class_counts.ndim != 1 or (class_counts < 0).any() or not class_counts.sum() > 0:
        raise ValueError(f"class_counts: expected counts >= 0 per class, not all 0, got {class_counts!r}")
    cumulative = np.cumsum(class_counts)
    cumulative /= cumulative[-1]  # the last is exactly 1, so a uniform in [0, 1) lands in some class
    key = str(int(seed)).encode()
    types = np.unique(word_types).tolist()
    uniform = np.array([int.from_bytes(hashlib.blake2b(str(t).encode("utf-8", "surrogatepass"), digest_size=8,
                                                       key=key).digest(), "little") for t in types],
                       dtype=np.float64) / 2.0 ** 64
    # side="right": the first class whose cumulative share exceeds u; a class of count 0 has
    # the same cumulative share as the one before it and is never drawn
    drawn = np.searchsorted(cumulative, uniform, side="right")
    return dict(zip(types, np.minimum(drawn, len(class_counts) - 1).tolist()))


def control_draw(words: dict[str, np.ndarray], y_train: np.ndarray, classes: list[str], seed: int):
    """The control task of a run: the word-type table over every split's words, each
    split's drawn class per token, and the classes some training row drew.  Refuses a
    draw that left training one class: it depends only on the words, the training labels
    and the seed, so ``check_options`` makes it before anything trains."""
    counts = np.bincount(y_train[y_train >= 0], minlength=len(classes))
    table = control_labels(np.concatenate(list(words.values())), counts, seed)
    drawn = {split: np.array([table[w] for w in words[split]], np.int64).reshape(-1) for split in words}
    present = np.unique(drawn["train"][y_train != -1])
    if len(present) < 2:
        raise StrataError(f"--control: with --seed {seed} every training word type drew the class "
                          f"{classes[present[0]]!r}; a control probe needs two classes: try another --seed")
    return table, drawn, present


def token_words(store) -> np.ndarray:
    """Each row's word string, the key of the control task's word types."""
    return np.asarray(store.read(lambda: store.group[schema.TOKEN_TEXT][...]).tolist(), dtype=object)


def selectivity(task_accuracy: float, control_accuracy: float) -> float:
    return task_accuracy - control_accuracy


# --------------------------------------------------------------------------- data for the pipeline
class NeuronData:
    """The three stores' features (all layers side by side) standardized with the oracle's
    training statistics, as row blocks, cached, under task or control labels.

    Each split's features are read once and shared by both label kinds (the control task
    relabels the task's blocks).  ``max_memory`` caps what all splits hold together,
    train first (its blocks are read on every training pass), then dev and test."""

    def __init__(self, options: dict, stats: Standardizer, classes: list[str], n_probes: int):
        self.options = options
        self.xp = array_module(options["device"])
        self.stores = open_stores(options)
        train = self.stores["train"]
        self.layers = train.layers
        self.hidden = int(train.features.shape[2])
        self.positions = list(range(len(self.layers)))
        self.stats, self.classes = stats, classes
        self.block = block_tokens_for(n_probes * len(classes), train.features.chunks[1])
        self.y = {"train": training_classes(train, options["label"])[0]}
        self.unseen = {}
        for split in ("dev", "test"):
            self.y[split], self.unseen[split] = mapped_classes(self.stores[split], options["label"], classes)
        self._cache = {}  # (split, kind) -> blocks
        self._task_features = {}  # split -> the FeatureSet of its task blocks
        self._unheld = int(options["max_memory"])  # what the cap still lets the splits hold

    @property
    def d(self) -> int:
        return len(self.layers) * self.hidden

    def blocks(self, split: str, y_tokens: np.ndarray, kind: str):
        key = (split, kind)
        if key in self._cache:
            return self._cache[key]
        fs = FeatureSet(self.stores[split], self.positions, y_tokens, self.block)
        if kind == "task":
            in_memory = fs.memory_bytes() <= self._unheld
            blocks = fs.blocks(self.stats, self.xp, in_memory=in_memory, hold_bytes=self._unheld,
                               check_finite=split != "train")  # the oracle's statistics checked train
            self._unheld -= fs.held_bytes(blocks)
            self._task_features[split] = fs
        else:  # the task's features under other labels: not read or held a second time
            task = self.blocks(split, self.y[split], "task")
            blocks = fs.relabeled(task, self._task_features[split], self.xp)
        self._cache[key] = blocks
        return blocks

    def train_and_score(self, l1: float, l2: float, support: np.ndarray, y: dict, kind: str, desc: str,
                        quiet: bool, n_classes: int | None = None) -> dict:
        """One batch: a probe per column of ``support`` at (l1, l2); accuracies on every split."""
        P = support.shape[1]
        train = self.blocks("train", y["train"], kind)  # train_probes reads only the supports' columns
        bar = tqdm(total=self.options["max_iter"], desc=desc, unit="pass", leave=False, disable=quiet)
        started = time.perf_counter()
        sol = train_probes(train, n_classes or len(self.classes), [l1] * P, [l2] * P, xp=self.xp, tol=self.options["tol"],
                           gap_tol=self.options.get("gap_tol"), max_iter=self.options["max_iter"], support=support,
                           on_iteration=lambda it, active: bar.update(it - bar.n))
        seconds = time.perf_counter() - started
        bar.close()
        scores = {split: self.accuracy(split, y, kind, sol.W, sol.b) for split in ("train", "dev", "test")}
        return {"scores": scores, "converged": sol.converged.tolist(), "iterations": sol.iterations.tolist(),
                "nonzeros": [int(np.count_nonzero(sol.W[:, p])) for p in range(P)], "seconds": seconds}

    def accuracy(self, split: str, y: dict, kind: str, W: np.ndarray, b: np.ndarray) -> list[float]:
        pred, truth = predict(self.blocks(split, y[split], kind), W, b, self.xp)
        return [float(a) for a in accuracies(pred, truth)]


# --------------------------------------------------------------------------- the pipeline
def check_options(options: dict) -> dict:
    """Refuse bad options and stores before any step; returns the opened (verified) stores."""
    if not options["fractions"]:
        raise StrataError("--fractions: no fraction given")
    for f in options["fractions"]:
        if not 0 < f <= 1:
            raise StrataError(f"--fractions: {f} is not in (0, 1]")
    if not options["delta"] >= 0:
        raise StrataError(f"--delta: must be >= 0, got {options['delta']}")
    if not options.get("test"):
        raise StrataError("--test: strata neurons needs a test store")
    stores = open_stores(options)
    if options.get("verify", True):  # before any array is read: labels and words too
        verify_stores(stores.values())
    if options["control"] and options["label"] in stores["train"].label_names("sentence"):
        raise StrataError("--control: a control task is not defined for a sentence-level label set "
                          "(Hewitt & Liang draw control labels per word type); drop --control or --pool")
    for store in stores.values():
        store.features  # raises naming a missing pooled array
        store.require_rows(options["label"])  # raises naming a missing label set (with a --pool hint) or no rows
    y_train, classes, _ = training_classes(stores["train"], options["label"])  # at least two classes
    if options["control"]:
        train = stores["train"]
        if train.parameters.get("word_vector") == "subword":
            raise StrataError(f"--control: {train.path} is a subword store (--word-vector subword): its rows are "
                              "subword pieces, and control labels are drawn per word type; extract with "
                              "--word-vector last, first or mean")
        control_draw({split: token_words(store) for split, store in stores.items()}, y_train, classes,
                     options["seed"])
    return stores


def _spec_hash(options: dict, step: str) -> str:
    """What a step's result depends on: every option up to and including that step."""
    keys = ["train", "dev", "test", "stores", "pool", "label", "l1", "l2", "tol", "max_iter", "device"]
    for key in ("gap_tol", "screen_tol"):  # absent = off: steps finished before the option existed still count
        if options.get(key) is not None:
            keys += [key]
    if options.get("screen_tol") is not None:
        keys += ["screen_margin"]
    if step != "oracle":
        keys += ["ranking"]
    if step in ("minimal", "ablation", "control"):
        keys += ["fractions", "delta"]
    if step in ("ablation", "control"):  # the random neurons and the control labels are drawn
        keys += ["seed"]
    inputs = {k: options[k] for k in keys}
    if step == "control":  # control steps finished with the draw of before 2026-12-04 are not reused
        inputs["control_draw"] = CONTROL_DRAW
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


class Steps:
    """Finished steps on disk: ``DIR/steps/NAME.json`` (+ ``.npz``), reused when their inputs match.

    A step's inputs are its options (:func:`_spec_hash`) and, after the first step, every
    earlier step's record as it is on disk: steps run in order and each uses what the
    earlier ones found (the ablation the minimal step's k, the control task its neurons),
    so a step that runs again makes every later one run again, and a later step is never
    paired with another run of an earlier one.  The npz carries the inputs hash too, and
    the json names its arrays: the two files are written one after the other, so a run
    killed between them (after another run's json) must not pair that json with its own
    npz.  A missing or foreign npz, or one from before the hash was in it, makes the step
    run again.  The json is sealed with its own digest and the npz's (outputs.sealed):
    a file changed since its run wrote it, even one that still parses, is redone.
    """

    def __init__(self, out: Path, options: dict):
        self.dir, self.options = out / "steps", options
        self.dir.mkdir(parents=True, exist_ok=True)
        self.reused = []
        self._earlier = ""  # sha256 of the earlier steps' records, in order ("" before the first)

    def _inputs(self, name: str) -> str:
        own = _spec_hash(self.options, name)
        return own if not self._earlier else hashlib.sha256((own + self._earlier).encode()).hexdigest()[:16]

    def _chain(self, record_bytes: bytes) -> None:
        self._earlier = hashlib.sha256(self._earlier.encode() + record_bytes).hexdigest()

    def load(self, name: str):
        path = self.dir / f"{name}.json"
        if not path.exists():
            return None
        try:
            raw = path.read_bytes()
            doc = unsealed(json.loads(raw))  # a record changed since its run wrote it: None
            inputs = self._inputs(name)
            if doc is None or doc.get("inputs") != inputs:
                return None
            npz = self.dir / f"{name}.npz"
            names = doc.pop("array_names", None)
            arrays_sha256 = doc.pop("arrays_sha256", None)
            if names is not None:
                if sha256_file(npz) != arrays_sha256:  # absent: OSError; changed: the step runs again
                    return None
                arrays = read_npz(npz)
                if str(arrays.pop("inputs", None)) != inputs or sorted(arrays) != names:
                    return None
                doc["arrays"] = arrays
            elif npz.exists():  # written before the npz carried its inputs
                return None
        except (OSError, ValueError, zipfile.BadZipFile):  # a damaged file: the step runs again
            return None
        self.reused.append(name)
        self._chain(raw)
        return doc

    def save(self, name: str, doc: dict, arrays: dict | None = None) -> dict:
        inputs = self._inputs(name)
        record = {"inputs": inputs, **doc}
        if arrays is not None:
            write_npz(self.dir / f"{name}.npz", {**arrays, "inputs": np.array(inputs)})
            record["array_names"] = sorted(arrays)
            record["arrays_sha256"] = sha256_file(self.dir / f"{name}.npz")
        write_json(self.dir / f"{name}.json", sealed(record))
        self._chain((self.dir / f"{name}.json").read_bytes())
        return {**doc, "arrays": arrays} if arrays is not None else doc


def run_neurons(options: dict, out: Path, quiet: bool = False) -> dict:
    """All steps into ``out``; returns the neurons.json document."""
    # what the stores hold, not only where: steps on a store rebuilt at the same path run again
    opened = check_options(options)
    options = {**options, "stores": {split: store.identity for split, store in opened.items()}}
    if not quiet and (warning := shared_rows_warning(opened)) is not None:
        print(f"strata neurons: warning: {warning}", file=sys.stderr)
    make_output_dir(out)  # before the lock, which goes beside it: a path that cannot be made is one line
    with exclusive_writer(out, "strata neurons"):  # one run per --out (store/lock.py)
        return _run_steps(options, out, quiet)


def _run_steps(options: dict, out: Path, quiet: bool) -> dict:
    remove_partial_files(out, ("steps",))
    steps = Steps(out, options)
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    # progress counts the steps of this run, each once: a reused step says so, and the
    # layer distribution (no training) is step 5 of 6 with --control, of 5 without
    order = ["oracle", "ranking", "minimal", "ablation", "layers"] + (["control"] if options["control"] else [])

    def tick(step: str, what: str) -> None:
        say(f"strata neurons: {order.index(step) + 1}/{len(order)} {what}")

    def tick_reused(step: str) -> None:
        tick(step, f"{step}: reused (finished in an earlier run, {steps.dir / step}.json)")

    started = time.perf_counter()

    # 1. oracle: the whole grid on all layers, chosen on dev
    oracle = steps.load("oracle")
    if oracle is None:
        tick("oracle", "oracle (all layers, grid search)")
        stores = open_stores(options)
        spec = {k: options[k] for k in ("train", "dev", "test", "pool", "label", "l1", "l2", "tol", "max_iter",
                                        "device", "max_memory", "seed")}
        if options.get("gap_tol") is not None:
            spec["gap_tol"] = options["gap_tol"]
        if options.get("screen_tol") is not None:
            spec.update(screen_tol=options["screen_tol"], screen_margin=options["screen_margin"])
        spec["layers"] = stores["train"].layers
        # cold starts: warm-started (l1-path) oracles were slower under screening and, at a loose
        # tol, stopped the l1 = 0 points a pass after their start (README, Neurons)
        spec["grid_schedule"] = "batched"
        result = run_group(spec)
        s, a = result["summary"], result["arrays"]
        best = s["records"][s["chosen"]]
        oracle = steps.save("oracle", {"classes": s["classes"], "grid": s["records"], "chosen": best,
                                       "unseen_label_tokens": s["unseen_label_tokens"], "rows": s["rows"]},
                            {"W": a["W"][:, s["chosen"]], "b": a["b"][s["chosen"]], "mean": a["mean"],
                             "scale": a["scale"]})
    else:
        tick_reused("oracle")
    classes, best = oracle["classes"], oracle["chosen"]
    W_oracle, b_oracle = oracle["arrays"]["W"], oracle["arrays"]["b"]
    stats = Standardizer(oracle["arrays"]["mean"], oracle["arrays"]["scale"])
    l1, l2 = best["l1"], best["l2"]
    data = NeuronData(options, stats, classes, n_probes=max(len(options["fractions"]), 3))
    d = data.d

    # 2. ranking
    ranking = steps.load("ranking")
    if ranking is None:
        tick("ranking", f"ranking ({options['ranking']})")
        means = class_means(data.blocks("train", data.y["train"], "task"), len(classes)) \
            if options["ranking"] == "probeless" else None
        ordering = rank(options["ranking"], W=W_oracle, means=means)
        ranking = steps.save("ranking", {"method": options["ranking"], "ordering": ordering.tolist()})
    else:
        tick_reused("ranking")
    ordering = np.asarray(ranking["ordering"])

    # 3. minimal neuron set: every fraction in one batch
    ks = sizes_for(options["fractions"], d)
    minimal = steps.load("minimal")
    if minimal is None:
        tick("minimal", f"minimal neuron set ({len(ks)} top-k probes in one batch)")
        run = data.train_and_score(l1, l2, top_k_supports(ordering, ks, d), data.y, "task", "  top-k probes", quiet)
        pick = minimal_set(ks, run["scores"]["dev"], best["dev_accuracy"], options["delta"])
        minimal = steps.save("minimal", {"ks": ks, **run, "pick": pick})
    else:
        tick_reused("minimal")
    pick = minimal["pick"]
    j = pick if pick is not None else int(np.argmax(ks))
    k = ks[j]
    selected = ordering[:k]

    # 4. ablations at k: top / bottom / random, retrained and zeroed in the oracle
    ablation = steps.load("ablation")
    if ablation is None:
        tick("ablation", f"ablations at k = {k}")
        rng = np.random.default_rng(options["seed"])
        random_k = np.sort(rng.choice(d, size=k, replace=False))  # drawn first: the same set as before bottom_k
        unweighted = ~np.any(W_oracle != 0, axis=1) if options["ranking"] == "lca" else None
        bottom, drawn = bottom_k(ordering, k, unweighted, rng)
        sets = {"top": ordering[:k], "bottom": bottom, "random": random_k}
        support = np.zeros((d, 3), bool)
        for col, neurons in enumerate(sets.values()):
            support[neurons, col] = True
        # the top-k probe is the minimal step's probe at k (same support, same penalty): reused, not retrained
        others = data.train_and_score(l1, l2, support[:, 1:], data.y, "task", "  ablation probes", quiet)
        retrained = {"scores": {split: [minimal["scores"][split][j], *acc] for split, acc in others["scores"].items()},
                     **{key: [minimal[key][j], *others[key]] for key in ("converged", "iterations", "nonzeros")},
                     "seconds": others["seconds"], "top_from": "minimal"}
        masked = W_oracle[:, None, :] * support[:, :, None]
        zeroed = {split: data.accuracy(split, data.y, "task", masked, np.tile(b_oracle, (3, 1)))
                  for split in ("dev", "test")}
        ablation = steps.save("ablation", {"k": k, "sets": {n: s.tolist() for n, s in sets.items()},
                                           "retrained": retrained, "zeroed_in_oracle": zeroed,
                                           "unweighted_neurons": None if unweighted is None else int(unweighted.sum()),
                                           "bottom_drawn_among_unweighted": drawn})
    else:
        tick_reused("ablation")

    # 5. layers: where the selected neurons sit (no training, nothing saved)
    tick("layers", f"layer distribution of the {k:,} selected neurons")
    distribution = layer_distribution(selected, data.layers, data.hidden)

    # 6. control task
    control = None
    if options["control"]:
        control = steps.load("control")
        if control is None:
            tick("control", "control task (all neurons and top-k, one batch)")
            words = {split: token_words(data.stores[split]) for split in ("train", "dev", "test")}
            table, drawn, present = control_draw(words, data.y["train"], classes, options["seed"])
            # a class no training word type drew cannot be learned (its intercept would go to -inf):
            # the control probes know the drawn classes only; dev/test tokens of others count as errors
            index = np.full(len(classes), -2, np.int64)
            index[present] = np.arange(len(present))
            y_control = {split: np.where(data.y[split] != -1, index[drawn[split]], -1) for split in words}
            support = np.zeros((d, 2), bool)
            support[:, 0] = True
            support[selected, 1] = True
            run = data.train_and_score(l1, l2, support, y_control, "control", "  control probes", quiet,
                                       n_classes=len(present))
            control = steps.save("control", {"word_types": len(table), **run})
        else:
            tick_reused("control")

    document = assemble(options, oracle, ranking, minimal, ablation, control, data, ks, j, distribution,
                        time.perf_counter() - started, steps.reused)
    # neurons.json last, and an earlier run's removed first: it never describes another
    # run's ordering, plots or summary
    (out / "neurons.json").unlink(missing_ok=True)
    write_npz(out / "ordering.npz", {"ordering": ordering, "selected": selected})
    from probe_engine.plot import plot_layer_distribution, plot_minimal_set
    plot_layer_distribution(document, out / "layer_distribution.png")
    plot_minimal_set(document, out / "minimal_set.png")
    summary = summary_markdown(document).encode()
    atomic_write(out / "summary.md", lambda f: f.write(summary))
    write_json(out / "neurons.json", document)
    return document


def assemble(options, oracle, ranking, minimal, ablation, control, data, ks, j, distribution, seconds,
             reused) -> dict:
    best, k = oracle["chosen"], ks[j]
    chosen_dev, chosen_test = minimal["scores"]["dev"][j], minimal["scores"]["test"][j]
    retrained, zeroed = ablation["retrained"]["scores"], ablation["zeroed_in_oracle"]
    doc = {
        "strata_neurons": {"label": options["label"], "pool": options.get("pool"), "train": options["train"],
                           "dev": options["dev"],
                           "test": options["test"], "ranking": options["ranking"], "delta": options["delta"],
                           "fractions": options["fractions"], "l1_grid": options["l1"], "l2_grid": options["l2"],
                           "tol": options["tol"], "gap_tol": options.get("gap_tol"),
                           "screen_tol": options.get("screen_tol"),
                           "screen_margin": options.get("screen_margin") if options.get("screen_tol") else None,
                           "max_iter": options["max_iter"],
                           "seed": options["seed"],
                           "control": options["control"], "device": options["device"],
                           "command": options.get("command"),
                           "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "seconds_this_run": round(seconds, 3), "steps_reused": reused,
                           "feature_space": "standardized with the training mean and standard deviation"},
        "neurons_total": data.d, "layers": data.layers, "hidden_size": data.hidden, "classes": oracle["classes"],
        "unseen_label_tokens": data.unseen,
        "oracle": {k2: best[k2] for k2 in ("l1", "l2", "train_accuracy", "dev_accuracy", "test_accuracy",
                                           "nonzeros", "converged")},
        "oracle_grid": [{k2: r.get(k2) for k2 in ("l1", "l2", "dev_accuracy", "tol", "screened_out", "converged",
                                                  "iterations", "nonzeros")}
                        for r in oracle["grid"]],
        "top_k": [{"fraction": f, "k": kk, "dev_accuracy": minimal["scores"]["dev"][i],
                   "test_accuracy": minimal["scores"]["test"][i], "converged": minimal["converged"][i]}
                  for i, (f, kk) in enumerate(zip(options["fractions"], ks))],
        "minimal": {"k": k, "fraction": k / data.d, "within_delta": minimal["pick"] is not None,
                    "dev_accuracy": chosen_dev, "test_accuracy": chosen_test},
        "ablation": {name: {"retrained_dev": retrained["dev"][i], "retrained_test": retrained["test"][i],
                            "zeroed_dev": zeroed["dev"][i], "zeroed_test": zeroed["test"][i]}
                     for i, name in enumerate(("top", "bottom", "random"))},
        "ablation_bottom": {"unweighted_neurons": ablation.get("unweighted_neurons"),
                            "drawn_among_unweighted": ablation.get("bottom_drawn_among_unweighted", False)},
        "layer_distribution": distribution,
        "ordering_file": "ordering.npz",
    }
    if control is not None:
        sc = control["scores"]
        doc["control"] = {
            "word_types": control["word_types"], "case": "exact token strings (case-sensitive)",
            "draw": CONTROL_DRAW,
            "all_neurons": {"task_test": best["test_accuracy"], "control_test": sc["test"][0],
                            "selectivity_test": selectivity(best["test_accuracy"], sc["test"][0]),
                            "task_dev": best["dev_accuracy"], "control_dev": sc["dev"][0],
                            "selectivity_dev": selectivity(best["dev_accuracy"], sc["dev"][0])},
            "selected_neurons": {"task_test": chosen_test, "control_test": sc["test"][1],
                                 "selectivity_test": selectivity(chosen_test, sc["test"][1]),
                                 "task_dev": chosen_dev, "control_dev": sc["dev"][1],
                                 "selectivity_dev": selectivity(chosen_dev, sc["dev"][1])},
        }
    return doc


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def summary_markdown(doc: dict) -> str:
    """The paper's tables for this model and task, as Markdown."""
    o, m, meta = doc["oracle"], doc["minimal"], doc["strata_neurons"]
    pooled = f" ({meta['pool']}-pooled sentence vectors)" if meta.get("pool") else ""
    lines = [f"# Neuron analysis: {meta['label']}{pooled}",
             "",
             f"Oracle (all {doc['neurons_total']:,} neurons, l1={o['l1']:g}, l2={o['l2']:g}): "
             f"dev {_pct(o['dev_accuracy'])}, test {_pct(o['test_accuracy'])}; chosen on dev from "
             f"{len(doc['oracle_grid'])} grid points"
             + (f", {screened} of them screened out at tol {meta['screen_tol']:g}"
                if (screened := sum(bool(r.get("screened_out")) for r in doc["oracle_grid"])) else "") + ".",
             "",
             f"Minimal neuron set ({meta['ranking']} ranking, delta {meta['delta']:g}): **k = {m['k']:,} "
             f"({100 * m['fraction']:.1f}% of neurons)**, dev {_pct(m['dev_accuracy'])}, "
             f"test {_pct(m['test_accuracy'])}"
             + ("" if m["within_delta"] else " (no fraction reached the oracle within delta: the largest is shown)")
             + ".",
             "",
             "| fraction | k | dev | test |", "|---:|---:|---:|---:|"]
    lines += [f"| {t['fraction']:g} | {t['k']:,} | {_pct(t['dev_accuracy'])} | {_pct(t['test_accuracy'])} |"
              for t in doc["top_k"]]
    lines += ["", f"Ablation at k = {m['k']:,} (test accuracy; cf. Durrani et al. Table 1):", "",
              "| neurons | retrained | zeroed in the oracle |", "|---|---:|---:|"]
    lines += [f"| {name} | {_pct(a['retrained_test'])} | {_pct(a['zeroed_test'])} |" for name, a in doc["ablation"].items()]
    bottom = doc.get("ablation_bottom", {})
    if bottom.get("drawn_among_unweighted"):
        lines += ["", f"The bottom {m['k']:,} were drawn (seed {doc['strata_neurons']['seed']}) among the "
                      f"{bottom['unweighted_neurons']:,} neurons the oracle gives no weight (tied last in the ordering)."]
    lines += ["", "Selected neurons per layer (cf. Fig. 2):", "",
              "| layer | " + " | ".join(map(str, doc["layer_distribution"])) + " |",
              "|---|" + "---:|" * len(doc["layer_distribution"]),
              "| neurons | " + " | ".join(str(n) for n in doc["layer_distribution"].values()) + " |"]
    if "control" in doc:
        c = doc["control"]
        lines += ["", "Control task and selectivity (test; cf. Table 7):", "",
                  "| neurons | task | control | selectivity |", "|---|---:|---:|---:|"]
        for name, key in (("all", "all_neurons"), (f"top {m['k']:,}", "selected_neurons")):
            lines.append(f"| {name} | {_pct(c[key]['task_test'])} | {_pct(c[key]['control_test'])} | "
                         f"{_pct(c[key]['selectivity_test'])} |")
    return "\n".join(lines) + "\n"
