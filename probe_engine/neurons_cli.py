"""``strata neurons``: oracle, neuron ranking, minimal neuron set, ablations, layer
distribution and control-task selectivity in one command (see neurons.py)."""

from __future__ import annotations


from store.errors import StrataError

DEFAULT_FRACTIONS = ",".join(f"{f / 100:g}" for f in range(1, 21))  # 0.01 .. 0.2
#: The oracle's grid exists only to choose (l1, l2): screen it by default (probe_engine.screening).
DEFAULT_SCREEN_TOL = 1e-3


def add_parser(subparsers) -> None:
    from probe_engine.cli import DEFAULT_GRID, add_no_verify_argument, add_screening_arguments
    from probe_engine.train import DEFAULT_MAX_ITER, DEFAULT_TOL

    p = subparsers.add_parser(
        "neurons", help="rank neurons, find the minimal neuron set, ablate, control task",
        description="Durrani et al.'s neuron-level analysis on all layers concatenated: oracle probe "
                    "(grid on dev), LCA or probeless ranking, minimal top-k set within --delta of the oracle, "
                    "top/bottom/random ablations, distribution across layers, and with --control "
                    "Hewitt & Liang's control task and selectivity.")
    p.add_argument("--train", required=True, help="store of the training corpus")
    p.add_argument("--dev", required=True, help="store used to choose lambdas and the minimal set")
    p.add_argument("--test", required=True, help="store for the final numbers")
    p.add_argument("--labels", required=True,
                   help="one label set: token-level (e.g. xpos), or sentence-level with --pool")
    p.add_argument("--pool", default=None,
                   help="analyse pooled sentence vectors (cls or mean) for a sentence-level label set")
    p.add_argument("--l1", default=DEFAULT_GRID, help=f"oracle l1 grid (default {DEFAULT_GRID})")
    p.add_argument("--l2", default=DEFAULT_GRID, help=f"oracle l2 grid (default {DEFAULT_GRID})")
    p.add_argument("--delta", type=float, default=0.01,
                   help="the minimal set's dev accuracy may trail the oracle's by this much (default 0.01)")
    p.add_argument("--fractions", default=DEFAULT_FRACTIONS, help="fractions of all neurons to try (default 0.01..0.2)")
    p.add_argument("--ranking", choices=("lca", "probeless"), default="lca", help="neuron ranking (default lca)")
    p.add_argument("--control", action="store_true", help="also run the control task and report selectivity")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL, help=f"probe tolerance (default {DEFAULT_TOL})")
    p.add_argument("--gap-tol", type=float, default=None,
                   help="also stop a probe once its duality gap certifies its objective within this fraction "
                        "of the optimum, e.g. 1e-3 (default: off)")
    p.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER, help=f"passes per batch (default {DEFAULT_MAX_ITER})")
    add_screening_arguments(p, default_tol=DEFAULT_SCREEN_TOL)
    p.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    p.add_argument("--max-memory", default="4GB",
                   help="hold the features of train, dev and test together up to this size (train first); "
                        "beyond it, hold what fits and stream the rest (default 4GB)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ablation set and the control labels")
    p.add_argument("--out", required=True, help="output directory")
    add_no_verify_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(run=neurons)


def options_from_args(args) -> dict:
    from probe_engine.cli import options_from_args as probe_options

    args.layers, args.scheduler = "all", "threads"
    options = probe_options(args)
    if len(options["labels"]) != 1:
        raise StrataError("--labels: strata neurons takes one label set")
    try:
        fractions = [float(x) for x in args.fractions.split(",") if x.strip()]
    except ValueError:
        raise StrataError(f"--fractions: {args.fractions!r} is not a comma-separated list of numbers") from None
    pools = options.pop("pools") or [None]
    if len(pools) != 1:
        raise StrataError("--pool: strata neurons takes one pooling kind (cls or mean)")
    options.update(pool=pools[0], label=options.pop("labels")[0], fractions=sorted(set(fractions)), delta=args.delta,
                   ranking=args.ranking, control=args.control)
    return options


def neurons(args) -> int:
    from probe_engine.outputs import output_dir
    from probe_engine.neurons import run_neurons, summary_markdown

    options = options_from_args(args)
    out = output_dir(args.out)
    document = run_neurons(options, out, quiet=args.quiet)
    print(summary_markdown(document))
    print(f"results: {out / 'neurons.json'}   summary: {out / 'summary.md'}   plots: "
          f"{out / 'layer_distribution.png'}, {out / 'minimal_set.png'}")
    return 0
