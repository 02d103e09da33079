"""The per-feature-set table ``strata probe`` prints."""

from __future__ import annotations


def _pct(x) -> str:
    return "    -" if x is None else f"{100 * x:5.1f}"


def format_table(document: dict) -> str:
    probes = document["probes"]
    lines = [f"{'label':<8} {'features':<20} {'l1':>8} {'l2':>8} {'train':>6} {'dev':>6} {'test':>6} "
             f"{'nonzero':>8} {'probes':>6} {'converged':>9}"]
    for c in document["chosen"]:
        group = [p for p in probes if p["label"] == c["label"] and p["layers"] == c["layers"]
                 and p.get("pool") == c.get("pool")]
        features = c["feature_set"] + (f" ({c['pool']})" if c.get("pool") else "")
        converged = sum(p["converged"] for p in group)
        lines.append(f"{c['label']:<8} {features:<20} {c['l1']:>8g} {c['l2']:>8g} "
                     f"{_pct(c['train_accuracy']):>6} {_pct(c['dev_accuracy']):>6} {_pct(c['test_accuracy']):>6} "
                     f"{c['nonzeros']:>8} {len(group):>6} {converged:>5}/{len(group):<3}")
    screened = sum(bool(p.get("screened_out")) for p in probes)
    if screened:
        run = document["strata_probe"]
        lines.append(f"screened: {screened} of {len(probes)} probes were left at --screen-tol {run['screen_tol']:g} "
                     f"(more than {100 * run['screen_margin']:g} dev points behind); the chosen ones are "
                     f"certified to --tol {run['tol']:g}")
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
