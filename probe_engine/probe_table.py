"""The per-feature-set table ``strata probe`` prints."""

from __future__ import annotations


def _pct(x) -> str:
    return "    -" if x is None else f"{100 * x:5.1f}"


# (header, align) per column; widths follow the widest cell, so long label names, pooled
# feature sets and penalties like 1.23457e-05 keep the columns in line
COLUMNS = [("label", "<"), ("features", "<"), ("l1", ">"), ("l2", ">"), ("train", ">"), ("dev", ">"),
           ("test", ">"), ("nonzero", ">"), ("probes", ">"), ("converged", ">")]


#: Uncertified probes named under the table; the rest are counted.
UNCERTIFIED_NAMED = 3


def format_table(document: dict) -> str:
    probes = document["probes"]
    rows = [[name for name, _ in COLUMNS]]
    for c in document["chosen"]:
        group = [p for p in probes if p["label"] == c["label"] and p["layers"] == c["layers"]
                 and p.get("pool") == c.get("pool")]
        features = c["feature_set"] + (f" ({c['pool']})" if c.get("pool") else "")
        converged = sum(p["converged"] for p in group)
        rows.append([c["label"], features, f"{c['l1']:g}", f"{c['l2']:g}", _pct(c["train_accuracy"]),
                     _pct(c["dev_accuracy"]), _pct(c["test_accuracy"]), str(c["nonzeros"]), str(len(group)),
                     f"{converged}/{len(group)}"])
    widths = [max(len(row[k]) for row in rows) for k in range(len(COLUMNS))]
    lines = [" ".join(f"{cell:{align}{width}}" for cell, (_, align), width in zip(row, COLUMNS, widths)).rstrip()
             for row in rows]
    screened = sum(bool(p.get("screened_out")) for p in probes)
    if screened:
        run = document["strata_probe"]
        certified = all(c["converged"] for c in document["chosen"])
        lines.append(f"screened: {screened} of {len(probes)} probes were left at --screen-tol {run['screen_tol']:g} "
                     f"(more than {100 * run['screen_margin']:g} dev points behind); the chosen ones are "
                     + (f"certified to --tol {run['tol']:g}" if certified
                        else f"refined toward --tol {run['tol']:g}, not all certified (see below)"))
    # which probes ran out of passes, and how far they got: "3/4 converged" alone does not
    # say which, nor that its numbers are those of an uncertified point
    uncertified = [p for p in probes if not p["converged"]]
    if uncertified:
        run = document["strata_probe"]
        named = ", ".join(f"{p['label']} {p['feature_set']}" + (f" ({p['pool']})" if p.get("pool") else "")
                          + f" l1 {p['l1']:g} l2 {p['l2']:g} (optimality {p['optimality']:.2g} > {p['tol']:g})"
                          for p in uncertified[:UNCERTIFIED_NAMED])
        more = len(uncertified) - UNCERTIFIED_NAMED
        lines.append(f"not certified in --max-iter {run['max_iter']} passes: {named}"
                     + (f" and {more} more" if more > 0 else "")
                     + "; each reports its last point (a larger --max-iter or penalty certifies it)")
    # one line per label set (and pool): its feature sets share the rows, so the counts
    unseen = {}
    for c in document["chosen"]:
        counts = {s: n for s, n in c["unseen_label_tokens"].items() if n}
        if counts:
            unseen.setdefault(c["label"] + (f" ({c['pool']})" if c.get("pool") else ""), counts)
    for name, counts in unseen.items():
        lines.append(f"{name}: classes unseen in training (counted as errors): "
                     + ", ".join(f"{s} {n} rows" for s, n in counts.items()))
    return "\n".join(lines)
