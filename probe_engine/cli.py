"""``strata probe``: layer-wise and neuron-level elastic-net probes over a λ grid."""

from __future__ import annotations

from pathlib import Path

from store.errors import StrataError

DEFAULT_GRID = "0,1e-5,1e-4,1e-3"


def add_parser(subparsers) -> None:
    from probe_engine.train import DEFAULT_MAX_ITER, DEFAULT_TOL, GRID_SCHEDULE_OPTIONS

    p = subparsers.add_parser(
        "probe", help="train elastic-net probes on a store, many at once",
        description="Multinomial logistic-regression probes with an elastic-net penalty "
                    "(mean CE + l1*sum|W| + l2*sum W^2 on standardized features), one per feature set, "
                    "label set and (l1, l2) grid point, chosen on dev and scored on test.")
    p.add_argument("--train", required=True, help="store of the training corpus")
    p.add_argument("--dev", required=True, help="store used to choose l1, l2 per feature set")
    p.add_argument("--test", help="store for the final numbers")
    p.add_argument("--labels", required=True,
                   help="label set(s), comma-separated (e.g. upos,xpos); sentence-level ones with --pool")
    p.add_argument("--layers", default="each",
                   help="feature sets: each (every layer alone), all (all layers concatenated), layer ids, "
                        "ids joined by + (concatenated); comma-separated (default: each)")
    p.add_argument("--pool", default=None,
                   help="probe pooled sentence vectors instead of tokens: cls, mean or cls,mean "
                        "(needs sentence-level label sets, e.g. SentEval's label)")
    p.add_argument("--l1", default=DEFAULT_GRID, help=f"l1 grid (default {DEFAULT_GRID})")
    p.add_argument("--l2", default=DEFAULT_GRID, help=f"l2 grid (default {DEFAULT_GRID})")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help=f"stop a probe when its distance to optimality is at most this (default {DEFAULT_TOL})")
    p.add_argument("--gap-tol", type=float, default=None,
                   help="also stop a probe once its duality gap certifies its objective within this fraction "
                        "of the optimum, e.g. 1e-3 (default: off; the gap is reported either way)")
    p.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER,
                   help=f"data passes per probe at most (default {DEFAULT_MAX_ITER})")
    add_screening_arguments(p, default_tol=None)
    p.add_argument("--grid-schedule", default="auto", choices=GRID_SCHEDULE_OPTIONS,
                   help="auto (default): l1-path on cpu, batched on cuda; batched: every grid probe in every "
                        "data pass; path: the probes of one l2 value at a time, largest first, each warm-started "
                        "from the previous l2's solutions; l1-path: the same along l1")
    p.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    p.add_argument("--scheduler", default="threads",
                   help="threads (this process) or the address of a dask.distributed scheduler")
    p.add_argument("--max-memory", default="4GB",
                   help="hold standardized training features in memory up to this size; beyond it, hold what "
                        "fits as stored (float16: half the bytes) and stream the rest on every pass (default 4GB)")
    p.add_argument("--seed", type=int, default=0, help="recorded with the results (the solver draws nothing)")
    p.add_argument("--out", required=True, help="output directory (results.json, weights/, plot)")
    add_no_verify_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=probe)


def add_no_verify_argument(p) -> None:
    """``--no-verify``, shared by probe, neurons and compare (probe_engine.stores.verify_stores)."""
    p.add_argument("--no-verify", action="store_true",
                   help="do not check the stores' checksums first (strata verify: one read of each store)")


def add_screening_arguments(p, default_tol) -> None:
    """``--screen-tol`` and ``--screen-margin`` (probe_engine.screening), shared by probe and neurons."""
    from probe_engine.screening import DEFAULT_MARGIN

    shown = "off" if default_tol is None else default_tol
    p.add_argument("--screen-tol", default=default_tol,
                   help="solve every grid point to this tolerance first, then only those within --screen-margin "
                        f"of the best dev accuracy to --tol, and choose among them (default {shown}; off, or a "
                        "value <= --tol: every grid point to --tol)")
    p.add_argument("--screen-margin", type=float, default=DEFAULT_MARGIN,
                   help=f"dev accuracy (a fraction) a grid point may trail the best by and still be solved to "
                        f"--tol when screening (default {DEFAULT_MARGIN})")


