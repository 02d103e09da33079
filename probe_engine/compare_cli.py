"""``strata compare``: RSA and linear CKA between two stores of the same corpus (see compare.py)."""

from __future__ import annotations

from pathlib import Path

from store.errors import StrataError


def add_parser(subparsers) -> None:
    from probe_engine.cli import add_no_verify_argument

    p = subparsers.add_parser(
        "compare", help="RSA and linear CKA between two stores of the same corpus, layer by layer",
        description="Compare two models' representations of the same tokens: linear CKA of every layer pair "
                    "over all rows (one streamed pass) and RSA on seeded token samples.")
    p.add_argument("a", help="first store (e.g. the base model)")
    p.add_argument("b", help="second store (e.g. the fine-tuned model), same corpus")
    p.add_argument("--out", required=True, help="output directory (compare.json, PNG figures)")
    p.add_argument("--method", default="rsa,cka", help="rsa, cka or rsa,cka (default both)")
    p.add_argument("--tokens", type=int, default=5000, help="RSA sample size (default 5000)")
    p.add_argument("--repeats", type=int, default=5, help="RSA samples, each with its own seed (default 5)")
    p.add_argument("--layers", help="layer ids to compare (default: every stored layer)")
    p.add_argument("--pool", choices=("cls", "mean"), help="compare pooled sentence vectors instead of tokens")
    p.add_argument("--device", default="cpu", help="cpu (NumPy) or cuda (CuPy)")
    p.add_argument("--seed", type=int, default=0, help="seed of the RSA samples")
    add_no_verify_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=compare)


def options_from_args(args) -> dict:
    from probe_engine.compare import METHODS

    methods = list(dict.fromkeys(x.strip() for x in args.method.split(",") if x.strip()))
    bad = [m for m in methods if m not in METHODS] or ([] if methods else [args.method])
    if bad:
        raise StrataError(f"--method: {bad[0]!r} is not one of {', '.join(METHODS)}")
    if args.tokens < 3:  # 2 tokens make one pair of cosines: a correlation of one point is undefined
        raise StrataError(f"--tokens: RSA needs at least 3 tokens (two cosine pairs to correlate), got {args.tokens}")
    if args.repeats < 1:
        raise StrataError(f"--repeats: must be >= 1, got {args.repeats}")
    if args.seed < 0:  # numpy's generators take none
        raise StrataError(f"--seed: must be >= 0, got {args.seed}")
    layers = None
    if args.layers is not None:
        try:
            layers = [int(x) for x in args.layers.split(",") if x.strip()]
        except ValueError:
            raise StrataError(f"--layers: {args.layers!r} is not a comma-separated list of layer ids") from None
        if not layers:
            raise StrataError(f"--layers: no layer id given in {args.layers!r}")
        if len(set(layers)) < len(layers):
            raise StrataError(f"--layers: {args.layers!r} names a layer twice")
    return {"a": str(Path(args.a).resolve()), "b": str(Path(args.b).resolve()), "methods": methods,
            "tokens": args.tokens, "repeats": args.repeats, "layers": layers, "pool": args.pool,
            "device": args.device, "seed": args.seed, "verify": not args.no_verify,
            "command": getattr(args, "argv", None)}


def compare(args) -> int:
    from probe_engine.outputs import output_dir
    from probe_engine.compare import format_table, run_compare

    options = options_from_args(args)
    out = output_dir(args.out)
    document = run_compare(options, out, quiet=args.quiet)
    print(format_table(document))
    figures = ", ".join(str(out / f) for f in ("cka_heatmap.png", "similarity_per_layer.png") if (out / f).exists())
    print(f"results: {out / 'compare.json'}   figures: {figures}")
    return 0
