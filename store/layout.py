"""Where every token and sentence lives, and how the work is cut into units.

Tokens of all sentences are laid end to end along the ``token`` axis
(``sentence_offsets`` says where each sentence starts).  That axis is cut into
shards of ``shard_tokens`` tokens; shard k of the activation array is *unit k*:
the unit of writing, of work and of resume.  Zarr only tolerates concurrent
writers on whole, disjoint shards, so each unit is computed and written by
exactly one process, and its manifest record is written only after its shard
is on disk.

A sentence that straddles a shard boundary is run through the model by both
units (each keeps only its own tokens); sentence-level results belong to the
unit holding the sentence's first token ("owned" sentences).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

#: Target size of one inner chunk (the unit of reading) in bytes.
CHUNK_BYTES = 1 << 20
#: Target size of one shard (the unit of writing and resume) in bytes.
SHARD_BYTES = 64 << 20


def default_geometry(n_layers: int, hidden: int, itemsize: int) -> tuple[int, int]:
    """``(chunk_tokens, shard_tokens)`` giving ~1 MiB chunks and ~64 MiB shards."""
    chunk = max(64, 1 << int(np.log2(max(1, CHUNK_BYTES // (hidden * itemsize)))))
    per_token = n_layers * hidden * itemsize
    shard = max(chunk, (SHARD_BYTES // per_token) // chunk * chunk)
    return chunk, shard


@dataclass(frozen=True)
class Layout:
    """Token/sentence geometry of a store; a pure function of corpus and tokenizer."""

    offsets: np.ndarray  # int64, n_sentences + 1
    shard_tokens: int
    chunk_tokens: int

    @property
    def n_sentences(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def n_units(self) -> int:
        return max(1, -(-self.n_tokens // self.shard_tokens))

    def unit_tokens(self, unit: int) -> tuple[int, int]:
        """Token range ``[start, stop)`` of a unit."""
        start = unit * self.shard_tokens
        return start, min(start + self.shard_tokens, self.n_tokens)

    def unit_sentences(self, unit: int) -> np.ndarray:
        """Sentences with at least one token in the unit (need a forward pass)."""
        start, stop = self.unit_tokens(unit)
        first = np.searchsorted(self.offsets, start, side="right") - 1
        last = np.searchsorted(self.offsets, stop, side="left")
        sentences = np.arange(max(first, 0), min(last, self.n_sentences))
        lengths = self.offsets[sentences + 1] - self.offsets[sentences]
        return sentences[lengths > 0]

    def owned_sentences(self, unit: int) -> tuple[int, int]:
        """Sentence range ``[a, b)`` whose sentence-level results this unit writes.

        A sentence belongs to the unit holding its first token; zero-token
        (skipped) sentences go with the unit where they would have started,
        and those at the very end with the last unit.
        """
        a = int(np.searchsorted(self._owner, unit, side="left"))
        b = int(np.searchsorted(self._owner, unit, side="right"))
        return a, b

    @cached_property
    def _owner(self) -> np.ndarray:
        """Owning unit of every sentence (non-decreasing)."""
        return np.minimum(self.offsets[:-1] // self.shard_tokens, self.n_units - 1)