def screening_options(args) -> dict:
    """``{"screen_tol": float or None, "screen_margin": float}`` from the parsed arguments."""
    if not 0 <= args.screen_margin <= 1:
        raise StrataError(f"--screen-margin: must be a fraction in [0, 1], got {args.screen_margin}")
    text = args.screen_tol
    if text is None or str(text).strip().lower() == "off":
        return {"screen_tol": None, "screen_margin": args.screen_margin}
    try:
        screen_tol = float(text)
    except ValueError:
        raise StrataError(f"--screen-tol: {text!r} is not a number or off") from None
    if not 0 < screen_tol < float("inf"):
        raise StrataError(f"--screen-tol: must be > 0 and finite, or off, got {text}")
    if screen_tol <= args.tol:  # round 1 would already be the answer: nothing is screened, nothing recorded
        return {"screen_tol": None, "screen_margin": args.screen_margin}
    return {"screen_tol": screen_tol, "screen_margin": args.screen_margin}


def options_from_args(args) -> dict:
    from dask.utils import parse_bytes

    from probe_engine.grid import parse_floats
    from probe_engine.train import resolve_grid_schedule

    if not 0 < args.tol < float("inf"):  # NaN fails this too
        raise StrataError(f"--tol: must be > 0 and finite, got {args.tol}")
    gap_tol = getattr(args, "gap_tol", None)
    if gap_tol is not None and not 0 < gap_tol < float("inf"):
        raise StrataError(f"--gap-tol: must be > 0 and finite, got {gap_tol}")
    if args.max_iter < 1:
        raise StrataError(f"--max-iter: must be >= 1, got {args.max_iter}")
    if args.seed < 0:  # numpy's generators take none, and the control task draws from one
        raise StrataError(f"--seed: must be >= 0, got {args.seed}")
    try:
        if not any(c.isdigit() for c in str(args.max_memory)):  # dask reads "" and "kB" as 1 byte or 1 kB
            raise ValueError(args.max_memory)
        max_memory = parse_bytes(args.max_memory)
    except (ValueError, TypeError, OverflowError):
        raise StrataError(f"--max-memory: {args.max_memory!r} is not a size such as 4GB or 512MiB") from None
    if max_memory < 0:
        raise StrataError(f"--max-memory: must be >= 0, got {args.max_memory}")
    pools = None
    if getattr(args, "pool", None) is not None:
        from store.schema import POOL_KINDS
        pools = list(dict.fromkeys(x.strip() for x in args.pool.split(",") if x.strip()))
        bad = [x for x in pools if x not in POOL_KINDS] or ([] if pools else [args.pool])
        if bad:
            raise StrataError(f"--pool: {bad[0]!r} is not one of {', '.join(POOL_KINDS)}")
    labels = list(dict.fromkeys(x.strip() for x in args.labels.split(",") if x.strip()))  # as --layers: once each
    if not labels:
        raise StrataError("--labels: no label set given")
    return {"train": str(Path(args.train).resolve()), "dev": str(Path(args.dev).resolve()),
            "test": str(Path(args.test).resolve()) if args.test else None, "labels": labels,
            "pools": pools, "layers_spec": args.layers, "l1": parse_floats(args.l1, "--l1"), "l2": parse_floats(args.l2, "--l2"),
            "tol": args.tol, "gap_tol": gap_tol, "max_iter": args.max_iter, "device": args.device,
            "max_memory": int(max_memory),
            # resolved, so results record what ran; strata neurons has no such option
            "grid_schedule": resolve_grid_schedule(getattr(args, "grid_schedule", "batched"), args.device),
            **screening_options(args),
            "seed": args.seed, "verify": not getattr(args, "no_verify", False),
            "command": getattr(args, "argv", None)}


def probe(args) -> int:
    from probe_engine.outputs import output_dir
    from probe_engine.backend import array_module
    from probe_engine.probe_table import format_table
    from probe_engine.run import run_probe

    options = options_from_args(args)
    array_module(options["device"])  # fail now, not inside the first group
    out = output_dir(args.out)
    document = run_probe(options, out, scheduler=args.scheduler, quiet=args.quiet)
    print(format_table(document))
    print(f"results: {out / 'results.json'}   plot: {out / 'accuracy_per_layer.png'}")
    return 0
