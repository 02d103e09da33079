"""``strata compare``: how similar are two models' representations, layer by layer?

Two stores of the same corpus (same dataset sha256, same sentence offsets: the
same tokens in the same order) are compared with linear CKA over all rows,
every layer of A against every layer of B from one streamed pass, and with RSA
on seeded token samples (one sample per repeat; the spread over repeats is
reported).  See similarity.py for the methods and their papers.  With
``pool`` the rows are pooled sentence vectors instead of tokens (sentences that
either model skipped are left out).

Dask reads the stores: both feature arrays are cut along the row axis into
the same blocks (multiples of the stores' chunks) and each pair of blocks is
read with ``dask.compute`` (the two reads in parallel) while the previous pair is
being multiplied.  The accumulation itself is a plain loop in block order
because the exact-1.0 guarantee for identical inputs needs one fixed order of
float64 sums, which a dask tree reduction over two different graphs does not
promise.
"""

from __future__ import annotations

import math

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from tqdm.auto import tqdm

from probe_engine.backend import array_module
from probe_engine.outputs import make_output_dir, write_json
from probe_engine.similarity import CrossProducts, cosine_upper_triangle, correlation
from probe_engine.stores import ProbeStore, verify_stores
from store import schema
from store.errors import StrataError

METHODS = ("rsa", "cka")
#: Rows per block of the CKA pass.
BLOCK_ROWS = 8192


def open_pair(a: str, b: str, pool: str | None) -> tuple[ProbeStore, ProbeStore]:
    """Both stores, refused unless they hold the same corpus and the same rows."""
    A, B = ProbeStore(Path(a), "A", pool), ProbeStore(Path(b), "B", pool)
    pa, pb = A.parameters, B.parameters
    if pa.get("dataset_sha256") != pb.get("dataset_sha256"):
        raise StrataError(f"B: {B.path} was extracted from another corpus than A {A.path} "
                          f"(dataset sha256 {pb.get('dataset_sha256', '?')[:12]} vs {pa.get('dataset_sha256', '?')[:12]})")
    wa, wb = pa.get("word_vector"), pb.get("word_vector")
    if pool is None and wa != wb:
        # last and mean give the same offsets, so the token check below would pass them
        raise StrataError(f"B: {B.path} holds --word-vector {wb} vectors, A {A.path} holds {wa}; compare "
                          "pooled sentence vectors with --pool, or extract both alike")
    oa, ob = A.group[schema.SENTENCE_OFFSETS][...], B.group[schema.SENTENCE_OFFSETS][...]
    if len(oa) != len(ob):
        raise StrataError(f"B: {B.path} holds {len(ob) - 1} sentences, A {A.path} holds {len(oa) - 1} "
                          "(extract both with the same --max-sentences)")
    if pool is None and not np.array_equal(oa, ob):
        s = int(np.flatnonzero(np.diff(oa) != np.diff(ob))[0])
        raise StrataError(f"B: {B.path} and A {A.path} hold different tokens: sentence {s} has "
                          f"{int(oa[s + 1] - oa[s])} tokens in A and {int(ob[s + 1] - ob[s])} in B "
                          "(a different --word-vector, or a sentence one model skipped as too long); "
                          "compare pooled sentence vectors with --pool, or extract both alike")
    A.features, B.features  # noqa: B018 -- raise now when a pooled array is missing
    return A, B


def rows_of(A: ProbeStore, B: ProbeStore, pool: str | None) -> np.ndarray | None:
    """Row indices both stores hold (None: every row)."""
    if pool is None:
        return None
    skipped = A.group[schema.SENTENCE_SKIPPED][...] | B.group[schema.SENTENCE_SKIPPED][...]
    return np.flatnonzero(~skipped)


def layer_positions(store: ProbeStore, wanted: list[int] | None) -> list[int]:
    if wanted is None:
        return list(range(len(store.layers)))
    missing = [x for x in wanted if x not in store.layers]
    if missing:
        raise StrataError(f"--layers: layer {missing[0]} is not in {store.option} {store.path} "
                          f"(stored: {', '.join(map(str, store.layers))})")
    return [store.layers.index(x) for x in wanted]


