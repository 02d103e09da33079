"""What a ``strata probe`` run trains: feature sets x label sets x the (l1, l2) grid.

One *group* is one feature set and one label set with every grid point: those
probes share every data pass (see datafit.py).  Groups are independent, which is
what the scheduler distributes and what a resumed run skips when finished.
"""

from __future__ import annotations

import hashlib
import json

from probe_engine.penalty import LARGEST_PENALTY
from store.errors import StrataError


def parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise StrataError(f"{option}: {text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise StrataError(f"{option}: the grid is empty")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:  # as extract's --layers: a repeat is a typo more often than a wish
        raise StrataError(f"{option}: {repeated[0]:g} is given more than once in {text!r}")
    bad = [v for v in values if not 0 <= v <= LARGEST_PENALTY]
    if bad:
        raise StrataError(f"{option}: penalties must be >= 0 and at most {LARGEST_PENALTY:g} (larger ones overflow "
                          f"the float32 solver), got {bad[0]}")
    return sorted(set(values))


def parse_layers(text: str, store_layers: list[int]) -> list[tuple[int, ...]]:
    """Feature sets from ``--layers``: comma-separated items, each ``each`` (every
    stored layer alone), ``all`` (all stored layers concatenated), a layer id, or
    layer ids joined by ``+`` (concatenated).  Layer ids are the model's hidden-state
    indices, 0 = embedding output.  Order kept; an item given twice is refused (as
    extract's ``--layers``), a set that ``each`` or ``all`` repeats is trained once; the
    same layers in another order are refused, since they would train the same probe twice
    with only its weight columns permuted."""
    sets: list[tuple[int, ...]] = []
    items = [x.strip() for x in text.split(",")]
    repeated = [x for x in dict.fromkeys(items) if x and items.count(x) > 1]
    if repeated:
        raise StrataError(f"--layers: {repeated[0]!r} is given more than once in {text!r}")
    for item in items:
        if not item:
            continue
        if item == "each":
            sets += [(layer,) for layer in store_layers]
        elif item == "all":
            sets.append(tuple(store_layers))
        else:
            try:
                ids = tuple(int(x) for x in item.split("+"))
            except ValueError:
                raise StrataError(f"--layers: {item!r} is not each, all, a layer id or ids joined by +") from None
            if len(set(ids)) < len(ids):
                raise StrataError(f"--layers: {item!r} names a layer twice")
            missing = [i for i in ids if i not in store_layers]
            if missing:
                raise StrataError(f"--layers: layer {missing[0]} is not in the store "
                                  f"(stored: {', '.join(map(str, store_layers))})")
            sets.append(ids)
    unique = list(dict.fromkeys(sets))
    first_order: dict[frozenset[int], tuple[int, ...]] = {}
    for ids in unique:
        earlier = first_order.setdefault(frozenset(ids), ids)
        if earlier != ids:
            raise StrataError(f"--layers: {'+'.join(map(str, ids))!r} is {'+'.join(map(str, earlier))!r} in another "
                              "order (the same features); give one of them")
    if not unique:
        raise StrataError("--layers: no feature set given")
    return unique


def feature_set_name(layers: tuple[int, ...], store_layers: list[int]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if list(layers) == list(store_layers):
        return "all layers"
    return "layers " + "+".join(map(str, layers))


#: Spec entries that never change a group's results (streamed = in memory, bitwise).
RESULT_NEUTRAL = ("max_memory",)


def result_identity(spec: dict) -> dict:
    """The part of a spec that determines a group's results."""
    return {k: v for k, v in spec.items() if k not in RESULT_NEUTRAL}


def group_id(spec: dict) -> str:
    """Stable name of a group: a hash of everything that changes its results."""
    text = json.dumps(result_identity(spec), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
