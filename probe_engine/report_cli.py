"""``strata report``: base vs other models from probe, neurons and compare results (see report.py)."""

from __future__ import annotations

from pathlib import Path

from store.errors import StrataError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="one HTML page comparing a base model with other models from strata results",
        description="Layer-wise accuracy curves, neurons per layer, top/bottom neuron table, RSA/CKA per layer "
                    "and CLS vs mean pooling, from the results of strata probe, neurons and compare.")
    p.add_argument("--base", nargs="+", required=True, metavar="RESULTS",
                   help="the base model's result directories or JSON files")
    p.add_argument("--other", nargs="+", action="append", default=[], metavar="RESULTS",
                   help="another model's results (repeat --other for each model); its compare results "
                        "say how it differs from the base (none: a page of the base model alone)")
    p.add_argument("--names", help="comma-separated names, base first (default: base, other 1, ...)")
    p.add_argument("--out", required=True, help="the HTML file to write (PNGs go next to it)")
    p.set_defaults(run=report)


def report(args) -> int:
    from probe_engine.report import build_report, load_models

    groups = [("--base", args.base)] + [("--other", paths) for paths in args.other]
    names = ["base"] + [f"other {i}" for i in range(1, len(args.other) + 1)]
    if args.names:
        given = [x.strip() for x in args.names.split(",")]
        if len(given) != len(groups) or not all(given):
            raise StrataError(f"--names: give {len(groups)} non-empty names (base first), got {args.names!r}")
        names = given
    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise StrataError(f"--out: {out} should end in .html")
    if out.is_dir():
        raise StrataError(f"--out: {out} is a directory; give the HTML file to write")
    above = next((p for p in out.parents if p.exists()), None)
    if above is not None and not above.is_dir():  # mkdir would say "File exists"
        raise StrataError(f"--out: {above} is not a directory, so {out} cannot be written")
    from probe_engine.outputs import zarr_store_of
    if (store := zarr_store_of(out.parent)) is not None:  # the page and its PNGs would damage the store
        raise StrataError(f"--out: {out} is inside {store[1]}, {store[0]}; write the report outside it")
    models = load_models([(n, option, paths) for n, (option, paths) in zip(names, groups)])
    try:
        result = build_report(models, out)
    except OSError as e:  # an unwritable folder, a full disk
        raise StrataError(f"--out: cannot write {out}: {e.strerror or e}") from None
    shown = ", ".join(title.split(" (")[0] for title, present in result["sections"].items() if present)
    print(f"{out}: {shown or 'no section had data'}; figures: {len(result['figures'])}")
    return 0