def cka_all_pairs(A, B, pa, pb, rows, xp, quiet=False) -> np.ndarray:
    """(len(pa), len(pb)) linear CKA from one pass over both stores' blocks."""
    xa, xb = da.from_zarr(A.features)[pa], da.from_zarr(B.features)[pb]
    if rows is not None:
        xa, xb = xa[:, rows], xb[:, rows]
    n = xa.shape[1]
    step = max(A.features.chunks[1], BLOCK_ROWS // A.features.chunks[1] * A.features.chunks[1])
    starts = list(range(0, n, step))
    acc = CrossProducts()

    def read(start):
        return [store.read(lambda: dask.compute(x[:, start:start + step], scheduler="threads")[0])
                .astype(np.float32) for store, x in ((A, xa), (B, xb))]

    bar = tqdm(total=n, desc="CKA pass", unit="row", unit_scale=True, disable=quiet)
    with ThreadPoolExecutor(1) as pool:  # read block k+1 while block k is multiplied
        pending = pool.submit(read, starts[0])
        for k in range(len(starts)):
            a, b = pending.result()
            if k + 1 < len(starts):
                pending = pool.submit(read, starts[k + 1])
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                which = "A" if not np.isfinite(a).all() else "B"
                raise StrataError(f"{which}: non-finite activations in rows {starts[k]}..{starts[k] + a.shape[1] - 1} "
                                  "(a deleted chunk reads as NaN: run strata verify)")
            acc.add(xp.asarray(a), xp.asarray(b))
            bar.update(a.shape[1])
    bar.close()
    return acc.cka()


def rsa_per_layer(A, B, pairs, rows, tokens, seed, repeats, xp, quiet=False) -> np.ndarray:
    """(repeats, len(pairs)) RSA of layer pairs, each repeat on its own seeded sample."""
    n = A.features.shape[1] if rows is None else len(rows)
    size = min(tokens, n)
    out = np.zeros((repeats, len(pairs)))
    bar = tqdm(total=repeats * len(pairs), desc="RSA", unit="layer", disable=quiet)
    for r in range(repeats):
        pick = np.sort(np.random.default_rng([seed, r]).choice(n, size=size, replace=False))
        index = pick if rows is None else rows[pick]
        sa, sb = (store.read(lambda s=store: s.features.get_orthogonal_selection((slice(None), index, slice(None))))
                  for store in (A, B))
        for store, sample in ((A, sa), (B, sb)):
            if not np.isfinite(sample).all():
                raise StrataError(f"{store.option}: non-finite activations in RSA sample {r} "
                                  "(a deleted chunk reads as NaN: run strata verify)")
        for k, (i, j) in enumerate(pairs):
            out[r, k] = correlation(cosine_upper_triangle(xp.asarray(sa[i])), cosine_upper_triangle(xp.asarray(sb[j])))
            bar.update()
    bar.close()
    return out


def run_compare(options: dict, out: Path, quiet: bool = False) -> dict:
    """Both methods into ``out``: compare.json and the figures; returns the document."""
    started = time.perf_counter()
    xp = array_module(options["device"])
    A, B = open_pair(options["a"], options["b"], options["pool"])
    if options.get("verify", True):
        verify_stores([A, B])
    pa, pb = layer_positions(A, options["layers"]), layer_positions(B, options["layers"])
    la, lb = [A.layers[i] for i in pa], [B.layers[i] for i in pb]
    rows = rows_of(A, B, options["pool"])
    n_rows = A.features.shape[1] if rows is None else len(rows)
    left_out = 0 if rows is None else A.features.shape[1] - len(rows)
    if left_out and not quiet:  # pooled rows of a sentence either model skipped as too long (NaN there)
        print(f"strata compare: {left_out:,} of {A.features.shape[1]:,} sentences are left out: A or B skipped "
              "them as longer than its model takes", file=sys.stderr)
    if n_rows < 2:
        raise StrataError(f"A: {A.path} has {n_rows} row(s) to compare; similarity needs at least two")
    common = [x for x in la if x in lb]
    doc = {"strata_compare": {"a": str(A.path), "b": str(B.path), "model_a": A.parameters.get("model"),
                              "model_b": B.parameters.get("model"), "variant_a": A.parameters.get("variant"),
                              "variant_b": B.parameters.get("variant"),
                              "variant_seed_a": A.parameters.get("variant_seed"),
                              "variant_seed_b": B.parameters.get("variant_seed"),
                              "word_vector_a": A.parameters.get("word_vector"),
                              "word_vector_b": B.parameters.get("word_vector"), "pool": options["pool"],
                              "methods": options["methods"], "rows": int(n_rows),
                              "skipped_sentences_left_out": int(left_out), "device": options["device"],
                              "command": options.get("command"),
                              "finished": None, "seconds": None},
           "layers_a": la, "layers_b": lb}
    if "cka" in options["methods"]:
        if not quiet:
            print(f"strata compare: linear CKA, {len(la)} x {len(lb)} layer pairs over {n_rows:,} rows",
                  file=sys.stderr)
        t = time.perf_counter()
        matrix = cka_all_pairs(A, B, pa, pb, rows, xp, quiet)
        doc["cka"] = {"matrix": matrix.tolist(), "rows": int(n_rows),
                      "diagonal": {str(x): float(matrix[la.index(x), lb.index(x)]) for x in common},
                      "seconds": round(time.perf_counter() - t, 3)}
    if "rsa" in options["methods"]:
        if not common:
            raise StrataError("--method rsa: A and B share no layer id to compare")
        size = min(options["tokens"], n_rows)
        # a sample of every row is the same sample whatever the seed: one repeat, no spread
        repeats = 1 if size == n_rows else options["repeats"]
        if not quiet:
            every = " (every row: one repeat)" if repeats < options["repeats"] else ""
            print(f"strata compare: RSA on {size:,} sampled rows x {repeats} seeds{every}, "
                  f"{len(common)} layers", file=sys.stderr)
        t = time.perf_counter()
        scores = rsa_per_layer(A, B, [(pa[la.index(x)], pb[lb.index(x)]) for x in common], rows,
                               options["tokens"], options["seed"], repeats, xp, quiet)
        doc["rsa"] = {"layers": common, "sample_rows": int(size), "repeats": repeats,
                      "seed": options["seed"], "seeds": [[options["seed"], r] for r in range(repeats)],
                      "mean": {str(x): float(scores[:, k].mean()) for k, x in enumerate(common)},
                      "std": {str(x): float(scores[:, k].std(ddof=1)) if repeats > 1 else None
                              for k, x in enumerate(common)},
                      "per_repeat": scores.tolist(), "seconds": round(time.perf_counter() - t, 3)}
        if repeats < options["repeats"]:
            doc["rsa"]["note"] = f"--tokens {options['tokens']} covers all {n_rows} rows: one repeat"
    if schema.ATTENTION_CLS in A.group and schema.ATTENTION_CLS in B.group:
        from probe_engine.attention_stats import attention_statistics
        both = np.flatnonzero(~(A.group[schema.SENTENCE_SKIPPED][...] | B.group[schema.SENTENCE_SKIPPED][...]))
        doc["attention"] = attention_statistics(A.group[schema.ATTENTION_CLS], B.group[schema.ATTENTION_CLS], both)
    doc["strata_compare"].update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 seconds=round(time.perf_counter() - started, 3))
    make_output_dir(out)
    from probe_engine.plot import plot_cka_heatmap, plot_similarity_per_layer
    if "cka" in doc:
        plot_cka_heatmap(doc, out / "cka_heatmap.png")
    plot_similarity_per_layer(doc, out / "similarity_per_layer.png")
    write_json(out / "compare.json", doc)
    return doc


