"""Compression settings for activation arrays.

``lossless``  Blosc zstd level 1 with bit-shuffle: about 1.1x on fp16
              activations (their mantissas are close to random), fast.
``bitround:K`` the same after numcodecs' BitRound, which keeps K mantissa bits
              (Klöwer et al. 2021, "Compressing atmospheric data into its real
              information content").  Lossy; the benchmark reports its size
              and its effect on probe accuracy.
"""

from __future__ import annotations

import numpy as np
from zarr.codecs import BloscCodec

from store.errors import StrataError

#: Bytes per Blosc block.  Blosc's own choice for zstd level 1 is 32 KiB, and zstd
#: starts its match tables afresh for every block: on 64 MiB MiniLM shards (84 inner
#: chunks of 768 KiB), 128 KiB blocks compress in 0.16 core-s per shard instead of
#: 0.30, decompress in 0.094 instead of 0.107, and come out slightly smaller (1.104x
#: vs 1.097x); through zarr a shard is written in 0.30 core-s instead of 0.43 and read
#: as fast (bench/codec_bench.py, bench/results/blosc_blocksize.json).  Stores written
#: before keep their own ``blocksize`` (0) in their metadata, and a resume compresses
#: as the metadata says (tests/test_resume.py).
BLOSC_BLOCK_BYTES = 128 * 1024

#: Mantissa bits of each float type: BitRound may keep at most this many.
MANTISSA_BITS = {np.dtype("float16"): 10, np.dtype("float32"): 23}


def parse_codec(spec: str, dtype: np.dtype) -> tuple[list, list]:
    """Return zarr ``(filters, compressors)`` for a ``--codec`` value."""
    dtype = np.dtype(dtype)
    compressors = [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=dtype.itemsize,
                              blocksize=BLOSC_BLOCK_BYTES)]
    if spec == "lossless":
        return [], compressors
    if spec.startswith("bitround:"):
        bits = spec.split(":", 1)[1]
        maxbits = MANTISSA_BITS[dtype]
        if not bits.isdigit() or not 1 <= int(bits) <= maxbits:
            raise StrataError(f"--codec: bitround needs 1..{maxbits} mantissa bits for {dtype}, got {bits!r}")
        from zarr.codecs.numcodecs import BitRound

        return [BitRound(keepbits=int(bits))], compressors
    raise StrataError(f"--codec: unknown codec {spec!r}; use 'lossless' or 'bitround:K'")
