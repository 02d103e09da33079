"""Streamed vs in-memory training as the number of probes per pass grows.

Run from the repository root (stores as for bench/probe_bench.py):

    .venv/bin/python bench/stream_bench.py --train STORE --dev STORE [--grids 2x2,4x4] [--out ...]

probe_bench.py measures streaming with 4 probes per pass, the worst case: each pass
re-reads and decompresses the layer while little is computed.  This script runs the
same comparison (probe_bench's ``streamed_vs_memory``: the same FeatureSet, blocks held
in memory vs read from the store on every pass, results checked bitwise) for grids of
growing size and for memory caps that let strata hold part of the blocks (``--hold``),
in one process, to show where reading stops dominating.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import machine_info  # noqa: E402
from bench.probe_bench import load_problem, streamed_vs_memory  # noqa: E402

L1 = [0.0, 1e-4, 1e-3, 1e-2]
L2 = [1e-4, 1e-3, 1e-2, 3e-2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--layer", type=int, default=4)
    p.add_argument("--labels", default="xpos")
    p.add_argument("--grids", default="2x2,4x4", help="l1 x l2 sizes taken from the front of 0,1e-4,1e-3,1e-2 "
                                                      "and 1e-4,1e-3,1e-2,3e-2")
    p.add_argument("--hold", default="0", help="fractions of the data's bytes the memory cap lets strata hold, "
                                                "comma-separated, one run each (0 = stream every block)")
    p.add_argument("--tol", type=float, default=1e-5)
    p.add_argument("--max-iter", type=int, default=1000)
    p.add_argument("--out", default="bench/results/stream.json")
    args = p.parse_args()
    started = time.perf_counter()
    problem = load_problem(Path(args.train), Path(args.dev), args.layer, args.labels, None)
    runs = []
    for spec in args.grids.split(","):
        a, b = (int(x) for x in spec.split("x"))
        for hold in (float(x) for x in args.hold.split(",")):
            runs.append(streamed_vs_memory(problem, L1[:a], L2[:b], args.tol, args.max_iter, hold))
    result = {"benchmark": "streamed vs in-memory probe training by probes per pass",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "options": vars(args),
              "rows": int(problem.X.shape[0]), "features": int(problem.X.shape[1]), "runs": runs,
              "seconds_total": round(time.perf_counter() - started, 1),
              "machine": machine_info(("strata", "numpy", "dask", "zarr"), ("probe_engine", "store"))}
    Path(args.out).write_text(json.dumps(result, indent=1, default=float) + "\n")
    for r in runs:
        print(f"{r['probes']:>3} probes, {r['blocks_held']}/{r['blocks']} blocks held: in memory {r['seconds_in_memory']:.1f} s, streamed {r['seconds_streamed']:.1f} s, "
              f"ratio {r['streamed_over_in_memory']:.2f}, bitwise {r['bitwise_equal']}")


if __name__ == "__main__":
    main()