def _cell(v) -> str:
    """A number of the table; undefined (null in JSON, NaN in memory) as '-'."""
    return f"{v:7.4f}" if v is not None and math.isfinite(v) else "      -"


def format_table(doc: dict) -> str:
    layers = sorted(set(doc.get("rsa", {}).get("layers", [])) | {int(x) for x in doc.get("cka", {}).get("diagonal", {})})
    lines = [f"{'layer':>5} {'RSA':>7} {'± std':>7} {'CKA':>7}"]
    for x in layers:
        rsa = doc.get("rsa", {}).get("mean", {}).get(str(x))
        std = doc.get("rsa", {}).get("std", {}).get(str(x))
        cka = doc.get("cka", {}).get("diagonal", {}).get(str(x))
        lines.append(f"{x:>5} {_cell(rsa)} {_cell(std)} {_cell(cka)}")
    if "attention" in doc:
        att = doc["attention"]
        lines.append(f"{'block':>5} {'H(A)':>7} {'H(B)':>7} {'EMD':>7}   (CLS attention: entropy in nats, "
                     f"earth mover's distance in positions; {att['sentences']} sentences)")
        for k in att["blocks"]:
            lines.append(f"{k:>5} {_cell(att['entropy_a'].get(str(k)))} {_cell(att['entropy_b'].get(str(k)))} "
                         f"{_cell(att['emd'].get(str(k)))}")
        if "emd_not_computed" in att:
            lines.append(f"      EMD not computed: {att['emd_not_computed']}")
    return "\n".join(lines)
